"""Fan-out runner: execute a notebook with papermill once per fold, then aggregate.

``run_notebook`` executes a notebook once per fold of a profile (skipping folds
whose cache entry exists) in a local process pool or on a Dask cluster, then once
more with ``fold=None`` to aggregate; the aggregate executed notebook is what the
book renders (:mod:`msutils.pipeline.book`).

Notebook conventions
--------------------
- One code cell tagged ``parameters`` holding literal assignments, at least
  ``profile``, ``fold``, ``manifest``, ``seed`` and ``out_dir``.
- Notebooks with folds tag the last cell a fold run needs ``fold-end``; fold runs
  stop after it (the runner truncates the notebook there), the aggregate run goes on.
- The notebook uses :mod:`msutils.pipeline.kernel` (``notebook_params``,
  ``fold_cache``, ``write_summary``).

Backends: ``local`` (a process pool on this machine) or ``dask``: a ``LocalCluster``
or any running scheduler, e.g. ``msutils run 02_edss_regression --backend dask
--scheduler tcp://host:8786`` (start one with ``dask scheduler`` and ``dask worker
tcp://host:8786 --nthreads 1`` on each machine). Dask workers need the same msutils
install and the same paths (notebooks, out_dir, manifest) on a shared filesystem;
the aggregate run always executes in the calling process.

Outputs under ``out_dir``: ``cache/<notebook>/...`` (fold results),
``executed/<notebook>/<fold>.ipynb`` and ``executed/<notebook>/aggregate.ipynb``
(executed notebooks, written as papermill goes, so a failed run leaves the partial
notebook) with their log files ``<fold>.log`` / ``aggregate.log`` (every log record of
the kernel: none goes into the notebook; the runner prints the kernel's progress lines,
logger ``msutils.progress``, on its console as they come), ``<notebook>/summary.json``
(written by the notebook) and
``<notebook>/run.json`` (what this run did). The aggregate run is cached too
(``cache/<notebook>/aggregate-<key16>/``: its executed notebook and summary, keyed
on every code cell, the parameters, the cohort, the library fingerprint and the
profile's folds): a second run with nothing changed only re-publishes it. The aggregate notebook is copied,
atomically and with its parameter cells tagged ``remove-cell``, to
``book/executed/<notebook>.ipynb``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from msutils.core.environ import temporary_environ
from msutils.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, file_lock
from msutils.core.progress import LOG_FORMAT, PROGRESS_LOGGER
from msutils.pipeline.cache import FoldCache
from msutils.pipeline.kernel import LOG_FILE_ENV, default_cohort_identity, summary_path
from msutils.pipeline.notebook_file import (
    FOLD_END_TAG,
    PARAMETER_TAGS,
    load_notebook,
    parameters_cell_index,
    read_parameters,
)
from msutils.pipeline.profiles import RESERVED_PARAMETERS, get_profile

__all__ = [
    "BACKENDS",
    "REQUIRED_PARAMETERS",
    "THREAD_ENV_VARS",
    "FoldFailed",
    "fold_status",
    "fold_thread_env",
    "run_notebook",
]

logger = logging.getLogger(__name__)

#: Execution backends of :func:`run_notebook`.
BACKENDS: tuple[str, ...] = ("dask", "local")
#: Parameters every notebook's ``parameters`` cell must define.
REQUIRED_PARAMETERS: tuple[str, ...] = ("profile", "fold", "manifest", "seed", "out_dir")
_REMOVE_TAG = "remove-cell"
#: Variables that size a process's OpenMP / BLAS thread pools (torch's intra-op threads follow OMP_NUM_THREADS).
THREAD_ENV_VARS: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Aggregate-cache entries: ``<out_dir>/cache/<notebook>/aggregate-<key16>/``.
_AGGREGATE = "aggregate"
_AGG_NOTEBOOK = "aggregate.ipynb"
_AGG_SUMMARY = "summary.json"
_AGG_META = "meta.json"


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
class FoldFailed(RuntimeError):
    """A papermill run of one fold (or of the aggregate, ``fold=None``) failed.

    Attributes
    ----------
    notebook : str
    fold : str or None
        None for the aggregate run.
    cell : int or None
        0-based index of the failing cell in the *source* notebook (None if the
        failure was not in a cell, e.g. the kernel died or did not start).
    exec_count : int or None
        The cell's execution count (``In [n]``) in the executed notebook.
    first_line : str or None
        First non-blank source line of the failing cell.
    ename, evalue : str
        Exception class name and message raised in the kernel.
    executed_path : pathlib.Path
        The partial executed notebook papermill wrote.
    """

    def __init__(
        self,
        notebook: str,
        fold: str | None,
        *,
        cell: int | None,
        exec_count: int | None,
        first_line: str | None,
        ename: str,
        evalue: str,
        executed_path: str | os.PathLike,
    ) -> None:
        self.notebook = notebook
        self.fold = fold
        self.cell = cell
        self.exec_count = exec_count
        self.first_line = first_line
        self.ename = ename
        self.evalue = evalue
        self.executed_path = Path(executed_path)
        what = f"fold {fold!r}" if fold is not None else "aggregate run (fold=None)"
        if cell is not None:
            count = exec_count if exec_count is not None else " "
            where = f" at cell {cell} (In [{count}], first line: {first_line!r})"
        else:
            where = ""
        super().__init__(
            f"notebook {notebook!r} {what} failed{where}: {ename}: {evalue}\n"
            f"partial executed notebook: {self.executed_path}"
        )

    def __reduce__(self) -> tuple:
        kwargs = {
            "cell": self.cell, "exec_count": self.exec_count, "first_line": self.first_line,
            "ename": self.ename, "evalue": self.evalue, "executed_path": self.executed_path,
        }
        return (_rebuild_fold_failed, (self.notebook, self.fold, kwargs))


def _rebuild_fold_failed(notebook: str, fold: str | None, kwargs: dict[str, Any]) -> FoldFailed:
    return FoldFailed(notebook, fold, **kwargs)


# --------------------------------------------------------------------------------------
# execution (runs in pool / Dask workers: top-level and picklable)
# --------------------------------------------------------------------------------------
def _first_line(source: str | None) -> str | None:
    for line in (source or "").splitlines():
        if line.strip():
            return line.strip()
    return None


#: A record line of a kernel's log file (:data:`msutils.core.progress.LOG_FORMAT`).
_RECORD_RE = re.compile(r"^(?P<time>\S+) (?P<name>\S+) (?P<level>[A-Z]+): (?P<message>.*)$")


class _ProgressRelay:
    """Tail a kernel's log file in a thread; re-log its progress lines on this process's console.

    Progress records (logger :data:`msutils.core.progress.PROGRESS_LOGGER`) are re-logged
    to the same logger here, prefixed with ``label``; other records stay in the file.
    """

    def __init__(self, path: Path, label: str, interval: float = 0.5) -> None:
        self.path = path
        self.label = label
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-relay {label}", daemon=True)
        self._pos = 0
        self._partial = ""
        self._log = logging.getLogger(PROGRESS_LOGGER)

    def __enter__(self) -> _ProgressRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._read()  # what the kernel wrote last

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def _read(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                fh.seek(self._pos)
                chunk = fh.read()
                self._pos = fh.tell()
        except FileNotFoundError:
            return
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for line in lines:
            m = _RECORD_RE.match(line)
            if m and m["name"] == PROGRESS_LOGGER:
                self._log.info("%s: %s", self.label, m["message"])


def _ipc_kernel_manager() -> type:
    """A jupyter_client kernel manager on IPC sockets (local, no TCP-transport warning).

    It also skips the SIGINT that jupyter_client sends before every shutdown request:
    papermill shuts a kernel down after the last cell, when it has nothing to
    interrupt, and an interrupt that lands while the kernel handles the shutdown
    prints "KeyboardInterrupt caught in kernel" on the console. A kernel that does
    not stop still gets SIGTERM, then SIGKILL.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:  # socket path prefix: keep it out of the working directory
            return os.path.join(tempfile.gettempdir(), f"msutils-kernel-{uuid.uuid4().hex[:12]}")

        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        interrupt_kernel = _async_interrupt_kernel

    return IPCKernelManager


