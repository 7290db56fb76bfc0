"""Tests of msutils.features.radiomics: cropped extraction == plain pyradiomics, caching, naming."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage

from msutils.features import radiomics as rad

SHAPE_FO_TEX = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


def _blob(shape, center, radius, rng, smooth=1.5):
    """Irregular blob: a ball perturbed by smoothed noise."""
    zz, yy, xx = np.indices(shape)
    d = np.sqrt((zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2) / radius
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), smooth)
    return d + 0.6 * noise / noise.std() * 0.3 < 1.0


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.standard_normal((36, 40, 38)), 1.2) * 400.0 + 1000.0
    return img


def _plain_pyradiomics(image, mask, spacing, params):
    """Reference: plain, uncropped pyradiomics execute on the full arrays."""
    import SimpleITK as sitk

    ex = rad._pyradiomics_extractor(rad.validate_params(params))  # plain pyradiomics extractor
    im = sitk.GetImageFromArray(np.asarray(image, dtype=np.float64))
    mk = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    im.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    mk.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    with rad.quiet_pyradiomics():
        res = ex.execute(im, mk)
    return {rad.rename_pyradiomics_key(k): float(v) for k, v in res.items() if not k.startswith("diagnostics_")}


# ----------------------------------------------------------------------------- equality with pyradiomics
@pytest.mark.parametrize(
    "where, spacing, params",
    [
        ("interior", (1.0, 1.0, 1.0), "seed000"),
        ("border", (1.2, 0.9, 1.0), "seed000"),  # mask touches three faces of the volume
        ("interior", (1.0, 1.1, 0.9), rad.make_params(("firstorder", "glcm"), log_sigma=[1.0, 2.5])),
        ("border", (1.0, 1.0, 1.0), "saliency"),
        # wavelet decompositions of the full volume, then cropped (an odd-sized axis is padded by pyradiomics)
        ("interior", (1.0, 1.2, 1.0), rad.make_params(("firstorder", "glszm"), wavelet="coif1")),
        ("border", (1.0, 1.0, 1.0), rad.make_params(("firstorder",), log_sigma=[2.0], wavelet="haar",
                                                     original=False)),
        ("interior", (1.0, 1.0, 1.0), rad.make_params(
            ("shape", "firstorder", "glszm"), normalize=False, log_sigma=[1.0],
            settings={"resegmentRange": [700.0, 1300.0]})),
        # seed001_paper's outlier re-segmentation: the mask from the original image also serves the LoG image
        ("interior", (1.0, 1.0, 1.0), rad.make_params(
            ("firstorder", "glcm"), log_sigma=[1.0], settings={"resegmentRange": [-1.5, 1.5], "resegmentMode": "sigma"})),
        # resampling is ROI-dependent in pyradiomics: the engine runs it uncropped
        ("border", (1.0, 1.0, 1.0), rad.make_params(
            ("firstorder", "glcm"), normalize=False, settings={"resampledPixelSpacing": [2.0, 2.0, 2.0]})),
    ],
)
def test_cropped_equals_uncropped_pyradiomics(volume, where, spacing, params):
    rng = np.random.default_rng(1)
    if where == "interior":
        mask = _blob(volume.shape, (18, 20, 19), 7.0, rng)
    else:
        mask = _blob(volume.shape, (0, 39, 0), 9.0, rng)
        assert mask[0].any() and mask[:, -1].any() and mask[:, :, 0].any()
    got = rad.extract_arrays(volume, mask, spacing, params)
    ref = _plain_pyradiomics(volume, mask, spacing, params)
    assert got.reason is None
    assert list(got) == list(ref) == rad.feature_names(params)
    assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-6, atol=0)


def test_seed001_outlier_resegmentation_equals_pyradiomics(volume):
    """seed001 drops voxels outside the ROI's mean +- 3 SD (CSF let into a GM ROI) as pyradiomics does."""
    rng = np.random.default_rng(4)
    mask = _blob(volume.shape, (18, 20, 19), 7.0, rng)
    img = volume.copy()
    csf = np.argwhere(mask)[rng.choice(int(mask.sum()), 25, replace=False)]
    img[tuple(csf.T)] = -2000.0  # far below the ROI's other intensities
    got = rad.extract_arrays(img, mask, (1.0, 1.0, 1.0), "seed001")
    ref = _plain_pyradiomics(img, mask, (1.0, 1.0, 1.0), "seed001")
    assert list(got) == list(ref) == rad.feature_names("seed001")
    assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-6, atol=0)
    # the outliers are gone: the minimum is that of the ROI without them, not the outliers' value
    plain = rad.make_params(("firstorder",) + rad._TEXTURE, bin_width=2.5, voxel_array_shift=300)
    kept = rad.extract_arrays(img, mask, (1.0, 1.0, 1.0), plain)
    outliers = np.zeros(mask.shape, bool)
    outliers[tuple(csf.T)] = True
    without = rad.extract_arrays(img, mask & ~outliers, (1.0, 1.0, 1.0), plain)
    assert kept["firstorder__Minimum"] < got["firstorder__Minimum"] == pytest.approx(
        without["firstorder__Minimum"], rel=1e-9)


