"""ComBat harmonization fitted on training centers, with a new-site step for unseen centers.

Model (Johnson et al. 2007, with covariates as in Fortin et al. 2018 / neuroCombat)
------------------------------------------------------------------------------------
For feature ``g``, scan ``j`` of batch (center) ``i``::

    x_ijg = alpha_g + c_j' beta_g + gamma_ig + sqrt(delta_ig) * sigma_g * e_ijg

:class:`ComBat` fits, on the training scans only,

- ``B_hat`` by least squares on the design ``[one-hot batch | covariates]``;
- the grand mean ``alpha_g`` = sample-weighted mean of the batch coefficients;
- the pooled variance ``sigma_g^2`` = mean squared residual;
- the covariate coefficients ``beta_g``;
- per batch, on the standardized data ``z = (x - alpha - c' beta) / sigma``, the
  location ``gamma_hat`` (batch mean) and scale ``delta_hat`` (batch variance,
  ddof 1), shrunk by **parametric empirical Bayes** with priors estimated, per
  batch, *across features* (``gamma ~ N(gamma_bar, tau^2)``,
  ``delta ~ InvGamma(a, b)`` by the method of moments) and the fixed-point
  iteration of neuroCombat's ``it_sol`` (same start, update order and stopping
  rule ``max relative change < conv``), so the estimates equal neuroCombat 0.2.12
  to rounding (tested).

A harmonized value is ``(z - gamma*) / sqrt(delta*) * sigma + alpha + c' beta``.

One safeguard beyond neuroCombat (``outlier_mads``): features whose batch
location or log scale is far out of line with the batch's other features keep
their own estimates and stay out of the priors (see :class:`ComBat`).

The new-site step
-----------------
A leave-one-center-out test center is a batch the fit has never seen (plain
ComBat, combatlearn and neuroCombat refuse it). :meth:`ComBat.transform` keeps
the training fit's ``alpha``, ``sigma^2`` and ``beta``, standardizes the new
center's scans with them and estimates that center's ``gamma*`` / ``delta*``
from its own standardized features exactly as a fitted batch's (the same
per-batch priors across features and the same iteration): only the unlabelled
features and the covariates of the new center are used, never its diagnoses.
Applied to a batch that *was* in the fit, the step returns that batch's fitted
estimates (tested), so seen and unseen centers go through one algorithm.

Covariates
----------
Numeric columns (encode sex as 0/1 first, e.g. with ``msutils.features.volumes.encode_sex``;
a 0/1 column is what neuroCombat's one-hot coding of a two-level categorical
gives). The diagnosis (or any outcome) must never be a covariate: it would be
needed at transform time, i.e. the held-out labels would be read; names in
:data:`FORBIDDEN_COVARIATES` are rejected.

Why not combatlearn
-------------------
``combatlearn`` (2.3.0, and 1.4-2.2 alike) estimates the empirical-Bayes priors
per feature *across batches* (``gamma_hat.mean(axis=0)``), not per batch across
features as Johnson et al. and neuroCombat do; with two training centers that
prior rests on two values per feature. It also cannot transform an unseen batch.
The reference of the tests is therefore neuroCombat (the seed's "NeuroComBat").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from msutils.core.validation import check_frame

__all__ = [
    "FORBIDDEN_COVARIATES",
    "SiteEstimates",
    "ComBat",
    "eb_parametric",
]

logger = logging.getLogger(__name__)

FORBIDDEN_COVARIATES: tuple[str, ...] = (
    "group", "diagnosis", "dx", "label", "labels", "y", "target", "class", "ms", "edss", "course",
)
"""Covariate names that are (or encode) the outcome and are refused."""


@dataclass(frozen=True)
class SiteEstimates:
    """Location / scale estimates of one batch.

    Attributes
    ----------
    batch : str
        Batch (center) name.
    n : int
        Scans of the batch.
    gamma_hat, delta_hat : pandas.Series
        Per-feature location (mean) and scale (variance, ddof 1) of the
        standardized data, before shrinkage.
    gamma_star, delta_star : pandas.Series
        Empirical-Bayes estimates (equal to the hats with ``eb=False``).
    priors : dict
        ``gamma_bar``, ``tau2``, ``a``, ``b`` of the batch and the number of
        ``iterations`` of the fixed point (0 without EB).
    seen : bool
        True for a batch of the fit, False for a new site.
    """

    batch: str
    n: int
    gamma_hat: pd.Series
    delta_hat: pd.Series
    gamma_star: pd.Series
    delta_star: pd.Series
    priors: dict[str, float]
    seen: bool

    def shift(self, pooled_sd: pd.Series) -> pd.Series:
        """Additive batch effect in feature units: ``gamma* x sigma``."""
        return self.gamma_star * pooled_sd

    def scale(self) -> pd.Series:
        """Multiplicative batch effect on the SD: ``sqrt(delta*)``."""
        return np.sqrt(self.delta_star)


def _aprior(delta_hat: np.ndarray) -> float:
    m = float(np.mean(delta_hat))
    s2 = float(np.var(delta_hat, ddof=1))
    return (2.0 * s2 + m**2) / s2


def _bprior(delta_hat: np.ndarray) -> float:
    m = float(np.mean(delta_hat))
    s2 = float(np.var(delta_hat, ddof=1))
    return (m * s2 + m**3) / s2


def _outlying(z: np.ndarray, k: float) -> np.ndarray:
    """Features whose batch mean or log variance is beyond ``k`` robust SDs of the batch's median."""
    g = z.mean(axis=0)
    d = z.var(axis=0, ddof=1)
    logd = np.log(np.where(d > 0, d, np.nan))
    out = np.zeros(z.shape[1], dtype=bool)
    for v in (g, logd):
        finite = np.isfinite(v)
        if finite.sum() < 3:
            continue
        med = np.median(v[finite])
        mad = 1.4826 * np.median(np.abs(v[finite] - med))
        if mad > 0:
            out |= finite & (np.abs(v - med) > k * mad)
    return out


