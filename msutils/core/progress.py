"""Progress of long steps as log lines: ``name: done/total (elapsed)``.

Notebook pages must not carry progress bars or log records, and the console of
``msutils run`` should still show that a long step is moving. :class:`Progress`
therefore writes plain log records to the ``msutils.progress`` logger (at most
one every ``interval`` seconds, plus the first and the last); the runner routes
that logger to its console (see :mod:`msutils.pipeline.kernel`).
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

__all__ = ["LOG_FORMAT", "PROGRESS_LOGGER", "Progress"]

#: Name of the logger progress lines go to.
PROGRESS_LOGGER = "msutils.progress"
#: The one log-line format of msutils: kernels' log files (which the runner parses) and the console.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"

_log = logging.getLogger(PROGRESS_LOGGER)


def _elapsed(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}:{sec:02d}" if minutes else f"{seconds:.1f} s"


class Progress:
    """Counter of a long step that logs ``name: done/total (elapsed)``.

    Parameters
    ----------
    name : str
        What is being done, e.g. ``"radiomics"``.
    total : int
        Number of units of work.
    unit : str
        Unit shown after the counts (``"scans"``, ``"lesions"``, ...).
    interval : float
        Minimum seconds between two lines (the first and last line always show).
    enabled : bool
        False makes every call a no-op.

    Examples
    --------
    >>> with Progress("radiomics", total=3, unit="scans") as bar:  # doctest: +SKIP
    ...     for scan in scans:
    ...         extract(scan)
    ...         bar.update()
    """

    def __init__(self, name: str, total: int, *, unit: str = "", interval: float = 10.0,
                 enabled: bool = True) -> None:
        if total < 0:
            raise ValueError(f"'total' must be >= 0; got {total!r}")
        self.name = name
        self.total = int(total)
        self.unit = unit
        self.interval = float(interval)
        self.enabled = enabled
        self.done = 0
        self._t0 = time.perf_counter()
        self._last = -float("inf")

    def _emit(self) -> None:
        now = time.perf_counter()
        self._last = now
        unit = f" {self.unit}" if self.unit else ""
        _log.info("%s: %d/%d%s (%s)", self.name, self.done, self.total, unit, _elapsed(now - self._t0))

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; log a line if ``interval`` has passed or all are done."""
        self.done += int(n)
        if not self.enabled:
            return
        if self.done >= self.total or time.perf_counter() - self._last >= self.interval:
            self._emit()

    def __enter__(self) -> Progress:
        if self.enabled and self.total:
            self._emit()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled and exc is None and self.done < self.total and self.done:
            self._emit()