def test_fast_shape_mesh_matches_pyradiomics_c(monkeypatch):
    """The vectorised mesh (used above _C_MESH_MAX_VERTICES vertices) equals cShape."""
    from radiomics import cShape

    rng = np.random.default_rng(2)
    monkeypatch.setattr(rad, "_C_MESH_MAX_VERTICES", 0)
    for spacing, shape in [((1.0, 1.0, 1.0), (30, 26, 28)), ((0.8, 1.2, 2.5), (24, 30, 22)), ((2.0, 2.0, 2.0), (20, 20, 20))]:
        mask = np.pad(ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5, 1)
        sp = np.asarray(spacing)
        area, volume, diam = cShape.calculate_coefficients(np.ascontiguousarray(mask), sp)
        a, v, d = rad._mesh_coefficients(mask, sp)
        assert_allclose([a, v], [area, volume], rtol=1e-10)
        assert_array_equal(d, np.asarray(diam))  # same vertices, same arithmetic: bit-identical


def test_fast_shape_features_equal_pyradiomics(volume, monkeypatch):
    rng = np.random.default_rng(3)
    mask = _blob(volume.shape, (17, 21, 18), 10.0, rng)
    params = rad.make_params(("shape",))
    ref = _plain_pyradiomics(volume, mask, (1.0, 0.9, 1.1), params)
    monkeypatch.setattr(rad, "_C_MESH_MAX_VERTICES", 0)
    got = rad.extract_arrays(volume, mask, (1.0, 0.9, 1.1), params)
    assert len(ref) == 14
    assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-9)


# ----------------------------------------------------------------------------- known values
def test_firstorder_and_shape_known_values():
    rng = np.random.default_rng(4)
    img = rng.uniform(10.0, 90.0, (20, 22, 24))
    mask = np.zeros(img.shape, dtype=bool)
    mask[5:12, 6:15, 4:10] = True
    mask[8, 15:18, 7] = True
    spacing = (1.5, 0.8, 1.2)
    params = rad.make_params(("shape", "firstorder"), normalize=False)
    f = rad.extract_arrays(img, mask, spacing, params)
    vals = img[mask]
    assert f["firstorder__Mean"] == pytest.approx(vals.mean(), rel=1e-12)
    assert f["firstorder__Minimum"] == pytest.approx(vals.min(), rel=1e-12)
    assert f["firstorder__Maximum"] == pytest.approx(vals.max(), rel=1e-12)
    assert f["firstorder__Energy"] == pytest.approx(np.sum(vals**2), rel=1e-12)
    assert f["shape__VoxelVolume"] == pytest.approx(mask.sum() * 1.5 * 0.8 * 1.2, rel=1e-12)


def test_normalisation_uses_the_whole_image_not_the_crop():
    rng = np.random.default_rng(5)
    img = rng.normal(50.0, 10.0, (24, 24, 24))
    img[:, :, 12:] += 40.0
    mask = np.zeros(img.shape, dtype=bool)
    mask[4:10, 4:10, 2:8] = True
    f = rad.extract_arrays(img, mask, (1, 1, 1), rad.make_params(("firstorder",), normalize_scale=100.0))
    z = (img - img.mean()) / img.std(ddof=1) * 100.0  # SimpleITK Normalize: sample SD
    assert f["firstorder__Mean"] == pytest.approx(z[mask].mean(), rel=1e-9)


