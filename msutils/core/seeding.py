"""Seeds derived from a run seed and a key, independent of what else is processed."""

from __future__ import annotations

import zlib

__all__ = ["derived_seed"]


def derived_seed(seed: int, key: str) -> int:
    """A seed in ``[0, 2**31)`` for ``key`` (e.g. a scan id) under the run's ``seed``.

    Each scan's random draws (augmentation, noise) then depend only on the run seed
    and the scan, not on which other scans are processed or in which order.
    """
    return int((int(seed) * 1_000_003 + zlib.crc32(str(key).encode())) % 2**31)