def eb_parametric(
    z: np.ndarray,
    *,
    conv: float = 1e-4,
    max_iter: int = 10_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Parametric empirical-Bayes location/scale of one batch (Johnson et al. 2007).

    Parameters
    ----------
    z : ndarray, shape (n_scans, n_features)
        The batch's standardized data (at least 2 scans and 2 features).
    conv : float
        Stop when the largest relative change of gamma* and delta* falls below
        ``conv`` (neuroCombat's ``it_sol`` rule and default).
    max_iter : int
        Safety cap on the iterations (a warning is logged when reached).

    Returns
    -------
    gamma_hat, delta_hat, gamma_star, delta_star : ndarray, shape (n_features,)
    priors : dict
        ``gamma_bar``, ``tau2``, ``a``, ``b``, ``iterations``.
    """
    z = np.asarray(z, dtype=float)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 2:
        raise ValueError(f"'z' must be 2-D with >= 2 scans and >= 2 features; got shape {z.shape}")
    if not 0 < conv < 1:
        raise ValueError(f"'conv' must be in (0, 1); got {conv!r}")
    n = z.shape[0]
    g_hat = z.mean(axis=0)
    d_hat = z.var(axis=0, ddof=1)
    d_hat[d_hat == 0] = 1.0  # neuroCombat's convert_zeroes
    g_bar = float(g_hat.mean())
    t2 = float(g_hat.var(ddof=1))
    a, b = _aprior(d_hat), _bprior(d_hat)
    g_old, d_old = g_hat.copy(), d_hat.copy()
    it = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while True:
            g_new = (t2 * n * g_hat + d_old * g_bar) / (t2 * n + d_old)
            sum2 = ((z - g_new) ** 2).sum(axis=0)
            d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
            change = max(np.max(np.abs(g_new - g_old) / g_old), np.max(np.abs(d_new - d_old) / d_old))
            g_old, d_old = g_new, d_new
            it += 1
            if not change > conv:  # a NaN change (0/0) stops, as in neuroCombat
                break
            if it >= max_iter:
                logger.warning("eb_parametric: no convergence after %d iterations (change %.3g)", it, change)
                break
    return g_hat, d_hat, g_new, d_new, {"gamma_bar": g_bar, "tau2": t2, "a": a, "b": b, "iterations": it}


class ComBat(BaseEstimator):
    """ComBat fitted on training batches; unseen batches get the new-site step.

    Parameters
    ----------
    covariates : sequence of str
        Covariate columns to protect (numeric; the study uses ``("age", "sex")``).
        Outcome-like names (:data:`FORBIDDEN_COVARIATES`) raise.
    eb : bool
        Empirical-Bayes shrinkage (True: parametric, the neuroCombat default);
        False uses the per-batch location/scale as they are.
    conv : float
        Convergence tolerance of the EB fixed point (neuroCombat: 1e-4).
    outlier_mads : float or None
        A feature whose batch location ``gamma_hat`` or log scale
        ``log delta_hat`` lies more than this many (normal-consistent) MADs from
        the batch's median over features keeps its own location and scale and
        is left out of the priors (None: never). The method-of-moments priors
        are not robust: at a new site one broken feature (e.g. a radiomic
        feature of a failed segmentation, variance 1e12 x the training's) would
        otherwise inflate the inverse-gamma prior and shrink *every* feature's
        scale towards it, flattening the whole site. Well-behaved data (and the
        neuroCombat comparison of the tests) have no such feature.
    fit_log : msutils.data.leakage.FitLog, optional
        Records the subjects of :meth:`fit` under ``"combat"`` and those whose
        unlabelled features estimated a new site under ``"combat.new_site"``.

    Attributes
    ----------
    batches_ : list of str
        Training batches.
    grand_mean_, pooled_var_ : pandas.Series
        Per feature.
    beta_ : pandas.DataFrame
        Covariate coefficients (rows = covariates).
    sites_ : dict of str to SiteEstimates
        Fitted batches.
    constant_ : list of str
        Features with zero pooled variance (passed through unchanged, left out
        of the priors).
    new_sites_ : dict of str to SiteEstimates
        Estimates of the unseen batches of the last :meth:`transform`.
    """

    def __init__(self, covariates: Sequence[str] = ("age", "sex"), eb: bool = True, conv: float = 1e-4,
                 outlier_mads: float | None = 8.0, fit_log: Any = None) -> None:
        self.covariates = covariates
        self.eb = eb
        self.conv = conv
        self.outlier_mads = outlier_mads
        self.fit_log = fit_log

    # ------------------------------------------------------------------ validation
    def _covariate_names(self) -> list[str]:
        if isinstance(self.covariates, str):
            raise TypeError(f"'covariates' must be a sequence of column names; got the string {self.covariates!r}")
        names = [str(c) for c in self.covariates]
        bad = [c for c in names if c.strip().lower() in FORBIDDEN_COVARIATES]
        if bad:
            raise ValueError(
                f"'covariates' must not include the diagnosis or another outcome; got {bad}: ComBat needs its "
                "covariates when it transforms the test center, so the held-out labels would be read. "
                "Protect age and sex only.")
        if len(set(names)) != len(names):
            raise ValueError(f"'covariates' has duplicates: {names}")
        return names

    def _inputs(self, X: Any, batch: Any, covariates: Any) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        X = check_frame(X, "X")
        names = self._covariate_names()
        b = np.asarray(batch.reindex(X.index) if isinstance(batch, pd.Series) else batch, dtype=object)
        if b.shape != (len(X),):
            raise ValueError(f"'batch' must have one value per row of 'X' ({len(X)}); got shape {b.shape}")
        if pd.isna(pd.Series(b)).any():
            raise ValueError("'batch' has missing values")
        b = b.astype(str)
        if names:
            if covariates is None:
                raise ValueError(f"'covariates' data with columns {names} is required")
            cov = check_frame(covariates, "covariates")
            missing = [c for c in names if c not in cov.columns]
            if missing:
                raise ValueError(f"'covariates' lacks the columns {missing}; it has {list(cov.columns)}")
            if not cov.index.equals(X.index):
                if set(cov.index) >= set(X.index) and not cov.index.has_duplicates:
                    cov = cov.reindex(X.index)
                else:
                    raise ValueError("'covariates' rows must match the rows (index) of 'X'")
            c = cov[names].to_numpy(dtype=float)
        else:
            c = np.zeros((len(X), 0))
        return X, b, c

    # ------------------------------------------------------------------ fit
    def fit(self, X: pd.DataFrame, batch: Any, covariates: pd.DataFrame | None = None, *,
            subject_ids: Iterable[Any] | None = None) -> "ComBat":
        """Fit on the training scans.

        Parameters
        ----------
        X : DataFrame, shape (n_scans, n_features)
            Training features (finite).
        batch : array-like or Series
            Batch (center) of every row; each batch needs >= 2 rows; >= 1 batch.
        covariates : DataFrame, optional
            Rows of ``X`` with the :attr:`covariates` columns.
        subject_ids : iterable, optional
            Subject of every row (default ``X.index``), recorded in ``fit_log``.
        """
        X, b, c = self._inputs(X, batch, covariates)
        ids = list(X.index) if subject_ids is None else [str(s) for s in subject_ids]
        if len(ids) != len(X):
            raise ValueError(f"'subject_ids' has {len(ids)} entries but 'X' has {len(X)} rows")
        if X.shape[1] < 2:
            raise ValueError(f"ComBat needs at least 2 features (its priors pool across features); got {X.shape[1]}")
        levels, counts = np.unique(b, return_counts=True)
        small = [f"{lv} ({k})" for lv, k in zip(levels, counts) if k < 2]
        if small:
            raise ValueError(f"every batch needs >= 2 scans; got {small}")
        if self.fit_log is not None:
            self.fit_log.record("combat", list(dict.fromkeys(map(str, ids))))
        n_batch = len(levels)
        onehot = (b[:, None] == levels[None, :]).astype(float)
        design = np.hstack([onehot, c])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ValueError("the ComBat design [batch | covariates] is rank deficient: a covariate is constant or "
                             "confounded with the batches in the training data")
        values = X.to_numpy(dtype=float)
        b_hat = np.linalg.solve(design.T @ design, design.T @ values)
        grand = (counts / len(X)) @ b_hat[:n_batch]
        var_pooled = ((values - design @ b_hat) ** 2).mean(axis=0)
        constant = var_pooled <= 1e-12 * np.maximum(1.0, np.abs(values).max(axis=0)) ** 2
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.batches_ = [str(lv) for lv in levels]
        self.grand_mean_ = pd.Series(grand, index=X.columns)
        self.pooled_var_ = pd.Series(np.where(constant, 1.0, var_pooled), index=X.columns)
        self.beta_ = pd.DataFrame(b_hat[n_batch:], index=self._covariate_names(), columns=X.columns)
        self.constant_ = X.columns[constant].tolist()
        if self.constant_:
            logger.info("ComBat: %d constant feature(s) passed through unchanged: %s", len(self.constant_),
                        self.constant_[:5])
        z = self._standardize(values, c)
        self.sites_ = {lv: self._estimate(z[b == lv], lv, seen=True) for lv in self.batches_}
        self.new_sites_: dict[str, SiteEstimates] = {}
        logger.info("ComBat fitted on %d scans of batches %s (%d features, covariates %s)", len(X),
                    self.batches_, X.shape[1], self._covariate_names())
        return self

    def _standardize(self, values: np.ndarray, c: np.ndarray) -> np.ndarray:
        mean = self.grand_mean_.to_numpy() + c @ self.beta_.to_numpy()
        return (values - mean) / np.sqrt(self.pooled_var_.to_numpy())

    def _estimate(self, z: np.ndarray, batch: str, *, seen: bool) -> SiteEstimates:
        if z.shape[0] < 2:
            raise ValueError(f"batch {batch!r} needs >= 2 scans to estimate its location and scale; got {z.shape[0]}")
        cols = pd.Index(self.feature_names_in_)
        live = ~cols.isin(self.constant_)
        outliers = np.zeros(len(cols), dtype=bool)
        if self.eb and self.outlier_mads is not None:
            outliers[live] = _outlying(z[:, live], float(self.outlier_mads))
            live &= ~outliers
        g_hat = np.zeros(len(cols))
        d_hat = np.ones(len(cols))
        g_star = np.zeros(len(cols))
        d_star = np.ones(len(cols))
        if self.eb:
            gh, dh, gs, ds, priors = eb_parametric(z[:, live], conv=self.conv)
        else:
            gh = z[:, live].mean(axis=0)
            dh = z[:, live].var(axis=0, ddof=1)
            dh[dh == 0] = 1.0
            gs, ds = gh, dh
            priors = {"gamma_bar": float("nan"), "tau2": float("nan"), "a": float("nan"), "b": float("nan"),
                      "iterations": 0}
        g_hat[live], d_hat[live], g_star[live], d_star[live] = gh, dh, gs, ds
        if self.eb and outliers.any():  # their own location/scale, no shrinkage, no part in the priors
            zo = z[:, outliers]
            g_hat[outliers] = g_star[outliers] = zo.mean(axis=0)
            d = zo.var(axis=0, ddof=1)
            d[d == 0] = 1.0
            d_hat[outliers] = d_star[outliers] = d
            logger.warning("ComBat batch %r: %d feature(s) with an outlying location or scale (beyond %g MADs) were "
                           "left out of the empirical-Bayes priors: %s", batch, int(outliers.sum()),
                           self.outlier_mads, cols[outliers].tolist()[:5])
        priors["n_outliers"] = int(outliers.sum())
        s = lambda v: pd.Series(v, index=cols)  # noqa: E731
        return SiteEstimates(str(batch), int(z.shape[0]), s(g_hat), s(d_hat), s(g_star), s(d_star), priors, seen)

    # ------------------------------------------------------------------ transform
    def _check_columns(self, X: pd.DataFrame) -> None:
        if list(X.columns) != list(self.feature_names_in_):
            missing = [c for c in self.feature_names_in_ if c not in X.columns]
            extra = [c for c in X.columns if c not in set(self.feature_names_in_)]
            raise ValueError(f"'X' must have the fitted feature columns in order; missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")

    def site_estimates(self, X: pd.DataFrame, covariates: pd.DataFrame | None = None, *,
                       name: str = "new") -> SiteEstimates:
        """New-site step: location/scale of one batch from its own unlabelled features.

        Keeps the fitted grand mean, pooled variance and covariate coefficients;
        the batch's ``gamma*``/``delta*`` come from its standardized features with
        per-batch priors across features. For the scans of a fitted batch it
        returns that batch's fitted estimates.
        """
        if not hasattr(self, "sites_"):
            raise RuntimeError("ComBat is not fitted; call fit() first")
        X, _, c = self._inputs(X, np.full(len(X), name, dtype=object), covariates)
        self._check_columns(X)
        return self._estimate(self._standardize(X.to_numpy(dtype=float), c), name, seen=name in self.batches_)

    def transform(self, X: pd.DataFrame, batch: Any, covariates: pd.DataFrame | None = None, *,
                  subject_ids: Iterable[Any] | None = None) -> pd.DataFrame:
        """Harmonize ``X``: fitted batches with their estimates, unseen ones with the new-site step.

        Parameters
        ----------
        X, batch, covariates
            As in :meth:`fit` (any rows).
        subject_ids : iterable, optional
            Subject of every row (default ``X.index``); the rows of unseen batches
            are recorded under ``"combat.new_site"`` in ``fit_log``.

        Returns
        -------
        DataFrame
            Harmonized copy of ``X``. The unseen batches' estimates are in
            :attr:`new_sites_` (replaced at every call).
        """
        if not hasattr(self, "sites_"):
            raise RuntimeError("ComBat is not fitted; call fit() first")
        X, b, c = self._inputs(X, batch, covariates)
        self._check_columns(X)
        ids = np.asarray(list(X.index) if subject_ids is None else [str(s) for s in subject_ids], dtype=object)
        if len(ids) != len(X):
            raise ValueError(f"'subject_ids' has {len(ids)} entries but 'X' has {len(X)} rows")
        values = X.to_numpy(dtype=float)
        z = self._standardize(values, c)
        out = np.empty_like(z)
        self.new_sites_ = {}
        for lv in dict.fromkeys(b.tolist()):
            rows = b == lv
            if lv in self.sites_:
                est = self.sites_[lv]
            else:
                est = self._estimate(z[rows], lv, seen=False)
                self.new_sites_[lv] = est
                if self.fit_log is not None:
                    self.fit_log.record("combat.new_site", list(dict.fromkeys(map(str, ids[rows]))))
                logger.info("ComBat new-site step: batch %r estimated from its own %d scans", lv, int(rows.sum()))
            out[rows] = (z[rows] - est.gamma_star.to_numpy()) / np.sqrt(est.delta_star.to_numpy())
        mean = self.grand_mean_.to_numpy() + c @ self.beta_.to_numpy()
        harmonized = out * np.sqrt(self.pooled_var_.to_numpy()) + mean
        const = pd.Index(self.feature_names_in_).isin(self.constant_)
        harmonized[:, const] = values[:, const]
        return pd.DataFrame(harmonized, index=X.index, columns=X.columns)

    def fit_transform(self, X: pd.DataFrame, batch: Any, covariates: pd.DataFrame | None = None, *,
                      subject_ids: Iterable[Any] | None = None) -> pd.DataFrame:
        """:meth:`fit` then :meth:`transform` of the same rows."""
        return self.fit(X, batch, covariates, subject_ids=subject_ids).transform(
            X, batch, covariates, subject_ids=subject_ids)

    def estimates(self) -> pd.DataFrame:
        """One row per batch (fitted and last new sites): n, mean |gamma*|, mean delta*, EB priors."""
        rows = {}
        for est in [*self.sites_.values(), *self.new_sites_.values()]:
            rows[est.batch] = {"seen in fit": est.seen, "scans": est.n,
                               "mean |gamma*|": float(est.gamma_star.abs().mean()),
                               "mean delta*": float(est.delta_star.mean()), **est.priors}
        return pd.DataFrame(rows).T
