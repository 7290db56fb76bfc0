"""Content-addressed cache of per-fold notebook results.

A fold result is stored under ``<out_dir>/cache/<notebook>/<fold>-<key16>/`` as
``result.pkl`` (the pickled object ``compute_fn`` returned), any extra files the
computation wrote into its entry directory, and ``meta.json`` (notebook, fold,
parameters, key, creation time, compute seconds).

The key is the sha256 of

- the notebook name,
- a hash of the source notebook's **code** cells up to and including the cell tagged
  ``fold-end`` (all code cells if there is none); cells tagged ``parameters`` /
  ``injected-parameters``, empty cells, markdown, outputs and metadata are ignored, so
  saving the notebook in JupyterLab or editing the aggregation cells after
  ``fold-end`` does not invalidate fold results,
- the parameters except ``fold``, ``out_dir`` and ``manifest``,
- the manifest identity: ``sha256:`` of the manifest CSV + sidecar YAML bytes, or for
  ``manifest=None`` the default synthetic cohort's ``preset`` + ``seed``,
- ``msutils.__version__`` (bump it when library changes should invalidate results),
- the fold.

An entry is assembled in a hidden temporary directory beside it and moved into place
with one ``os.replace``: a killed run leaves at most a ``.tmp-*`` directory, which is
never read and is removed later (once its owner process is gone, or after a day when
it was created on another host).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from msutils.core.io import file_lock
from msutils.pipeline.notebook_file import (
    FOLD_END_TAG,
    PARAMETER_TAGS,
    cell_source,
    cell_tags,
    load_notebook,
    source_notebook,
)

__all__ = [
    "KEY_EXCLUDED_PARAMETERS",
    "FoldCache",
    "code_hash",
    "manifest_identity",
    "cache_key",
]

logger = logging.getLogger(__name__)

#: Parameters that never enter the key (``manifest`` enters through its content hash).
KEY_EXCLUDED_PARAMETERS: tuple[str, ...] = ("fold", "out_dir", "manifest")

_FOLD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RESULT = "result.pkl"
_META = "meta.json"
_OWNER = ".owner.json"
_TMP_PREFIX = ".tmp-"
_UNSET: Any = object()


def code_hash(notebook: str | os.PathLike | Mapping[str, Any]) -> str:
    """sha256 (hex) of a notebook's fold code.

    Code cells up to and including the first cell tagged ``fold-end`` (all code
    cells if none is tagged), skipping parameter cells and empty cells. Outputs,
    execution counts, metadata and markdown do not count.

    Parameters
    ----------
    notebook : str, path-like or mapping
        Path of an ``.ipynb`` file, or the notebook's parsed JSON.
    """
    nb = load_notebook(notebook)
    sources: list[str] = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        tags = cell_tags(cell)
        if not any(t in PARAMETER_TAGS for t in tags):
            src = cell_source(cell).strip()
            if src:
                sources.append(src)
        if FOLD_END_TAG in tags:
            break
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


def manifest_identity(manifest: str | os.PathLike | None, params: Mapping[str, Any] | None = None) -> str:
    """What identifies the cohort a run used.

    Parameters
    ----------
    manifest : str, path-like or None
        Manifest CSV; its sidecar is the ``.yaml`` of the same stem.
    params : mapping, optional
        Notebook parameters; for ``manifest=None`` their ``preset`` (falling back to
        ``profile``) and ``seed`` name the default synthetic cohort.

    Returns
    -------
    str
        ``"sha256:<hex of CSV bytes + sidecar bytes>"`` or
        ``"synthetic:preset=<preset>:seed=<seed>:params=<generator parameter hash>"``.
    """
    params = params or {}
    if manifest is None:
        from msutils import synth

        preset = params.get("preset", params.get("profile"))
        try:
            version = synth.params_hash(synth.get_params(preset))[:16]
        except ValueError:  # not a synthetic preset name: the notebook will say so
            version = "unknown"
        return f"synthetic:preset={preset}:seed={params.get('seed')}:params={version}"
    path = Path(manifest).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    digest = hashlib.sha256(path.read_bytes())
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        digest.update(b"\0sidecar\0")
        digest.update(sidecar.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def _key_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in KEY_EXCLUDED_PARAMETERS}


def cache_key(
    notebook: str,
    code: str,
    params: Mapping[str, Any],
    manifest_id: str,
    fold: str,
    version: str | None = None,
) -> str:
    """sha256 (hex) of everything a fold result depends on.

    Parameters
    ----------
    notebook : str
        Notebook name.
    code : str
        :func:`code_hash` of the source notebook.
    params : mapping
        Notebook parameters; ``fold``, ``out_dir`` and ``manifest`` are ignored.
    manifest_id : str
        :func:`manifest_identity` of the cohort.
    fold : str
        Fold name.
    version : str, optional
        Library version; default ``msutils.__version__``.
    """
    if version is None:
        from msutils import __version__ as version
    payload = {
        "notebook": notebook,
        "code": code,
        "params": _key_params(params),
        "manifest": manifest_id,
        "version": version,
        "fold": str(fold),
    }
    blob = json.dumps(payload, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process whose parent is gone may linger as a zombie
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class FoldCache:
    """Get-or-compute store of per-fold results of one notebook run configuration.

    Parameters
    ----------
    notebook : str
        Notebook name, e.g. ``"02_edss_regression"``.
    params : mapping
        The notebook's parameters (see :func:`msutils.pipeline.kernel.notebook_params`).
    manifest : str, path-like or None, optional
        Cohort manifest; default ``params["manifest"]`` (None if absent).
    out_dir : str, path-like or None, optional
        Results root; default ``params["out_dir"]``, and if that is None
        ``msutils.core.paths.results_dir()``. Entries live in ``<out_dir>/cache/<notebook>/``.
    notebook_path : str or path-like, optional
        Source notebook whose code is hashed; default :func:`source_notebook`.

    Examples
    --------
    >>> cache = FoldCache("02_edss_regression", params)            # doctest: +SKIP
    >>> result = cache.get_or_compute("cv3", compute_fold)         # doctest: +SKIP
    >>> results = cache.get_all(["cv0", "cv1"], compute_fold)      # doctest: +SKIP
    """

    def __init__(
        self,
        notebook: str,
        params: Mapping[str, Any],
        *,
        manifest: str | os.PathLike | None = _UNSET,
        out_dir: str | os.PathLike | None = _UNSET,
        notebook_path: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(notebook, str) or not _FOLD_RE.match(notebook):
            raise ValueError(f"'notebook' must be a notebook name like '02_edss_regression'; got {notebook!r}")
        if not isinstance(params, Mapping):
            raise TypeError(f"'params' must be a mapping of parameter name to value; got {type(params).__name__}")
        self.notebook = notebook
        self.params: dict[str, Any] = dict(params)
        self.manifest = params.get("manifest") if manifest is _UNSET else manifest
        if out_dir is _UNSET:
            out_dir = params.get("out_dir")
        if out_dir is None:
            from msutils.core.paths import results_dir

            out_dir = results_dir()
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.root = self.out_dir / "cache" / notebook
        self.notebook_path = source_notebook(notebook, notebook_path)
        self.code_hash = code_hash(self.notebook_path)
        self.manifest_id = manifest_identity(self.manifest, self.params)

    def __repr__(self) -> str:
        return f"FoldCache(notebook={self.notebook!r}, root={str(self.root)!r})"

    # -- keys and paths -------------------------------------------------------------
    @staticmethod
    def _fold_name(fold: Any) -> str:
        name = str(fold)
        if fold is None or not _FOLD_RE.match(name):
            raise ValueError(
                f"'fold' must be a name made of letters, digits, '_', '-', '.'; got {fold!r}"
            )
        return name

    def key(self, fold: Any) -> str:
        """Full sha256 key of ``fold`` under this configuration."""
        return cache_key(self.notebook, self.code_hash, self.params, self.manifest_id, self._fold_name(fold))

    def entry_dir(self, fold: Any) -> Path:
        """Final directory of ``fold``'s entry (exists only once it is complete)."""
        name = self._fold_name(fold)
        return self.root / f"{name}-{self.key(name)[:16]}"

    def has(self, fold: Any) -> bool:
        """True if a complete entry for ``fold`` exists."""
        return self._meta(self.entry_dir(fold), self.key(fold)) is not None

    __contains__ = has

    def info(self, fold: Any) -> dict[str, Any]:
        """The ``meta.json`` of ``fold``'s entry (KeyError if not cached)."""
        meta = self._meta(self.entry_dir(fold), self.key(fold))
        if meta is None:
            raise KeyError(f"{self.notebook} fold {fold!r} is not cached under {self.root}")
        return meta

    @staticmethod
    def _meta(entry: Path, key: str) -> dict[str, Any] | None:
        try:
            meta = json.loads((entry / _META).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        if meta.get("key") != key or not (entry / _RESULT).is_file():
            return None
        return meta

    # -- reading and writing ----------------------------------------------------------
    def load(self, fold: Any) -> Any:
        """Load ``fold``'s cached result (KeyError if not cached)."""
        entry = self.entry_dir(fold)
        self.info(fold)
        with open(entry / _RESULT, "rb") as fh:
            return pickle.load(fh)

    def get_or_compute(
        self,
        fold: Any,
        compute_fn: Callable[..., Any],
        *,
        pass_dir: bool = False,
    ) -> Any:
        """Return ``fold``'s cached result, computing and storing it if missing.

        Concurrent callers (threads or processes) asking for the same entry
        compute it once: the others wait on a file lock and load it.

        Parameters
        ----------
        fold : str
            Fold name.
        compute_fn : callable
            ``compute_fn(fold)`` (or ``compute_fn(fold, entry_dir)`` with
            ``pass_dir=True``) returning a picklable object: dicts of DataFrames,
            arrays, numbers. Files written into ``entry_dir`` become part of the entry
            (read them later from :meth:`entry_dir`; store relative names only).
        pass_dir : bool
            Pass the (temporary) entry directory as second argument.

        Returns
        -------
        object
            The cached or freshly computed result.
        """
        name = self._fold_name(fold)
        key = self.key(name)
        # Processes asking for the same entry at once (e.g. every fold run needing a
        # shared stage) wait here: the first computes it, the others load it.
        with file_lock(self.out_dir / "cache" / ".locks" / self.notebook / f"{name}-{key[:16]}.lock"):
            return self._get_or_compute_locked(name, key, compute_fn, pass_dir)

    def _get_or_compute_locked(self, name: str, key: str, compute_fn: Callable[..., Any],
                               pass_dir: bool) -> Any:
        final = self.root / f"{name}-{key[:16]}"
        if self._meta(final, key) is not None:
            logger.info("%s fold %s: cached", self.notebook, name)
            return self.load(name)
        if final.exists():
            logger.warning("%s fold %s: removing unreadable cache entry %s", self.notebook, name, final)
            shutil.rmtree(final, ignore_errors=True)
        self.clean_temp()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{_TMP_PREFIX}{name}-{key[:16]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
            (tmp / _OWNER).write_text(json.dumps(owner), encoding="utf-8")
            logger.info("%s fold %s: computing", self.notebook, name)
            t0 = time.perf_counter()
            result = compute_fn(name, tmp) if pass_dir else compute_fn(name)
            seconds = time.perf_counter() - t0
            with open(tmp / _RESULT, "wb") as fh:
                pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
            meta = {
                "notebook": self.notebook,
                "fold": name,
                "key": key,
                "code_hash": self.code_hash,
                "manifest": None if self.manifest is None else str(self.manifest),
                "manifest_id": self.manifest_id,
                "parameters": {k: v for k, v in self.params.items() if k != "fold"},
                "msutils_version": _version(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(seconds, 3),
                "host": owner["host"],
            }
            (tmp / _META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
            (tmp / _OWNER).unlink()
            try:
                os.replace(tmp, final)
            except OSError:
                if self._meta(final, key) is None:
                    raise
                logger.info("%s fold %s: another process stored it first; keeping theirs", self.notebook, name)
            logger.info("%s fold %s: computed in %.1f s", self.notebook, name, seconds)
            return result
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def get_all(
        self,
        folds: Iterable[Any],
        compute_fn: Callable[..., Any],
        *,
        pass_dir: bool = False,
    ) -> dict[str, Any]:
        """Results of every fold, in order, computing missing ones in this process.

        Parameters
        ----------
        folds : iterable of str
            Fold names (e.g. ``msutils.pipeline.profiles.profile_folds(notebook, profile)``).
        compute_fn, pass_dir
            As in :meth:`get_or_compute`.

        Returns
        -------
        dict
            ``{fold: result}`` in the order of ``folds``.
        """
        names = [self._fold_name(f) for f in folds]
        missing = [f for f in names if not self.has(f)]
        logger.info(
            "%s: %d folds, %d cached, %d to compute%s",
            self.notebook, len(names), len(names) - len(missing), len(missing),
            f" ({', '.join(missing)})" if missing else "",
        )
        return {f: self.get_or_compute(f, compute_fn, pass_dir=pass_dir) for f in names}

    def remove(self, fold: Any) -> bool:
        """Delete ``fold``'s entry under this configuration; True if there was one."""
        entry = self.entry_dir(fold)
        if not entry.exists():
            return False
        trash = entry.with_name(f"{_TMP_PREFIX}{entry.name}-removed-{uuid.uuid4().hex[:8]}")
        os.replace(entry, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def clean_temp(self, *, max_age_s: float = 24 * 3600.0) -> int:
        """Remove abandoned temporary entry directories; return how many.

        A ``.tmp-*`` directory is abandoned when its owner process (same host) is
        gone, or, when the owner is unknown or on another host, when it is older
        than ``max_age_s`` seconds (one hour without an owner file).
        """
        if not self.root.is_dir():
            return 0
        host = socket.gethostname()
        removed = 0
        now = time.time()
        for tmp in self.root.glob(f"{_TMP_PREFIX}*"):
            if not tmp.is_dir():
                continue
            try:
                owner = json.loads((tmp / _OWNER).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                owner = None
            try:
                age = now - tmp.stat().st_mtime
            except FileNotFoundError:
                continue
            if owner is not None and owner.get("host") == host:
                stale = not _pid_alive(int(owner.get("pid", -1)))
            elif owner is not None:
                stale = age > max_age_s
            else:
                stale = age > min(max_age_s, 3600.0)
            if stale:
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
                logger.info("removed abandoned cache temp dir %s", tmp)
        return removed


def _version() -> str:
    from msutils import __version__

    return __version__