# ----------------------------------------------------------------------------- failures -> NaN + reason
def test_empty_tiny_and_degenerate_rois_give_nan_and_reason(volume):
    empty = np.zeros(volume.shape, dtype=bool)
    f = rad.extract_arrays(volume, empty, (1, 1, 1), "seed000")
    assert f.reason == "empty ROI (0 voxels)"
    assert len(f) == 107 and all(np.isnan(v) for v in f.values())

    tiny = empty.copy()
    tiny[3:5, 3:5, 3] = True
    f = rad.extract_arrays(volume, tiny, (1, 1, 1), "seed000")
    assert f.reason == "ROI too small: 4 voxels < min_voxels=10"
    assert all(np.isnan(v) for v in f.values())

    line = empty.copy()
    line[5, 5, 2:20] = True  # 18 voxels, one dimension: pyradiomics refuses it
    f = rad.extract_arrays(volume, line, (1, 1, 1), "seed000")
    assert f.reason is not None and f.reason.startswith("pyradiomics failed: ValueError: mask has too few dimensions")
    assert all(np.isnan(v) for v in f.values())

    f = rad.extract_arrays(volume, tiny, (1, 1, 1), "seed000", min_voxels=4)
    assert f.reason is None and f["shape__VoxelVolume"] == 4.0


# ----------------------------------------------------------------------------- params & naming
def test_params_validation_messages(tmp_path):
    with pytest.raises(ValueError) as e:
        rad.validate_params({"featureClass": {"x": None}})
    assert str(e.value) == (
        "params: 'featureClass' keys must be among "
        "['firstorder', 'glcm', 'gldm', 'glrlm', 'glszm', 'ngtdm', 'shape', 'shape2D']; got 'x'"
    )
    with pytest.raises(ValueError, match=r"'params' keys must be among \['featureClass', 'imageType', 'setting'\]; got 'voxelSetting'"):
        rad.validate_params({"voxelSetting": {}})
    with pytest.raises(ValueError, match=r"'featureClass.glcm' features must be among \[.*\]; got 'Nope'"):
        rad.validate_params({"featureClass": {"glcm": ["Contrast", "Nope"]}})
    with pytest.raises(ValueError, match=r"'imageType' keys must be among \[.*'LoG'.*\]; got 'Blur'"):
        rad.validate_params({"imageType": {"Blur": {}}, "featureClass": {"firstorder": None}})
    with pytest.raises(ValueError, match="invalid pyradiomics params: .*binWidth"):
        rad.validate_params({"setting": {"binWidth": -1.0}, "featureClass": {"firstorder": None}})
    # presets by name and params files
    assert rad.validate_params("seed001") == rad.validate_params(rad.PARAMS["seed001"])
    path = tmp_path / "p.yaml"
    path.write_text("setting:\n  binWidth: 25\nfeatureClass:\n  firstorder:\n")
    assert rad.validate_params(path)["featureClass"] == {"firstorder": None}
    with pytest.raises(FileNotFoundError, match="params file not found"):
        rad.validate_params(tmp_path / "missing.yaml")


