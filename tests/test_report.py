"""Tests of msutils.pipeline.report: versions table, paper-vs-ours table, scan overlays."""

from __future__ import annotations

import platform

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from msutils.data.cohort import load_cohort, write_manifest  # noqa: E402
from msutils.pipeline import report  # noqa: E402


def test_versions_lists_python_and_each_package() -> None:
    v = report.versions(("numpy", "no-such-package-xyz"))
    assert list(v.index) == ["python", "numpy", "no-such-package-xyz"]
    assert v.loc["python", "version"] == platform.python_version()
    assert v.loc["numpy", "version"] == np.__version__
    assert v.loc["no-such-package-xyz", "version"] == "not installed"
    assert list(report.versions().index) == ["python", *report.KEY_PACKAGES]


def test_paper_vs_ours_aligns_rows_and_metrics() -> None:
    paper = {"internal": {"r": 0.741, "MAE": 0.725}, "external": {"r": 0.755}}
    ours = {"internal": {"r": 0.61234, "MAE": 0.9}, "training": {"r": 0.8}}
    t = report.paper_vs_ours(paper, ours, decimals=2)
    assert list(t.index) == ["internal", "external", "training"]
    assert list(t.columns) == [("r", "paper"), ("r", "this run"), ("MAE", "paper"), ("MAE", "this run")]
    assert t.loc["internal", ("r", "this run")] == 0.61
    assert t.loc["internal", ("r", "paper")] == 0.74
    assert np.isnan(t.loc["external", ("r", "this run")]) and np.isnan(t.loc["training", ("r", "paper")])
    assert np.isnan(t.loc["external", ("MAE", "paper")])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("reportcohort")
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-20.0, -24.0, -18.0]
    shape = (20, 24, 12)
    t1 = np.random.default_rng(0).normal(100, 5, shape).astype(np.float32)
    lesion = np.zeros(shape, np.uint8)
    lesion[8:11, 10:13, 9] = 1  # voxel k = 9 -> z = -18 + 3 * 9 = 9 mm
    labels = np.zeros(shape, np.int16)
    labels[4:8, 4:8, 4:8] = 1
    rows = []
    for sid, les in (("s1", lesion), ("s2", np.zeros(shape, np.uint8))):
        folder = root / sid
        folder.mkdir()
        for name, arr in (("t1", t1), ("flair", t1), ("lesion_mask", les), ("roi_labels", labels)):
            nib.save(nib.Nifti1Image(arr, affine), folder / f"{name}.nii.gz")
        rows.append({"subject_id": sid, "session": "ses-01", "center": "A", "scanner": "x", "group": "MS",
                     "course": "RR", "age": 40, "sex": "F", "disease_duration": 3, "edss": 2.0,
                     "t1": f"{sid}/t1.nii.gz", "flair": f"{sid}/flair.nii.gz", "brain_mask": "",
                     "lesion_mask": f"{sid}/lesion_mask.nii.gz", "roi_labels": f"{sid}/roi_labels.nii.gz"})
    meta = {"name": "report-toy", "images": ["t1", "flair"], "masks": ["lesion_mask", "roi_labels"],
            "roi_labels": {1: "thalamus_L"}, "roi_sets": {"thalamus_L": [1]}}
    return load_cohort(write_manifest(pd.DataFrame(rows), meta, root / "manifest.csv"))


class _Display:
    def __init__(self, calls: list, column: str) -> None:
        self.calls, self.column = calls, column

    def add_overlay(self, img, **kw) -> None:
        self.calls.append(("overlay", self.column))

    def add_contours(self, img, **kw) -> None:
        self.calls.append(("contours", self.column))


def test_plot_scan_overlays_cuts_through_the_lesion(cohort, monkeypatch: pytest.MonkeyPatch) -> None:
    from nilearn import plotting

    calls: list = []

    def fake_plot_anat(img, *, cut_coords, title, **kw):
        calls.append(("anat", title, tuple(cut_coords)))
        return _Display(calls, title.lower())

    monkeypatch.setattr(plotting, "plot_anat", fake_plot_anat)
    fig = report.plot_scan_overlays(cohort, "s1_ses-01")
    # the default cut is the lesion's centre of mass, in world mm (k = 9 -> z = 9 mm)
    assert calls[0] == ("anat", "T1", (pytest.approx(9.0),))
    assert ("overlay", "t1") in calls and ("overlay", "flair") not in calls  # ROI labels on T1 only
    assert ("contours", "t1") in calls and ("contours", "flair") in calls   # the lesion on both
    assert fig._suptitle.get_text() == "s1_ses-01" and len(fig.axes) == 2
    calls.clear()
    fig = report.plot_scan_overlays(cohort, "s2_ses-01", title="no lesion")
    assert calls[0] == ("anat", "T1", (10.0,))  # no lesion: the 10 mm default, and no contours
    assert not any(c[0] == "contours" for c in calls) and fig._suptitle.get_text() == "no lesion"
    calls.clear()
    report.plot_scan_overlays(cohort, "s1_ses-01", z_mm=-3.0)
    assert [c for c in calls if c[0] == "anat"] == [("anat", "T1", (-3.0,)), ("anat", "FLAIR", (-3.0,))]


def test_plot_scan_overlays_draws_real_figures(cohort) -> None:
    import io

    fig = report.plot_scan_overlays(cohort, "s1_ses-01")
    assert sum(len(ax.images) for ax in fig.axes) >= 3  # T1, FLAIR and the label overlay
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.tell() > 5_000
