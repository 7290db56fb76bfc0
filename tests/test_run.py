"""Tests of msutils.pipeline.profiles and msutils.pipeline (papermill fan-out, resume, Dask, FoldFailed)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from msutils.pipeline import book, kernel, notebook_file, profiles
from msutils.pipeline import runner as run
from msutils.pipeline.cache import FoldCache
from msutils.pipeline.kernel import default_cohort_identity
from msutils.pipeline.runner import FoldFailed

NB_DIR = Path(__file__).resolve().parent / "notebooks"
PROFILES = NB_DIR / "profiles.yaml"


def _kw(tmp_path: Path) -> dict:
    """run_notebook arguments that keep everything out of the repository."""
    return {
        "notebooks_dir": NB_DIR,
        "profiles_file": PROFILES,
        "out_dir": tmp_path / "out",
        "executed_dir": tmp_path / "book",
    }


def _entries(root: Path) -> tuple[list[str], list[str]]:
    """(complete entry names, temp dir names) under a notebook's cache root."""
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    return [n for n in names if not n.startswith(".tmp-")], [n for n in names if n.startswith(".tmp-")]


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# ----------------------------------------------------------------------------- profiles
def test_packaged_profiles() -> None:
    assert profiles.notebook_names() == ["00_cohort", "01_gan_augmentation", "02_edss_regression", "03_flair_nnunet",
                                         "04_radiomics_fusion", "05_xai_refinement"]
    all_p = profiles.load_profiles()
    for nb in all_p:
        assert sorted(all_p[nb]) == ["paper", "quick", "smoke"]
    assert profiles.profile_folds("00_cohort", "paper") == []
    assert profiles.profile_folds("02_edss_regression", "smoke") == ["cv0", "cv1", "cv2", "rep1"]
    assert profiles.profile_folds("02_edss_regression", "quick") == [f"cv{i}" for i in range(10)] + [
        f"rep{i}" for i in range(1, 5)]
    assert profiles.profile_folds("02_edss_regression", "paper") == [f"cv{i}" for i in range(10)]
    assert profiles.profile_folds("03_flair_nnunet", "smoke") == ["fold0", "fold1"]
    assert profiles.profile_folds("03_flair_nnunet", "quick") == [f"fold{i}" for i in range(5)] + ["fold0-noaug"]
    assert profiles.profile_folds("04_radiomics_fusion", "smoke") == ["fold0", "fold1"]
    assert profiles.profile_folds("04_radiomics_fusion", "quick") == [f"fold{i}" for i in range(6)]
    assert profiles.profile_folds("04_radiomics_fusion", "paper") == [f"fold{i}" for i in range(6)]
    assert all(profiles.profile_folds("05_xai_refinement", p) == ["main"] for p in ("smoke", "quick", "paper"))
    assert profiles.get_profile("02_edss_regression", "quick").parameters == {"preset": "edss-quick"}
    assert profiles.get_profile("00_cohort", "paper").parameters == {"preset": "paper"}
    assert profiles.get_profile("03_flair_nnunet", "smoke").parameters["preset"] == "smoke"
    assert profiles.profile_folds("01_gan_augmentation", "quick") == ["B", "C"]


def test_unknown_profile_and_notebook_messages() -> None:
    with pytest.raises(ValueError) as exc:
        profiles.get_profile("02_edss_regression", "x")
    assert str(exc.value) == (
        "profile 'x' is not defined for notebook '02_edss_regression'; choose one of ['paper', 'quick', 'smoke']"
    )
    with pytest.raises(ValueError) as exc:
        profiles.get_profile("99_nope", "quick", path=PROFILES)
    assert str(exc.value) == f"notebook '99_nope' is not defined in {PROFILES}; choose one of ['t_folds']"


