"""Tests for msutils.studies.gba: boxes, options and the real+gba scenario on a fake request."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from msutils.data.leakage import FitLog
from msutils.studies import gba

S = 24
TINY = dict(g_channels=(4, 8, 16), g_strides=(2, 2), g_res_units=1, d_channels=4, d_layers=2, batch_size=2,
            max_epochs=1, patience=1, monitor_fraction=0.2)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------- boxes and options
def test_brain_box_crop_and_paste():
    masks = np.zeros((2, 20, 20, 20), bool)
    masks[0, 5:9, 6:10, 7:12] = True
    masks[1, 4:8, 6:9, 7:9] = True
    start, size = gba.brain_box(masks, multiple=4, margin=1)
    # bounding box [4, 9) / [6, 10) / [7, 12), with margin 1: 7 / 6 / 7 voxels -> 8 each; the extra voxels
    # go half before (rounded down), half after
    assert size == (8, 8, 8) and start == (3, 4, 6)
    vols = np.arange(2 * 20 ** 3, dtype=np.float32).reshape(2, 20, 20, 20)
    box = gba.crop_box(vols, start, size)
    np.testing.assert_array_equal(box, vols[:, 3:11, 4:12, 6:14])
    back = gba.paste_box(box, start, (20, 20, 20))
    np.testing.assert_array_equal(back[:, 3:11, 4:12, 6:14], box)
    assert back.sum() == box.sum()
    # a box reaching outside the volume is zero-padded there
    edge = gba.crop_box(vols, (-2, 0, 0), (4, 4, 4))
    np.testing.assert_array_equal(edge[:, :2], 0)
    np.testing.assert_array_equal(edge[:, 2:], vols[:, :2, :4, :4])
    np.testing.assert_array_equal(gba.paste_box(edge, (-2, 0, 0), (20, 20, 20))[:, :2, :4, :4], vols[:, :2, :4, :4])
    with pytest.raises(ValueError, match="lies outside volumes of shape"):
        gba.crop_box(vols, (30, 0, 0), (4, 4, 4))
    with pytest.raises(ValueError, match="at least one brain voxel"):
        gba.brain_box(np.zeros((1, 4, 4, 4), bool), multiple=2)


def test_options_from_mapping_split_gan_fields():
    opts = gba.GbaOptions.from_mapping({"grid_factor": 2, "max_epochs": 7, "labels_from": "truth"})
    assert opts.grid_factor == 2 and opts.gan.max_epochs == 7 and opts.labels_from == "truth"
    assert gba.GbaOptions.from_mapping(opts.to_dict()) == opts
    with pytest.raises(ValueError, match=r"'labels_from' must be one of \['segmentation', 'truth'\]; got 'x'"):
        gba.GbaOptions(labels_from="x")
    with pytest.raises(ValueError, match=r"unknown GanConfig field\(s\) \['bogus'\]"):
        gba.GbaOptions.from_mapping({"bogus": 1})


# --------------------------------------------------------------------------- the scenario on a fake request
class _Cohort:
    """In-memory stand-in for msutils.data.cohort.Cohort (array / image / roi_sets)."""

    roi_sets = {"nucleus": [1], "wm": [9]}

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        x, y, z = np.meshgrid(*[np.arange(S, dtype=float)] * 3, indexing="ij")
        d = np.sqrt((x - 11.5) ** 2 + (y - 11.5) ** 2 + (z - 11.5) ** 2)
        self.images, self.labels = {}, {}
        self.affine = np.diag([2.0, 2.0, 2.0, 1.0])
        for i in range(n):
            r = 6.0 + rng.normal(0, 0.3)
            brain = d < r + 1.5
            lab = np.zeros((S, S, S), np.int16)
            lab[d < r] = 9
            lab[(np.abs(x - 13.5) < 1.6) & (np.abs(y - 11.5) < 2) & (np.abs(z - 11.5) < 2)] = 1
            img = 30 * brain + 50 * (lab == 9) + (20 + 30 * (i % 2)) * (lab == 1) + rng.normal(0, 2, d.shape) * brain
            self.images[f"s{i}_ses-01"] = np.where(brain, np.maximum(img, 1.0), 0.0).astype(np.float32)
            self.labels[f"s{i}_ses-01"] = lab

    def array(self, scan: str, column: str, dtype=np.float32) -> np.ndarray:
        arr = self.images[scan] if column == "t1" else self.labels[scan]
        return arr.astype(dtype) if dtype is not None else arr

    def image(self, scan: str, column: str) -> nib.Nifti1Image:
        return nib.Nifti1Image(self.array(scan, column), self.affine)


def _class_map(labels: np.ndarray, roi_sets) -> np.ndarray:
    out = np.zeros(labels.shape, np.uint8)
    for k, name in enumerate(("nucleus", "wm"), start=1):
        out[np.isin(labels, roi_sets[name])] = k
    return out


class _ZeroSegmenter:
    """Predicts background everywhere; its network is a small MONAI U-Net for FID/KID features."""

    def __init__(self) -> None:
        from monai.networks.nets import UNet

        torch.manual_seed(0)
        self.net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,)).eval()

    def predict(self, volume: np.ndarray) -> np.ndarray:
        return np.zeros(volume.shape, np.uint8)

    def network(self):
        return self.net


def _request(tmp_path: Path, segmenter=None, repetition: int = 1) -> SimpleNamespace:
    n = 12
    cohort = _Cohort(n)
    table = pd.DataFrame({
        "subject_id": [f"s{i}" for i in range(n)], "group": ["HC", "MS"] * (n // 2),
        "center": ["A", "C"] * (n // 2), "age": np.arange(n, dtype=float) + 30, "sex": [0.0, 1.0, 1.0] * (n // 3),
    }, index=pd.Index(list(cohort.images), name="scan_id"))
    subjects = table["subject_id"].tolist()
    inner = [{"train": subjects[4:], "test": subjects[:4]}, {"train": subjects[:8], "test": subjects[8:]}]
    return SimpleNamespace(cohort=cohort, train=table, inner=inner, segmenter=segmenter, n_per_class=2,
                           repetition=repetition, seed=3, out_dir=tmp_path, fit_log=FitLog())


def test_gba_images_rows_files_metrics_and_leakage(tmp_path):
    req = _request(tmp_path, _ZeroSegmenter())
    out = gba.gba_images(req, class_map_fn=_class_map, options={**TINY, "device": "cpu"})
    assert list(out.index) == ["gba-r1-HC-000", "gba-r1-HC-001", "gba-r1-MS-000", "gba-r1-MS-001"]
    assert {"t1", "roi_labels", "truth_labels", "group", "source_subject", "source_scan", "center", "age", "sex",
            "inner_fold", "seg_dice", "seg_jaccard"} <= set(out.columns)
    inner_train = set(req.inner[1]["train"])
    assert set(out["source_subject"]) <= inner_train and (out["inner_fold"] == 1).all()
    for sid, row in out.iterrows():
        src = req.train.loc[row["source_scan"]]
        assert (row["center"], row["age"], row["sex"], row["source_subject"]) == (
            src["center"], src["age"], src["sex"], src["subject_id"])
        assert row["group"] == src["group"]
        t1 = nib.load(row["t1"])
        truth = np.asarray(nib.load(row["truth_labels"]).dataobj)
        assert t1.shape == (S, S, S) and np.allclose(t1.affine, req.cohort.affine)
        assert set(np.unique(truth).tolist()) == {0, 1, 2}
        img = np.asarray(t1.dataobj)
        start, size = out.attrs["gba"]["box_start"], out.attrs["gba"]["box_size"]
        box = tuple(slice(max(a, 0), a + n) for a, n in zip(start, size))
        outside = np.ones(img.shape, bool)
        outside[box] = False
        assert not img[outside].any() and (img[truth > 0] != 0).mean() > 0.99
        assert not np.asarray(nib.load(row["roi_labels"]).dataobj).any()  # the zero segmenter's output
    # an empty prediction against a present ROI: Dice and Jaccard are exactly 0
    assert (out["seg_dice"] == 0).all() and (out["seg_jaccard"] == 0).all()
    metrics = out.attrs["gba"]
    assert metrics["inner_fold"] == 1 and metrics["n_validation_scans"] == 4 and len(metrics["ssim"]) == 4
    assert all(-1 <= v <= 1 for v in metrics["ssim"]) and np.isfinite(metrics["fid"]) and metrics["fid"] >= 0
    assert metrics["kid_subset_size"] == 4 and metrics["seg_dice_mean"] == 0.0
    assert set(metrics["seg_per_label"]) == {1, 2}
    assert 0 < metrics["non_copy"]["synthetic_mean"] <= 1
    on_disk = json.loads((tmp_path / "gba-r1-metrics.json").read_text())
    assert on_disk["box_size"] == metrics["box_size"] and on_disk["psnr_mean"] == pytest.approx(metrics["psnr_mean"])
    # the cGAN saw the inner fold's training subjects only
    assert req.fit_log.seen("cgan-inner1") == frozenset(inner_train)


def test_gba_images_known_labels_without_segmenter(tmp_path):
    req = _request(tmp_path, None, repetition=2)  # repetition 2 -> inner fold 0
    out = gba.gba_images(req, class_map_fn=_class_map, options={**TINY, "device": "cpu", "grid_factor": 2})
    assert (out["inner_fold"] == 0).all() and set(out["source_subject"]) <= set(req.inner[0]["train"])
    for _, row in out.iterrows():
        np.testing.assert_array_equal(np.asarray(nib.load(row["roi_labels"]).dataobj),
                                      np.asarray(nib.load(row["truth_labels"]).dataobj))
    assert out["seg_dice"].isna().all() and np.isnan(out.attrs["gba"]["fid"])
    assert out.attrs["gba"]["box_size"][0] % 8 == 0  # grid factor 2 x total stride 4


def test_gba_images_rejects_foreign_inner_subjects(tmp_path):
    req = _request(tmp_path)
    req.inner = [{"train": ["s0", "zz"], "test": ["s1"]}]
    with pytest.raises(ValueError, match=r"inner fold 0 names subjects outside the training rows: \['zz'\]"):
        gba.gba_images(req, class_map_fn=_class_map, options=TINY)
    req.inner = [{"train": ["s0", "s1"], "test": []}]
    with pytest.raises(ValueError, match="inner fold 0 needs training and validation scans; got 2 and 0"):
        gba.gba_images(req, class_map_fn=_class_map, options=TINY)