def _worker_init(level: int) -> None:
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger("msutils").setLevel(level)


def _execute_task(task: dict[str, Any]) -> dict[str, Any]:
    """Execute one papermill run described by ``task``; never raises for notebook errors.

    Returns ``{"fold", "ok", "seconds", "output", "error"}`` where ``error`` is None or
    ``{"cell", "exec_count", "first_line", "ename", "evalue"}`` (plain data, so it
    crosses process boundaries).
    """
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    fold = task["fold"]
    label = f"{task['notebook']} " + (f"fold {fold}" if fold is not None else "aggregate")
    source = Path(task["source"])
    output = Path(task["output"])
    nb = nbformat.read(source, as_version=4)
    param_idx = parameters_cell_index(nb.cells, source)
    if task["truncate"]:
        end = next(i for i, c in enumerate(nb.cells) if FOLD_END_TAG in (c.metadata.get("tags") or []))
        nb.cells = nb.cells[: end + 1]
    output.parent.mkdir(parents=True, exist_ok=True)
    # papermill reads and rewrites its notebook while it runs: it works on a private copy, and ``output`` is
    # replaced atomically at the end, so two runs of one fold (e.g. a notebook test and a book build sharing a
    # results folder) never read each other's half-written file
    work = output.with_name(f".{output.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}{output.suffix}")
    nbformat.write(nb, work)
    log_file = output.with_suffix(".log")
    log_file.unlink(missing_ok=True)
    logger.info("%s: started (pid %d); log %s", label, os.getpid(), log_file)
    error: dict[str, Any] | None = None
    t0 = time.perf_counter()
    with temporary_environ({**task["env"], LOG_FILE_ENV: str(log_file)}), _ProgressRelay(log_file, label):
        try:
            pm.execute_notebook(
                str(work),
                str(work),
                parameters=task["parameters"],
                kernel_name=task["kernel_name"],
                cwd=task["cwd"],
                progress_bar=task["progress_bar"],
                log_output=False,
                kernel_manager_class=_ipc_kernel_manager(),
            )
        except PapermillExecutionError as exc:
            i = exc.cell_index  # index in the executed notebook: injected cell at param_idx + 1
            cell = i if i <= param_idx else (None if i == param_idx + 1 else i - 1)
            error = {
                "cell": cell,
                "exec_count": exc.exec_count,
                "first_line": _first_line(exc.source),
                "ename": exc.ename,
                "evalue": exc.evalue,
            }
        except Exception as exc:  # kernel died / did not start / bad notebook
            error = {"cell": None, "exec_count": None, "first_line": None,
                     "ename": type(exc).__name__, "evalue": str(exc).strip()}
    seconds = time.perf_counter() - t0
    try:  # papermill recorded the working copy as input and output; name the real source and output
        done = json.loads(work.read_text(encoding="utf-8"))
        done.setdefault("metadata", {}).setdefault("papermill", {}).update(input_path=str(source),
                                                                           output_path=str(output))
        atomic_write_text(output, json.dumps(done, indent=1, ensure_ascii=False) + "\n")
    except (OSError, json.JSONDecodeError):  # papermill left nothing readable: keep the notebook it was given
        atomic_write_text(output, nbformat.writes(nb))
    finally:
        work.unlink(missing_ok=True)
    if error is None:
        logger.info("%s: finished in %.1f s", label, seconds)
    else:
        logger.error("%s: failed after %.1f s: %s: %s", label, seconds, error["ename"], error["evalue"])
    return {"fold": fold, "ok": error is None, "seconds": seconds, "output": str(output), "error": error,
            "log": str(log_file)}


