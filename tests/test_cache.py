"""Tests of msutils.pipeline.cache: content-addressed, atomic per-fold result cache."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import msutils
from msutils.pipeline import cache as cache_mod
from msutils.core import fingerprint
from msutils.core.fingerprint import library_fingerprint, source_digest
from msutils.pipeline.cache import FoldCache, cache_key, code_hash, manifest_identity
from msutils.pipeline.kernel import default_cohort_identity
from msutils.pipeline.notebook_file import source_notebook

REPO = Path(__file__).resolve().parent.parent

PARAMS = {
    "profile": "smoke", "fold": None, "manifest": None, "seed": 0, "out_dir": None, "preset": "tiny", "alpha": 0.5,
}


def _cell(kind: str, source: str, tags: list[str] | None = None, **extra) -> dict:
    cell = {"cell_type": kind, "metadata": {"tags": tags or []}, "source": source}
    if kind == "code":
        cell.update({"execution_count": None, "outputs": []})
    cell.update(extra)
    return cell


def _notebook() -> dict:
    return {
        "cells": [
            _cell("markdown", "# demo"),
            _cell("code", 'profile = "smoke"\nfold = None', ["parameters"]),
            _cell("code", "import math\nx = 1"),
            _cell("code", "if fold is not None:\n    cache.get_or_compute(fold, f)", ["fold-end"]),
            _cell("code", "results = cache.get_all(folds, f)"),
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _write(path: Path, nb: dict) -> Path:
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


@pytest.fixture()
def nb_path(tmp_path: Path) -> Path:
    return _write(tmp_path / "demo.ipynb", _notebook())


def _cache(nb_path: Path, out: Path, params: dict | None = None, **kw) -> FoldCache:
    return FoldCache("demo", params or PARAMS, out_dir=out, notebook_path=nb_path,
                     default_identity=default_cohort_identity, **kw)


def test_cache_key_depends_on_each_part_and_not_on_dict_order() -> None:
    params = {"alpha": 0.5, "profile": "smoke", "fold": "cv1", "out_dir": "/x", "manifest": "/m.csv"}
    lib = {"msutils_sources": "abc", "packages": {"numpy": "2.4.6"}}
    base = cache_key("demo", "c0de", params, "synthetic:preset=tiny:seed=0", "cv1", library=lib)
    assert len(base) == 64 and int(base, 16) >= 0
    reordered = dict(reversed(list(params.items())))
    assert cache_key("demo", "c0de", reordered, "synthetic:preset=tiny:seed=0", "cv1", library=lib) == base
    # fold / out_dir / manifest inside params never count (the manifest enters through its identity)
    same = {**params, "fold": "cv9", "out_dir": "/elsewhere", "manifest": "/other.csv"}
    assert cache_key("demo", "c0de", same, "synthetic:preset=tiny:seed=0", "cv1", library=lib) == base
    variants = [
        ("other", "c0de", params, "synthetic:preset=tiny:seed=0", "cv1", lib),
        ("demo", "c0df", params, "synthetic:preset=tiny:seed=0", "cv1", lib),
        ("demo", "c0de", {**params, "alpha": 0.25}, "synthetic:preset=tiny:seed=0", "cv1", lib),
        ("demo", "c0de", params, "synthetic:preset=tiny:seed=1", "cv1", lib),
        ("demo", "c0de", params, "synthetic:preset=tiny:seed=0", "cv2", lib),
        ("demo", "c0de", params, "synthetic:preset=tiny:seed=0", "cv1", {**lib, "msutils_sources": "abd"}),
        ("demo", "c0de", params, "synthetic:preset=tiny:seed=0", "cv1", {**lib, "packages": {"numpy": "2.5"}}),
    ]
    keys = {cache_key(n, c, p, m, f, library=li) for n, c, p, m, f, li in variants}
    assert len(keys) == len(variants) and base not in keys


def test_code_hash_ignores_outputs_metadata_markdown_params_and_after_fold_end(tmp_path: Path) -> None:
    base = code_hash(_notebook())
    assert len(base) == 64
    variants = []
    nb = _notebook()  # outputs, execution counts, metadata (what saving in JupyterLab changes)
    nb["cells"][2].update(execution_count=7, outputs=[{"output_type": "stream", "name": "stdout", "text": "hi"}])
    nb["cells"][2]["metadata"]["collapsed"] = True
    nb["metadata"]["kernelspec"] = {"name": "python3"}
    variants.append(nb)
    nb = _notebook()
    nb["cells"][0]["source"] = "# other title"  # markdown
    variants.append(nb)
    nb = _notebook()
    nb["cells"][1]["source"] = 'profile = "quick"\nfold = "cv3"'  # parameters cell (edited in JupyterLab)
    variants.append(nb)
    nb = _notebook()
    nb["cells"].insert(2, _cell("code", "# Parameters\nfold = 'a'", ["injected-parameters"]))  # papermill
    variants.append(nb)
    nb = _notebook()
    nb["cells"][4]["source"] = "results = cache.get_all(folds, f)\nplot(results)"  # aggregation code
    variants.append(nb)
    nb = _notebook()
    nb["cells"].insert(3, _cell("code", "  \n"))  # empty cell
    variants.append(nb)
    for i, v in enumerate(variants):
        assert code_hash(v) == base, f"variant {i} changed the code hash"
    changed = _notebook()
    changed["cells"][2]["source"] = "import math\nx = 2"
    assert code_hash(changed) != base
    no_end = _notebook()
    no_end["cells"][3]["metadata"]["tags"] = []
    assert code_hash(no_end) != base  # without fold-end every code cell counts
    assert code_hash(_write(tmp_path / "n.ipynb", _notebook())) == base


def test_key_changes_with_params_code_manifest_version_not_fold_or_out_dir(
    tmp_path: Path, nb_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _cache(nb_path, tmp_path / "o1").key("cv0")
    # fold / out_dir inside params and the out_dir argument do not matter
    assert _cache(nb_path, tmp_path / "o2", {**PARAMS, "fold": "cv0", "out_dir": "/elsewhere"}).key("cv0") == base
    # the fold argument does
    assert _cache(nb_path, tmp_path / "o1").key("cv1") != base
    # any other parameter does
    assert _cache(nb_path, tmp_path / "o1", {**PARAMS, "alpha": 0.25}).key("cv0") != base
    assert _cache(nb_path, tmp_path / "o1", {**PARAMS, "seed": 1}).key("cv0") != base
    assert _cache(nb_path, tmp_path / "o1", {**PARAMS, "preset": "other"}).key("cv0") != base
    # notebook code does, saved outputs do not
    nb = _notebook()
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}]
    _write(nb_path, nb)
    assert _cache(nb_path, tmp_path / "o1").key("cv0") == base
    nb["cells"][2]["source"] = "import math\nx = 3"
    _write(nb_path, nb)
    assert _cache(nb_path, tmp_path / "o1").key("cv0") != base
    _write(nb_path, _notebook())
    assert _cache(nb_path, tmp_path / "o1").key("cv0") == base
    # an installed result package's version does
    monkeypatch.setattr(fingerprint, "_package_version", lambda name: "9.9" if name == "scipy" else "1.0")
    other = _cache(nb_path, tmp_path / "o1").key("cv0")
    monkeypatch.setattr(fingerprint, "_package_version", lambda name: "1.0")
    assert other != _cache(nb_path, tmp_path / "o1").key("cv0")


@pytest.fixture()
def package_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the repository's msutils sources (plus a tests folder and README) the cache hashes."""
    repo = tmp_path / "repo"
    shutil.copytree(Path(msutils.__file__).parent, repo / "msutils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "tests").mkdir()
    (repo / "tests" / "test_something.py").write_text("def test_x():\n    assert True\n")
    (repo / "README.md").write_text("# readme\n")
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", repo / "msutils")
    return repo


def test_every_key_changes_with_any_library_source_file(tmp_path: Path, nb_path: Path,
                                                        package_copy: Path) -> None:
    configs = [PARAMS, {**PARAMS, "alpha": 0.1}, {**PARAMS, "seed": 3}]
    folds = ["cv0", "cv1", "shared"]

    def keys() -> list[str]:
        return [_cache(nb_path, tmp_path / "o", p).key(f) for p in configs for f in folds]

    base = keys()
    assert len(set(base)) == len(base)
    assert source_digest(package_copy / "msutils") == source_digest()  # the copy hashes like the original
    # neither a test file, the README, nor a non-source file inside the package count
    (package_copy / "tests" / "test_something.py").write_text("def test_x():\n    assert 1 == 1\n")
    (package_copy / "README.md").write_text("# another readme\n")
    (package_copy / "msutils" / "NOTES.md").write_text("notes\n")
    pycache = package_copy / "msutils" / "__pycache__"
    pycache.mkdir()
    (pycache / "stats.cpython-311.pyc").write_bytes(b"\0compiled")
    assert keys() == base
    # one changed library file, anywhere in the package, changes every key
    for rel in ("stats.py", "features/radiomics.py", "pipeline/profiles.yaml"):
        path = package_copy / "msutils" / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# a fixed bug\n")
        changed = keys()
        assert all(a != b for a, b in zip(base, changed)), rel
        path.write_bytes(original)
        assert keys() == base
    # a new module counts too
    (package_copy / "msutils" / "core" / "extra.py").write_text("X = 1\n")
    assert all(a != b for a, b in zip(base, keys()))


def test_manifest_identity_is_the_cohort_content_hash(tmp_path: Path, nb_path: Path) -> None:
    import pandas as pd

    from msutils.data.cohort import Cohort

    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    for d in (d1, d2):
        (d / "cohort.csv").write_text("subject_id,edss\ns1,2.0\n")
        (d / "cohort.yaml").write_text("name: c\n")
    # one cohort hash: what a cohort reports is what the cache keys on
    cohort = Cohort(table=pd.DataFrame(), meta={}, manifest_path=d1 / "cohort.csv")
    assert manifest_identity(d1 / "cohort.csv") == f"sha256:{cohort.content_hash()}"
    k1 = _cache(nb_path, tmp_path / "o", {**PARAMS, "manifest": str(d1 / "cohort.csv")}).key("cv0")
    k2 = _cache(nb_path, tmp_path / "o", {**PARAMS, "manifest": str(d2 / "cohort.csv")}).key("cv0")
    assert k1 == k2  # same content elsewhere: same key
    (d2 / "cohort.yaml").write_text("name: c2\n")
    assert _cache(nb_path, tmp_path / "o", {**PARAMS, "manifest": str(d2 / "cohort.csv")}).key("cv0") != k1
    (d2 / "cohort.yaml").write_text("name: c\n")
    (d2 / "cohort.csv").write_text("subject_id,edss\ns1,2.5\n")
    assert _cache(nb_path, tmp_path / "o", {**PARAMS, "manifest": str(d2 / "cohort.csv")}).key("cv0") != k1
    assert k1 != _cache(nb_path, tmp_path / "o").key("cv0")  # vs the synthetic default
    with pytest.raises(FileNotFoundError, match=r"manifest .*missing\.csv does not exist"):
        manifest_identity(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"'manifest' is None: give 'default_identity'"):
        manifest_identity(None)
    assert manifest_identity(None, "synthetic:x") == manifest_identity(None, lambda: "synthetic:x")


def test_default_cohort_identity_follows_the_generator_parameters() -> None:
    from msutils import synth

    ids = {default_cohort_identity({"preset": p, "seed": s}) for p in ("quick", "smoke") for s in (0, 3)}
    assert len(ids) == 4 and all(i.startswith("synthetic:preset=") for i in ids)
    assert default_cohort_identity({"profile": "smoke", "seed": 0}) == \
        default_cohort_identity({"preset": "smoke", "seed": 0})
    assert default_cohort_identity({"preset": "nope", "seed": 0}).endswith(":params=unknown")
    changed = synth.get_params("smoke").replace(size_factor=0.5)
    assert synth.params_hash(changed) != synth.params_hash(synth.get_params("smoke"))


def test_cache_module_does_not_import_the_generator() -> None:
    import ast

    tree = ast.parse(Path(cache_mod.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("msutils.synth") for m in imported)
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "msutils" and
                   any(a.name == "synth" for a in n.names) for n in ast.walk(tree))


def test_stale_entries_are_recomputed(tmp_path: Path, nb_path: Path) -> None:
    calls: list[str] = []

    def compute(fold: str) -> dict:
        calls.append(fold)
        ckpt = tmp_path / f"{fold}.pth"
        ckpt.write_text("weights")
        return {"checkpoint": str(ckpt)}

    needs = lambda r: [r["checkpoint"]]  # noqa: E731
    a = _cache(nb_path, tmp_path / "out", cohort_hash="a" * 64)
    a.get_or_compute("cv0", compute, requires=needs)
    assert a.has("cv0") and json.loads((a.entry_dir("cv0") / "meta.json").read_text())["cohort_hash"] == "a" * 64
    # the same configuration for the same cohort content: cached
    assert _cache(nb_path, tmp_path / "out", cohort_hash="a" * 64).get_all(["cv0"], compute, requires=needs)
    assert calls == ["cv0"]
    # without a cohort hash (the runner, before any cohort is loaded) the entry counts
    assert _cache(nb_path, tmp_path / "out").has("cv0")
    # another cohort content under the same key (a default cohort regenerated in place): stale
    b = _cache(nb_path, tmp_path / "out", cohort_hash="b" * 64)
    assert not b.has("cv0")
    with pytest.raises(KeyError, match=r"stale: computed for cohort content aaaaaaaaaaaa"):
        b.info("cv0")
    b.get_or_compute("cv0", compute, requires=needs)
    assert calls == ["cv0", "cv0"] and b.has("cv0") and not a.has("cv0")
    # a required file deleted since: stale for everyone, the runner too
    (tmp_path / "cv0.pth").unlink()
    assert not b.has("cv0") and not _cache(nb_path, tmp_path / "out").has("cv0")
    with pytest.raises(KeyError, match=r"required file\(s\) deleted since"):
        b.load("cv0")
    assert b.get_all(["cv0"], compute, requires=needs)["cv0"]["checkpoint"] == str(tmp_path / "cv0.pth")
    assert calls == ["cv0"] * 3 and b.has("cv0")
    assert [p.name for p in b.root.iterdir()] == [b.entry_dir("cv0").name]
    with pytest.raises(FileNotFoundError, match=r"'requires' names files that do not exist"):
        b.get_or_compute("cv1", lambda f: {}, requires=lambda r: [tmp_path / "never.pth"])
    assert not b.has("cv1")


def test_get_or_compute_stores_once_and_loads(tmp_path: Path, nb_path: Path) -> None:
    cache = _cache(nb_path, tmp_path / "out")
    calls: list[str] = []

    def compute(fold: str) -> dict:
        calls.append(fold)
        return {"fold": fold, "arr": np.arange(4) * 2.5}

    assert not cache.has("cv0")
    r1 = cache.get_or_compute("cv0", compute)
    entry = cache.entry_dir("cv0")
    assert entry == tmp_path / "out" / "cache" / "demo" / f"cv0-{cache.key('cv0')[:16]}"
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "result.pkl"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["notebook"] == "demo" and meta["fold"] == "cv0" and meta["key"] == cache.key("cv0")
    assert meta["parameters"]["alpha"] == 0.5 and "fold" not in meta["parameters"]
    assert meta["msutils_version"] == msutils.__version__
    assert meta["library"] == library_fingerprint()
    assert meta["library"]["packages"]["numpy"] == np.__version__
    r2 = _cache(nb_path, tmp_path / "out").get_or_compute("cv0", compute)
    assert calls == ["cv0"]
    np.testing.assert_array_equal(r2["arr"], [0.0, 2.5, 5.0, 7.5])
    assert r1["fold"] == r2["fold"] == "cv0"
    assert cache.has("cv0") and "cv0" in cache
    assert cache.info("cv0")["key"] == cache.key("cv0")
    # an out_dir change reads nothing from the old cache (a different root) but keeps the key
    other = _cache(nb_path, tmp_path / "out2")
    assert other.key("cv0") == cache.key("cv0") and not other.has("cv0")


def test_crash_inside_compute_leaves_no_entry(tmp_path: Path, nb_path: Path) -> None:
    cache = _cache(nb_path, tmp_path / "out")

    def crash(fold: str) -> dict:
        (cache.root / "seen").write_text(fold)
        raise RuntimeError("compute crashed")

    with pytest.raises(RuntimeError, match="compute crashed"):
        cache.get_or_compute("cv0", crash)
    assert not cache.has("cv0")
    assert sorted(p.name for p in cache.root.iterdir()) == ["seen"]  # no entry, no temp dir
    with pytest.raises(KeyError, match="demo fold 'cv0' is not cached"):
        cache.load("cv0")
    assert cache.get_or_compute("cv0", lambda f: 42) == 42
    assert cache.load("cv0") == 42


def test_unpicklable_result_leaves_no_entry(tmp_path: Path, nb_path: Path) -> None:
    cache = _cache(nb_path, tmp_path / "out")
    with pytest.raises(Exception):
        cache.get_or_compute("cv0", lambda f: (lambda: None))
    assert list(cache.root.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_abandoned_temp_dirs_are_ignored_and_cleaned(tmp_path: Path, nb_path: Path) -> None:
    cache = _cache(nb_path, tmp_path / "out")
    cache.root.mkdir(parents=True)
    key16 = cache.key("cv0")[:16]
    host = socket.gethostname()

    def tmp_dir(name: str, owner: dict | None, age_s: float = 0.0) -> Path:
        d = cache.root / name
        d.mkdir()
        (d / "result.pkl").write_bytes(b"half")
        (d / "meta.json").write_text(json.dumps({"key": cache.key("cv0")}))
        if owner is not None:
            (d / ".owner.json").write_text(json.dumps(owner))
        t = time.time() - age_s
        os.utime(d, (t, t))
        return d

    dead = tmp_dir(f".tmp-cv0-{key16}-dead", {"host": host, "pid": _dead_pid()})
    alive = tmp_dir(f".tmp-cv0-{key16}-alive", {"host": host, "pid": os.getpid()})
    far_old = tmp_dir(f".tmp-cv0-{key16}-farold", {"host": "other-host", "pid": 1}, age_s=2 * 86400)
    far_new = tmp_dir(f".tmp-cv0-{key16}-farnew", {"host": "other-host", "pid": 1}, age_s=60)
    orphan = tmp_dir(f".tmp-cv0-{key16}-noowner", None, age_s=7200)
    assert not cache.has("cv0")  # temp dirs are never read
    assert cache.clean_temp() == 3
    assert not dead.exists() and not far_old.exists() and not orphan.exists()
    assert alive.exists() and far_new.exists()
    assert cache.get_or_compute("cv0", lambda f: "fresh") == "fresh"
    assert cache.load("cv0") == "fresh"


def test_get_all_computes_only_missing_folds_in_order(tmp_path: Path, nb_path: Path) -> None:
    cache = _cache(nb_path, tmp_path / "out")
    calls: list[str] = []

    def compute(fold: str) -> int:
        calls.append(fold)
        return int(fold[-1]) * 10

    cache.get_or_compute("cv1", compute)
    results = cache.get_all(["cv2", "cv0", "cv1"], compute)
    assert list(results) == ["cv2", "cv0", "cv1"]
    assert results == {"cv2": 20, "cv0": 0, "cv1": 10}
    assert calls == ["cv1", "cv2", "cv0"]
    assert cache.get_all(["cv0", "cv1", "cv2"], compute) == {"cv0": 0, "cv1": 10, "cv2": 20}
    assert calls == ["cv1", "cv2", "cv0"]


def test_pass_dir_files_become_part_of_the_entry(tmp_path: Path, nb_path: Path) -> None:
    cache = _cache(nb_path, tmp_path / "out")

    def compute(fold: str, work: Path) -> dict:
        (work / "pred.txt").write_text(f"prediction {fold}")
        return {"file": "pred.txt"}

    res = cache.get_or_compute("cv0", compute, pass_dir=True)
    assert (cache.entry_dir("cv0") / res["file"]).read_text() == "prediction cv0"


def test_concurrent_writer_keeps_the_first_entry(tmp_path: Path, nb_path: Path) -> None:
    first = _cache(nb_path, tmp_path / "out")
    second = _cache(nb_path, tmp_path / "out")

    def slow(fold: str) -> str:
        # a writer the file lock did not serialise (e.g. another host on a file system
        # without flock) stores the same fold meanwhile
        second._get_or_compute_locked(fold, second.key(fold), lambda f: "theirs", False, None)
        return "ours"

    assert first.get_or_compute("cv0", slow) == "ours"
    assert first.load("cv0") == "theirs"
    assert [p.name for p in first.root.iterdir()] == [first.entry_dir("cv0").name]


def test_remove_deletes_entry(tmp_path: Path, nb_path: Path) -> None:
    cache = _cache(nb_path, tmp_path / "out")
    cache.get_or_compute("cv0", lambda f: 1)
    assert cache.remove("cv0") is True
    assert not cache.has("cv0") and list(cache.root.iterdir()) == []
    assert cache.remove("cv0") is False


def test_bad_arguments_are_rejected(tmp_path: Path, nb_path: Path) -> None:
    cache = _cache(nb_path, tmp_path / "out")
    with pytest.raises(ValueError, match=r"'fold' must be a name made of letters, digits, '_', '-', '.'; got 'a/b'"):
        cache.key("a/b")
    with pytest.raises(ValueError, match=r"got None"):
        cache.get_or_compute(None, lambda f: 1)
    with pytest.raises(ValueError, match=r"'notebook' must be a notebook name like '02_edss_regression'; got '../x'"):
        FoldCache("../x", PARAMS, notebook_path=nb_path)
    with pytest.raises(FileNotFoundError, match=r"notebook .*nope\.ipynb does not exist"):
        FoldCache("nope", PARAMS, out_dir=tmp_path, notebook_path=tmp_path / "nope.ipynb")
    with pytest.raises(ValueError, match=r"'manifest' is None: give 'default_identity'"):
        FoldCache("demo", PARAMS, out_dir=tmp_path, notebook_path=nb_path)
    with pytest.raises(TypeError, match=r"'cohort_hash' must be a string or None; got int"):
        _cache(nb_path, tmp_path, cohort_hash=3)


def test_manifest_and_out_dir_default_to_params(tmp_path: Path, nb_path: Path) -> None:
    (tmp_path / "m.csv").write_text("a\n1\n")
    params = {**PARAMS, "manifest": str(tmp_path / "m.csv"), "out_dir": str(tmp_path / "res")}
    cache = FoldCache("demo", copy.deepcopy(params), notebook_path=nb_path)
    assert cache.manifest_id == manifest_identity(tmp_path / "m.csv")
    assert cache.root == (tmp_path / "res" / "cache" / "demo").resolve()
    assert params == {**PARAMS, "manifest": str(tmp_path / "m.csv"), "out_dir": str(tmp_path / "res")}


def test_source_notebook_prefers_explicit_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from msutils.core.paths import notebooks_dir

    assert source_notebook("demo", tmp_path / "x.ipynb") == tmp_path / "x.ipynb"
    monkeypatch.chdir(tmp_path)
    assert source_notebook("demo") == notebooks_dir() / "demo.ipynb"
    _write(tmp_path / "demo.ipynb", _notebook())
    assert source_notebook("demo") == tmp_path / "demo.ipynb"


def test_concurrent_callers_compute_an_entry_once(tmp_path: Path) -> None:
    """Two callers asking for the same entry at once: one computes, the other loads it."""
    import threading
    import time

    nb = Path(__file__).resolve().parent / "notebooks" / "t_folds.ipynb"
    params = {"profile": "smoke", "fold": None, "manifest": None, "seed": 0,
              "out_dir": str(tmp_path), "preset": "tiny"}
    calls: list[str] = []
    out: list[dict] = []

    def compute(name: str) -> dict:
        calls.append(name)
        time.sleep(0.3)
        return {"value": 42}

    def worker() -> None:
        out.append(FoldCache("t_folds", params, notebook_path=nb, default_identity="synthetic:t")
                   .get_or_compute("shared", compute))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["shared"]
    assert out == [{"value": 42}, {"value": 42}]
    meta = json.loads(next((tmp_path / "cache" / "t_folds").glob("shared-*/meta.json")).read_text())
    assert meta["fold"] == "shared"
