"""Brain volumes and their normative z-scores (seed 001).

The seed converts whole-brain and GM-region volumes into z-scores "adjusting for
age, sex and estimated total intracranial volume". :class:`NormativeZScorer` does
this as a scikit-learn transformer: per volume, an ordinary least-squares fit
``volume ~ 1 + age + sex + TIV`` on the training subjects, then
``z = (volume - prediction) / residual SD`` for any subject, with the training fit.

The volume helpers count voxels: ``mL = n_voxels * prod(spacing) / 1000`` for
spacing in mm.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from msutils.core.validation import check_frame
from msutils.data.leakage import KeepFitLogOnClone, record_fit, row_subject_ids

__all__ = [
    "NormativeZScorer",
    "encode_sex",
    "voxel_volume_ml",
    "mask_volume",
    "roi_volumes",
    "whole_brain_volume",
    "lesion_volume",
    "total_intracranial_volume",
    "cohort_volumes",
]

logger = logging.getLogger(__name__)

_SEX_CODES = {"M": 1.0, "F": 0.0}


def encode_sex(values: pd.Series) -> pd.Series:
    """``sex`` as a number: ``M -> 1``, ``F -> 0``; numeric input is returned as float.

    Raises
    ------
    ValueError
        Naming the rows with any other value.
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(float)
    mapped = values.map(lambda v: _SEX_CODES.get(str(v).strip().upper(), np.nan))
    bad = mapped.isna()
    if bad.any():
        raise ValueError(f"column '{values.name}' must hold 'M' or 'F'; got "
                         f"{values[bad].tolist()[:5]} at rows {values.index[bad].tolist()[:5]}")
    return mapped.astype(float)


