"""Shared fixtures: an isolated msutils home, shared smoke runs and one smoke build of the book.

The notebook tests and the book build run the notebooks' smoke profile into one
results folder: the runner's fold and aggregate caches (keyed on code, parameters
and cohort, guarded by file locks) make whichever comes second reuse the first's
results, so every smoke run is computed once per test session.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "open_ms_data"


@pytest.fixture(scope="session", autouse=True)
def msutils_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated cohorts go to one folder shared by the xdist workers of this run.

    Nothing is written into the user's ``~/.cache/msutils``; cohort generation is
    guarded by a file lock, so workers generate each preset once.
    """
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if base.name.startswith("popen-gw") else base) / "msutils_home"
    root.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("MSUTILS_HOME", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """One torch thread in the test processes: the tiny networks gain nothing from more
    and the two cores are shared by the xdist workers (notebook kernels set their own)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_results(msutils_home: Path) -> Path:
    """The results folder shared by the smoke runs of this test session (all xdist workers)."""
    root = msutils_home.parent / "smoke_results"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def smoke_notebook(smoke_results: Path) -> Callable[..., tuple[Path, dict[str, Any]]]:
    """Run a notebook's smoke profile into the shared results folder.

    Returns a function ``(notebook, overrides=None, **kw) -> (out_dir, summary)``;
    the executed notebook lands in ``out_dir.parent / "book"``.
    """
    import json

    from msutils.pipeline.runner import run_notebook

    def run(notebook: str, overrides: dict[str, Any] | None = None, **kw: Any) -> tuple[Path, dict[str, Any]]:
        out = smoke_results / "out"
        path = run_notebook(notebook, profile="smoke", out_dir=out, executed_dir=smoke_results / "book",
                            overrides=overrides, **kw)
        return out, json.loads(Path(path).read_text())

    return run


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory: pytest.TempPathFactory, smoke_results: Path) -> dict[str, Path]:
    """Run every notebook with the smoke profile and build the book in a temp copy.

    Tests using it carry ``@pytest.mark.xdist_group("book")`` so that one xdist
    worker builds it once.
    """
    from msutils.pipeline.book import build_book

    root = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, root / name)
    (root / "book").mkdir()
    for page in (REPO / "book").glob("*.md"):
        shutil.copy(page, root / "book" / page.name)
    out = smoke_results / "out"
    index = build_book(profile="smoke", out_dir=out, executed_dir=root / "book" / "executed",
                       book_root=root)
    return {"root": root, "index": index, "out": out}