def test_feature_naming():
    assert rad.rename_pyradiomics_key("original_firstorder_Mean") == "firstorder__Mean"
    assert rad.rename_pyradiomics_key("log-sigma-1-0-mm-3D_glcm_Contrast") == "log-sigma-1-0-mm-3D_glcm__Contrast"
    assert rad.parse_column("thalamus_L__firstorder__Mean") == {
        "roi": "thalamus_L", "image_type": "original", "feature_class": "firstorder", "feature": "Mean"}
    assert rad.parse_column("log-sigma-2-0-mm-3D_glszm__ZoneEntropy") == {
        "roi": None, "image_type": "log-sigma-2-0-mm-3D", "feature_class": "glszm", "feature": "ZoneEntropy"}
    names = rad.feature_names("seed000")
    assert len(names) == 107 and len(rad.feature_names("seed001")) == 93 == len(rad.feature_names("saliency"))
    assert "shape__VoxelVolume" in names and "glrlm__RunLengthNonUniformity" in names
    log_names = rad.feature_names(rad.make_params(("firstorder",), log_sigma=[1, 3]))
    assert log_names[:1] == ["firstorder__10Percentile"]
    assert "log-sigma-1-0-mm-3D_firstorder__Mean" in log_names and "log-sigma-3-0-mm-3D_firstorder__Mean" in log_names
    assert len(log_names) == 3 * 18
    wav = rad.feature_names(rad.make_params(("firstorder",), wavelet="coif1", original=False))
    assert [n.split("_firstorder")[0] for n in wav[::18]] == [
        f"wavelet-{b}" for b in ("LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH", "LLL")]
    # seed 001's paper profile: original + 3 LoG sigmas + 8 wavelet bands, 93 features each
    paper = rad.feature_names("seed001_paper")
    assert len(paper) == 12 * 93 and paper[:93] == rad.feature_names("seed001")
    assert rad.parse_column(f"thalamus_L__{paper[-1]}")["image_type"] == "wavelet-LLL"


def test_make_params_image_types():
    p = rad.make_params(("firstorder",), log_sigma=[1, 2], wavelet="db2")
    assert p["imageType"] == {"Original": {}, "LoG": {"sigma": [1.0, 2.0]}, "Wavelet": {"wavelet": "db2"}}
    with pytest.raises(ValueError, match="'wavelet' must be one of PyWavelets' discrete wavelets .*; got 'mexh'"):
        rad.make_params(("firstorder",), wavelet="mexh")  # continuous: not usable by pyradiomics' SWT
    with pytest.raises(ValueError, match="at least one image type is needed"):
        rad.make_params(("firstorder",), original=False)


# ----------------------------------------------------------------------------- cohort level
def _save(arr, path, zooms):
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(arr, affine), str(path))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(6)
    rows = {}
    shape = (30, 34, 28)
    zooms = (1.0, 1.2, 1.0)
    for i in range(3):
        t1 = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) * 50 + 300 + 20 * i
        labels = np.zeros(shape, dtype=np.int16)
        labels[_blob(shape, (8, 10, 9), 5.0, rng)] = 1
        labels[_blob(shape, (20, 22, 18), 6.0, rng) & (labels == 0)] = 2
        labels[3:27, 4:30, 20:26] = 9
        labels[0, 0, 0] = 3  # one-voxel ROI
        lesion = np.zeros(shape, dtype=np.uint8)
        lesion[10:14, 12:18, 21:24] = 1
        d = root / f"s{i}"
        d.mkdir()
        for name, arr in (("t1", t1), ("roi_labels", labels), ("lesion_mask", lesion)):
            _save(arr, d / f"{name}.nii.gz", zooms)
        rows[f"sub-{i}_ses-01"] = {c: str(d / f"{c}.nii.gz") for c in ("t1", "roi_labels", "lesion_mask")}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "scan_id"
    roi_sets = {"thalamus_L": [1], "caudate_L": [2], "dot": [3], "whole_wm": [9], "absent": [7]}
    return SimpleNamespace(table=table, roi_sets=roi_sets)


def _arrays(cohort, sid, col):
    img = nib.load(cohort.table.at[sid, col])
    return np.asanyarray(img.dataobj).T, img.header.get_zooms()[:3][::-1]


FO_PARAMS = rad.make_params(("firstorder", "glcm"), normalize=False)


