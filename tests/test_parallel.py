"""Tests of msutils.core.parallel.process_map: order, errors, progress as results arrive."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import parallel_tasks  # noqa: E402

from msutils.core import parallel  # noqa: E402


class _Recorder:
    """Stands in for msutils.core.progress.Progress: records when each result was counted."""

    instances: list["_Recorder"] = []

    def __init__(self, name: str, total: int, *, unit: str = "", enabled: bool = True) -> None:
        self.name, self.total, self.times = name, total, []
        _Recorder.instances.append(self)

    def __enter__(self) -> "_Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.times.append(time.perf_counter())


def test_results_in_task_order_from_two_workers() -> None:
    tasks = [(i, 0.3 if i == 0 else 0.0) for i in range(6)]  # the first task finishes last
    out = parallel.process_map(parallel_tasks.sleep_then_square, tasks, n_jobs=2, progress=False)
    assert [v for v, _ in out] == [i * i for i in range(6)]
    assert len({pid for _, pid in out}) == 2  # really two worker processes
    serial = parallel.process_map(parallel_tasks.sleep_then_square, tasks[:2], n_jobs=1, progress=False)
    assert serial == [(0, os.getpid()), (1, os.getpid())]  # n_jobs=1 runs in this process


def test_progress_counts_each_result_as_it_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "Progress", _Recorder)
    _Recorder.instances.clear()
    t0 = time.perf_counter()
    parallel.process_map(parallel_tasks.sleep_then_square, [(1, 0.0), (2, 4.0)], n_jobs=2, desc="demo")
    bar = _Recorder.instances[-1]
    assert bar.name == "demo" and bar.total == 2 and len(bar.times) == 2
    # the fast task was counted while the slow one was still running, not both at the end
    assert bar.times[0] - t0 < bar.times[1] - t0 - 2.0, [t - t0 for t in bar.times]


def test_first_worker_error_is_raised() -> None:
    with pytest.raises(ValueError, match="task 3 failed"):
        parallel.process_map(parallel_tasks.fail_on_three, range(6), n_jobs=2, progress=False)
    with pytest.raises(ValueError, match="'n_jobs' must be an integer >= 1; got 0"):
        parallel.process_map(parallel_tasks.fail_on_three, range(2), n_jobs=0)


def test_fork_only_when_asked_safe_and_preloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in parallel.FORK_UNSAFE_MODULES:  # e.g. torch imported by another test of this session
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert parallel.start_method(("json",)) == parallel.START_METHOD  # not asked
    assert parallel.start_method((), fork_if_safe=True) == parallel.START_METHOD  # nothing to save
    assert parallel.start_method(("json",), fork_if_safe=True) == "fork"  # imported here, nothing unsafe
    assert parallel.start_method(("json", "not_imported_mod"), fork_if_safe=True) == parallel.START_METHOD
    monkeypatch.setitem(sys.modules, "torch", sys.modules["json"])  # an OpenMP/CUDA runtime is loaded
    assert parallel.start_method(("json",), fork_if_safe=True) == parallel.START_METHOD


def test_forked_workers_give_the_same_results() -> None:
    tasks = [(i, 0.0) for i in range(5)]
    forked = parallel.process_map(parallel_tasks.sleep_then_square, tasks, n_jobs=2, progress=False,
                                  preload=("parallel_tasks",), fork_if_safe=True)
    assert [v for v, _ in forked] == [i * i for i in range(5)]
    assert all(pid != os.getpid() for _, pid in forked)


def test_forked_workers_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    """A killed caller leaves no worker behind (forked workers would otherwise wait forever)."""
    import signal
    import subprocess

    script = tmp_path / "caller.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import parallel_tasks\n"
        "from msutils.core import parallel\n"
        "if __name__ == '__main__':\n"
        "    pids = parallel.process_map(parallel_tasks.own_pid, [0.5] * 4, n_jobs=2, persistent=True,\n"
        "                                progress=False, preload=('parallel_tasks',), fork_if_safe=True)\n"
        "    print(' '.join(map(str, sorted(set(pids)))), flush=True)\n"
        "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(parallel.__file__).resolve().parents[2])})
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(workers) == 2
    deadline = time.time() + 10
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in workers if Path(f"/proc/{p}").exists() and
                 Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert alive == []
