"""What a notebook kernel calls: its parameters, its fold cache, its summary.

A study notebook builds ``params = notebook_params(globals(), NOTEBOOK)`` after its
``parameters`` cell, gets ``cache = fold_cache(NOTEBOOK, params)``, computes a fold
with ``cache.get_or_compute(fold, compute_fold)`` in the cell tagged ``fold-end``,
aggregates every fold after it and ends with :func:`write_summary`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from msutils.core.io import atomic_write_json
from msutils.core.serialize import to_jsonable
from msutils.pipeline.cache import FoldCache
from msutils.pipeline.notebook_file import read_parameters, source_notebook

__all__ = [
    "notebook_params",
    "fold_cache",
    "summary_path",
    "write_summary",
    "enable_notebook_logging",
]


def notebook_params(
    namespace: Mapping[str, Any],
    notebook: str,
    *,
    names: Sequence[str] | None = None,
    notebook_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The current values of every name of the notebook's ``parameters`` cell.

    Parameters
    ----------
    namespace : mapping
        Usually ``globals()`` of the notebook, after the (injected) parameters ran.
    notebook : str
        The notebook's name, e.g. ``"02_edss_regression"``.
    names : sequence of str, optional
        Parameter names to pick; default the names of the source notebook's
        ``parameters`` cell (what the runner uses, so keys agree).
    notebook_path : str or path-like, optional
        Source notebook; default :func:`msutils.pipeline.notebook_file.source_notebook` (the notebook in
        the kernel's working directory, else in ``msutils.core.paths.notebooks_dir()``).

    Returns
    -------
    dict
        ``{name: value}`` for the parameters cell's names (what the runner hashes too).
    """
    path = source_notebook(notebook, notebook_path)
    names = list(read_parameters(path)) if names is None else list(names)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise KeyError(f"parameters {missing} of {path} are not defined; run the parameters cell first")
    return {n: namespace[n] for n in names}


def fold_cache(
    notebook: str,
    params: Mapping[str, Any],
    *,
    notebook_path: str | os.PathLike | None = None,
) -> FoldCache:
    """The :class:`~msutils.pipeline.cache.FoldCache` for ``params`` (manifest and out_dir taken from them)."""
    return FoldCache(
        notebook,
        params,
        manifest=params.get("manifest"),
        out_dir=params.get("out_dir"),
        notebook_path=notebook_path,
    )


def summary_path(out_dir: str | os.PathLike | None, notebook: str) -> Path:
    """``<out_dir>/<notebook>/summary.json`` (``out_dir`` None: ``msutils.core.paths.results_dir()``)."""
    if out_dir is None:
        from msutils.core.paths import results_dir

        out_dir = results_dir()
    return Path(out_dir).expanduser() / notebook / "summary.json"


def write_summary(out_dir: str | os.PathLike | None, notebook: str, summary: Mapping[str, Any]) -> Path:
    """Atomically write a notebook's headline numbers to ``<out_dir>/<notebook>/summary.json``.

    Parameters
    ----------
    out_dir : str, path-like or None
        Results root (the notebook's ``out_dir`` parameter).
    notebook : str
        Notebook name.
    summary : mapping
        JSON-able numbers and strings; numpy values are converted, NaN/inf become null.

    Returns
    -------
    Path
        The written file.
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"'summary' must be a mapping; got {type(summary).__name__}")
    return atomic_write_json(summary_path(out_dir, notebook), to_jsonable(summary))


def enable_notebook_logging(level: int | str = "INFO") -> None:
    """Show ``msutils`` log lines (e.g. "fold cv3: cached") in notebook output.

    Adds one stderr handler to the ``msutils`` logger (idempotent).
    """
    log = logging.getLogger("msutils")
    log.setLevel(level)
    if not any(getattr(h, "_msutils_notebook", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._msutils_notebook = True  # type: ignore[attr-defined]
        log.addHandler(handler)

