"""Reliability of features under re-processing: intraclass correlation (ICC) and perturbations.

Seed 001 keeps only radiomic features that are stable when the processing is
repeated (ICC >= 0.90 on 30 subjects). :func:`icc_stability` computes all six
Shrout-Fleiss / McGraw-Wong ICC forms for many features at once (checked against
:func:`pingouin.intraclass_corr`); :func:`perturbed_mask` and
:func:`perturbed_image` simulate a re-segmentation (one-voxel erosion or
dilation) and a re-acquisition (fresh noise).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from msutils.core.validation import check_choice
from msutils.data.leakage import record_fit

__all__ = [
    "IccResult",
    "ICC_TYPES",
    "ICC_ALIASES",
    "icc_stability",
    "icc_table",
    "perturbed_mask",
    "perturbed_image",
]

logger = logging.getLogger(__name__)

ICC_TYPES: tuple[str, ...] = ("ICC(1,1)", "ICC(A,1)", "ICC(C,1)", "ICC(1,k)", "ICC(A,k)",
                               "ICC(C,k)")
"""ICC forms, named as :func:`pingouin.intraclass_corr` (>= 0.7, McGraw & Wong notation)."""

ICC_ALIASES: dict[str, str] = {"ICC1": "ICC(1,1)", "ICC2": "ICC(A,1)", "ICC3": "ICC(C,1)",
                               "ICC1k": "ICC(1,k)", "ICC2k": "ICC(A,k)", "ICC3k": "ICC(C,k)"}
"""Shrout & Fleiss names (pingouin < 0.7) -> the names of :data:`ICC_TYPES`."""


# ----------------------------------------------------------------------------
# ICC stability
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class IccResult:
    """Per-feature ICC between two extractions and the features kept.

    Attributes
    ----------
    icc : pandas.Series
        ICC of every feature (NaN when undefined, e.g. a constant feature).
    keep : list of str
        Features with ``icc >= threshold`` (input order).
    drop : list of str
        The other features (NaN included).
    icc_type : str
        ICC form (pingouin naming, see :data:`ICC_TYPES`).
    threshold : float
        Keep threshold.
    subjects : list
        Subjects the ICC was computed on.
    """

    icc: pd.Series
    keep: list[str]
    drop: list[str]
    icc_type: str
    threshold: float
    subjects: list[Any] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """Table ``feature -> icc, kept`` for the notebook."""
        return pd.DataFrame({"icc": self.icc, "kept": self.icc.index.isin(self.keep)})


def icc_table(ratings: np.ndarray) -> dict[str, np.ndarray]:
    """All six Shrout-Fleiss ICC forms of many features at once.

    Parameters
    ----------
    ratings : numpy.ndarray, shape (n_subjects, n_raters, n_features)
        One value per subject, rater (here: extraction run) and feature.

    Returns
    -------
    dict
        ``{name in ICC_TYPES} -> array (n_features,)``: ICC(1,1) one-way random,
        ICC(A,1) absolute agreement (Shrout-Fleiss ICC(2,1)), ICC(C,1) consistency
        (Shrout-Fleiss ICC(3,1)) and their average-measure ``k`` forms, from the
        two-way ANOVA mean squares as in :func:`pingouin.intraclass_corr`.
    """
    y = np.asarray(ratings, dtype=float)
    if y.ndim != 3:
        raise ValueError(f"'ratings' must have shape (subjects, raters, features); got {y.shape}")
    n, k, _ = y.shape
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs >= 2 subjects and >= 2 raters; got {n} and {k}")
    grand = y.mean(axis=(0, 1))
    ss_total = ((y - grand) ** 2).sum(axis=(0, 1))
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum(axis=0)
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum(axis=0)
    ss_err = ss_total - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    msw = (ss_cols + ss_err) / (n * (k - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "ICC(1,1)": (msr - msw) / (msr + (k - 1) * msw),
            "ICC(A,1)": (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n),
            "ICC(C,1)": (msr - mse) / (msr + (k - 1) * mse),
            "ICC(1,k)": (msr - msw) / msr,
            "ICC(A,k)": (msr - mse) / (msr + (msc - mse) / n),
            "ICC(C,k)": (msr - mse) / msr,
        }


def icc_stability(test: pd.DataFrame, retest: pd.DataFrame, subjects: Sequence[Any] | None = None,
                  *, threshold: float = 0.90, icc_type: str = "ICC(A,1)",
                  engine: Literal["numpy", "pingouin"] = "numpy", fit_log: Any = None
                  ) -> IccResult:
    """Feature stability between two extractions of the same subjects (seed: ICC >= 0.90).

    The seed re-processed 30 random subjects and kept the radiomic features with an
    "excellent" ICC >= 0.90 (Koo & Li 2016 bands) without naming the ICC form. The
    default here is ``"ICC(A,1)"``: single measurement, absolute agreement
    (Shrout-Fleiss ICC(2,1), pingouin < 0.7 ``"ICC2"``; the form Koo & Li recommend
    for test-retest), so a systematic shift between the two extractions counts as
    instability. ``"ICC(C,1)"`` (consistency, Shrout-Fleiss ICC(3,1), ``"ICC3"``)
    ignores such shifts.

    Parameters
    ----------
    test, retest : pandas.DataFrame
        Rows = subjects (index = subject id), columns = features; the same index and
        columns in both (row/column order may differ).
    subjects : sequence, optional
        Restrict to these subjects (default: all rows). Choose them among the
        training subjects: the keep list is a fitted quantity.
    threshold : float
        Keep features with ``ICC >= threshold``.
    icc_type : str
        One of :data:`ICC_TYPES` (pingouin naming) or an alias of :data:`ICC_ALIASES`
        (``"ICC2"``, ``"ICC3"``, ...).
    engine : {"numpy", "pingouin"}
        ``"numpy"``: vectorised ANOVA formulas (:func:`icc_table`, fast);
        ``"pingouin"``: :func:`pingouin.intraclass_corr` per feature (slow, reference).
    fit_log : object, optional
        Records ``subjects`` under ``"selection.icc_stability"``.

    Returns
    -------
    IccResult
    """
    check_choice("icc_type", icc_type, [*ICC_TYPES, *ICC_ALIASES])
    icc_type = ICC_ALIASES.get(icc_type, icc_type)
    check_choice("engine", engine, ["numpy", "pingouin"])
    for name, df in (("test", test), ("retest", retest)):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"'{name}' must be a pandas DataFrame; got {type(df).__name__}")
        if df.index.has_duplicates:
            raise ValueError(f"'{name}' has duplicated subjects: "
                             f"{df.index[df.index.duplicated()].tolist()[:5]}")
    if set(test.columns) != set(retest.columns):
        raise ValueError("'test' and 'retest' have different columns: "
                         f"only in test {sorted(set(test.columns) - set(retest.columns))[:5]}, "
                         f"only in retest {sorted(set(retest.columns) - set(test.columns))[:5]}")
    subs = list(test.index) if subjects is None else list(subjects)
    for name, df in (("test", test), ("retest", retest)):
        missing = [s for s in subs if s not in df.index]
        if missing:
            raise ValueError(f"subjects missing from '{name}': {missing[:5]}")
    if len(subs) < 3:
        raise ValueError(f"ICC needs at least 3 subjects; got {len(subs)}")
    cols = list(test.columns)
    a = test.loc[subs, cols].to_numpy(dtype=float)
    b = retest.loc[subs, cols].to_numpy(dtype=float)
    ratings = np.stack([a, b], axis=1)
    if engine == "numpy":
        icc = icc_table(ratings)[icc_type]
        icc[~np.isfinite(ratings).all(axis=(0, 1))] = np.nan
    else:
        import pingouin as pg

        icc = np.full(len(cols), np.nan)
        targets = np.repeat(np.arange(len(subs)), 2)
        raters = np.tile([0, 1], len(subs))
        for j in range(len(cols)):
            vals = ratings[:, :, j].reshape(-1)
            if not np.isfinite(vals).all() or np.ptp(vals) == 0:
                continue
            long = pd.DataFrame({"t": targets, "r": raters, "y": vals})
            with warnings.catch_warnings():  # pingouin's own pandas deprecations
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                tab = pg.intraclass_corr(data=long, targets="t", raters="r", ratings="y")
            icc[j] = float(tab.set_index("Type").loc[icc_type, "ICC"])
    series = pd.Series(icc, index=cols, name=icc_type)
    keep_mask = (series >= float(threshold)).to_numpy()
    record_fit(fit_log, "selection.icc_stability", subs)
    logger.info("icc_stability: %d of %d features with %s >= %.2f", keep_mask.sum(), len(cols),
                icc_type, threshold)
    return IccResult(icc=series, keep=[c for c, k in zip(cols, keep_mask) if k],
                     drop=[c for c, k in zip(cols, keep_mask) if not k], icc_type=icc_type,
                     threshold=float(threshold), subjects=subs)


def _rng(rng: Any) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def perturbed_mask(mask: np.ndarray, rng: Any = None,
                   mode: Literal["erode", "dilate", "random"] = "random") -> np.ndarray:
    """One-voxel erosion or dilation of a binary or label mask (a re-segmentation proxy).

    Uses 6-connectivity (face neighbours, :func:`scipy.ndimage.generate_binary_structure`
    with connectivity 1). For a label array, *erode* sets to 0 every labelled voxel
    with a face neighbour of another label (outside the array counts as background);
    *dilate* gives every background voxel with a labelled face neighbour the largest
    neighbouring label, and leaves labelled voxels unchanged. For a binary mask these
    are :func:`scipy.ndimage.binary_erosion` / ``binary_dilation``.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean or non-negative integer array (not modified).
    rng : numpy.random.Generator or int, optional
        Draws the operation when ``mode="random"`` (erode or dilate, p = 0.5).
    mode : {"erode", "dilate", "random"}

    Returns
    -------
    numpy.ndarray
        Perturbed mask, same shape and dtype.
    """
    from scipy import ndimage

    check_choice("mode", mode, ["erode", "dilate", "random"])
    arr = np.asarray(mask)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"'mask' must be a boolean or integer array; got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        raise ValueError("'mask' labels must be >= 0")
    if mode == "random":
        mode = "erode" if _rng(rng).random() < 0.5 else "dilate"
    labels = arr.astype(np.int64)
    cross = ndimage.generate_binary_structure(arr.ndim, 1)
    if mode == "erode":
        lo = ndimage.grey_erosion(labels, footprint=cross, mode="constant", cval=0)
        hi = ndimage.grey_dilation(labels, footprint=cross, mode="constant", cval=0)
        out = np.where((lo == labels) & (hi == labels), labels, 0)
    else:
        hi = ndimage.grey_dilation(labels, footprint=cross, mode="constant", cval=0)
        out = np.where(labels == 0, hi, labels)
    return out.astype(arr.dtype)


def perturbed_image(image: np.ndarray, rng: Any = None, noise_sd_fraction: float = 0.02, *,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """The image with a fresh Gaussian noise realisation (a re-acquisition proxy).

    ``sd = noise_sd_fraction * SD(image within mask)`` (the mask defaults to the
    non-zero voxels). Gaussian noise approximates the Rician noise of magnitude MR
    images at the SNR of brain tissue.

    Parameters
    ----------
    image : numpy.ndarray
        Intensity image (not modified).
    rng : numpy.random.Generator or int, optional
        Noise generator (seeded for reproducibility).
    noise_sd_fraction : float
        Noise SD as a fraction of the tissue intensity SD (>= 0).
    mask : numpy.ndarray, optional
        Voxels whose intensity SD sets the noise level.

    Returns
    -------
    numpy.ndarray
        ``float32`` perturbed image.
    """
    if not np.isscalar(noise_sd_fraction) or not float(noise_sd_fraction) >= 0:
        raise ValueError(f"'noise_sd_fraction' must be >= 0; got {noise_sd_fraction!r}")
    img = np.asarray(image, dtype=np.float32)
    if mask is not None:
        sel = np.asarray(mask).astype(bool)
        if sel.shape != img.shape:
            raise ValueError(f"'mask' shape {sel.shape} differs from image shape {img.shape}")
    else:
        sel = img != 0
    ref = img[sel] if sel.any() else img.reshape(-1)
    sd = float(noise_sd_fraction) * float(ref.std())
    noise = _rng(rng).normal(0.0, sd, size=img.shape) if sd > 0 else np.zeros(img.shape)
    return (img + noise).astype(np.float32)
