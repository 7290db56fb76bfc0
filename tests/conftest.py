"""Shared fixtures: an isolated msutils home and one smoke build of the whole book."""

from __future__ import annotations

import shutil
from pathlib import Path

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


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
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
    out = root / "results"
    index = build_book(profile="smoke", out_dir=out, executed_dir=root / "book" / "executed",
                       book_root=root)
    return {"root": root, "index": index, "out": out}