def test_extract_cohort_values_names_and_reasons(cohort):
    rois = {"thalamus_L": [1], "whole_wm": [9], "dot": [3], "absent": [7]}
    df = rad.extract(cohort, rois, FO_PARAMS, n_jobs=1, progress=False)
    names = rad.feature_names(FO_PARAMS)
    assert list(df.index) == list(cohort.table.index) and df.index.name == "scan_id"
    assert list(df.columns) == [f"{r}__{n}" for r in rois for n in names]
    assert "thalamus_L__firstorder__Mean" in df.columns and "whole_wm__glcm__Contrast" in df.columns
    by_name = rad.extract(cohort, ["thalamus_L", "whole_wm"], FO_PARAMS, n_jobs=1, progress=False)
    pd.testing.assert_frame_equal(by_name, df.filter(regex="^(thalamus_L|whole_wm)__"), check_exact=True)
    sid = "sub-1_ses-01"
    img, sp = _arrays(cohort, sid, "t1")
    lab, _ = _arrays(cohort, sid, "roi_labels")
    ref = rad.extract_arrays(img.astype(float), lab == 9, sp, FO_PARAMS)
    assert_array_equal(df.loc[sid, [f"whole_wm__{n}" for n in names]].to_numpy(), np.array(list(ref.values())))
    assert df.loc[sid, "thalamus_L__firstorder__Mean"] == pytest.approx(img[lab == 1].mean(), rel=1e-12)
    why = rad.reasons(df)
    assert list(why.columns) == ["scan_id", "roi", "reason"]
    assert set(why["roi"]) == {"dot", "absent"} and len(why) == 6
    assert why.loc[why["roi"] == "dot", "reason"].iloc[0] == "ROI too small: 1 voxels < min_voxels=10"
    assert df.filter(like="absent__").isna().all().all() and df.filter(like="dot__").isna().all().all()
    assert df.attrs["n_computed"] == 12 and df.attrs["n_cached"] == 0


def test_extract_subtract_removes_lesion_voxels(cohort):
    df = rad.extract(cohort, {"whole_wm": [9]}, FO_PARAMS, subtract="lesion_mask", n_jobs=1, progress=False)
    for sid in cohort.table.index:
        img, _ = _arrays(cohort, sid, "t1")
        lab, _ = _arrays(cohort, sid, "roi_labels")
        les, _ = _arrays(cohort, sid, "lesion_mask")
        nawm = (lab == 9) & (les == 0)
        assert (lab == 9).sum() - nawm.sum() == 72
        assert df.loc[sid, "whole_wm__firstorder__Mean"] == pytest.approx(img[nawm].mean(), rel=1e-12)
        assert img[nawm].mean() != pytest.approx(img[lab == 9].mean(), rel=1e-6)


def test_extract_cache_reuses_and_recomputes_on_param_change(cohort, tmp_path, monkeypatch):
    calls = []
    real = rad._extract_roi

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rad, "_extract_roi", counting)
    rois = {"thalamus_L": [1], "caudate_L": [2]}
    first = rad.extract(cohort, rois, FO_PARAMS, n_jobs=1, cache_dir=tmp_path, progress=False)
    assert len(calls) == 6 and first.attrs["n_computed"] == 6
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 6
    payload = json.loads(files[0].read_text())
    assert set(payload) >= {"key", "scan_id", "roi", "features", "reason"}
    mtimes = [f.stat().st_mtime_ns for f in files]

    calls.clear()
    again = rad.extract(cohort, rois, FO_PARAMS, n_jobs=1, cache_dir=tmp_path, progress=False)
    assert calls == [] and again.attrs["n_cached"] == 6 and again.attrs["n_computed"] == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    pd.testing.assert_frame_equal(first, again)

    other = rad.make_params(("firstorder", "glcm"), normalize=False, bin_width=10.0)
    changed = rad.extract(cohort, rois, other, n_jobs=1, cache_dir=tmp_path, progress=False)
    assert len(calls) == 6 and changed.attrs["n_computed"] == 6
    assert not np.allclose(changed.filter(like="glcm").to_numpy(), first.filter(like="glcm").to_numpy())
    assert_array_equal(changed["thalamus_L__firstorder__Mean"], first["thalamus_L__firstorder__Mean"])


def test_extract_cache_keys_on_engine_source_and_pyradiomics_version(cohort, tmp_path, monkeypatch):
    import radiomics

    rois = {"thalamus_L": [1]}
    first = rad.extract(cohort, rois, FO_PARAMS, n_jobs=1, cache_dir=tmp_path / "c", progress=False)
    assert first.attrs["n_computed"] == 3
    assert rad.extract(cohort, rois, FO_PARAMS, n_jobs=1, cache_dir=tmp_path / "c",
                       progress=False).attrs["n_cached"] == 3
    edited = tmp_path / "radiomics_edited.py"  # the engine's source with one more line
    edited.write_text(Path(rad.__file__).read_text() + "\n# a fixed bug\n")
    with monkeypatch.context() as mp:
        mp.setattr(rad, "__file__", str(edited))
        again = rad.extract(cohort, rois, FO_PARAMS, n_jobs=1, cache_dir=tmp_path / "c", progress=False)
    assert again.attrs["n_computed"] == 3 and again.attrs["n_cached"] == 0
    with monkeypatch.context() as mp:
        mp.setattr(radiomics, "__version__", "9.9.9")
        again = rad.extract(cohort, rois, FO_PARAMS, n_jobs=1, cache_dir=tmp_path / "c", progress=False)
    assert again.attrs["n_computed"] == 3 and again.attrs["n_cached"] == 0
    pd.testing.assert_frame_equal(again, first)


