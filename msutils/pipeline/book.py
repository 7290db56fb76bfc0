"""Build the study report: run every notebook of a profile, then ``jupyter-book build``."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from msutils.pipeline.notebook_file import read_parameters
from msutils.pipeline.profiles import notebook_names
from msutils.pipeline.runner import run_notebook

__all__ = ["build_book"]

logger = logging.getLogger(__name__)


def _jupyter_book() -> str:
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.is_file():
        return str(exe)
    found = shutil.which("jupyter-book")
    if found is None:
        raise FileNotFoundError("jupyter-book is not installed in this environment (pip install 'jupyter-book<2')")
    return found


def build_book(
    profile: str = "quick",
    out_dir: str | os.PathLike | None = None,
    notebooks: Sequence[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    backend: str = "local",
    scheduler: str | None = None,
    n_workers: int = 2,
    notebooks_dir: str | os.PathLike | None = None,
    executed_dir: str | os.PathLike | None = None,
    profiles_file: str | os.PathLike | None = None,
    book_root: str | os.PathLike | None = None,
) -> Path:
    """Run every notebook (profiles-file order), then ``jupyter-book build``.

    Parameters
    ----------
    profile : str
        Profile for every notebook.
    out_dir : str or path-like, optional
        Results root (see :func:`run_notebook`).
    notebooks : sequence of str, optional
        Subset to run (still in profiles-file order); default all. The book is built
        from whatever executed notebooks exist.
    overrides : mapping, optional
        Parameter values (e.g. ``{"manifest": "/data/cohort.csv"}``) given to every
        notebook whose parameters cell defines them; a name no notebook defines is an
        error.
    backend, scheduler, n_workers, notebooks_dir, executed_dir, profiles_file
        Passed to :func:`run_notebook`.
    book_root : str or path-like, optional
        Folder with ``_config.yml`` / ``_toc.yml``; default the repository root.

    Returns
    -------
    Path
        ``<book_root>/_build/html/index.html``.

    Raises
    ------
    FoldFailed
        A notebook failed (the book is not built).
    RuntimeError
        ``jupyter-book build`` failed; the message holds its output.
    """
    from msutils.core import paths

    order = notebook_names(profiles_file)
    if notebooks is None:
        names = order
    else:
        bad = [n for n in notebooks if n not in order]
        if bad:
            raise ValueError(f"notebooks {bad} are not in the profiles file; choose from {order}")
        names = [n for n in order if n in set(notebooks)]
    overrides = dict(overrides or {})
    nb_dir = Path(notebooks_dir).expanduser() if notebooks_dir is not None else paths.notebooks_dir()
    declared = {nb: set(read_parameters(nb_dir / f"{nb}.ipynb")) for nb in names}
    unknown = sorted(k for k in overrides if not any(k in d for d in declared.values()))
    if unknown:
        raise ValueError(f"parameters {unknown} are not defined by any of the notebooks {names}")
    root = Path(book_root).expanduser().resolve() if book_root is not None else paths.repo_root()
    if executed_dir is None:
        executed_dir = root / "book" / "executed"
    t0 = time.perf_counter()
    for i, nb in enumerate(names, 1):
        logger.info("book: notebook %d/%d %s (profile %s)", i, len(names), nb, profile)
        own = {k: v for k, v in overrides.items() if k in declared[nb]}
        run_notebook(nb, profile=profile, overrides=own, out_dir=out_dir, backend=backend, scheduler=scheduler,
                     n_workers=n_workers, notebooks_dir=notebooks_dir, executed_dir=executed_dir,
                     profiles_file=profiles_file)
    logger.info("book: notebooks done in %.1f s; running jupyter-book build %s", time.perf_counter() - t0, root)
    proc = subprocess.run([_jupyter_book(), "build", str(root)], cwd=root, capture_output=True, text=True)
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build {root} failed (exit {proc.returncode}):\n{output[-8000:]}")
    index = root / "_build" / "html" / "index.html"
    if not index.is_file():
        raise RuntimeError(f"jupyter-book build {root} wrote no {index}:\n{output[-8000:]}")
    logger.info("book: %s", index)
    return index
