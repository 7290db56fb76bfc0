"""Tests for the ``real+gba`` scenario of msutils.studies.gan_augmentation (boxes, options, gba_images)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from msutils.data.leakage import FitLog
from msutils.models import gan
from msutils.segmentation.roi_unet import ROI_NAMES, zscore_foreground
from msutils.studies import gan_augmentation as S

N = 24
TINY = dict(g_channels=(4, 8, 16), g_strides=(2, 2), g_res_units=1, d_channels=4, d_layers=2, batch_size=2,
            max_epochs=1, patience=1, monitor_fraction=0.2, kid_subsets=10)


# --------------------------------------------------------------------------- boxes, options, normalisation
def test_brain_box_crop_and_paste():
    masks = np.zeros((2, 20, 20, 20), bool)
    masks[0, 5:9, 6:10, 7:12] = True
    masks[1, 4:8, 6:9, 7:9] = True
    start, size = gan.brain_box(masks, multiple=4, margin=1)
    # bounding box [4, 9) / [6, 10) / [7, 12), with margin 1: 7 / 6 / 7 voxels -> 8 each; the extra voxels
    # go half before (rounded down), half after
    assert size == (8, 8, 8) and start == (3, 4, 6)
    vols = np.arange(2 * 20 ** 3, dtype=np.float32).reshape(2, 20, 20, 20)
    box = gan.crop_box(vols, start, size)
    np.testing.assert_array_equal(box, vols[:, 3:11, 4:12, 6:14])
    back = gan.paste_box(box, start, (20, 20, 20))
    np.testing.assert_array_equal(back[:, 3:11, 4:12, 6:14], box)
    assert back.sum() == box.sum()
    edge = gan.crop_box(vols, (-2, 0, 0), (4, 4, 4))
    np.testing.assert_array_equal(edge[:, :2], 0)
    np.testing.assert_array_equal(edge[:, 2:], vols[:, :2, :4, :4])
    np.testing.assert_array_equal(gan.paste_box(edge, (-2, 0, 0), (20, 20, 20))[:, :2, :4, :4], vols[:, :2, :4, :4])
    with pytest.raises(ValueError, match="lies outside volumes of shape"):
        gan.crop_box(vols, (30, 0, 0), (4, 4, 4))
    with pytest.raises(ValueError, match="at least one brain voxel"):
        gan.brain_box(np.zeros((1, 4, 4, 4), bool), multiple=2)


def test_options_from_mapping_split_gan_fields():
    opts = S.GbaOptions.from_mapping({"grid_factor": 2, "max_epochs": 7, "labels_from": "truth"})
    assert opts.grid_factor == 2 and opts.gan.max_epochs == 7 and opts.labels_from == "truth"
    assert S.GbaOptions.from_mapping(opts.to_dict()) == opts
    with pytest.raises(ValueError, match=r"'labels_from' must be one of \['segmentation', 'truth'\]; got 'x'"):
        S.GbaOptions(labels_from="x")
    with pytest.raises(ValueError, match=r"unknown GanConfig field\(s\) \['bogus'\]"):
        S.GbaOptions.from_mapping({"bogus": 1})
    with pytest.raises(TypeError, match="'gba' must be a GbaOptions; got dict"):
        S.StudyConfig(gba={})
    assert S.StudyConfig(gba=opts).to_dict()["gba"]["max_epochs"] == 7


def test_zscore_foreground():
    v = np.zeros((4, 4, 4), np.float32)
    v[1:3, 1:3, 1:3] = np.arange(8).reshape(2, 2, 2)
    v[1, 1, 1] = 10.0  # non-zero foreground
    out = zscore_foreground(v)
    fg = v != 0
    ref = (v[fg] - v[fg].mean()) / v[fg].std()
    np.testing.assert_allclose(out[fg], ref, rtol=1e-6)
    assert not out[~fg].any() and out.dtype == np.float32
    np.testing.assert_array_equal(zscore_foreground(np.zeros((2, 2))), 0)


def test_groups_are_the_class_codes():
    assert S.GROUPS == ("HC", "MS")
    t = pd.DataFrame({"subject_id": ["a", "b"], "center": ["A", "A"], "group": ["MS", "HC"], "sex": ["F", "M"],
                      "age": [30, 40]})
    assert S.study_table(type("C", (), {"table": t})())["y"].tolist() == [1, 0]


# --------------------------------------------------------------------------- the scenario on a fake cohort
ROI_SETS = {name: [k] for k, name in enumerate(ROI_NAMES, start=1)}  # class k = cohort label k


class _Cohort:
    """In-memory stand-in for msutils.data.cohort.Cohort (array / image / roi_sets): a sphere of whole WM
    (label 9) with a left-thalamus box (label 1) brighter in MS."""

    roi_sets = ROI_SETS

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        x, y, z = np.meshgrid(*[np.arange(N, dtype=float)] * 3, indexing="ij")
        d = np.sqrt((x - 11.5) ** 2 + (y - 11.5) ** 2 + (z - 11.5) ** 2)
        self.images, self.labels = {}, {}
        self.affine = np.diag([2.0, 2.0, 2.0, 1.0])
        for i in range(n):
            r = 6.0 + rng.normal(0, 0.3)
            brain = d < r + 1.5
            lab = np.zeros((N, N, N), np.int16)
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


class _ZeroSegmenter:
    """Predicts background everywhere; its network is a small MONAI U-Net for the FID/KID features."""

    def __init__(self) -> None:
        from monai.networks.nets import UNet

        torch.manual_seed(0)
        self.net = UNet(spatial_dims=3, in_channels=1, out_channels=11, channels=(4, 8), strides=(2,)).eval()

    def predict(self, volume: np.ndarray) -> np.ndarray:
        return np.zeros(volume.shape, np.uint8)

    def network(self):
        return self.net

    def network_input(self, volume: np.ndarray) -> np.ndarray:
        img = zscore_foreground(volume)
        return np.pad(img, [(0, s % 2) for s in img.shape])


def _request(tmp_path: Path, segmenter=None, repetition: int = 1, **gba) -> S.AugmentationRequest:
    n = 12
    cohort = _Cohort(n)
    table = pd.DataFrame({
        "subject_id": [f"s{i}" for i in range(n)], "group": ["HC", "MS"] * (n // 2),
        "center": ["A", "C"] * (n // 2), "age": np.arange(n, dtype=float) + 30, "sex": [0.0, 1.0, 1.0] * (n // 3),
    }, index=pd.Index(list(cohort.images), name="scan_id"))
    subjects = table["subject_id"].tolist()
    inner = [{"train": subjects[4:], "test": subjects[:4]}, {"train": subjects[:8], "test": subjects[8:]}]
    config = S.StudyConfig(gba=S.GbaOptions.from_mapping({**TINY, **gba}), device="cpu")
    return S.AugmentationRequest(cohort, table, inner, segmenter, 2, repetition, 3, tmp_path, config, FitLog())


@pytest.mark.parametrize("labels_from", ["truth", "segmentation"])
def test_gba_images_rows_files_metrics_and_leakage(tmp_path, labels_from):
    req = _request(tmp_path, _ZeroSegmenter(), labels_from=labels_from)
    out = S.SCENARIOS["real+gba"](req)
    assert list(out.index) == ["gba-r1-HC-000", "gba-r1-HC-001", "gba-r1-MS-000", "gba-r1-MS-001"]
    assert {"t1", "roi_labels", "truth_labels", "group", "source_subject", "source_scan", "center", "age", "sex",
            "inner_fold", "seg_dice", "seg_jaccard"} <= set(out.columns)
    inner_train = set(req.inner[1]["train"])
    assert set(out["source_subject"]) <= inner_train and (out["inner_fold"] == 1).all()
    q = out.attrs["quality"]
    start, size = q["box_start"], q["box_size"]
    assert all(s % 4 == 0 for s in size)  # a multiple of the generator's total stride (2 x 2)
    for sid, row in out.iterrows():
        src = req.train.loc[row["source_scan"]]
        assert (row["center"], row["age"], row["sex"], row["source_subject"]) == (
            src["center"], src["age"], src["sex"], src["subject_id"])
        assert row["group"] == src["group"]
        t1 = nib.load(row["t1"])
        truth = np.asarray(nib.load(row["truth_labels"]).dataobj)
        assert t1.shape == (N, N, N) and np.allclose(t1.affine, req.cohort.affine)
        assert set(np.unique(truth).tolist()) == {0, 1, 9}
        img = np.asarray(t1.dataobj)
        box = tuple(slice(max(a, 0), a + n) for a, n in zip(start, size))
        outside = np.ones(img.shape, bool)
        outside[box] = False
        assert not img[outside].any() and (img[truth > 0] != 0).mean() > 0.99
        # inside the brain, clipped to the fold's real brain-intensity range
        fold_scans = [s for s in req.train.index if req.train.at[s, "subject_id"] in inner_train]
        real = np.stack([req.cohort.images[s] for s in fold_scans])
        brain = img != 0
        assert img[brain].min() >= real[real > 0].min() and img.max() <= real.max()
        used = np.asarray(nib.load(row["roi_labels"]).dataobj)  # the label map the radiomics read
        if labels_from == "truth":  # the known map (the seed's experts corrected every segmentation)
            np.testing.assert_array_equal(used, truth)
        else:
            assert not used.any()  # the zero segmenter's output
    # an empty prediction against a present ROI: Dice and Jaccard are exactly 0; absent ROIs are skipped
    assert (out["seg_dice"] == 0).all() and (out["seg_jaccard"] == 0).all()
    assert q["inner_fold"] == 1 and q["n_validation_scans"] == 4 and len(q["ssim"]) == 4
    assert all(-1 <= v <= 1 for v in q["ssim"]) and np.isfinite(q["fid"]) and q["fid"] >= 0
    assert q["kid_subset_size"] == 4 and q["seg_dice_mean"] == 0.0
    assert set(q["seg_per_label"]) == {1, 9}
    assert 0 < q["non_copy"]["synthetic_mean"] <= 1 and 0 <= q["non_copy"]["nearest_is_parent"] <= 1
    on_disk = json.loads((tmp_path / "gba-r1-metrics.json").read_text())
    assert on_disk["box_size"] == list(size) and on_disk["psnr_mean"] == pytest.approx(q["psnr_mean"])
    # the cGAN saw the inner fold's training subjects only
    assert req.fit_log.seen("cgan-inner1") == frozenset(inner_train)
    # the real images' U-Net features are kept for the next repetition of the iteration
    assert len(req.state["unet_features"]) == 8 and "box" in req.state


def test_gba_images_known_labels_without_segmenter(tmp_path):
    req = _request(tmp_path, None, repetition=2, grid_factor=2)  # repetition 2 -> inner fold 0
    out = S.gba_images(req)
    assert (out["inner_fold"] == 0).all() and set(out["source_subject"]) <= set(req.inner[0]["train"])
    for _, row in out.iterrows():
        np.testing.assert_array_equal(np.asarray(nib.load(row["roi_labels"]).dataobj),
                                      np.asarray(nib.load(row["truth_labels"]).dataobj))
    assert out["seg_dice"].isna().all() and np.isnan(out.attrs["quality"]["fid"])
    assert all(s % 8 == 0 for s in out.attrs["quality"]["box_size"])  # grid factor 2 x total stride 4


def test_gba_images_rejects_foreign_inner_subjects(tmp_path):
    req = _request(tmp_path)
    req.inner = [{"train": ["s0", "zz"], "test": ["s1"]}]
    with pytest.raises(ValueError, match=r"inner fold 0 names subjects outside the training rows: \['zz'\]"):
        S.gba_images(req)
    req.inner = [{"train": ["s0", "s1"], "test": []}]
    with pytest.raises(ValueError, match="inner fold 0 needs training and validation scans; got 2 and 0"):
        S.gba_images(req)


def test_deep_gm_signal_volume_texture_and_ratio():
    cls = np.zeros((10, 10, 10), np.uint8)
    cls[2:6, 2:6, 2:6] = 1   # a deep-GM nucleus: 64 voxels, 8 interior after erosion
    cls[6:9, 2:9, 2:9] = 9   # whole WM
    img = np.zeros(cls.shape, np.float32)
    rng = np.random.default_rng(0)
    img[cls == 1] = 50 + rng.normal(0, 5, (cls == 1).sum())
    img[cls == 9] = 100.0
    out = S.deep_gm_signal(img, cls, voxel_ml=0.008)
    core = np.zeros(cls.shape, bool)
    core[3:5, 3:5, 3:5] = True
    assert out["deep_gm_volume_ml"] == pytest.approx(64 * 0.008)
    assert out["deep_gm_texture"] == pytest.approx(img[core].std() / img[core].mean(), rel=1e-6)
    assert out["deep_gm_to_wm"] == pytest.approx(img[cls == 1].mean() / 100.0, rel=1e-6)
    with pytest.raises(ValueError, match="'voxel_ml' must be > 0; got 0"):
        S.deep_gm_signal(img, cls, voxel_ml=0)