def test_extract_parallel_equals_serial(cohort):
    rois = {"thalamus_L": [1], "whole_wm": [9]}
    params = rad.make_params(("shape", "firstorder", "glszm"))
    serial = rad.extract(cohort, rois, params, n_jobs=1, progress=False)
    parallel = rad.extract(cohort, rois, params, n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(serial, parallel, check_exact=True)
    assert not serial.isna().any().any()
    again = rad.extract(cohort, rois, params, n_jobs=2, progress=False)  # reuses the kept-alive workers
    pd.testing.assert_frame_equal(serial, again, check_exact=True)


def test_extract_input_errors(cohort):
    with pytest.raises(ValueError, match=r"'image' must be a column of the cohort table; got 'pd'"):
        rad.extract(cohort, {"a": [1]}, FO_PARAMS, image="pd", progress=False)
    with pytest.raises(ValueError, match=r"'scan_ids' not in the cohort: \['nobody'\]"):
        rad.extract(cohort, {"a": [1]}, FO_PARAMS, scan_ids=["nobody"], progress=False)
    with pytest.raises(ValueError, match="ROI names must be non-empty strings without '__'"):
        rad.extract(cohort, {"a__b": [1]}, FO_PARAMS, progress=False)
    with pytest.raises(ValueError, match=r"'rois' must be among the cohort's roi_sets .*; got \['putamen_L'\]"):
        rad.extract(cohort, ["thalamus_L", "putamen_L"], FO_PARAMS, progress=False)
    with pytest.raises(ValueError, match="'n_jobs' must be an integer >= 1; got 0"):
        rad.extract(cohort, {"a": [1]}, FO_PARAMS, n_jobs=0, progress=False)


# ----------------------------------------------------------------------------- many masks (seed 004)
def test_extract_masks_instance_map_and_per_mask_images(volume):
    rng = np.random.default_rng(7)
    inst = np.zeros(volume.shape, dtype=np.int32)
    inst[_blob(volume.shape, (9, 10, 9), 4.0, rng)] = 1
    inst[_blob(volume.shape, (25, 28, 26), 5.0, rng)] = 2
    inst[30, 2, 2] = 3
    df = rad.extract_masks(volume, inst, (1, 1, 1), "saliency")
    assert list(df.index) == [1, 2, 3] and df.index.name == "mask"
    assert list(df.columns) == rad.feature_names("saliency")
    for k in (1, 2):
        ref = _plain_pyradiomics(volume, inst == k, (1, 1, 1), "saliency")
        assert_allclose(df.loc[k, list(ref)].to_numpy(), list(ref.values()), rtol=1e-6)
    assert df.loc[3].isna().all()
    assert rad.reasons(df).to_dict("records") == [{"mask": 3, "reason": "ROI too small: 1 voxels < min_voxels=10"}]

    # one image per mask (instance-level saliency maps), keys kept
    maps = {"les-a": volume, "les-b": volume[::-1].copy()}
    masks = {"les-a": inst == 1, "les-b": inst == 2}
    df2 = rad.extract_masks(maps, masks, (1, 1, 1), "saliency")
    assert list(df2.index) == ["les-a", "les-b"]
    ref_b = _plain_pyradiomics(maps["les-b"], masks["les-b"], (1, 1, 1), "saliency")
    assert_allclose(df2.loc["les-b", list(ref_b)].to_numpy(), list(ref_b.values()), rtol=1e-6)
    assert_array_equal(df2.loc["les-a"].to_numpy(), df.loc[1].to_numpy())
