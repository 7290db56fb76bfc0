"""The one process pool of msutils: start method, worker threads and progress in one place.

Heavy per-item work (rendering synthetic subjects, pyradiomics extraction, ICC
re-processing) runs in worker processes through :func:`process_map`:

- the start method is :data:`START_METHOD` (``forkserver`` on POSIX: workers fork
  from a clean single-threaded server, safe even when the caller already runs
  threads such as torch's or a Jupyter kernel's; ``spawn`` elsewhere). A caller
  whose workers need heavy, already-imported modules and hold no random state may
  ask for ``fork_if_safe=True``: the workers are then forked from this process
  (no interpreter start, no re-import: ~0.5 s instead of ~3.5 s for pyradiomics'
  stack on 2 loaded cores) when :func:`start_method` finds it safe;
- every worker limits BLAS / OpenMP pools and SimpleITK to one thread
  (:func:`limit_worker_threads`): several workers with multi-threaded BLAS
  oversubscribe the cores (measured 3-10x slower for pyradiomics' GLCM);
- ``persistent=True`` keeps the pool alive between calls (a notebook extracting
  radiomics in several steps pays the worker start-up once), until
  :func:`shutdown_pools` or interpreter exit;
- results come back in task order whatever the completion order, so output does
  not depend on the number of workers;
- progress is logged as ``name: done/total (elapsed)`` lines
  (:class:`msutils.core.progress.Progress`).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Sequence

from msutils.core.progress import Progress
from msutils.core.validation import check_int

__all__ = ["START_METHOD", "FORK_UNSAFE_MODULES", "limit_worker_threads", "process_map", "shutdown_pools",
           "start_method"]

logger = logging.getLogger(__name__)

#: Start method of every worker process msutils creates.
START_METHOD: str = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"

#: Modules whose runtimes (OpenMP thread pools, CUDA contexts) a forked child can deadlock in.
FORK_UNSAFE_MODULES: tuple[str, ...] = ("torch", "tensorflow", "jax", "cupy")

_PERSISTENT: dict[tuple[Any, ...], ProcessPoolExecutor] = {}


def start_method(preload: Sequence[str] = (), *, fork_if_safe: bool = False) -> str:
    """The start method for a pool whose workers need the modules ``preload``.

    ``"fork"`` only when asked (``fork_if_safe``), available, every ``preload`` module
    is already imported here (so forking saves their import) and none of
    :data:`FORK_UNSAFE_MODULES` is loaded; :data:`START_METHOD` otherwise.
    """
    if (fork_if_safe and preload and "fork" in mp.get_all_start_methods()
            and all(m in sys.modules for m in preload)
            and not any(m in sys.modules for m in FORK_UNSAFE_MODULES)):
        return "fork"
    return START_METHOD
_ATEXIT: list[bool] = []


def limit_worker_threads() -> None:
    """Limit BLAS / OpenMP thread pools and SimpleITK to one thread in this process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - SimpleITK is a dependency
        return
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """Daemon thread body: end this worker once its parent process is gone.

    A forked worker holds copies of its siblings' pipe ends, so it would never see
    the end-of-file that normally stops an orphaned pool worker.
    """
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    # Ctrl-C / a kernel shutdown interrupts the caller, which cancels and stops the pool;
    # idle workers must not each print a KeyboardInterrupt traceback on the console
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="exit-with-parent", daemon=True).start()
    limit_worker_threads()
    if initializer is not None:
        initializer(*initargs)


def _new_pool(n_jobs: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...],
              preload: Sequence[str], method: str) -> ProcessPoolExecutor:
    ctx = mp.get_context(method)
    if method == "forkserver" and preload:
        ctx.set_forkserver_preload(list(preload))
    return ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(initializer, tuple(initargs)))


def _pool_key(n_jobs: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...],
              preload: Sequence[str], method: str) -> tuple[Any, ...]:
    name = None if initializer is None else f"{initializer.__module__}.{initializer.__qualname__}"
    return (n_jobs, name, tuple(id(a) for a in initargs), tuple(preload), method)


def shutdown_pools() -> None:
    """Stop every persistent pool (also run at interpreter exit)."""
    while _PERSISTENT:
        _key, pool = _PERSISTENT.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


def _persistent_pool(n_jobs: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...],
                     preload: Sequence[str], method: str) -> ProcessPoolExecutor:
    key = _pool_key(n_jobs, initializer, initargs, preload, method)
    pool = _PERSISTENT.get(key)
    if pool is not None and not getattr(pool, "_broken", False):
        return pool
    if pool is not None:
        _PERSISTENT.pop(key).shutdown(wait=False, cancel_futures=True)
    pool = _new_pool(n_jobs, initializer, initargs, preload, method)
    _PERSISTENT[key] = pool
    if not _ATEXIT:
        atexit.register(shutdown_pools)
        _ATEXIT.append(True)
    return pool


def process_map(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    n_jobs: int = 1,
    desc: str = "tasks",
    unit: str = "",
    initializer: Callable[..., None] | None = None,
    initargs: Sequence[Any] = (),
    preload: Sequence[str] = (),
    persistent: bool = False,
    progress: bool = True,
    fork_if_safe: bool = False,
) -> list[Any]:
    """``[fn(t) for t in tasks]``, in up to ``n_jobs`` worker processes, results in task order.

    Parameters
    ----------
    fn : callable
        A module-level (picklable) function of one task.
    tasks : iterable
        Picklable task descriptions.
    n_jobs : int
        Worker processes; 1 (or a single task) runs in this process, without
        ``initializer``.
    desc, unit : str
        Name and unit of the progress lines.
    initializer, initargs
        Called once in each worker after the thread limits are set.
    preload : sequence of str
        Modules the fork server imports once, so workers start with them loaded.
    persistent : bool
        Keep the pool for later calls with the same ``n_jobs`` / initializer /
        ``initargs`` objects / ``preload``.
    progress : bool
        Log progress lines.
    fork_if_safe : bool
        Fork the workers from this process when :func:`start_method` allows it
        (``preload`` already imported, no fork-unsafe runtime loaded). Only for
        ``fn`` that draw no random numbers from global state: forked workers
        inherit this process's.

    Returns
    -------
    list
        The results, in the order of ``tasks``.

    Raises
    ------
    Exception
        The first error raised by ``fn`` in a worker (the remaining tasks are
        cancelled); a broken persistent pool is discarded.
    """
    items = list(tasks)
    n = min(check_int("n_jobs", n_jobs, 1), max(len(items), 1))
    results: list[Any] = [None] * len(items)
    with Progress(desc, total=len(items), unit=unit, enabled=progress) as bar:
        if n == 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                bar.update()
            return results
        initargs = tuple(initargs)
        method = start_method(preload, fork_if_safe=fork_if_safe)
        pool = (_persistent_pool(n, initializer, initargs, preload, method) if persistent
                else _new_pool(n, initializer, initargs, preload, method))
        try:
            futures: dict[Future, int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
            pending: set[Future] = set(futures)
            try:
                while pending:  # FIRST_COMPLETED: count each result as it comes (progress lines)
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        results[futures[fut]] = fut.result()  # re-raises a worker's error
                        bar.update()
            except BaseException as exc:
                for fut in pending:
                    fut.cancel()
                if persistent and isinstance(exc, (BrokenProcessPool, KeyboardInterrupt)):
                    key = _pool_key(n, initializer, initargs, preload, method)
                    broken = _PERSISTENT.pop(key, None)
                    if broken is not None:
                        broken.shutdown(wait=False, cancel_futures=True)
                raise
        finally:
            if not persistent:
                pool.shutdown(wait=True, cancel_futures=True)
    return results
