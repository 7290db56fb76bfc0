"""msutils.features.texture_fast against pyradiomics' own feature classes."""

from __future__ import annotations

import numpy as np
import pytest

SETTINGS = {"binWidth": 2.5, "label": 1}


def _images(case: str) -> tuple[object, object]:
    import SimpleITK as sitk

    rng = np.random.default_rng(7)
    img = rng.normal(100.0, 12.0, size=(14, 15, 16))
    mask = np.zeros(img.shape, dtype=np.uint8)
    if case == "blob":
        zz, yy, xx = np.mgrid[:14, :15, :16]
        mask[(zz - 7) ** 2 + (yy - 7) ** 2 + ((xx - 8) / 1.3) ** 2 < 30] = 1
    elif case == "gaps":  # grey levels with empty bins between them
        img = np.choose(rng.integers(0, 3, size=img.shape), [10.0, 40.0, 95.0]) + rng.normal(0, 0.3, img.shape)
        mask[2:12, 3:12, 2:14] = 1
    elif case == "flat":  # one grey level: pyradiomics' conventional values
        img[:] = 50.0
        mask[3:9, 3:9, 3:9] = 1
    elif case == "thin":  # a 2-voxel-thick slab: empty GLCM angles
        mask[6:8, 2:13, 2:14] = 1
    s_img = sitk.GetImageFromArray(img)
    s_img.SetSpacing((1.0, 1.2, 2.0))
    s_msk = sitk.GetImageFromArray(mask)
    s_msk.CopyInformation(s_img)
    return s_img, s_msk


def _run(classes: dict, name: str, img: object, msk: object) -> dict[str, float]:
    fc = classes[name](img, msk, **SETTINGS)
    fc.enableAllFeatures()
    return {k: float(v) for k, v in fc.execute().items()}


@pytest.mark.parametrize("case", ["blob", "gaps", "flat", "thin"])
@pytest.mark.parametrize("name", ["firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"])
def test_fast_classes_equal_pyradiomics(case: str, name: str) -> None:
    from radiomics import getFeatureClasses

    from msutils.features.texture_fast import fast_feature_classes

    img, msk = _images(case)
    want = _run(getFeatureClasses(), name, img, msk)
    got = _run(fast_feature_classes(), name, img, msk)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-12, err_msg=f"{case} {name} {key}")


def test_fast_extractor_shares_one_binning_and_equals_pyradiomics(monkeypatch: pytest.MonkeyPatch) -> None:
    from radiomics import featureextractor, imageoperations

    from msutils.features.texture_fast import fast_extractor

    img, msk = _images("blob")
    classes = {c: [] for c in ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")}
    plain = featureextractor.RadiomicsFeatureExtractor(**SETTINGS)
    plain.enabledFeatures = dict(classes)
    fast = fast_extractor()
    fast.settings = dict(plain.settings)
    fast.enabledImagetypes = {"Original": {}}
    fast.enabledFeatures = dict(classes)
    want = plain.execute(img, msk)

    calls = []
    real = imageoperations.binImage
    monkeypatch.setattr(imageoperations, "binImage", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = fast.execute(img, msk)
    assert len(calls) == 1  # six classes, one binning
    keys = [k for k in want if not k.startswith("diagnostics_")]
    assert len(keys) == 93 and set(keys) <= set(got)
    for key in keys:
        np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-10, atol=1e-12, err_msg=key)


def test_pyradiomics_registry_is_not_patched() -> None:
    from radiomics import getFeatureClasses
    from radiomics.glcm import RadiomicsGLCM

    from msutils.features.texture_fast import fast_feature_classes

    assert fast_feature_classes()["glcm"] is not RadiomicsGLCM
    assert getFeatureClasses()["glcm"] is RadiomicsGLCM


def test_grouped_sum_equals_a_loop() -> None:
    from msutils.features.texture_fast import grouped_sum

    rng = np.random.default_rng(3)
    values = rng.random((2, 30, 4))
    keys = rng.integers(0, 12, size=30)
    keys[keys == 5] = 6  # an empty group
    want = np.zeros((2, 12, 4))
    for pos, key in enumerate(keys):
        want[:, key, :] += values[:, pos, :]
    np.testing.assert_allclose(grouped_sum(values, keys, 12), want, rtol=1e-14)
    assert not grouped_sum(values, keys, 12)[:, 5, :].any()
