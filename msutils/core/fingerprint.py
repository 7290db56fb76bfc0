"""What in the software a cached result depends on: msutils' own sources and key package versions.

The fold cache (:mod:`msutils.pipeline.cache`) and study workspaces that outlive a
run (e.g. a prepared nnU-Net workspace) key on :func:`library_fingerprint`, so a
fixed bug anywhere in the library, or another numpy, recomputes them, while an
edited test, notebook prose or README does not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PACKAGE_DIR", "RESULT_PACKAGES", "SOURCE_SUFFIXES", "library_fingerprint", "source_digest"]

#: Installed packages whose versions enter the fingerprint (they compute the results).
RESULT_PACKAGES: tuple[str, ...] = ("numpy", "scipy", "scikit-learn", "pyradiomics", "torch", "monai", "nnunetv2")
#: Library files that enter the source digest.
SOURCE_SUFFIXES: tuple[str, ...] = (".py", ".yaml")
#: The msutils package folder whose sources :func:`source_digest` hashes by default.
PACKAGE_DIR: Path = Path(__file__).resolve().parents[1]


def source_digest(package_dir: str | os.PathLike | None = None) -> str:
    """sha256 (hex) of every ``.py`` / ``.yaml`` file of a package folder, by relative path.

    Parameters
    ----------
    package_dir : str or path-like, optional
        Default: :data:`PACKAGE_DIR`, the imported ``msutils`` package. ``__pycache__`` folders and
        files with other suffixes (notebooks, docs, data) do not count.
    """
    root = Path(package_dir) if package_dir is not None else PACKAGE_DIR
    if not root.is_dir():
        raise NotADirectoryError(f"'package_dir' must be a folder; got {root}")
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()
                   and "__pycache__" not in p.relative_to(root).parts)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def library_fingerprint(package_dir: str | os.PathLike | None = None,
                        packages: Iterable[str] = RESULT_PACKAGES) -> dict[str, Any]:
    """What in the software a fold result depends on: msutils' sources and key package versions.

    Parameters
    ----------
    package_dir : str or path-like, optional
        The msutils package folder (default: the one imported).
    packages : iterable of str
        Distribution names whose installed versions count (default :data:`RESULT_PACKAGES`).

    Returns
    -------
    dict
        ``{"msutils_sources": source_digest(package_dir), "packages": {name: version}}``.
    """
    return {"msutils_sources": source_digest(package_dir),
            "packages": {name: _package_version(name) for name in packages}}
