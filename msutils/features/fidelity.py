"""How close synthetic data are to real data: image quality, novelty and feature-distribution fidelity.

One module for the seed-000 analyses that compare generated (or augmented)
samples with real ones, at the image level and at the radiomic-feature level
(the seed's Table 1, Fig. 4, Table 2, the KS analysis and Fig. 5). It sits in
``features/`` because everything here consumes feature vectors or images and
none of it fits a model that the analysis later relies on.

Image quality (Table 1)
    :func:`fid` (MONAI ``FIDMetric``) and :func:`kid` (written here: the
    unbiased polynomial-kernel MMD^2 of Bińkowski et al. 2018 averaged over
    random subsets, kernel ``(x.y / d + 1)^3``) compare **feature vectors**.
    No Inception weights exist offline, so features come from a 3D network
    trained in this project (:func:`network_features`, by default the
    global-average-pooled bottleneck of a MONAI U-Net such as the study's
    ROI-segmentation net). Such FID / KID values are *not* comparable with
    the seed's Inception-based numbers; they compare runs and scenarios here.
    :func:`ssim_pairs` (MONAI ``SSIMMetric``, 3D) and :func:`psnr_pairs`
    (MONAI ``PSNRMetric``) compare **paired images**: the i-th generated
    volume with the i-th reference volume. In the GBA study the pairs are the
    generator's reconstruction of an inner-validation subject from that
    subject's own label map and class (:func:`msutils.models.gan.reconstruct`)
    versus the subject's real T1; the GAN never saw those subjects.
Novelty (Fig. 4)
    :func:`nearest_neighbour_similarity`: cosine similarity of each synthetic
    image to its nearest real training image versus each real training
    image's similarity to its nearest *other* real training image (other
    subjects only), with a Mann-Whitney U test of the difference.
Feature-level fidelity (Table 2, KS, Fig. 5)
    :func:`energy_distance` (multivariate, Euclidean), :func:`kmeans_ari`
    (K-means clusters vs classes), :func:`ks_per_feature` /
    :func:`ks_summary` (two-sample Kolmogorov-Smirnov per feature) and
    :func:`umap_embedding`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from msutils.core.validation import check_choice, check_int
from msutils.core.device import resolve_device

if TYPE_CHECKING:
    import torch

__all__ = [
    "KIDResult",
    "NonCopyResult",
    "fid",
    "polynomial_kernel",
    "mmd2_unbiased",
    "kid",
    "ssim_pairs",
    "psnr_pairs",
    "unet_bottleneck",
    "network_features",
    "cosine_similarity_matrix",
    "nearest_neighbour_similarity",
    "energy_distance",
    "kmeans_ari",
    "ks_per_feature",
    "ks_summary",
    "umap_embedding",
]

logger = logging.getLogger(__name__)

_ALTERNATIVES = ("two-sided", "less", "greater")
_KERNELS = ("gaussian", "uniform")


# --------------------------------------------------------------------------- validation helpers
def _matrix(x: Any, name: str, min_rows: int = 1) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"'{name}' must be a 2-D array (samples x features); got shape {arr.shape}")
    if arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise ValueError(f"'{name}' needs at least {min_rows} row(s) and 1 column; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"'{name}' holds non-finite values")
    return arr


def _pair(x: Any, y: Any, names: tuple[str, str], min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _matrix(x, names[0], min_rows), _matrix(y, names[1], min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"'{names[0]}' has {a.shape[1]} features but '{names[1]}' has {b.shape[1]}")
    return a, b


def _zscore(ref: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score every array with the column mean / SD of ``ref`` (constant columns: SD 1)."""
    mu = ref.mean(axis=0)
    sd = ref.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return [(a - mu) / sd for a in (ref, *others)]


