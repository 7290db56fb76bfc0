"""What a notebook kernel calls: its logging, its parameters, its cohort, its fold cache, its summary.

A study notebook calls :func:`configure_logging`, builds
``params = notebook_params(globals(), NOTEBOOK)`` after its ``parameters`` cell, reads
its cohort from :func:`cohort_manifest`, gets ``cache = fold_cache(NOTEBOOK, params)``,
computes a fold with ``cache.get_or_compute(fold, compute_fold)`` in the cell tagged
``fold-end``, aggregates every fold after it and ends with :func:`write_summary`.

Logging: log records and progress lines never go into the notebook's outputs (the
published pages show the analysis, not its plumbing). A kernel started by the runner
finds the run's log file in ``$MSUTILS_LOG_FILE`` (:data:`LOG_FILE_ENV`) and writes
every record there; the runner tails that file and prints the
``msutils.progress`` lines on its console.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from msutils.core.io import atomic_write_json
from msutils.core.progress import LOG_FORMAT
from msutils.core.serialize import to_jsonable
from msutils.pipeline.cache import FoldCache
from msutils.pipeline.notebook_file import read_parameters, source_notebook

__all__ = [
    "LOG_FILE_ENV",
    "configure_logging",
    "notebook_params",
    "default_cohort_identity",
    "cohort_manifest",
    "fold_cache",
    "summary_path",
    "write_summary",
]

#: Environment variable naming the log file of a kernel run (set by the runner).
LOG_FILE_ENV = "MSUTILS_LOG_FILE"
_HANDLER_MARK = "_msutils_kernel_handler"


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


def _default_preset(params: Mapping[str, Any]) -> Any:
    return params.get("preset", params.get("profile"))


def default_cohort_identity(params: Mapping[str, Any]) -> str:
    """Identity of the synthetic cohort a notebook uses when its ``manifest`` is None.

    ``"synthetic:preset=<preset>:seed=<seed>:params=<first 16 hex of the generator
    parameter hash>"``: the default cohort is a pure function of the preset's
    parameters, the seed and the generator code (which the fold cache's library
    fingerprint covers). Nothing is generated. An unknown preset gives
    ``params=unknown`` (the notebook reports the bad name when it runs).

    Parameters
    ----------
    params : mapping
        Notebook parameters: ``preset`` (falling back to ``profile``) and ``seed``.
    """
    from msutils import synth

    preset = _default_preset(params)
    try:
        version = synth.params_hash(synth.get_params(preset))[:16]
    except ValueError:
        version = "unknown"
    return f"synthetic:preset={preset}:seed={params.get('seed')}:params={version}"


def cohort_manifest(params: Mapping[str, Any]) -> Path:
    """The manifest a notebook reads: ``params["manifest"]``, or the default synthetic cohort.

    With ``manifest`` None the cohort of ``preset`` (falling back to ``profile``) and
    ``seed`` is generated on first use (:func:`msutils.synth.default_cohort`, cached
    by its parameters).
    """
    if params.get("manifest"):
        return Path(params["manifest"]).expanduser()
    from msutils import synth

    return synth.default_cohort(_default_preset(params), seed=params.get("seed", 0))


def fold_cache(
    notebook: str,
    params: Mapping[str, Any],
    *,
    cohort_hash: str | None = None,
    notebook_path: str | os.PathLike | None = None,
) -> FoldCache:
    """The :class:`~msutils.pipeline.cache.FoldCache` for ``params`` (manifest and out_dir taken from them).

    Parameters
    ----------
    notebook : str
        Notebook name.
    params : mapping
        :func:`notebook_params`.
    cohort_hash : str, optional
        ``Cohort.content_hash()`` of the loaded cohort: entries computed for other
        cohort content are recomputed.
    notebook_path : str or path-like, optional
        Source notebook (default :func:`msutils.pipeline.notebook_file.source_notebook`).
    """
    return FoldCache(
        notebook,
        params,
        manifest=params.get("manifest"),
        out_dir=params.get("out_dir"),
        notebook_path=notebook_path,
        default_identity=default_cohort_identity,
        cohort_hash=cohort_hash,
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


def configure_logging(level: int | str = "INFO", *, log_file: str | os.PathLike | None = None) -> Path | None:
    """Route log records of this kernel away from the notebook's outputs.

    With a log file (``log_file``, else ``$MSUTILS_LOG_FILE``, which the runner sets)
    every record of ``msutils`` at ``level`` and above, every warning of another
    library and every Python ``warnings.warn`` goes to that file only, as
    :data:`msutils.core.progress.LOG_FORMAT` lines. Without one (an interactive JupyterLab session) the
    ``msutils`` records are shown on stderr as before, so an explorer still sees the
    progress of long steps. Idempotent: calling it again replaces its handler.

    Parameters
    ----------
    level : int or str
        Level of the ``msutils`` loggers.
    log_file : str or path-like, optional
        Overrides ``$MSUTILS_LOG_FILE``.

    Returns
    -------
    Path or None
        The log file, or None when logging to stderr.
    """
    path = log_file if log_file is not None else os.environ.get(LOG_FILE_ENV)
    root, lib = logging.getLogger(), logging.getLogger("msutils")
    for log in (root, lib):
        for handler in [h for h in log.handlers if getattr(h, _HANDLER_MARK, False)]:
            log.removeHandler(handler)
            handler.close()
    lib.setLevel(level)
    if path:
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(target, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        handler.setLevel(logging.DEBUG)
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
        if root.level > logging.WARNING or root.level == logging.NOTSET:
            root.setLevel(logging.WARNING)  # other libraries: warnings and errors only
        logging.captureWarnings(True)
        return target
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    setattr(handler, _HANDLER_MARK, True)
    lib.addHandler(handler)
    return None
