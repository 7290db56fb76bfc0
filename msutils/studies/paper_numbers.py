"""The seed papers' published numbers, kept as data beside the study modules.

Each reproduced paper has one YAML file ``msutils/studies/paper_<seed>.yaml``
(``seed`` = the three digits of its file in ``../shared/seeds/``) holding the
numbers its study page shows next to this run's: tables as printed, counts given
in the text, the design and training settings the prose compares with. Code and
notebooks read them through :func:`load`, never by typing the numbers again.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PAPERS_DIR", "available", "load"]

#: Folder of the ``paper_<seed>.yaml`` files.
PAPERS_DIR: Path = Path(__file__).resolve().parent

_SEED_RE = re.compile(r"^\d{3}$")


def available() -> list[str]:
    """Seeds with a numbers file, sorted (e.g. ``["001", "003"]``)."""
    return sorted(p.stem.split("_", 1)[1] for p in PAPERS_DIR.glob("paper_*.yaml"))


@lru_cache(maxsize=None)
def _read(seed: str) -> dict[str, Any]:
    path = PAPERS_DIR / f"paper_{seed}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or str(data.get("seed")) != seed:
        raise ValueError(f"{path} must be a mapping whose 'seed' is {seed!r}")
    return data


def load(seed: str) -> dict[str, Any]:
    """The published numbers of one seed paper (a fresh copy: safe to modify).

    Parameters
    ----------
    seed : str
        Three digits, e.g. ``"001"`` (EDSS regression) or ``"003"`` (FLAIR nnU-Net).

    Returns
    -------
    dict
        The parsed ``paper_<seed>.yaml``.

    Raises
    ------
    ValueError
        ``seed`` is not three digits or has no numbers file; the message lists those that exist.
    """
    if not isinstance(seed, str) or not _SEED_RE.match(seed) or seed not in available():
        raise ValueError(f"'seed' must be one of {available()}; got {seed!r}")
    return copy.deepcopy(_read(seed))