# --------------------------------------------------------------------------- FID / KID
def fid(real: Any, synthetic: Any) -> float:
    """Fréchet distance between two sets of feature vectors (MONAI ``FIDMetric``).

    Parameters
    ----------
    real, synthetic : array-like, shape (n, d) and (m, d)
        Feature vectors (e.g. from :func:`network_features`); at least 2 rows each.

    Returns
    -------
    float
        ``|mu_r - mu_s|^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2))``.
    """
    import torch
    from monai.metrics import FIDMetric

    a, b = _pair(real, synthetic, ("real", "synthetic"), min_rows=2)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        # MONAI passes scipy's deprecated ``disp`` to sqrtm; harmless here.
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated.*", category=DeprecationWarning)
        value = float(FIDMetric()(torch.from_numpy(b), torch.from_numpy(a)))
    if sink.getvalue().strip():
        logger.warning("FID: %s", sink.getvalue().strip())
    return value


def polynomial_kernel(x: Any, y: Any, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """``(gamma * x @ y.T + coef0) ** degree`` with ``gamma = 1 / n_features`` by default."""
    a, b = _pair(x, y, ("x", "y"))
    degree = check_int("degree", degree, 1)
    g = 1.0 / a.shape[1] if gamma is None else float(gamma)
    if g <= 0:
        raise ValueError(f"'gamma' must be > 0; got {gamma!r}")
    return (g * (a @ b.T) + float(coef0)) ** degree


def mmd2_unbiased(x: Any, y: Any, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between samples ``x`` and ``y`` with the polynomial kernel.

    ``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n)``; it can be slightly negative when
    the two samples come from the same distribution.
    """
    a, b = _pair(x, y, ("x", "y"), min_rows=2)
    kxx = polynomial_kernel(a, a, degree=degree, gamma=gamma, coef0=coef0)
    kyy = polynomial_kernel(b, b, degree=degree, gamma=gamma, coef0=coef0)
    kxy = polynomial_kernel(a, b, degree=degree, gamma=gamma, coef0=coef0)
    m, n = len(a), len(b)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


@dataclass(frozen=True)
class KIDResult:
    """Kernel distance: mean and SD of the subset MMD^2 estimates."""

    mean: float
    std: float
    n_subsets: int
    subset_size: int


def kid(
    real: Any,
    synthetic: Any,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> KIDResult:
    """Kernel Inception-style distance between two sets of feature vectors.

    For each of ``n_subsets`` subsets, ``min(subset_size, n_real, n_synthetic)``
    rows are drawn without replacement from each set and
    :func:`mmd2_unbiased` is computed; the result is their mean and SD.

    Parameters
    ----------
    real, synthetic : array-like, shape (n, d) and (m, d)
    n_subsets, subset_size : int
    degree, gamma, coef0
        Polynomial kernel (defaults 3, ``1 / d``, 1 as in Bińkowski et al.).
    seed : int

    Returns
    -------
    KIDResult
    """
    a, b = _pair(real, synthetic, ("real", "synthetic"), min_rows=2)
    n_subsets = check_int("n_subsets", n_subsets, 1)
    size = min(check_int("subset_size", subset_size, 2), len(a), len(b))
    rng = np.random.default_rng(check_int("seed", seed, 0))
    values = np.array([
        mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)],
                      degree=degree, gamma=gamma, coef0=coef0)
        for _ in range(n_subsets)
    ])
    return KIDResult(float(values.mean()), float(values.std()), n_subsets, size)


# --------------------------------------------------------------------------- SSIM / PSNR
def _volumes(generated: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    g = np.asarray(generated, dtype=np.float32)
    r = np.asarray(reference, dtype=np.float32)
    if g.ndim != 4 or g.shape != r.shape:
        raise ValueError(f"'generated' {g.shape} and 'reference' {r.shape} must both be (n, X, Y, Z) of one shape")
    if not (np.isfinite(g).all() and np.isfinite(r).all()):
        raise ValueError("'generated' and 'reference' must be finite")
    return torch.from_numpy(g[:, None]), torch.from_numpy(r[:, None])


def _data_range(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not value > 0:
        raise ValueError(f"'data_range' must be a number > 0; got {value!r}")
    return float(value)


def _kernel_1d(size: int, sigma: float, kernel_type: str) -> np.ndarray:
    """MONAI's SSIM window along one axis (its 3D window is the outer product of three)."""
    if kernel_type == "uniform":
        return np.full(size, 1.0 / size, dtype=np.float32)
    dist = np.arange((1 - size) / 2, (1 + size) / 2, 1.0, dtype=np.float32)
    gauss = np.exp(-((dist / np.float32(sigma)) ** 2) / 2)
    return (gauss / gauss.sum()).astype(np.float32)


def ssim_pairs(
    generated: Any,
    reference: Any,
    *,
    data_range: float,
    win_size: int = 11,
    kernel_sigma: float = 1.5,
    kernel_type: str = "gaussian",
) -> np.ndarray:
    """3D SSIM of each pair ``(generated[i], reference[i])``, as MONAI's ``SSIMMetric``.

    MONAI's ``SSIMMetric`` (``compute_ssim_and_cs``) filters with a full
    ``win_size``^3 window; its Gaussian and uniform windows are outer products of
    one-dimensional windows, so the same local means come from three 1D passes
    (3 x 11 instead of 1,331 multiplications per voxel, ~40x faster on CPU). The
    statistics, constants (k1 = 0.01, k2 = 0.03), "valid" borders and the mean
    over the SSIM map are MONAI's; values agree with ``SSIMMetric`` to float32
    rounding (``tests/test_fidelity.py``).

    Parameters
    ----------
    generated, reference : array-like, shape (n, X, Y, Z)
        Paired volumes (see the module docstring for the pairs of the GBA study).
    data_range : float
        Intensity range of the images (e.g. the reference maximum).
    win_size : int
        Window side; every spatial dimension must be at least this.
    kernel_sigma : float
        Gaussian window SD.
    kernel_type : {"gaussian", "uniform"}

    Returns
    -------
    ndarray, shape (n,)
    """
    import torch
    import torch.nn.functional as F

    g, r = _volumes(generated, reference)
    win_size = check_int("win_size", win_size, 2)
    if min(g.shape[2:]) < win_size:
        raise ValueError(f"volumes of shape {tuple(g.shape[2:])} are smaller than 'win_size' {win_size}")
    check_choice("kernel_type", kernel_type, _KERNELS)
    rng = _data_range(data_range)
    w = torch.from_numpy(_kernel_1d(win_size, float(kernel_sigma), kernel_type))

    def local_mean(x: torch.Tensor) -> torch.Tensor:
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = win_size
            x = F.conv3d(x, w.reshape(shape))
        return x

    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    out = []
    with torch.no_grad():
        for a, b in zip(g, r):  # one pair at a time: five filtered volumes in memory
            a, b = a[None], b[None]
            mu_x, mu_y = local_mean(a), local_mean(b)
            sigma_x = local_mean(a * a) - mu_x * mu_x
            sigma_y = local_mean(b * b) - mu_y * mu_y
            sigma_xy = local_mean(a * b) - mu_x * mu_y
            cs = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
            ssim = ((2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)) * cs
            out.append(float(ssim.mean()))
    return np.asarray(out, dtype=np.float64)


def psnr_pairs(generated: Any, reference: Any, *, data_range: float) -> np.ndarray:
    """PSNR (dB) of each pair ``(generated[i], reference[i])`` (MONAI ``PSNRMetric``).

    ``20 log10(data_range) - 10 log10(MSE)`` over all voxels of the volume.

    Returns
    -------
    ndarray, shape (n,)
        ``inf`` for identical pairs.
    """
    from monai.metrics import PSNRMetric

    g, r = _volumes(generated, reference)
    return PSNRMetric(max_val=_data_range(data_range))(g, r).reshape(-1).double().numpy()


# --------------------------------------------------------------------------- network features
def unet_bottleneck(model: Any) -> Any:
    """The bottleneck block of a MONAI ``UNet`` (the submodule of its innermost skip connection)."""
    from monai.networks.layers import SkipConnection

    skips = [m for m in model.modules() if isinstance(m, SkipConnection)]
    if not skips:
        raise ValueError(f"{type(model).__name__} has no MONAI SkipConnection: pass 'layers' explicitly")
    return skips[-1].submodule


def network_features(
    model: Any,
    images: Any,
    *,
    layers: Sequence[str] | None = None,
    batch_size: int = 4,
    device: str = "auto",
) -> np.ndarray:
    """Global-average-pooled activations of a trained 3D network, one row per image.

    Parameters
    ----------
    model : torch.nn.Module
        A network trained in this project (e.g. the ROI-segmentation U-Net).
    images : array-like, shape (n, X, Y, Z) or (n, C, X, Y, Z)
        Inputs, normalised as the network expects.
    layers : sequence of str, optional
        Names (``model.named_modules()``) whose outputs are pooled and
        concatenated in this order; default the MONAI U-Net bottleneck
        (:func:`unet_bottleneck`).
    batch_size : int
    device : {"auto", "cpu", "cuda"}

    Returns
    -------
    ndarray of float64, shape (n, total channels)
    """
    import torch

    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[:, None]
    if arr.ndim != 5 or len(arr) == 0:
        raise ValueError(f"'images' must be (n, X, Y, Z) or (n, C, X, Y, Z) with n >= 1; got shape {arr.shape}")
    batch_size = check_int("batch_size", batch_size, 1)
    dev = resolve_device(device)
    if layers is None:
        modules = [unet_bottleneck(model)]
    else:
        named = dict(model.named_modules())
        unknown = [name for name in layers if name not in named]
        if unknown or not layers:
            raise ValueError(f"'layers' must name modules of the model; unknown: {unknown or list(layers)}")
        modules = [named[name] for name in layers]
    captured: list[torch.Tensor] = []

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        captured.append(output.detach().mean(dim=tuple(range(2, output.ndim))).double().cpu())

    handles = [m.register_forward_hook(hook) for m in modules]
    was_training = model.training
    first_param = next(model.parameters(), None)
    home = first_param.device if first_param is not None else torch.device("cpu")
    rows = []
    try:
        model.eval().to(dev)
        with torch.no_grad():
            for start in range(0, len(arr), batch_size):
                captured.clear()
                model(torch.from_numpy(arr[start:start + batch_size]).to(dev))
                rows.append(torch.cat(captured, dim=1).numpy())
    finally:
        for h in handles:
            h.remove()
        model.to(home).train(was_training)
    return np.concatenate(rows)


# --------------------------------------------------------------------------- novelty (non-copy check)
def cosine_similarity_matrix(a: Any, b: Any, *, center: bool = False) -> np.ndarray:
    """Cosine similarity between every row of ``a`` and every row of ``b`` (images are flattened).

    ``center=True`` subtracts each image's mean first (Pearson correlation).
    Passing the same object as ``a`` and ``b`` computes the symmetric matrix
    once. The products run in float32 (whole brain volumes: ~1e6 voxels per
    image; the similarities agree with float64 to ~1e-6), norms and the result
    are float64.
    """

    def unit_rows(arr: Any) -> np.ndarray:
        x = np.asarray(arr, dtype=np.float32).reshape(len(arr), -1)
        if center:
            x = x - x.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        if (norms == 0).any():
            raise ValueError("an image has zero norm; cosine similarity is undefined")
        return x / norms[:, None].astype(np.float32)

    x = unit_rows(a)
    if b is a:
        return (x @ x.T).astype(np.float64)
    y = unit_rows(b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"images differ in size: {x.shape[1]} vs {y.shape[1]} voxels")
    return (x @ y.T).astype(np.float64)


@dataclass(frozen=True)
class NonCopyResult:
    """Nearest-neighbour similarities of synthetic and real images (the seed's Fig. 4).

    Attributes
    ----------
    synthetic_nn : ndarray, shape (n_synthetic,)
        Each synthetic image's cosine similarity to its nearest real image.
    synthetic_nn_index : ndarray of int, shape (n_synthetic,)
        Row of that real image.
    real_nn : ndarray, shape (n_real,)
        Each real image's similarity to its nearest real image of another subject.
    statistic, pvalue : float
        Mann-Whitney U test of ``synthetic_nn`` vs ``real_nn``.
    alternative : str
        ``"less"``: synthetic images are *less* similar to their nearest real
        image than real images are to each other (no copying).
    """

    synthetic_nn: np.ndarray
    synthetic_nn_index: np.ndarray
    real_nn: np.ndarray
    statistic: float
    pvalue: float
    alternative: str

    def summary(self) -> dict[str, float | str]:
        """Means, SDs and medians of both similarity sets (distance = 1 - similarity) and the test."""
        out: dict[str, float | str] = {}
        for name, values in (("synthetic", self.synthetic_nn), ("real", self.real_nn)):
            out[f"{name}_mean"] = float(values.mean())
            out[f"{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            out[f"{name}_median"] = float(np.median(values))
        out.update(statistic=self.statistic, pvalue=self.pvalue, alternative=self.alternative)
        return out


def nearest_neighbour_similarity(
    synthetic: Any,
    real: Any,
    *,
    real_groups: Sequence[Any] | None = None,
    center: bool = False,
    alternative: str = "less",
) -> NonCopyResult:
    """Non-copy check: synthetic-to-real vs real-to-real nearest-neighbour cosine similarity.

    Parameters
    ----------
    synthetic : array-like, shape (m, ...)
        Synthetic images.
    real : array-like, shape (n, ...)
        Real training images of the same fold (n >= 2).
    real_groups : sequence, optional
        Subject id per real image: a real image's neighbours exclude images
        of its own subject (repeat visits are not "other" images). Default:
        each image is its own subject.
    center : bool
        Subtract each image's mean before the cosine (Pearson correlation).
    alternative : {"less", "two-sided", "greater"}
        Mann-Whitney alternative for ``synthetic_nn`` vs ``real_nn``.

    Returns
    -------
    NonCopyResult
    """
    check_choice("alternative", alternative, _ALTERNATIVES)
    n_real = len(real)
    if n_real < 2 or len(synthetic) < 1:
        raise ValueError(f"need >= 1 synthetic and >= 2 real images; got {len(synthetic)} and {n_real}")
    groups = np.arange(n_real) if real_groups is None else np.asarray([str(g) for g in real_groups])
    if len(groups) != n_real:
        raise ValueError(f"'real_groups' has {len(groups)} entries for {n_real} real images")
    sim_sr = cosine_similarity_matrix(synthetic, real, center=center)
    sim_rr = cosine_similarity_matrix(real, real, center=center)
    sim_rr[groups[:, None] == groups[None, :]] = -np.inf
    if np.isneginf(sim_rr).all(axis=1).any():
        raise ValueError("every real image needs a real image of another subject")
    syn_nn = sim_sr.max(axis=1)
    real_nn = sim_rr.max(axis=1)
    test = stats.mannwhitneyu(syn_nn, real_nn, alternative=alternative)
    return NonCopyResult(syn_nn, sim_sr.argmax(axis=1), real_nn, float(test.statistic), float(test.pvalue),
                         alternative)


# --------------------------------------------------------------------------- feature-level fidelity
def energy_distance(x: Any, y: Any, *, standardize: bool = True) -> float:
    """Multivariate energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic).

    Parameters
    ----------
    x : array-like, shape (n, d)
        Reference sample (the real data).
    y : array-like, shape (m, d)
        Compared sample (e.g. TDA or GBA features).
    standardize : bool
        Z-score both with the column mean / SD of ``x`` first (constant
        columns are only centred), so that every feature counts alike.

    Returns
    -------
    float
        >= 0; 0 iff the two empirical distributions coincide. In one
        dimension it equals ``scipy.stats.energy_distance(x, y) ** 2``.
    """
    from scipy.spatial.distance import cdist

    a, b = _pair(x, y, ("x", "y"))
    if standardize:
        a, b = _zscore(a, b)
    return float(2.0 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())


def kmeans_ari(
    features: Any,
    labels: Sequence[Any],
    *,
    n_clusters: int = 2,
    seed: int = 0,
    n_init: int = 10,
    standardize: bool = True,
) -> float:
    """Adjusted Rand index between K-means clusters of ``features`` and the class ``labels``.

    Parameters
    ----------
    features : array-like, shape (n, d)
    labels : sequence, length n
        Class of each row (e.g. MS / HC).
    n_clusters, seed, n_init
        scikit-learn ``KMeans`` settings.
    standardize : bool
        Z-score the columns (over all rows) first.

    Returns
    -------
    float
        1 for clusters equal to the classes, about 0 for unrelated ones.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    a = _matrix(features, "features", min_rows=2)
    lab = np.asarray(labels)
    if lab.shape != (len(a),):
        raise ValueError(f"'labels' must have one entry per row ({len(a)}); got shape {lab.shape}")
    n_clusters = check_int("n_clusters", n_clusters, 2)
    if n_clusters > len(a):
        raise ValueError(f"'n_clusters' ({n_clusters}) exceeds the number of rows ({len(a)})")
    if standardize:
        (a,) = _zscore(a)
    km = KMeans(n_clusters=n_clusters, n_init=check_int("n_init", n_init, 1), random_state=check_int("seed", seed, 0))
    return float(adjusted_rand_score(lab, km.fit_predict(a)))


def ks_per_feature(reference: Any, other: Any, *, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Two-sample Kolmogorov-Smirnov test of every feature (``scipy.stats.ks_2samp``, two-sided).

    Parameters
    ----------
    reference : array-like or DataFrame, shape (n, d)
        Real features.
    other : array-like or DataFrame, shape (m, d)
        Augmented / synthetic features (same columns).
    names : sequence of str, optional
        Feature names; default the DataFrame columns or ``f0, f1, ...``.

    Returns
    -------
    DataFrame
        Index ``feature``; columns ``statistic`` and ``pvalue``.
    """
    if names is None and isinstance(reference, pd.DataFrame):
        names = [str(c) for c in reference.columns]
        if isinstance(other, pd.DataFrame) and list(other.columns) != list(reference.columns):
            raise ValueError("'reference' and 'other' have different columns")
    a, b = _pair(reference, other, ("reference", "other"))
    names = [f"f{i}" for i in range(a.shape[1])] if names is None else [str(n) for n in names]
    if len(names) != a.shape[1]:
        raise ValueError(f"'names' has {len(names)} entries for {a.shape[1]} features")
    res = stats.ks_2samp(a, b, axis=0)
    return pd.DataFrame({"statistic": np.atleast_1d(res.statistic), "pvalue": np.atleast_1d(res.pvalue)},
                        index=pd.Index(names, name="feature"))


def ks_summary(table: pd.DataFrame, *, alpha: float = 0.05) -> dict[str, float]:
    """Mean and SD of the KS statistics and the share of features with ``p <= alpha``."""
    if not isinstance(table, pd.DataFrame) or not {"statistic", "pvalue"} <= set(table.columns):
        raise ValueError("'table' must be a DataFrame from ks_per_feature (columns 'statistic', 'pvalue')")
    if not 0 < alpha < 1:
        raise ValueError(f"'alpha' must be in (0, 1); got {alpha!r}")
    stat = table["statistic"].to_numpy(dtype=float)
    return {
        "mean_statistic": float(stat.mean()), "sd_statistic": float(stat.std(ddof=1)) if len(stat) > 1 else 0.0,
        "n_features": int(len(stat)), "n_significant": int((table["pvalue"] <= alpha).sum()),
        "fraction_significant": float((table["pvalue"] <= alpha).mean()), "alpha": float(alpha),
    }


def umap_embedding(
    features: Any,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    standardize: bool = True,
) -> np.ndarray:
    """Two-dimensional UMAP embedding of feature rows (e.g. real, TDA and GBA stacked).

    Parameters
    ----------
    features : array-like or Mapping[str, array-like]
        ``(n, d)`` rows, or named blocks stacked in order (the caller keeps
        the block sizes to label points by source).
    n_neighbors, min_dist
        UMAP settings (``n_neighbors`` is capped at ``n - 1``).
    seed : int
        UMAP ``random_state`` (deterministic, single-threaded).
    standardize : bool
        Z-score the columns over all rows first.

    Returns
    -------
    ndarray, shape (n, 2)
    """
    import umap

    if isinstance(features, Mapping):
        features = np.vstack([_matrix(v, f"features[{k!r}]") for k, v in features.items()])
    a = _matrix(features, "features", min_rows=3)
    n_neighbors = min(check_int("n_neighbors", n_neighbors, 2), len(a) - 1)
    if not 0 <= min_dist <= 1:
        raise ValueError(f"'min_dist' must be in [0, 1]; got {min_dist!r}")
    if standardize:
        (a,) = _zscore(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value 1 overridden.*", category=UserWarning)
        reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=float(min_dist),
                            random_state=check_int("seed", seed, 0))
        return np.asarray(reducer.fit_transform(a), dtype=np.float64)
