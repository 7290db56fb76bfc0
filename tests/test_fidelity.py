"""Tests for msutils.features.fidelity: FID, KID, SSIM, PSNR, network features, non-copy check, Table 2 metrics."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, ndimage, stats

from msutils.features import fidelity as Fd


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- FID
def _fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    diff = a.mean(0) - b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(diff @ diff + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def test_fid_matches_direct_formula_and_known_gaussians():
    rng = _rng()
    a, b = rng.normal(size=(200, 5)), rng.normal(size=(150, 5)) + 0.5
    assert Fd.fid(a, b) == pytest.approx(_fid_reference(a, b), rel=1e-9)
    # N(0, I) vs N(delta, I): FID -> |delta|^2 for large samples
    delta = np.array([1.0, -2.0, 0.5])
    big_a, big_b = rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3)) + delta
    assert Fd.fid(big_a, big_b) == pytest.approx(delta @ delta, abs=0.05)
    assert Fd.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    assert "torchvision" not in sys.modules and "timm" not in sys.modules


def test_fid_rejects_bad_input():
    with pytest.raises(ValueError, match="'real' has 3 features but 'synthetic' has 4"):
        Fd.fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"'synthetic' needs at least 2 row\(s\) and 1 column; got shape \(1, 3\)"):
        Fd.fid(np.zeros((5, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="'real' must be a 2-D array"):
        Fd.fid(np.zeros(5), np.zeros((5, 1)))


# --------------------------------------------------------------------------- KID
def _mmd2_loop(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (sum(ui * vi for ui, vi in zip(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_polynomial_kernel_matches_scikit_learn():
    from sklearn.metrics.pairwise import polynomial_kernel

    rng = _rng(1)
    a, b = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    np.testing.assert_allclose(Fd.polynomial_kernel(a, b), polynomial_kernel(a, b, degree=3, coef0=1), rtol=1e-12)


def test_mmd2_unbiased_matches_double_loop():
    rng = _rng(2)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(7, 4)) + 0.3
    assert Fd.mmd2_unbiased(x, y) == pytest.approx(_mmd2_loop(x, y), rel=1e-10)


def test_kid_full_subsets_equal_the_direct_estimate():
    rng = _rng(3)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3)) + 0.5
    res = Fd.kid(x, y, n_subsets=4, subset_size=50, seed=0)
    assert res.subset_size == 10 and res.n_subsets == 4
    assert res.mean == pytest.approx(_mmd2_loop(x, y), rel=1e-10) and res.std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_and_known_distributions():
    rng = _rng(4)
    real = rng.normal(size=(300, 8))
    same = rng.normal(size=(300, 8))
    shifted = rng.normal(size=(300, 8)) + 1.0
    k_same = Fd.kid(real, same, n_subsets=20, subset_size=100, seed=0)
    k_shift = Fd.kid(real, shifted, n_subsets=20, subset_size=100, seed=0)
    assert abs(k_same.mean) < 0.05 and k_shift.mean > 0.5 and k_shift.std > 0
    # the subset draw follows the documented recipe
    draw = np.random.default_rng(7)
    manual = []
    for _ in range(3):
        ia = draw.choice(300, 50, replace=False)
        ib = draw.choice(300, 50, replace=False)
        manual.append(Fd.mmd2_unbiased(real[ia], shifted[ib]))
    res = Fd.kid(real, shifted, n_subsets=3, subset_size=50, seed=7)
    assert res.mean == pytest.approx(np.mean(manual), rel=1e-12) and res.std == pytest.approx(np.std(manual))


# --------------------------------------------------------------------------- SSIM / PSNR
def _smooth_volumes(seed: int, shape=(3, 20, 22, 24)) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), (0, 1.5, 1.5, 1.5)).astype(np.float32)
    b = (a + rng.normal(0, 0.02, a.shape)).astype(np.float32)
    return a, b


def test_ssim_matches_scikit_image_3d():
    from skimage.metrics import structural_similarity

    real, gen = _smooth_volumes(0)
    ours = Fd.ssim_pairs(gen, real, data_range=1.0)
    ref = [structural_similarity(gen[i], real[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False) for i in range(len(real))]
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    np.testing.assert_allclose(Fd.ssim_pairs(real, real, data_range=1.0), 1.0, atol=1e-5)


@pytest.mark.parametrize("kernel_type", ["gaussian", "uniform"])
def test_ssim_equals_monai_ssim_metric(kernel_type):
    import torch
    from monai.metrics import SSIMMetric

    real, gen = _smooth_volumes(3, shape=(2, 17, 19, 23))
    gen[1] = gen[1] * 0.8 + 0.1  # a contrast and brightness change
    want = SSIMMetric(spatial_dims=3, data_range=1.5, kernel_type=kernel_type, win_size=7, kernel_sigma=1.2)(
        torch.from_numpy(gen[:, None]), torch.from_numpy(real[:, None])).reshape(-1).double().numpy()
    got = Fd.ssim_pairs(gen, real, data_range=1.5, win_size=7, kernel_sigma=1.2, kernel_type=kernel_type)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    assert abs(got[0] - got[1]) > 0.01


def test_psnr_matches_formula():
    real, gen = _smooth_volumes(1)
    mse = ((gen.astype(np.float64) - real) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(Fd.psnr_pairs(gen, real, data_range=2.0), 10 * np.log10(4.0 / mse), rtol=1e-5)
    assert np.isinf(Fd.psnr_pairs(real, real, data_range=1.0)).all()


def test_ssim_psnr_reject_bad_input():
    real, gen = _smooth_volumes(2)
    with pytest.raises(ValueError, match=r"volumes of shape \(20, 22, 24\) are smaller than 'win_size' 21"):
        Fd.ssim_pairs(gen, real, data_range=1.0, win_size=21)
    with pytest.raises(ValueError, match="'data_range' must be a number > 0; got 0"):
        Fd.psnr_pairs(gen, real, data_range=0)
    with pytest.raises(ValueError, match=r"must both be \(n, X, Y, Z\) of one shape"):
        Fd.psnr_pairs(gen[:2], real, data_range=1.0)


# --------------------------------------------------------------------------- network features
@pytest.fixture(scope="module")
def small_unet():
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2),
                num_res_units=1).train()


def test_network_features_bottleneck_and_named_layer(small_unet):
    import torch

    images = _rng(5).random((5, 16, 16, 16)).astype(np.float32)
    feats = Fd.network_features(small_unet, images, batch_size=2, device="cpu")
    assert feats.shape == (5, 16)  # bottleneck channels
    assert small_unet.training  # mode restored
    np.testing.assert_allclose(Fd.network_features(small_unet, images, batch_size=5, device="cpu"), feats,
                               atol=1e-5)
    bottleneck = Fd.unet_bottleneck(small_unet)
    first = Fd.network_features(small_unet, images, layers=["model.0"], device="cpu")
    small_unet.eval()
    with torch.no_grad():
        x = torch.from_numpy(images[:, None])
        expected_first = small_unet.model[0](x).mean(dim=(2, 3, 4)).double().numpy()
        pooled = []
        handle = bottleneck.register_forward_hook(lambda m, i, o: pooled.append(o.mean(dim=(2, 3, 4))))
        small_unet(x)
        handle.remove()
    small_unet.train()
    np.testing.assert_allclose(first, expected_first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats, pooled[0].double().numpy(), rtol=1e-5, atol=1e-6)
    both = Fd.network_features(small_unet, images, layers=["model.0", "model.2"], device="cpu")
    assert both.shape == (5, 4 + 3)
    with pytest.raises(ValueError, match=r"'layers' must name modules of the model; unknown: \['nope'\]"):
        Fd.network_features(small_unet, images, layers=["nope"])


def test_unet_bottleneck_needs_a_skip_connection():
    import torch

    with pytest.raises(ValueError, match="Conv3d has no MONAI SkipConnection: pass 'layers' explicitly"):
        Fd.unet_bottleneck(torch.nn.Conv3d(1, 1, 1))


# --------------------------------------------------------------------------- non-copy check
def test_cosine_similarity_matrix_matches_loop():
    rng = _rng(6)
    a, b = rng.random((3, 4, 5)), rng.random((2, 4, 5))
    sim = Fd.cosine_similarity_matrix(a, b)
    for i in range(3):
        for j in range(2):
            u, v = a[i].ravel(), b[j].ravel()
            assert sim[i, j] == pytest.approx(u @ v / np.linalg.norm(u) / np.linalg.norm(v), rel=1e-6)
    centred = Fd.cosine_similarity_matrix(a, b, center=True)
    assert centred[1, 0] == pytest.approx(np.corrcoef(a[1].ravel(), b[0].ravel())[0, 1], rel=1e-6)


def _anatomies(n: int, seed: int) -> np.ndarray:
    rng = _rng(seed)
    base = ndimage.gaussian_filter(rng.random((12, 12, 12)), 2)
    return np.stack([base + 0.05 * ndimage.gaussian_filter(rng.normal(size=base.shape), 1) for _ in range(n)])


def test_non_copy_check_flags_copies_and_passes_novel_images():
    real = _anatomies(12, 0)
    copies = real[:6] + 1e-6
    res_copy = Fd.nearest_neighbour_similarity(copies, real, center=True)
    np.testing.assert_allclose(res_copy.synthetic_nn, 1.0, atol=1e-6)  # float32 products
    np.testing.assert_array_equal(res_copy.synthetic_nn_index, np.arange(6))
    assert res_copy.pvalue > 0.99  # "synthetic less similar than real-real" is not supported
    novel = _anatomies(10, 0)[:, ::-1] + 0.3 * _rng(9).random((10, 12, 12, 12))
    res_new = Fd.nearest_neighbour_similarity(novel, real, center=True)
    assert res_new.pvalue < 0.001 and res_new.synthetic_nn.max() < res_new.real_nn.min()
    expected = stats.mannwhitneyu(res_new.synthetic_nn, res_new.real_nn, alternative="less")
    assert res_new.statistic == expected.statistic and res_new.pvalue == pytest.approx(expected.pvalue)
    summary = res_new.summary()
    assert summary["synthetic_median"] == pytest.approx(np.median(res_new.synthetic_nn))
    assert summary["alternative"] == "less"


def test_non_copy_check_excludes_same_subject_visits():
    real = _anatomies(6, 1)
    real = np.concatenate([real, real[:2] * 1.01])  # second visits of subjects 0 and 1
    groups = ["a", "b", "c", "d", "e", "f", "a", "b"]
    plain = Fd.nearest_neighbour_similarity(real[:1], real)
    grouped = Fd.nearest_neighbour_similarity(real[:1], real, real_groups=groups)
    assert plain.real_nn[0] == pytest.approx(1.0) and grouped.real_nn[0] < 0.9999
    sim = Fd.cosine_similarity_matrix(real, real)
    assert grouped.real_nn[0] == pytest.approx(sim[0, 1:6].max())
    with pytest.raises(ValueError, match="every real image needs a real image of another subject"):
        Fd.nearest_neighbour_similarity(real[:1], real[:2], real_groups=["a", "a"])
    with pytest.raises(ValueError, match=r"'alternative' must be one of \['two-sided', 'less', 'greater'\]"):
        Fd.nearest_neighbour_similarity(real[:1], real, alternative="lower")


# --------------------------------------------------------------------------- energy distance, ARI, KS
def test_energy_distance_matches_scipy_in_1d_and_double_loop():
    rng = _rng(10)
    x, y = rng.normal(size=(40, 1)), rng.normal(1.0, 2.0, size=(30, 1))
    assert Fd.energy_distance(x, y, standardize=False) == pytest.approx(
        stats.energy_distance(x[:, 0], y[:, 0]) ** 2, rel=1e-10)
    a, b = rng.normal(size=(8, 3)), rng.normal(size=(6, 3)) + 0.4
    loop = (2 * np.mean([np.linalg.norm(u - v) for u in a for v in b])
            - np.mean([np.linalg.norm(u - v) for u in a for v in a])
            - np.mean([np.linalg.norm(u - v) for u in b for v in b]))
    assert Fd.energy_distance(a, b, standardize=False) == pytest.approx(loop, rel=1e-12)
    assert Fd.energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_standardizes_with_the_reference():
    rng = _rng(11)
    a, b = rng.normal(size=(50, 2)), rng.normal(size=(40, 2)) + 0.5
    scale = np.array([1000.0, 0.001])
    assert Fd.energy_distance(a * scale, b * scale) == pytest.approx(Fd.energy_distance(a, b), rel=1e-9)
    z = (a - a.mean(0)) / a.std(0)
    zb = (b - a.mean(0)) / a.std(0)
    assert Fd.energy_distance(a, b) == pytest.approx(Fd.energy_distance(z, zb, standardize=False), rel=1e-12)


def test_kmeans_ari_known_structure():
    rng = _rng(12)
    blobs = np.vstack([rng.normal(0, 0.1, (20, 3)), rng.normal(5, 0.1, (20, 3))])
    labels = np.array(["HC"] * 20 + ["MS"] * 20)
    assert Fd.kmeans_ari(blobs, labels) == pytest.approx(1.0)
    from sklearn.metrics import adjusted_rand_score

    half = labels.copy()
    half[:10], half[20:30] = "MS", "HC"  # labels unrelated to the clusters
    assert Fd.kmeans_ari(blobs, half) == pytest.approx(adjusted_rand_score(half, labels))
    assert abs(Fd.kmeans_ari(blobs, half)) < 0.05
    with pytest.raises(ValueError, match=r"'labels' must have one entry per row \(40\)"):
        Fd.kmeans_ari(blobs, labels[:3])


def test_ks_per_feature_matches_scipy_and_known_cases():
    rng = _rng(13)
    ref = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    other = pd.DataFrame(rng.normal(size=(50, 3)) + [0.0, 0.5, 100.0], columns=["a", "b", "c"])
    table = Fd.ks_per_feature(ref, other)
    assert list(table.index) == ["a", "b", "c"] and table.index.name == "feature"
    for col in "abc":
        expected = stats.ks_2samp(ref[col], other[col])
        assert table.loc[col, "statistic"] == pytest.approx(expected.statistic)
        assert table.loc[col, "pvalue"] == pytest.approx(expected.pvalue)
    assert table.loc["c", "statistic"] == 1.0
    same = Fd.ks_per_feature(ref.to_numpy(), ref.to_numpy())
    assert (same["statistic"] == 0).all() and (same["pvalue"] == 1).all() and list(same.index) == ["f0", "f1", "f2"]
    summary = Fd.ks_summary(table)
    assert summary["mean_statistic"] == pytest.approx(table["statistic"].mean())
    assert summary["n_significant"] == int((table["pvalue"] <= 0.05).sum()) and summary["n_features"] == 3
    with pytest.raises(ValueError, match="'reference' and 'other' have different columns"):
        Fd.ks_per_feature(ref, other.rename(columns={"a": "z"}))


# --------------------------------------------------------------------------- UMAP
def test_umap_embedding_separates_clusters_and_is_deterministic():
    rng = _rng(14)
    blocks = {"real": rng.normal(0, 1, (30, 6)), "gba": rng.normal(8, 1, (30, 6))}
    emb = Fd.umap_embedding(blocks, n_neighbors=10, seed=0)
    assert emb.shape == (60, 2)
    c0, c1 = emb[:30].mean(0), emb[30:].mean(0)
    nearer0 = np.linalg.norm(emb - c0, axis=1) < np.linalg.norm(emb - c1, axis=1)
    np.testing.assert_array_equal(nearer0, np.arange(60) < 30)
    np.testing.assert_array_equal(Fd.umap_embedding(blocks, n_neighbors=10, seed=0), emb)
