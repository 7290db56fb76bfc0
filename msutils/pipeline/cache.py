"""Content-addressed cache of per-fold notebook results.

A fold result is stored under ``<out_dir>/cache/<notebook>/<fold>-<key16>/`` as
``result.pkl`` (the pickled object ``compute_fn`` returned), any extra files the
computation wrote into its entry directory, and ``meta.json`` (notebook, fold,
parameters, key, library fingerprint, creation time, compute seconds).

The key is the sha256 of

- the notebook name,
- a hash of the source notebook's **code** cells up to and including the cell tagged
  ``fold-end`` (all code cells if there is none); cells tagged ``parameters`` /
  ``injected-parameters``, empty cells, markdown, outputs and metadata are ignored, so
  saving the notebook in JupyterLab or editing the aggregation cells after
  ``fold-end`` does not invalidate fold results,
- the parameters except ``fold``, ``out_dir`` and ``manifest``,
- the cohort identity (:func:`manifest_identity`): ``sha256:`` + the manifest's content
  hash (:func:`msutils.data.cohort.manifest_hash`), or for ``manifest=None`` the
  identity of the default cohort, which the caller supplies (the pipeline passes
  :func:`msutils.pipeline.kernel.default_cohort_identity`; this module does not import
  the synthetic generator),
- the library fingerprint (:func:`msutils.core.fingerprint.library_fingerprint`): a digest
  of every ``.py`` and ``.yaml`` file of the installed ``msutils`` package and the versions
  of the packages that compute results, so a fixed library bug or another
  numpy recomputes every fold, while tests, notebooks' prose or the README do not,
- the fold.

An entry is *stale*, and recomputed, when the cohort content it was computed for
differs from the one the cache was told about (``cohort_hash``: a default cohort
regenerated in place), or when a file outside the entry that the result depends on
(``requires``, e.g. a network checkpoint) has been deleted since.

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
from typing import Any, Callable, Iterable, Mapping, Sequence

from msutils.core.fingerprint import library_fingerprint
from msutils.core.io import file_lock
from msutils.data.cohort import manifest_hash
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


def code_hash(notebook: str | os.PathLike | Mapping[str, Any], *, whole: bool = False) -> str:
    """sha256 (hex) of a notebook's fold code (or of all its code).

    Code cells up to and including the first cell tagged ``fold-end`` (all code
    cells if none is tagged, or with ``whole=True``), skipping parameter cells and
    empty cells. Outputs, execution counts, metadata and markdown do not count.

    Parameters
    ----------
    notebook : str, path-like or mapping
        Path of an ``.ipynb`` file, or the notebook's parsed JSON.
    whole : bool
        Hash every code cell (what the aggregate run executes), not only the fold part.
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
        if FOLD_END_TAG in tags and not whole:
            break
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


def manifest_identity(
    manifest: str | os.PathLike | None,
    default_identity: str | Callable[[], str] | None = None,
) -> str:
    """What identifies the cohort a run used.

    Parameters
    ----------
    manifest : str, path-like or None
        Manifest CSV (its sidecar is the ``.yaml`` of the same stem).
    default_identity : str or callable, optional
        For ``manifest=None``: the identity of the default cohort, or a function
        returning it (e.g. ``lambda: default_cohort_identity(params)``).

    Returns
    -------
    str
        ``"sha256:<msutils.data.cohort.manifest_hash(manifest)>"``, or the default
        cohort's identity.

    Raises
    ------
    FileNotFoundError
        The manifest does not exist.
    ValueError
        ``manifest`` is None and no ``default_identity`` was given.
    """
    if manifest is None:
        if default_identity is None:
            raise ValueError("'manifest' is None: give 'default_identity' (the default cohort's identity), "
                             "e.g. msutils.pipeline.kernel.default_cohort_identity(params)")
        return default_identity() if callable(default_identity) else str(default_identity)
    return f"sha256:{manifest_hash(Path(manifest).expanduser())}"


def _key_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in KEY_EXCLUDED_PARAMETERS}