class NormativeZScorer(KeepFitLogOnClone, TransformerMixin, BaseEstimator):
    """Volumes as z-scores adjusted for covariates (seed: age, sex and TIV).

    ``fit`` regresses every volume column on ``1 + covariates`` by ordinary least
    squares on the training rows; ``transform`` returns
    ``(volume - X_cov @ beta) / s`` where ``s = sqrt(RSS / (n - rank))`` is the
    training residual standard error (statsmodels ``sqrt(OLSResults.scale)``).
    A covariate that is constant on the training rows (e.g. all subjects of one
    sex) cannot be estimated: it is left out with a warning.

    Which subjects form the reference is the caller's choice (healthy controls of
    the training split when the cohort has them, else the training patients as in
    the seed, which had no controls).

    Parameters
    ----------
    covariates : sequence of str
        Covariate columns; ``sex`` may hold ``M``/``F`` (coded M = 1, F = 0).
    columns : sequence of str, optional
        Volume columns (default: every numeric column that is not a covariate).
    fit_log : object, optional
        Records the training subject ids under ``"volumes.normative"``.

    Attributes
    ----------
    columns_ : list of str
        Volume columns z-scored.
    covariates_ : list of str
        Covariates used in the fit (constant ones left out).
    coef_ : pandas.DataFrame
        Regression coefficients, index ``["intercept", *covariates_]``, one column per volume.
    resid_sd_ : pandas.Series
        Training residual standard error of each volume.
    """

    _log_step = "volumes.normative"

    def __init__(self, covariates: Sequence[str] = ("age", "sex", "tiv"),
                 columns: Sequence[str] | None = None, fit_log: Any = None) -> None:
        self.covariates = covariates
        self.columns = columns
        self.fit_log = fit_log

    def _covariate_frame(self, X: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
        missing = [c for c in covariates if c not in X.columns]
        if missing:
            raise ValueError(f"'X' lacks covariate columns {missing}")
        cov = pd.DataFrame(index=X.index)
        for c in covariates:
            cov[c] = encode_sex(X[c]) if c == "sex" else X[c]
        return check_frame(cov, "covariates")

    def fit(self, X: pd.DataFrame, y: Any = None, *, subject_ids: Iterable[Any] | None = None
            ) -> "NormativeZScorer":
        """Fit ``volume ~ 1 + covariates`` on the training rows."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"'X' must be a pandas DataFrame; got {type(X).__name__}")
        covs = list(self.covariates)
        if self.columns is None:
            cols = [c for c in X.columns if c not in covs and c != "sex"
                    and pd.api.types.is_numeric_dtype(X[c])]
        else:
            cols = list(self.columns)
            missing = [c for c in cols if c not in X.columns]
            if missing:
                raise ValueError(f"'X' lacks volume columns {missing[:5]}")
        if not cols:
            raise ValueError("no volume column to z-score")
        ids = row_subject_ids(X, subject_ids)
        cov = self._covariate_frame(X, covs)
        vols = check_frame(X[cols], "volumes")
        constant = [c for c in covs if np.ptp(cov[c].to_numpy()) == 0]
        if constant:
            logger.warning("NormativeZScorer: covariate(s) %s constant on the training rows; "
                           "left out of the model", constant)
        used = [c for c in covs if c not in constant]
        design = np.column_stack([np.ones(len(X)), cov[used].to_numpy(dtype=float)])
        rank = int(np.linalg.matrix_rank(design))
        dof = len(X) - rank
        if dof < 1:
            raise ValueError(f"NormativeZScorer needs more training rows than model terms "
                             f"({rank}); got {len(X)}")
        values = vols.to_numpy(dtype=float)
        beta, *_ = np.linalg.lstsq(design, values, rcond=None)
        resid = values - design @ beta
        sd = np.sqrt((resid**2).sum(axis=0) / dof)
        zero = sd == 0
        if zero.any():
            raise ValueError(f"volume column(s) {[c for c, z in zip(cols, zero) if z][:5]} are "
                             f"perfectly explained by the covariates (residual SD 0)")
        self.columns_ = cols
        self.covariates_ = used
        self.coef_ = pd.DataFrame(beta, index=["intercept", *used], columns=cols)
        self.resid_sd_ = pd.Series(sd, index=cols, name="resid_sd")
        self.n_train_ = len(X)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        record_fit(self.fit_log, self._log_step, ids)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """z-scores of the volume columns of any rows, with the training fit."""
        check_is_fitted(self, "coef_")
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"'X' must be a pandas DataFrame; got {type(X).__name__}")
        missing = [c for c in self.columns_ if c not in X.columns]
        if missing:
            raise ValueError(f"'X' lacks volume columns {missing[:5]}")
        cov = self._covariate_frame(X, self.covariates_)
        vols = check_frame(X[self.columns_], "volumes")
        design = np.column_stack([np.ones(len(X)), cov.to_numpy(dtype=float)])
        pred = design @ self.coef_.to_numpy()
        z = (vols.to_numpy(dtype=float) - pred) / self.resid_sd_.to_numpy()
        return pd.DataFrame(z, index=X.index, columns=self.columns_)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the z-scored columns (same as the volume columns)."""
        check_is_fitted(self, "coef_")
        return np.asarray(self.columns_, dtype=object)


# ----------------------------------------------------------------------------
# volumes from masks
# ----------------------------------------------------------------------------
def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL for a spacing in mm."""
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size == 0 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"'spacing' must be positive voxel sizes in mm; got {list(spacing)}")
    return float(np.prod(sp)) / 1000.0


def _check_spacing(array: np.ndarray, spacing: Sequence[float]) -> float:
    if len(spacing) != array.ndim:
        raise ValueError(f"'spacing' has {len(spacing)} values but the array has "
                         f"{array.ndim} dimensions")
    return voxel_volume_ml(spacing)


def mask_volume(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume (mL) of the non-zero voxels of ``mask``."""
    arr = np.asarray(mask)
    return float(np.count_nonzero(arr)) * _check_spacing(arr, spacing)


def roi_volumes(label_array: np.ndarray, labels: Mapping[int, str], spacing: Sequence[float],
                *, roi_sets: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
    """Volume (mL) of each labelled region, and of unions of labels.

    Parameters
    ----------
    label_array : numpy.ndarray
        Integer label image (0 = background).
    labels : mapping int -> str
        Label value -> region name (e.g. the manifest's ``roi_labels``). A label
        absent from the image has volume 0.
    spacing : sequence of float
        Voxel size in mm, one per dimension.
    roi_sets : mapping str -> sequence of int, optional
        Extra named regions as unions of label values (e.g. ``whole_gm``).

    Returns
    -------
    dict
        Region name -> volume in mL (``labels`` first, then ``roi_sets``).
    """
    arr = np.asarray(label_array)
    if arr.dtype.kind not in "biu":
        if arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"'label_array' must hold integer labels; got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError("'label_array' labels must be >= 0")
    voxel = _check_spacing(arr, spacing)
    counts = np.bincount(arr.reshape(-1).astype(np.int64))

    def count(label: int) -> int:
        return int(counts[label]) if 0 <= int(label) < counts.size else 0

    out = {str(name): count(int(value)) * voxel for value, name in labels.items()}
    for name, values in (roi_sets or {}).items():
        out[str(name)] = sum(count(int(v)) for v in set(values)) * voxel
    return out


def whole_brain_volume(label_array: np.ndarray, spacing: Sequence[float]) -> float:
    """Whole-brain volume (mL): every labelled voxel (GM + WM, lesions included, no CSF).

    With the project's label convention (0 = background/CSF; lesion voxels keep the
    white-matter label) this is the seed's WBV (GM + WM from the segmentation).
    """
    return mask_volume(np.asarray(label_array) > 0, spacing)


def lesion_volume(lesion_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Total lesion volume (mL) of a binary lesion mask."""
    return mask_volume(lesion_mask, spacing)


def total_intracranial_volume(brain_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Total intracranial volume (mL) from an intracranial (brain + CSF) mask."""
    return mask_volume(brain_mask, spacing)


def cohort_volumes(cohort: Any, *, scan_ids: Sequence[str] | None = None,
                   roi_sets: Mapping[str, Sequence[int]] | None = None) -> pd.DataFrame:
    """Volumes of every scan of a cohort: ROIs, WBV, lesion volume and TIV (mL).

    Uses the ``roi_labels``, ``lesion_mask`` and ``brain_mask`` columns when the
    cohort has them (a column without a path gives NaN), with the voxel size from
    each image header.

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
        Needs ``table`` (index scan_id), ``labels`` and ``image(scan_id, column)``.
    scan_ids : sequence of str, optional
        Scans to measure (default: all).
    roi_sets : mapping, optional
        Extra regions as unions of labels (default: none).

    Returns
    -------
    pandas.DataFrame
        Index scan_id; columns ``<roi>`` for every label, the ``roi_sets`` names,
        ``wbv_ml``, ``lesion_volume_ml`` and ``tiv_ml``.
    """
    table = cohort.table
    ids = list(table.index if scan_ids is None else scan_ids)
    labels = dict(cohort.labels)
    rows = {}
    for sid in ids:
        row: dict[str, float] = {}

        def path_of(col: str) -> str | None:
            value = table.at[sid, col] if col in table.columns else None
            return str(value) if isinstance(value, (str, os.PathLike)) and str(value) else None

        if path_of("roi_labels"):
            img = cohort.image(sid, "roi_labels")
            lab = np.asarray(np.rint(np.asanyarray(img.dataobj)), dtype=np.int64)
            spacing = tuple(float(s) for s in img.header.get_zooms()[:lab.ndim])
            row.update(roi_volumes(lab, labels, spacing, roi_sets=roi_sets))
            row["wbv_ml"] = whole_brain_volume(lab, spacing)
        else:
            row.update({name: np.nan for name in labels.values()})
            row.update({name: np.nan for name in (roi_sets or {})})
            row["wbv_ml"] = np.nan
        for col, out in (("lesion_mask", "lesion_volume_ml"), ("brain_mask", "tiv_ml")):
            if path_of(col):
                img = cohort.image(sid, col)
                arr = np.asanyarray(img.dataobj) > 0.5
                row[out] = mask_volume(arr, img.header.get_zooms()[:arr.ndim])
            else:
                row[out] = np.nan
        rows[sid] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "scan_id"
    return out