def _raise_failed(notebook: str, res: Mapping[str, Any]) -> None:
    err = res["error"]
    raise FoldFailed(
        notebook, res["fold"], cell=err["cell"], exec_count=err["exec_count"], first_line=err["first_line"],
        ename=err["ename"], evalue=err["evalue"], executed_path=res["output"],
    )


def _crashed(task: Mapping[str, Any], exc: BaseException) -> dict[str, Any]:
    """The result record of a task whose worker died or that failed outside the notebook."""
    return {"fold": task["fold"], "ok": False, "seconds": float("nan"), "output": task["output"],
            "log": str(Path(task["output"]).with_suffix(".log")),
            "error": {"cell": None, "exec_count": None, "first_line": None,
                      "ename": type(exc).__name__, "evalue": str(exc)}}


def _run_local(tasks: list[dict[str, Any]], n_workers: int) -> list[dict[str, Any]]:
    """Run tasks in a local process pool; stop submitting after the first failure."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[dict[str, Any]] = []
    level = logging.getLogger("msutils").getEffectiveLevel()
    # forkserver: workers fork from a clean single-threaded server that imported
    # papermill once (spawn would import it in every worker; fork is unsafe with threads)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["msutils.pipeline.runner", "papermill"])
    with ProcessPoolExecutor(
        max_workers=min(n_workers, len(tasks)),
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(level,),
    ) as pool:
        futures = {pool.submit(_execute_task, t): t for t in tasks}
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            task = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # worker died (e.g. killed for memory)
                res = _crashed(task, exc)
            results.append(res)
            _log_progress(task["notebook"], res, len(results), len(tasks))
            if not res["ok"]:
                for other in futures:
                    other.cancel()
    return results


def _run_dask(
    tasks: list[dict[str, Any]], scheduler: str | None, n_workers: int
) -> list[dict[str, Any]]:
    """Run tasks on a dask.distributed cluster (``scheduler`` address or a LocalCluster)."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True,
            dashboard_address=":0", silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    results: list[dict[str, Any]] = []
    try:
        logger.info("dask: %s", client)
        futures = {}
        for t in tasks:
            key = f"msutils-{t['notebook']}-{t['fold']}-{uuid.uuid4().hex[:8]}"
            futures[client.submit(_execute_task, t, pure=False, key=key)] = t
        for fut in as_completed(list(futures)):
            task = futures[fut]
            if fut.status == "cancelled":
                continue
            try:
                res = fut.result()
            except Exception as exc:  # worker lost, task erred outside the notebook
                res = _crashed(task, exc)
            results.append(res)
            _log_progress(task["notebook"], res, len(results), len(tasks))
            if not res["ok"]:
                pending = [f for f in futures if f.status == "pending"]
                if pending:
                    client.cancel(pending)
                break
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def _seconds(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def _log_progress(notebook: str, res: Mapping[str, Any], done: int, total: int) -> None:
    if res["ok"]:
        logger.info("%s fold %s: done in %.1f s [%d/%d]", notebook, res["fold"], res["seconds"], done, total)
    else:
        logger.error("%s fold %s: FAILED [%d/%d]", notebook, res["fold"], done, total)


# --------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------
def _plan(
    name: str,
    *,
    profile: str,
    folds: Sequence[str] | None,
    overrides: Mapping[str, Any] | None,
    out_dir: str | os.PathLike | None,
    notebooks_dir: str | os.PathLike | None,
    profiles_file: str | os.PathLike | None,
) -> dict[str, Any]:
    """Resolve everything a run needs and validate it up front."""
    from msutils.core import paths

    overrides = dict(overrides or {})
    prof = get_profile(name, profile, path=profiles_file)
    nb_dir = Path(notebooks_dir).expanduser().resolve() if notebooks_dir is not None else paths.notebooks_dir()
    nb_path = nb_dir / f"{name}.ipynb"
    if not nb_path.is_file():
        raise FileNotFoundError(f"notebook {name!r} not found: {nb_path} does not exist")
    defaults = read_parameters(nb_path)
    missing = [p for p in REQUIRED_PARAMETERS if p not in defaults]
    if missing:
        raise ValueError(f"the parameters cell of {nb_path} must define {missing}")
    reserved = sorted(set(overrides) & set(RESERVED_PARAMETERS))
    if reserved:
        raise ValueError(
            f"overrides may not set {reserved}; use the run's profile / folds / out_dir arguments instead"
        )
    unknown = sorted((set(prof.parameters) | set(overrides)) - set(defaults))
    if unknown:
        raise ValueError(
            f"parameters {unknown} are not defined in the parameters cell of {nb_path}; "
            f"defined: {sorted(defaults)}"
        )
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else paths.results_dir().resolve()
    params: dict[str, Any] = {**defaults, **prof.parameters, **overrides, "profile": profile,
                              "fold": None, "out_dir": str(out)}
    if params.get("manifest") is not None:
        manifest = Path(str(params["manifest"])).expanduser().resolve()  # kernel cwd differs
        if not manifest.is_file():
            raise FileNotFoundError(f"manifest {manifest} does not exist")
        params["manifest"] = str(manifest)
    if folds is None:
        run_folds = list(prof.folds)
    else:
        run_folds = [str(f) for f in folds]
        bad = [f for f in run_folds if f not in prof.folds]
        if bad:
            raise ValueError(
                f"folds {bad} are not defined for notebook {name!r} under profile {profile!r}; "
                f"choose from {list(prof.folds)}"
            )
    if run_folds:
        cells = load_notebook(nb_path).get("cells", [])
        if not any(FOLD_END_TAG in (c.get("metadata", {}).get("tags") or []) for c in cells):
            raise ValueError(
                f"notebook {nb_path} has folds but no code cell tagged {FOLD_END_TAG!r}: tag the cell "
                f"that calls cache.get_or_compute(fold, ...) so fold runs stop there"
            )
    cache = FoldCache(name, params, manifest=params["manifest"], out_dir=out, notebook_path=nb_path,
                      default_identity=default_cohort_identity)
    env = {"MSUTILS_PROFILES": str(Path(profiles_file).expanduser().resolve())} if profiles_file else {}
    return {"profile": prof, "nb_dir": nb_dir, "nb_path": nb_path, "params": params, "folds": run_folds,
            "out_dir": out, "cache": cache, "env": env}


def fold_status(
    name: str,
    *,
    profile: str = "quick",
    folds: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    profiles_file: str | os.PathLike | None = None,
) -> dict[str, Path | None]:
    """Which folds of a run are cached: ``{fold: entry directory or None}``.

    Same arguments as :func:`run_notebook`; nothing is executed.
    """
    plan = _plan(name, profile=profile, folds=folds, overrides=overrides, out_dir=out_dir,
                 notebooks_dir=notebooks_dir, profiles_file=profiles_file)
    cache: FoldCache = plan["cache"]
    return {f: (cache.entry_dir(f) if cache.has(f) else None) for f in plan["folds"]}


def fold_thread_env(n_parallel: int, *, cpu_count: int | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Thread-pool sizes for one of ``n_parallel`` fold processes that share this machine.

    Each process gets ``max(1, cpu_count // n_parallel)`` OpenMP / BLAS threads
    (:data:`THREAD_ENV_VARS`; torch's CPU threads follow ``OMP_NUM_THREADS``), so two
    folds on a 2-core machine run one thread each instead of two each. A variable the
    user already set (in ``environ``) is kept; a single process (``n_parallel=1``, e.g.
    the aggregate run) gets no limit.

    Parameters
    ----------
    n_parallel : int
        Fold processes running at once on this machine.
    cpu_count : int, optional
        Cores available (default: this process's CPU affinity).
    environ : mapping, optional
        The environment to respect (default ``os.environ``).

    Returns
    -------
    dict
        Variables to set in the fold processes' environment.
    """
    if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1:
        raise ValueError(f"'n_parallel' must be a positive integer; got {n_parallel!r}")
    if n_parallel == 1:
        return {}
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = os.environ if environ is None else environ
    threads = str(max(1, int(cpu_count) // n_parallel))
    return {k: threads for k in THREAD_ENV_VARS if k not in env}


def _store_aggregate(entry: Path, key: str, executed: Path, summary: Path) -> None:
    """Keep the aggregate's executed notebook and summary under its key (atomically)."""
    tmp = entry.with_name(f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        shutil.copyfile(executed, tmp / _AGG_NOTEBOOK)
        shutil.copyfile(summary, tmp / _AGG_SUMMARY)
        (tmp / _AGG_META).write_text(json.dumps({"key": key}) + "\n", encoding="utf-8")
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _restore_aggregate(entry: Path, key: str, executed: Path, summary: Path) -> bool:
    """Put a stored aggregate's notebook and summary back in place; False if there is none for ``key``."""
    try:
        meta = json.loads((entry / _AGG_META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get("key") != key or not (entry / _AGG_NOTEBOOK).is_file() or not (entry / _AGG_SUMMARY).is_file():
        return False
    atomic_write_bytes(executed, (entry / _AGG_NOTEBOOK).read_bytes())
    atomic_write_bytes(summary, (entry / _AGG_SUMMARY).read_bytes())
    return True


def _publish(executed: Path, dest: Path, source: Path) -> Path:
    """Copy an executed notebook to the book, parameter cells tagged ``remove-cell``."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(t in PARAMETER_TAGS for t in tags) and _REMOVE_TAG not in tags:
            tags.append(_REMOVE_TAG)
    nb.setdefault("metadata", {}).setdefault("papermill", {})["input_path"] = str(source)
    return atomic_write_text(dest, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------
def run_notebook(
    name: str,
    *,
    profile: str = "quick",
    folds: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    backend: str = "local",
    scheduler: str | None = None,
    n_workers: int = 2,
    out_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    executed_dir: str | os.PathLike | None = None,
    profiles_file: str | os.PathLike | None = None,
    aggregate: bool = True,
    force: bool = False,
    kernel_name: str = "python3",
    progress_bar: bool = False,
) -> Path | None:
    """Execute a notebook once per fold (in parallel), then once to aggregate.

    Parameters
    ----------
    name : str
        Notebook name, e.g. ``"02_edss_regression"`` (``<notebooks_dir>/<name>.ipynb``).
    profile : str
        Profile of the profiles file (``smoke``, ``quick``, ``paper``).
    folds : sequence of str, optional
        Subset of the profile's folds to run; default all of them. The aggregate run
        still aggregates every fold of the profile (computing missing ones in-process).
    overrides : mapping, optional
        Parameter values on top of the profile's; each must be defined in the
        notebook's parameters cell; ``profile``/``fold``/``out_dir`` are not allowed. A
        relative ``manifest`` is resolved against the current directory.
    backend : {"local", "dask"}
        ``local``: a process pool of ``n_workers``. ``dask``: ``Client(scheduler)`` if
        given, else a ``LocalCluster(n_workers, threads_per_worker=1, processes=True)``.
        Remote Dask workers need msutils installed and the same paths (shared disk).
    scheduler : str, optional
        Dask scheduler address, e.g. ``"tcp://host:8786"`` (``backend="dask"`` only).
    n_workers : int
        Parallel fold runs (local pool size / LocalCluster workers).
    out_dir : str or path-like, optional
        Results root; default ``msutils.core.paths.results_dir()``.
    notebooks_dir : str or path-like, optional
        Folder of the source notebooks; default ``msutils.core.paths.notebooks_dir()``.
        papermill runs the kernel in this folder.
    executed_dir : str or path-like, optional
        Where the aggregate executed notebook goes for the book; default
        ``<repo>/book/executed``.
    profiles_file : str or path-like, optional
        Profiles YAML; default ``msutils.pipeline.profiles.profiles_path()``. Exported to the
        kernels as ``$MSUTILS_PROFILES``.
    aggregate : bool
        Run the aggregate (``fold=None``) pass; False only precomputes folds.
    force : bool
        Delete the selected folds' cache entries and the stored aggregate first, so
        they are recomputed.
    kernel_name : str
        Jupyter kernel.
    progress_bar : bool
        papermill's per-cell progress bar.

    Returns
    -------
    Path or None
        ``<out_dir>/<name>/summary.json`` (None with ``aggregate=False``).

    Raises
    ------
    FoldFailed
        A fold or the aggregate run failed; names the cell and the partial notebook.
    """
    from msutils import __version__
    from msutils.core import paths

    if backend not in BACKENDS:
        raise ValueError(f"'backend' must be one of {sorted(BACKENDS)}; got {backend!r}")
    if scheduler is not None and backend != "dask":
        raise ValueError(f"'scheduler' needs backend='dask'; got backend={backend!r}")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"'n_workers' must be a positive integer; got {n_workers!r}")
    plan = _plan(name, profile=profile, folds=folds, overrides=overrides, out_dir=out_dir,
                 notebooks_dir=notebooks_dir, profiles_file=profiles_file)
    cache: FoldCache = plan["cache"]
    out: Path = plan["out_dir"]
    executed_root = out / "executed" / name
    dest_dir = Path(executed_dir).expanduser() if executed_dir is not None else paths.repo_root() / "book" / "executed"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cache.clean_temp()
    if force:
        for f in plan["folds"]:
            if cache.remove(f):
                logger.info("%s fold %s: cache entry removed (force)", name, f)

    def task(fold: str | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {
            "notebook": name,
            "fold": fold,
            "source": str(plan["nb_path"]),
            "output": str(executed_root / (f"{fold}.ipynb" if fold is not None else "aggregate.ipynb")),
            "parameters": {**plan["params"], "fold": fold},
            "cwd": str(plan["nb_dir"]),
            "kernel_name": kernel_name,
            "progress_bar": progress_bar,
            "truncate": fold is not None,
            "env": {**plan["env"], **(env or {})},
        }

    record: dict[str, Any] = {}
    run_info: dict[str, Any] = {
        "notebook": name, "profile": profile, "parameters": {k: v for k, v in plan["params"].items() if k != "fold"},
        "folds": record, "backend": backend, "scheduler": scheduler, "n_workers": n_workers,
        "msutils_version": __version__, "started": started,
    }

    def save_record(**extra: Any) -> None:
        run_info.update(extra, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        atomic_write_json(out / name / "run.json", run_info)

    todo = []
    for f in plan["folds"]:
        if cache.has(f):
            logger.info("%s fold %s: cached, skipped (%s)", name, f, cache.entry_dir(f))
            record[f] = {"status": "cached", "entry": str(cache.entry_dir(f))}
        else:
            todo.append(f)
    if todo:
        logger.info("%s: running %d of %d folds with backend %r (%d workers): %s",
                    name, len(todo), len(plan["folds"]), backend, n_workers, ", ".join(todo))
        # folds running side by side share the cores (one remote dask worker per machine: no limit)
        parallel = min(n_workers, len(todo)) if backend == "local" or not scheduler else 1
        threads = fold_thread_env(parallel)
        tasks = [task(f, threads) for f in todo]
        results = _run_local(tasks, n_workers) if backend == "local" else _run_dask(tasks, scheduler, n_workers)
        failed = [r for r in results if not r["ok"]]
        for r in results:
            record[r["fold"]] = {"status": "computed" if r["ok"] else "failed", "seconds": _seconds(r["seconds"]),
                                 "executed": r["output"], "log": r["log"]}
        if failed:
            for f in todo:
                record.setdefault(f, {"status": "not run"})
            save_record()
            _raise_failed(name, min(failed, key=lambda r: todo.index(r["fold"])))
        for f in todo:
            if cache.has(f):
                record[f]["entry"] = str(cache.entry_dir(f))
            else:
                logger.warning(
                    "%s fold %s ran but left no cache entry %s: the notebook's cache key differs from the "
                    "runner's (build params with msutils.pipeline.kernel.notebook_params(globals(), %r) and call "
                    "cache.get_or_compute(fold, ...) in the %r cell); the aggregate run will recompute it",
                    name, f, cache.entry_dir(f), name, FOLD_END_TAG,
                )
    summary = summary_path(out, name)
    if not aggregate:
        save_record()
        return None
    agg_key = cache.aggregate_key(plan["profile"].folds)
    agg_entry = cache.root / f"{_AGGREGATE}-{agg_key[:16]}"
    # Concurrent runs of the same aggregate (e.g. the book build and a notebook test) execute it once.
    with file_lock(out / "cache" / ".locks" / name / f"{agg_entry.name}.lock"):
        if force:
            shutil.rmtree(agg_entry, ignore_errors=True)
        cached = _restore_aggregate(agg_entry, agg_key, Path(task(None)["output"]), summary)
        if cached:
            book_copy = _publish(Path(task(None)["output"]), dest_dir / f"{name}.ipynb", plan["nb_path"])
            logger.info("%s: aggregate cached (%s); executed notebook %s", name, agg_entry, book_copy)
            save_record(aggregate={"status": "cached", "entry": str(agg_entry), "book": str(book_copy)},
                        summary=str(summary))
            return summary
        t_agg = time.time()
        res = _execute_task(task(None))
        if not res["ok"]:
            save_record(aggregate={"status": "failed", "seconds": _seconds(res["seconds"]),
                                   "executed": res["output"], "log": res["log"]})
            _raise_failed(name, res)
        if not summary.is_file() or summary.stat().st_mtime < t_agg - 1.0:
            raise RuntimeError(
                f"notebook {name!r} did not write {summary}: call "
                f"msutils.pipeline.kernel.write_summary(out_dir, {name!r}, {{...}}) in its aggregate part"
            )
        _store_aggregate(agg_entry, agg_key, Path(res["output"]), summary)
    book_copy = _publish(Path(res["output"]), dest_dir / f"{name}.ipynb", plan["nb_path"])
    logger.info("%s: aggregate done in %.1f s; executed notebook %s", name, res["seconds"], book_copy)
    save_record(
        aggregate={"status": "computed", "seconds": _seconds(res["seconds"]), "executed": res["output"],
                   "log": res["log"], "book": str(book_copy)},
        summary=str(summary),
    )
    return summary