def cache_key(
    notebook: str,
    code: str,
    params: Mapping[str, Any],
    manifest_id: str,
    fold: str,
    library: Mapping[str, Any] | None = None,
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
    library : mapping, optional
        :func:`msutils.core.fingerprint.library_fingerprint` (computed when not given).
    """
    payload = {
        "notebook": notebook,
        "code": code,
        "params": _key_params(params),
        "manifest": manifest_id,
        "library": dict(library_fingerprint() if library is None else library),
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
    default_identity : str or callable, optional
        Identity of the default cohort, needed when the manifest is None: a string
        or ``f(params) -> str`` (the pipeline passes
        :func:`msutils.pipeline.kernel.default_cohort_identity`).
    cohort_hash : str, optional
        Content hash of the cohort this run loaded (``Cohort.content_hash()``).
        Recorded in new entries; an entry recorded for another cohort content is
        stale. None (e.g. the runner, before any cohort is loaded) accepts any.

    Examples
    --------
    >>> cache = FoldCache("02_edss_regression", params, default_identity=default_cohort_identity)  # doctest: +SKIP
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
        default_identity: str | Callable[[Mapping[str, Any]], str] | None = None,
        cohort_hash: str | None = None,
    ) -> None:
        if not isinstance(notebook, str) or not _FOLD_RE.match(notebook):
            raise ValueError(f"'notebook' must be a notebook name like '02_edss_regression'; got {notebook!r}")
        if not isinstance(params, Mapping):
            raise TypeError(f"'params' must be a mapping of parameter name to value; got {type(params).__name__}")
        if cohort_hash is not None and not isinstance(cohort_hash, str):
            raise TypeError(f"'cohort_hash' must be a string or None; got {type(cohort_hash).__name__}")
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
        default = (lambda: default_identity(self.params)) if callable(default_identity) else default_identity
        self.manifest_id = manifest_identity(self.manifest, default)
        self.library = library_fingerprint()
        self.cohort_hash = cohort_hash

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
        return cache_key(self.notebook, self.code_hash, self.params, self.manifest_id, self._fold_name(fold),
                         library=self.library)

    def aggregate_key(self, folds: Sequence[str]) -> str:
        """Key of the aggregate run over ``folds``: every code cell, parameters, cohort, library, folds.

        Two aggregate runs with the same key execute the same code on the same fold
        results, so the second can reuse the first's executed notebook and summary.
        """
        whole = code_hash(self.notebook_path, whole=True)
        return cache_key(self.notebook, whole, {**self.params, "__folds__": [str(f) for f in folds],
                                                 "__cohort_hash__": self.cohort_hash},
                         self.manifest_id, "aggregate", library=self.library)

    def entry_dir(self, fold: Any) -> Path:
        """Final directory of ``fold``'s entry (exists only once it is complete)."""
        name = self._fold_name(fold)
        return self.root / f"{name}-{self.key(name)[:16]}"

    def has(self, fold: Any) -> bool:
        """True if a complete, current (not stale) entry for ``fold`` exists."""
        return self._check(self.entry_dir(fold), self.key(fold))[0] is not None

    __contains__ = has

    def info(self, fold: Any) -> dict[str, Any]:
        """The ``meta.json`` of ``fold``'s entry (KeyError if not cached or stale)."""
        meta, why = self._check(self.entry_dir(fold), self.key(fold))
        if meta is None:
            raise KeyError(f"{self.notebook} fold {fold!r} is not cached under {self.root} ({why})")
        return meta

    def _check(self, entry: Path, key: str) -> tuple[dict[str, Any] | None, str]:
        """``(meta, "")`` for a complete, current entry, else ``(None, why not)``."""
        try:
            meta = json.loads((entry / _META).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None, "no entry"
        except json.JSONDecodeError:
            return None, "unreadable meta.json"
        if meta.get("key") != key or not (entry / _RESULT).is_file():
            return None, "incomplete entry"
        if self.cohort_hash is not None and meta.get("cohort_hash") != self.cohort_hash:
            return None, (f"stale: computed for cohort content {str(meta.get('cohort_hash'))[:12]}, "
                          f"this run loaded {self.cohort_hash[:12]}")
        missing = [p for p in meta.get("requires", []) if not Path(p).exists()]
        if missing:
            return None, f"stale: required file(s) deleted since: {missing[:3]}"
        return meta, ""

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
        requires: Callable[[Any], Iterable[str | os.PathLike]] | None = None,
    ) -> Any:
        """Return ``fold``'s cached result, computing and storing it if missing or stale.

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
        requires : callable, optional
            ``requires(result)`` -> files outside the entry that the result depends
            on (e.g. a trained network's checkpoint). Recorded in ``meta.json``; the
            entry is stale, and recomputed, once one of them is gone.

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
            return self._get_or_compute_locked(name, key, compute_fn, pass_dir, requires)

    def _get_or_compute_locked(self, name: str, key: str, compute_fn: Callable[..., Any],
                               pass_dir: bool, requires: Callable[[Any], Iterable[Any]] | None) -> Any:
        final = self.root / f"{name}-{key[:16]}"
        meta, why = self._check(final, key)
        if meta is not None:
            logger.info("%s fold %s: cached", self.notebook, name)
            return self.load(name)
        if final.exists():
            logger.warning("%s fold %s: recomputing cache entry %s (%s)", self.notebook, name, final, why)
            self.remove(name)
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
            needed = [] if requires is None else [str(Path(p).expanduser().resolve()) for p in requires(result)]
            gone = [p for p in needed if not Path(p).exists()]
            if gone:
                raise FileNotFoundError(f"{self.notebook} fold {name}: 'requires' names files that do not exist: "
                                        f"{gone[:3]}")
            with open(tmp / _RESULT, "wb") as fh:
                pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
            meta = {
                "notebook": self.notebook,
                "fold": name,
                "key": key,
                "code_hash": self.code_hash,
                "manifest": None if self.manifest is None else str(self.manifest),
                "manifest_id": self.manifest_id,
                "cohort_hash": self.cohort_hash,
                "requires": needed,
                "parameters": {k: v for k, v in self.params.items() if k != "fold"},
                "library": self.library,
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
                if self._check(final, key)[0] is None:
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
        requires: Callable[[Any], Iterable[str | os.PathLike]] | None = None,
    ) -> dict[str, Any]:
        """Results of every fold, in order, computing missing ones in this process.

        Parameters
        ----------
        folds : iterable of str
            Fold names (e.g. ``msutils.pipeline.profiles.profile_folds(notebook, profile)``).
        compute_fn, pass_dir, requires
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
        return {f: self.get_or_compute(f, compute_fn, pass_dir=pass_dir, requires=requires) for f in names}

    def remove(self, fold: Any) -> bool:
        """Delete ``fold``'s entry under this configuration (current or stale); True if there was one."""
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