def test_profiles_file_problems_are_all_reported(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text(textwrap.dedent("""\
        nb1:
          smoke:
            parameters: {fold: a, seed: 1, 2bad: 3}
            folds: [a, a, 'x/y']
            extra: 1
          quick: [1, 2]
        nb2: {}
        """))
    with pytest.raises(profiles.ProfileError) as exc:
        profiles.load_profiles(bad)
    assert exc.value.problems == [
        "nb1.smoke: unknown keys ['extra']; allowed keys are ['folds', 'parameters']",
        "nb1.smoke.parameters: 'fold' is set by the runner and may not appear in a profile "
        "(reserved: ['profile', 'fold', 'out_dir'])",
        "nb1.smoke.parameters: '2bad' is not a valid Python identifier",
        "nb1.smoke.folds: fold 'x/y' must be a string of letters, digits, '_', '-', '.'",
        "nb1.smoke.folds: duplicate folds ['a']",
        "nb1.quick: must be a mapping with keys ['folds', 'parameters']",
        "nb2: must be a non-empty mapping {profile: {parameters, folds}}",
    ]
    assert str(exc.value).startswith(f"invalid profiles file {bad}:\n  - nb1.smoke: unknown keys")
    with pytest.raises(FileNotFoundError, match="profiles file .*missing.yaml does not exist"):
        profiles.load_profiles(tmp_path / "missing.yaml")


def test_profiles_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSUTILS_PROFILES", str(PROFILES))
    assert profiles.profiles_path() == PROFILES
    assert profiles.notebook_names() == ["t_folds"]
    assert profiles.profile_folds("t_folds", "quick") == ["a", "b", "c"]


# ------------------------------------------------------------------- notebook-side helpers
def test_read_parameters_and_notebook_params(tmp_path: Path) -> None:
    defaults = notebook_file.read_parameters(NB_DIR / "t_folds.ipynb")
    assert defaults == {"profile": "smoke", "fold": None, "manifest": None, "seed": 0, "out_dir": None,
                        "preset": "tiny", "scale": 1, "fail_fold": None, "work_dir": None}
    ns = {**defaults, "fold": "b", "scale": 3, "np": np, "other": 1}
    assert kernel.notebook_params(ns, "t_folds", notebook_path=NB_DIR / "t_folds.ipynb") == {
        **defaults, "fold": "b", "scale": 3}
    with pytest.raises(KeyError, match=r"parameters \['work_dir'\] of .* are not defined"):
        kernel.notebook_params({k: v for k, v in ns.items() if k != "work_dir"}, "t_folds",
                            notebook_path=NB_DIR / "t_folds.ipynb")

    def nb(*cells: tuple[str, list[str]]) -> Path:
        path = tmp_path / "p.ipynb"
        path.write_text(json.dumps({"cells": [
            {"cell_type": "code", "metadata": {"tags": t}, "source": s, "outputs": [], "execution_count": None}
            for s, t in cells]}))
        return path

    assert notebook_file.read_parameters(nb(("%matplotlib inline\na: int = 1\nb = [1, 'x']\nprint(a)", ["parameters"]))) == {
        "a": 1, "b": [1, "x"]}
    with pytest.raises(ValueError) as exc:
        notebook_file.read_parameters(nb(("a = 1\nb = Path('x')", ["parameters"])))
    assert str(exc.value) == (
        f"parameter 'b' in the parameters cell of {tmp_path / 'p.ipynb'} must be a literal "
        "(number, string, None, list, dict); got \"Path('x')\""
    )
    with pytest.raises(ValueError, match=r"has no cell tagged 'parameters'"):
        notebook_file.read_parameters(nb(("a = 1", [])))
    with pytest.raises(ValueError, match=r"has 2 cells tagged 'parameters' \(cells \[0, 1\]\); tag exactly one"):
        notebook_file.read_parameters(nb(("a = 1", ["parameters"]), ("b = 1", ["parameters"])))


def test_write_summary_is_plain_json(tmp_path: Path) -> None:
    path = kernel.write_summary(tmp_path, "nb", {"r": np.float64(0.25), "n": np.int64(3), "v": np.arange(3),
                                             "nan": float("nan"), "nested": {"p": Path("/a")}})
    assert path == tmp_path / "nb" / "summary.json"
    assert json.loads(path.read_text()) == {"r": 0.25, "n": 3, "v": [0, 1, 2], "nan": None,
                                            "nested": {"p": "/a"}}
    assert [p.name for p in (tmp_path / "nb").iterdir()] == ["summary.json"]


def test_fold_failed_message_and_pickle(tmp_path: Path) -> None:
    err = FoldFailed("02_edss_regression", "cv3", cell=7, exec_count=6, first_line="res = fit(x)",
                     ename="ValueError", evalue="bad", executed_path=tmp_path / "cv3.ipynb")
    expected = (
        "notebook '02_edss_regression' fold 'cv3' failed at cell 7 (In [6], first line: 'res = fit(x)'): "
        f"ValueError: bad\npartial executed notebook: {tmp_path / 'cv3.ipynb'}"
    )
    assert str(err) == expected
    assert str(pickle.loads(pickle.dumps(err))) == expected
    agg = FoldFailed("00_cohort", None, cell=None, exec_count=None, first_line=None,
                     ename="DeadKernelError", evalue="Kernel died", executed_path="/x/aggregate.ipynb")
    assert str(agg) == (
        "notebook '00_cohort' aggregate run (fold=None) failed: DeadKernelError: Kernel died\n"
        "partial executed notebook: /x/aggregate.ipynb"
    )


def test_run_arguments_validated_up_front(tmp_path: Path) -> None:
    kw = _kw(tmp_path)
    cases = [
        (dict(backend="ray"), "'backend' must be one of ['dask', 'local']; got 'ray'"),
        (dict(n_workers=0), "'n_workers' must be a positive integer; got 0"),
        (dict(scheduler="tcp://h:8786"), "'scheduler' needs backend='dask'; got backend='local'"),
        (dict(profile="paper"), "profile 'paper' is not defined for notebook 't_folds'; "
                                "choose one of ['nofolds', 'quick', 'smoke']"),
        (dict(overrides={"fold": "a"}), "overrides may not set ['fold']; use the run's profile / folds / "
                                        "out_dir arguments instead"),
        (dict(overrides={"alpha": 1, "beta": 2}), f"parameters ['alpha', 'beta'] are not defined in the "
                                                  f"parameters cell of {NB_DIR / 't_folds.ipynb'}; defined: "
                                                  "['fail_fold', 'fold', 'manifest', 'out_dir', 'preset', "
                                                  "'profile', 'scale', 'seed', 'work_dir']"),
        (dict(folds=["a", "z"]), "folds ['z'] are not defined for notebook 't_folds' under profile 'smoke'; "
                                 "choose from ['a', 'b']"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError) as exc:
            run.run_notebook("t_folds", **{"profile": "smoke", **kw, **extra})
        assert str(exc.value) == message
    with pytest.raises(FileNotFoundError) as exc:
        run.run_notebook("t_missing", profile="smoke", **{**kw, "profiles_file": _profiles_with(tmp_path, "t_missing")})
    assert str(exc.value) == f"notebook 't_missing' not found: {NB_DIR / 't_missing.ipynb'} does not exist"
    with pytest.raises(FileNotFoundError, match=r"manifest .*nope\.csv does not exist"):
        run.run_notebook("t_folds", profile="smoke", overrides={"manifest": "nope.csv"}, **kw)
    assert not (tmp_path / "out").exists() and not (tmp_path / "book").exists()


def _profiles_with(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(f"{name}:\n  smoke: {{parameters: {{}}, folds: [a]}}\n")
    return path


def test_fold_run_needs_fold_end_tag(tmp_path: Path) -> None:
    nb = json.loads((NB_DIR / "t_folds.ipynb").read_text())
    for cell in nb["cells"]:
        cell["metadata"]["tags"] = [t for t in cell["metadata"].get("tags", []) if t != "fold-end"]
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    (nb_dir / "t_folds.ipynb").write_text(json.dumps(nb))
    with pytest.raises(ValueError) as exc:
        run.run_notebook("t_folds", profile="smoke", **{**_kw(tmp_path), "notebooks_dir": nb_dir})
    assert str(exc.value) == (
        f"notebook {nb_dir / 't_folds.ipynb'} has folds but no code cell tagged 'fold-end': tag the cell "
        "that calls cache.get_or_compute(fold, ...) so fold runs stop there"
    )


def test_plan_resolves_relative_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.csv").write_text("a\n1\n")
    monkeypatch.chdir(tmp_path)
    plan = run._plan("t_folds", profile="quick", folds=None, overrides={"manifest": "m.csv", "seed": 4},
                     out_dir="out", notebooks_dir=NB_DIR, profiles_file=PROFILES)
    assert plan["params"] == {"profile": "quick", "fold": None, "manifest": str(tmp_path / "m.csv"), "seed": 4,
                              "out_dir": str(tmp_path / "out"), "preset": "tiny", "scale": 10,
                              "fail_fold": None, "work_dir": None}
    assert plan["folds"] == ["a", "b", "c"]
    assert plan["env"] == {"MSUTILS_PROFILES": str(PROFILES)}


# ------------------------------------------------------------------------ papermill runs
@pytest.mark.slow
def test_local_run_then_resume_from_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kw = _kw(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    over = {"work_dir": str(work)}
    summary = run.run_notebook("t_folds", profile="smoke", overrides=over, n_workers=2, **kw)
    out = tmp_path / "out"
    assert summary == out / "t_folds" / "summary.json"
    assert json.loads(summary.read_text()) == {"total": 3, "folds": ["a", "b"]}
    assert _lines(work / "a.count") and len(_lines(work / "a.count")) == 1
    assert len(_lines(work / "b.count")) == 1
    # per-fold executed notebooks stop at the fold-end cell; the aggregate runs to the end
    for fold in ("a", "b"):
        nb = json.loads((out / "executed" / "t_folds" / f"{fold}.ipynb").read_text())
        assert "fold-end" in nb["cells"][-1]["metadata"]["tags"]
        assert f'fold = "{fold}"' in "".join(nb["cells"][2]["source"])
    book = json.loads((tmp_path / "book" / "t_folds.ipynb").read_text())
    tags = [c["metadata"].get("tags", []) for c in book["cells"]]
    assert tags[1] == ["parameters", "remove-cell"] and tags[2] == ["injected-parameters", "remove-cell"]
    assert sum("remove-cell" in t for t in tags) == 2
    assert "".join(book["cells"][-1]["outputs"][0]["data"]["text/plain"]) == "3"
    assert book["metadata"]["papermill"]["input_path"] == str(NB_DIR / "t_folds.ipynb")
    assert book["metadata"]["papermill"]["output_path"] == str(out / "executed" / "t_folds" / "aggregate.ipynb")
    # papermill ran on private working copies (two runs of one fold never share a half-written file); none is left
    assert not [p.name for p in (out / "executed").rglob(".*")] + [p.name for p in (tmp_path / "book").glob(".*")]
    record = json.loads((out / "t_folds" / "run.json").read_text())
    assert {f: r["status"] for f, r in record["folds"].items()} == {"a": "computed", "b": "computed"}
    assert record["aggregate"]["status"] == "computed"
    status = run.fold_status("t_folds", profile="smoke", overrides=over, notebooks_dir=NB_DIR,
                             profiles_file=PROFILES, out_dir=out)
    cache = FoldCache("t_folds", {**notebook_file.read_parameters(NB_DIR / "t_folds.ipynb"), **over},
                      out_dir=out, notebook_path=NB_DIR / "t_folds.ipynb", default_identity=default_cohort_identity)
    assert status == {"a": cache.entry_dir("a"), "b": cache.entry_dir("b")}

    # second run: nothing recomputed, the aggregate comes from its cache entry
    caplog.set_level(logging.INFO, logger="msutils")
    mtimes = {f: (cache.entry_dir(f) / "meta.json").stat().st_mtime_ns for f in "ab"}
    (tmp_path / "book" / "t_folds.ipynb").unlink()
    summary.unlink()
    run.run_notebook("t_folds", profile="smoke", overrides=over, **kw)
    assert "t_folds fold a: cached, skipped" in caplog.text and "t_folds fold b: cached, skipped" in caplog.text
    assert len(_lines(work / "a.count")) == 1 and len(_lines(work / "b.count")) == 1
    assert {f: (cache.entry_dir(f) / "meta.json").stat().st_mtime_ns for f in "ab"} == mtimes
    record = json.loads((out / "t_folds" / "run.json").read_text())
    assert {f: r["status"] for f, r in record["folds"].items()} == {"a": "cached", "b": "cached"}
    assert record["aggregate"]["status"] == "cached"
    assert json.loads(summary.read_text()) == {"total": 3, "folds": ["a", "b"]}
    assert json.loads((tmp_path / "book" / "t_folds.ipynb").read_text())["cells"] == book["cells"]

    # force: folds and aggregate recomputed
    run.run_notebook("t_folds", profile="smoke", overrides=over, force=True, **kw)
    record = json.loads((out / "t_folds" / "run.json").read_text())
    assert record["aggregate"]["status"] == "computed"
    assert len(_lines(work / "a.count")) == 2

    # a profile without folds: only the aggregate run
    summary = run.run_notebook("t_folds", profile="nofolds", **kw)
    assert json.loads(summary.read_text()) == {"total": 0, "folds": []}


def test_aggregate_cache_follows_the_aggregate_code(tmp_path: Path) -> None:
    """Editing a cell after ``fold-end`` re-executes the aggregate but reuses every fold."""
    nb_dir = tmp_path / "notebooks"
    shutil.copytree(NB_DIR, nb_dir)
    kw = {**_kw(tmp_path), "notebooks_dir": nb_dir}
    work = tmp_path / "work"
    work.mkdir()
    over = {"work_dir": str(work)}
    run.run_notebook("t_folds", profile="smoke", overrides=over, **kw)
    nb_path = nb_dir / "t_folds.ipynb"
    nb = json.loads(nb_path.read_text())
    last = nb["cells"][-1]
    last["source"] = "".join(last["source"]) + "\n# an edit of the aggregate part\n"
    nb_path.write_text(json.dumps(nb))
    run.run_notebook("t_folds", profile="smoke", overrides=over, **kw)
    record = json.loads((tmp_path / "out" / "t_folds" / "run.json").read_text())
    assert {f: r["status"] for f, r in record["folds"].items()} == {"a": "cached", "b": "cached"}
    assert record["aggregate"]["status"] == "computed"


def test_configure_logging_file_or_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    import warnings

    log = logging.getLogger("msutils.test_kernel")
    root_level = logging.getLogger().level
    try:
        monkeypatch.setenv(kernel.LOG_FILE_ENV, str(tmp_path / "logs" / "run.log"))
        assert kernel.configure_logging() == tmp_path / "logs" / "run.log"
        assert kernel.configure_logging() == tmp_path / "logs" / "run.log"  # idempotent: one handler
        log.info("to the file")
        logging.getLogger("otherlib").info("not at INFO")
        logging.getLogger("otherlib").warning("other warning")
        warnings.warn("a python warning", UserWarning)
        text = (tmp_path / "logs" / "run.log").read_text()
        assert text.count("msutils.test_kernel INFO: to the file") == 1
        assert "not at INFO" not in text and "otherlib WARNING: other warning" in text
        assert "py.warnings WARNING" in text and "a python warning" in text
        assert "to the file" not in capsys.readouterr().err
        monkeypatch.delenv(kernel.LOG_FILE_ENV)
        assert kernel.configure_logging() is None  # interactive: msutils records on stderr
        log.info("on stderr")
        assert "msutils.test_kernel: on stderr" in capsys.readouterr().err
        assert "on stderr" not in (tmp_path / "logs" / "run.log").read_text()
    finally:
        for lg in (logging.getLogger(), logging.getLogger("msutils")):
            for h in [h for h in lg.handlers if getattr(h, "_msutils_kernel_handler", False)]:
                lg.removeHandler(h)
                h.close()
        logging.getLogger().setLevel(root_level)
        logging.captureWarnings(False)


@pytest.mark.slow
def test_kernel_logs_go_to_the_log_file_and_progress_to_the_console(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    """No log record in any executed notebook; the run's log files hold them; progress reaches the console."""
    kw = _kw(tmp_path)
    caplog.set_level(logging.INFO, logger="msutils")
    # fold a in a worker process, fold b computed by the aggregate run in this process
    run.run_notebook("t_folds", profile="smoke", folds=["a"], **kw)
    executed = tmp_path / "out" / "executed" / "t_folds"
    for name in ("a", "aggregate"):
        nb = json.loads((executed / f"{name}.ipynb").read_text())
        text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
        assert "computing fold" not in text and "msutils" not in text and "2/2 parts" not in text, name
    log_a = (executed / "a.log").read_text()
    assert "msutils.t_folds WARNING: computing fold a" in log_a
    assert "msutils.progress INFO: t_folds step a: 2/2 parts" in log_a
    log_agg = (executed / "aggregate.log").read_text()
    assert "computing fold b" in log_agg and "computing fold a" not in log_agg  # a was cached
    # the aggregate kernel's progress line was relayed by this process, labelled
    relayed = [r.getMessage() for r in caplog.records if r.name == "msutils.progress"]
    assert any(m.startswith("t_folds aggregate: t_folds step b: 2/2 parts") for m in relayed), relayed
    record = json.loads((tmp_path / "out" / "t_folds" / "run.json").read_text())
    assert record["folds"]["a"]["log"] == str(executed / "a.log")
    assert record["aggregate"]["log"] == str(executed / "aggregate.log")
    # kernels run on IPC sockets: no TCP-transport warning on the console
    assert "without encryption" not in capfd.readouterr().err


@pytest.mark.slow
def test_failing_fold_names_cell_and_partial_notebook(tmp_path: Path) -> None:
    kw = _kw(tmp_path)
    with pytest.raises(FoldFailed) as exc:
        run.run_notebook("t_folds", profile="smoke", folds=["b"], overrides={"fail_fold": "b"}, **kw)
    partial = tmp_path / "out" / "executed" / "t_folds" / "b.ipynb"
    assert str(exc.value) == (
        "notebook 't_folds' fold 'b' failed at cell 4 (In [5], first line: 'if fold is not None:'): "
        f"ValueError: boom in b\npartial executed notebook: {partial}"
    )
    err = exc.value
    assert (err.notebook, err.fold, err.cell, err.exec_count, err.ename) == ("t_folds", "b", 4, 5, "ValueError")
    nb = json.loads(partial.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [(e["ename"], e["evalue"]) for e in errors] == [("ValueError", "boom in b")]
    record = json.loads((tmp_path / "out" / "t_folds" / "run.json").read_text())
    assert record["folds"]["b"]["status"] == "failed"
    assert _entries(tmp_path / "out" / "cache" / "t_folds") == ([], [])
    assert not (tmp_path / "book").exists()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing(tmp_path: Path) -> None:
    kw = _kw(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "hold-b").write_text("fold b waits while this file exists")
    over = {"work_dir": str(work)}
    script = (
        "import sys; from pathlib import Path; from msutils.pipeline.runner import run_notebook\n"
        f"run_notebook('t_folds', profile='smoke', overrides={over!r}, n_workers=1, notebooks_dir={str(NB_DIR)!r},"
        f" profiles_file={str(PROFILES)!r}, out_dir={str(kw['out_dir'])!r}, executed_dir={str(kw['executed_dir'])!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tmp_path / "out" / "cache" / "t_folds"
    try:
        _wait_for(lambda: len(_entries(root)[0]) == 1 and (work / "b.count").exists(), 90,
                  "fold a to finish and fold b to start")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kernel_b = int(_lines(work / "b.count")[0])
    try:  # the kernel notices its parent died (ipykernel's parent poller); make sure
        _wait_for(lambda: _pid_gone(kernel_b), 10, "the orphaned kernel to exit")
    except AssertionError:
        os.kill(kernel_b, signal.SIGKILL)
        _wait_for(lambda: _pid_gone(kernel_b), 10, "the kernel to die")
    complete, temp = _entries(root)
    assert len(complete) == 1 and complete[0].startswith("a-")
    assert sorted(p.name for p in (root / complete[0]).iterdir()) == ["meta.json", "result.pkl"]
    assert len(temp) <= 1 and all(t.startswith(".tmp-b-") for t in temp)  # b was mid-compute
    a_meta = root / complete[0] / "meta.json"
    a_mtime = a_meta.stat().st_mtime_ns
    assert not (tmp_path / "out" / "t_folds" / "summary.json").exists()

    (work / "hold-b").unlink()
    summary = run.run_notebook("t_folds", profile="smoke", overrides=over, n_workers=1, **kw)
    assert json.loads(summary.read_text()) == {"total": 3, "folds": ["a", "b"]}
    assert len(_lines(work / "a.count")) == 1  # a was not recomputed
    assert len(_lines(work / "b.count")) == 2  # b: killed once, completed once
    assert a_meta.stat().st_mtime_ns == a_mtime
    record = json.loads((tmp_path / "out" / "t_folds" / "run.json").read_text())
    assert {f: r["status"] for f, r in record["folds"].items()} == {"a": "cached", "b": "computed"}
    complete, temp = _entries(root)
    assert [c.split("-")[0] for c in complete] == ["a", "aggregate", "b"] and temp == []


@pytest.mark.slow
def test_dask_local_cluster_backend(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    kw = _kw(tmp_path)
    summary = run.run_notebook("t_folds", profile="quick", backend="dask", n_workers=2, **kw)
    assert json.loads(summary.read_text()) == {"total": 60, "folds": ["a", "b", "c"]}
    record = json.loads((tmp_path / "out" / "t_folds" / "run.json").read_text())
    assert record["backend"] == "dask"
    assert {f: r["status"] for f, r in record["folds"].items()} == {"a": "computed", "b": "computed",
                                                                    "c": "computed"}
    complete, temp = _entries(tmp_path / "out" / "cache" / "t_folds")
    assert [c.split("-")[0] for c in complete] == ["a", "aggregate", "b", "c"] and temp == []


def _book_root(tmp_path: Path) -> Path:
    root = tmp_path / "bookroot"
    root.mkdir()
    (root / "_config.yml").write_text(
        'title: Test book\nauthor: tests\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: "off"\n')
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: book/executed/t_folds\n")
    (root / "intro.md").write_text("# Intro\n\nA test book.\n")
    return root


@pytest.mark.slow
def test_build_book_runs_notebooks_then_jupyter_book(tmp_path: Path) -> None:
    root = _book_root(tmp_path)
    index = book.build_book("nofolds", out_dir=tmp_path / "out", overrides={"scale": 5}, notebooks_dir=NB_DIR,
                           profiles_file=PROFILES, book_root=root)
    assert index == root / "_build" / "html" / "index.html" and index.is_file()
    page = (root / "_build" / "html" / "book" / "executed" / "t_folds.html").read_text()
    assert "get_all" in page and "compute_fold" in page
    assert "tiny" not in page  # parameter cells (preset = "tiny") are removed from the report
    assert json.loads((tmp_path / "out" / "t_folds" / "summary.json").read_text()) == {"total": 0, "folds": []}
    assert json.loads((tmp_path / "out" / "t_folds" / "run.json").read_text())["parameters"]["scale"] == 5


def test_build_book_reports_jupyter_book_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-jb"
    fake.write_text("#!/bin/sh\necho 'Extension error: broken toc'\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setattr(book, "_jupyter_book", lambda: str(fake))
    root = _book_root(tmp_path)
    with pytest.raises(RuntimeError) as exc:
        book.build_book("nofolds", notebooks=[], profiles_file=PROFILES, book_root=root)
    assert str(exc.value) == f"jupyter-book build {root} failed (exit 2):\nExtension error: broken toc\n"
    with pytest.raises(ValueError) as exc:
        book.build_book("nofolds", notebooks=["t_folds", "zz"], profiles_file=PROFILES, book_root=root)
    assert str(exc.value) == "notebooks ['zz'] are not in the profiles file; choose from ['t_folds']"
    with pytest.raises(ValueError) as exc:
        book.build_book("nofolds", overrides={"seed": 1, "nope": 2}, notebooks_dir=NB_DIR, profiles_file=PROFILES,
                       book_root=root)
    assert str(exc.value) == "parameters ['nope'] are not defined by any of the notebooks ['t_folds']"


def test_fold_thread_env_shares_the_cores() -> None:
    """Parallel fold processes split the cores (torch / BLAS threads); a single process is not limited."""
    assert run.fold_thread_env(2, cpu_count=2, environ={}) == {v: "1" for v in run.THREAD_ENV_VARS}
    assert run.fold_thread_env(2, cpu_count=16, environ={}) == {v: "8" for v in run.THREAD_ENV_VARS}
    assert run.fold_thread_env(3, cpu_count=2, environ={}) == {v: "1" for v in run.THREAD_ENV_VARS}
    assert run.fold_thread_env(1, cpu_count=2, environ={}) == {}
    # the user's own setting wins
    assert run.fold_thread_env(2, cpu_count=4, environ={"OMP_NUM_THREADS": "3"}) == {
        "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    with pytest.raises(ValueError, match=r"'n_parallel' must be a positive integer; got 0"):
        run.fold_thread_env(0)


def test_parallel_fold_processes_get_their_share_of_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_notebook hands each of the folds running side by side cores / workers threads; one fold: no limit."""
    seen: list[dict] = []

    def fake_local(tasks: list[dict], n_workers: int) -> list[dict]:
        seen.extend(tasks)
        return [{"ok": True, "fold": t["fold"], "seconds": 0.0, "output": t["output"], "log": ""} for t in tasks]

    monkeypatch.setattr(run, "_run_local", fake_local)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for var in run.THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    over = {"work_dir": str(tmp_path / "work")}
    run.run_notebook("t_folds", profile="smoke", overrides=over, n_workers=2, aggregate=False, **_kw(tmp_path))
    assert [t["fold"] for t in seen] == ["a", "b"]
    assert all(t["env"][v] == "2" for t in seen for v in run.THREAD_ENV_VARS)
    seen.clear()
    run.run_notebook("t_folds", profile="smoke", overrides=over, n_workers=1, aggregate=False, **_kw(tmp_path))
    assert [t["fold"] for t in seen] == ["a", "b"] and not any(v in t["env"] for t in seen for v in run.THREAD_ENV_VARS)


def test_kernel_manager_does_not_interrupt_a_kernel_it_shuts_down(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from jupyter_client.manager import AsyncKernelManager

    from msutils.pipeline import runner

    calls: list[str] = []

    async def interrupt(self: object) -> None:
        calls.append("SIGINT")

    monkeypatch.setattr(AsyncKernelManager, "_async_interrupt_kernel", interrupt)
    km = runner._ipc_kernel_manager()()
    assert km.transport == "ipc"
    asyncio.run(km.interrupt_kernel())  # a user's interrupt (e.g. a cell timeout) still reaches the kernel
    assert calls == ["SIGINT"]
    km.shutting_down = True  # set by shutdown_kernel() before it would send SIGINT
    asyncio.run(km._async_interrupt_kernel())
    assert calls == ["SIGINT"]


def test_every_notebook_parameter_is_visible_to_papermill(caplog: pytest.LogCaptureFixture) -> None:
    """A parameters line papermill cannot parse (e.g. a second '=' in its comment) gives console warnings."""
    import papermill

    repo_notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    for path in sorted(repo_notebooks.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        names = [line.split("=")[0].strip() for line in "".join(cell["source"]).splitlines()
                 if "=" in line and not line.lstrip().startswith("#")]
        with caplog.at_level(logging.WARNING, logger="papermill"):
            caplog.clear()
            found = papermill.inspect_notebook(str(path))
        assert not caplog.records, f"{path.name}: {[r.getMessage() for r in caplog.records]}"
        assert sorted(found) == sorted(names), path.name
