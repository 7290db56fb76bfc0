"""Where msutils keeps generated cohorts, caches and results."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home", "repo_root", "results_dir", "notebooks_dir"]


def home() -> Path:
    """Cache root: ``$MSUTILS_HOME`` or ``~/.cache/msutils``."""
    return Path(os.environ.get("MSUTILS_HOME", Path.home() / ".cache" / "msutils")).expanduser()


def repo_root() -> Path:
    """The study-book checkout this package was installed from (editable install)."""
    return Path(__file__).resolve().parents[2]


def notebooks_dir() -> Path:
    """Folder of the source notebooks."""
    return repo_root() / "notebooks"


def results_dir() -> Path:
    """Default output folder for runs: ``$MSUTILS_RESULTS`` or ``<repo>/results``."""
    return Path(os.environ.get("MSUTILS_RESULTS", repo_root() / "results")).expanduser()
