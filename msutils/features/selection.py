"""Feature selection for the EDSS-regression notebook (seed 001).

The seed paper selects features on the training set only, in this order:

1. **stability**: radiomic features re-extracted on 30 subjects with a perturbed
   processing pipeline; only features with an intraclass correlation coefficient
   >= 0.90 are kept (:mod:`msutils.features.reliability`);
2. **low variance**: threshold 0.01 (:class:`VarianceFilter`);
3. **collinearity**: one feature of each pair with ``|r| > 0.8`` is removed
   (:class:`CollinearityFilter`);
4. **LASSO** with the EDSS as dependent variable; features whose coefficient
   shrinks to zero are removed (:class:`LassoSelector`);
5. **CFS**: Weka's correlation-based subset evaluator with best-first search
   (:class:`CfsSelector`).

:class:`SelectionPipeline` chains the five stages. Every selector is a
scikit-learn transformer that takes and returns :class:`pandas.DataFrame` objects,
is fitted on training rows only and records the subject ids it was fitted on in an
optional ``fit_log`` (any object with a ``record(step, subject_ids)`` method, such
as :class:`msutils.data.leakage.FitLog`). The ``fit_log`` object is shared, not copied,
by :func:`sklearn.base.clone`, so fits inside a cross-validation still report to it.

Choices the paper leaves open are documented on each class: min-max scaling
before the variance test, which feature of a collinear pair is dropped, Weka's
exact CFS merit and search, and the ICC form.
"""

from __future__ import annotations

import logging
from itertools import combinations
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from msutils.core.validation import check_choice, check_frame, check_target
from msutils.data.leakage import KeepFitLogOnClone, record_fit, row_subject_ids

__all__ = [
    "VarianceFilter",
    "CollinearityFilter",
    "LassoSelector",
    "CfsSelector",
    "SelectionPipeline",
    "cfs_merit",
    "best_first_search",
    "locally_predictive",
]

logger = logging.getLogger(__name__)

# Weka BestFirst counts a forward step as an improvement only above this margin.
_WEKA_IMPROVEMENT = 1e-5


def _zscore_columns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns centred and scaled by their population SD; constant columns become 0."""
    centred = values - values.mean(axis=0)
    sd = np.sqrt((centred**2).mean(axis=0))
    constant = sd <= 1e-12 * np.maximum(1.0, np.abs(values).max(axis=0))
    safe = np.where(constant, 1.0, sd)
    z = centred / safe
    z[:, constant] = 0.0
    return z, constant


# ----------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------
class _FrameSelector(KeepFitLogOnClone, TransformerMixin, BaseEstimator):
    """Column selector on DataFrames: ``get_support`` / ``get_feature_names_out``."""

    _log_step = "selection"

    def _set_support(self, X: pd.DataFrame, keep: np.ndarray) -> None:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        self.support_ = np.asarray(keep, dtype=bool)

    def get_support(self, indices: bool = False) -> np.ndarray:
        """Boolean mask (or integer indices) of the kept input columns."""
        check_is_fitted(self, "support_")
        return np.flatnonzero(self.support_) if indices else self.support_.copy()

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the kept columns, in input order."""
        check_is_fitted(self, "support_")
        return self.feature_names_in_[self.support_].copy()

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Return the kept columns of ``X`` (fitted state is not changed)."""
        check_is_fitted(self, "support_")
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"'X' must be a pandas DataFrame; got {type(X).__name__}")
        missing = [c for c in self.feature_names_in_ if c not in X.columns]
        extra = [c for c in X.columns if c not in set(self.feature_names_in_)]
        if missing or extra:
            raise ValueError(
                f"'X' columns differ from those seen in fit: missing {missing[:5]}, "
                f"unexpected {extra[:5]}"
            )
        return X.loc[:, list(self.get_feature_names_out())].copy()


# ----------------------------------------------------------------------------
# variance
# ----------------------------------------------------------------------------
class VarianceFilter(_FrameSelector):
    """Drop low-variance features (seed: threshold 0.01).

    The paper gives only the threshold. Radiomic features live on wildly different
    scales (``Energy`` ~ 1e9, ``Correlation`` in [-1, 1]), so an absolute variance
    threshold is meaningful only after a common scaling: by default each feature is
    min-max scaled to [0, 1] on the training rows and its population variance
    (``ddof=0``, as :class:`sklearn.feature_selection.VarianceThreshold`) is
    compared with ``threshold``. A feature is kept when its variance is strictly
    greater than the threshold, so constant features are always dropped.

    Parameters
    ----------
    threshold : float
        Variance threshold (>= 0).
    scaling : {"minmax", "none"}
        ``"minmax"``: variance of the training values min-max scaled to [0, 1];
        ``"none"``: variance of the raw values.
    fit_log : object, optional
        Records the training subject ids under ``"selection.variance"``.

    Attributes
    ----------
    variances_ : pandas.Series
        Variance of every input feature after scaling.
    """

    _log_step = "selection.variance"

    def __init__(self, threshold: float = 0.01, scaling: Literal["minmax", "none"] = "minmax",
                 fit_log: Any = None) -> None:
        self.threshold = threshold
        self.scaling = scaling
        self.fit_log = fit_log

    def fit(self, X: pd.DataFrame, y: Any = None, *, subject_ids: Iterable[Any] | None = None
            ) -> "VarianceFilter":
        """Compute the training variances and the kept columns."""
        check_choice("scaling", self.scaling, ["minmax", "none"])
        if not np.isscalar(self.threshold) or not float(self.threshold) >= 0:
            raise ValueError(f"'threshold' must be a number >= 0; got {self.threshold!r}")
        X = check_frame(X)
        ids = row_subject_ids(X, subject_ids)
        values = X.to_numpy(dtype=float)
        if self.scaling == "minmax":
            lo = values.min(axis=0)
            span = values.max(axis=0) - lo
            scaled = np.where(span > 0, (values - lo) / np.where(span > 0, span, 1.0), 0.0)
        else:
            scaled = values
        var = scaled.var(axis=0)
        self.variances_ = pd.Series(var, index=X.columns, name="variance")
        self._set_support(X, var > float(self.threshold))
        record_fit(self.fit_log, self._log_step, ids)
        logger.info("VarianceFilter: kept %d of %d features", self.support_.sum(), X.shape[1])
        return self


# ----------------------------------------------------------------------------
# collinearity
# ----------------------------------------------------------------------------
class CollinearityFilter(_FrameSelector):
    """Drop one feature of every pair with ``|Pearson r| > threshold`` (seed: 0.8).

    Greedy and deterministic: features are visited in a priority order and a feature
    is dropped when its absolute correlation with any *already kept* feature exceeds
    the threshold (a feature is never dropped because of a feature that was itself
    dropped). The priority order is

    * ``drop="higher_mean_corr"`` (default): increasing mean absolute correlation
      with all other features (ties: column order). In a collinear pair the feature
      that is more redundant with the rest of the table is the one dropped (the
      rule of caret's ``findCorrelation``);
    * ``drop="later"``: column order, so the later column of a pair is dropped.

    Correlations are computed on the training rows; a constant column has
    correlation 0 with everything (it is never collinear; the variance filter
    removes it). The computation is blockwise: memory is ``O(block_size * p)``.

    Parameters
    ----------
    threshold : float
        Correlation threshold in (0, 1]; pairs with ``|r| > threshold`` collide.
    drop : {"higher_mean_corr", "later"}
        Which feature of a pair is dropped (see above).
    block_size : int
        Columns per block of the correlation computation.
    fit_log : object, optional
        Records the training subject ids under ``"selection.collinearity"``.

    Attributes
    ----------
    mean_abs_corr_ : pandas.Series or None
        Mean absolute correlation of each feature with the others
        (``drop="higher_mean_corr"`` only).
    dropped_ : pandas.DataFrame
        One row per dropped feature: ``feature``, ``correlated_with`` (the kept
        feature with the largest ``|r|``) and ``r``.
    """

    _log_step = "selection.collinearity"

    def __init__(self, threshold: float = 0.8,
                 drop: Literal["higher_mean_corr", "later"] = "higher_mean_corr",
                 block_size: int = 1024, fit_log: Any = None) -> None:
        self.threshold = threshold
        self.drop = drop
        self.block_size = block_size
        self.fit_log = fit_log

    def fit(self, X: pd.DataFrame, y: Any = None, *, subject_ids: Iterable[Any] | None = None
            ) -> "CollinearityFilter":
        """Find the kept columns on the training rows."""
        check_choice("drop", self.drop, ["higher_mean_corr", "later"])
        if not np.isscalar(self.threshold) or not 0 < float(self.threshold) <= 1:
            raise ValueError(f"'threshold' must be in (0, 1]; got {self.threshold!r}")
        if int(self.block_size) < 1:
            raise ValueError(f"'block_size' must be >= 1; got {self.block_size!r}")
        X = check_frame(X, min_rows=2)
        ids = row_subject_ids(X, subject_ids)
        n, p = X.shape
        z, _ = _zscore_columns(X.to_numpy(dtype=float))
        bs = int(self.block_size)
        thr = float(self.threshold)

        if self.drop == "higher_mean_corr":
            sums = np.zeros(p)
            for start in range(0, p, bs):
                block = np.abs(z[:, start:start + bs].T @ z) / n
                sums[start:start + bs] = block.sum(axis=1) - np.diag(block[:, start:start + bs])
            mean_abs = sums / max(p - 1, 1)
            self.mean_abs_corr_ = pd.Series(mean_abs, index=X.columns, name="mean_abs_corr")
            order = np.argsort(mean_abs, kind="stable")
        else:
            self.mean_abs_corr_ = None
            order = np.arange(p)

        keep = np.zeros(p, dtype=bool)
        kept_idx: list[int] = []
        dropped: list[tuple[str, str, float]] = []
        for start in range(0, p, bs):
            block_idx = order[start:start + bs]
            zb = z[:, block_idx]
            with_kept = zb.T @ z[:, kept_idx] / n if kept_idx else np.zeros((len(block_idx), 0))
            within = zb.T @ zb / n
            kept_in_block: list[int] = []  # positions within the block
            for pos, j in enumerate(block_idx):
                r_prev = with_kept[pos]
                r_block = within[pos, kept_in_block]
                best_abs, partner, r_val = 0.0, -1, 0.0
                if r_prev.size:
                    a = int(np.argmax(np.abs(r_prev)))
                    best_abs, partner, r_val = abs(r_prev[a]), kept_idx[a], r_prev[a]
                if r_block.size:
                    a = int(np.argmax(np.abs(r_block)))
                    if abs(r_block[a]) > best_abs:
                        best_abs, partner, r_val = (abs(r_block[a]),
                                                    int(block_idx[kept_in_block[a]]), r_block[a])
                if best_abs > thr:
                    dropped.append((X.columns[j], X.columns[partner], float(r_val)))
                else:
                    kept_in_block.append(pos)
                    keep[j] = True
            kept_idx.extend(int(block_idx[k]) for k in kept_in_block)

        self.dropped_ = pd.DataFrame(dropped, columns=["feature", "correlated_with", "r"])
        self._set_support(X, keep)
        record_fit(self.fit_log, self._log_step, ids)
        logger.info("CollinearityFilter: kept %d of %d features", keep.sum(), p)
        return self


# ----------------------------------------------------------------------------
# LASSO
# ----------------------------------------------------------------------------
class LassoSelector(_FrameSelector):
    """Keep the features with a non-zero LASSO coefficient (EDSS as target).

    Features are standardised (mean 0, SD 1 on the training rows) and
    :class:`sklearn.linear_model.LassoCV` chooses the penalty by ``cv``-fold
    cross-validation (mean squared error) on a path of ``n_alphas`` penalties.
    The folds are shuffled with ``seed``; when a subject has several rows
    (``subject_ids`` repeated) they are grouped (:class:`~sklearn.model_selection.GroupKFold`)
    so a subject's rows never sit on both sides of a fold.

    Parameters
    ----------
    cv : int
        Number of cross-validation folds (>= 2).
    seed : int
        Seed of the fold shuffling.
    n_alphas : int
        Length of the penalty path.
    max_iter, tol : int, float
        Coordinate-descent settings.
    n_jobs : int, optional
        Parallel folds of LassoCV (``None``: 1).
    fit_log : object, optional
        Records the training subject ids under ``"selection.lasso"``.

    Attributes
    ----------
    alpha_ : float
        The cross-validated penalty.
    coef_ : pandas.Series
        Coefficients on the standardised features.
    estimator_ : sklearn.linear_model.LassoCV
        The fitted model.
    """

    _log_step = "selection.lasso"

    def __init__(self, cv: int = 10, seed: int = 0, n_alphas: int = 100, max_iter: int = 10000,
                 tol: float = 1e-4, n_jobs: int | None = None, fit_log: Any = None) -> None:
        self.cv = cv
        self.seed = seed
        self.n_alphas = n_alphas
        self.max_iter = max_iter
        self.tol = tol
        self.n_jobs = n_jobs
        self.fit_log = fit_log

    def fit(self, X: pd.DataFrame, y: Any = None, *, subject_ids: Iterable[Any] | None = None
            ) -> "LassoSelector":
        """Fit LassoCV on the standardised training rows."""
        from sklearn.linear_model import LassoCV
        from sklearn.model_selection import GroupKFold, KFold

        if int(self.cv) < 2:
            raise ValueError(f"'cv' must be >= 2; got {self.cv!r}")
        X = check_frame(X)
        target = check_target(y, X)
        ids = row_subject_ids(X, subject_ids)
        if X.shape[1] == 0:
            raise ValueError("LassoSelector needs at least one feature; got 0 columns")
        groups = pd.factorize(pd.Series(ids, dtype=object))[0]
        n_groups = int(groups.max()) + 1
        if n_groups < int(self.cv):
            raise ValueError(f"'cv' = {self.cv} needs at least {self.cv} training subjects; "
                             f"got {n_groups}")
        z, _ = _zscore_columns(X.to_numpy(dtype=float))
        if n_groups < len(ids):
            splitter = GroupKFold(n_splits=int(self.cv), shuffle=True, random_state=self.seed)
            folds = list(splitter.split(z, target, groups))
        else:
            splitter = KFold(n_splits=int(self.cv), shuffle=True, random_state=self.seed)
            folds = list(splitter.split(z, target))
        model = LassoCV(alphas=int(self.n_alphas), cv=folds, max_iter=int(self.max_iter),
                        tol=float(self.tol), random_state=self.seed, n_jobs=self.n_jobs)
        model.fit(z, target)
        self.estimator_ = model
        self.alpha_ = float(model.alpha_)
        self.coef_ = pd.Series(model.coef_, index=X.columns, name="coef")
        keep = model.coef_ != 0
        self._set_support(X, keep)
        record_fit(self.fit_log, self._log_step, ids)
        logger.info("LassoSelector: alpha=%.4g, kept %d of %d features",
                    self.alpha_, keep.sum(), X.shape[1])
        if not keep.any():
            logger.warning("LassoSelector kept no feature (alpha=%.4g)", self.alpha_)
        return self


# ----------------------------------------------------------------------------
# CFS (Weka CfsSubsetEval + BestFirst)
# ----------------------------------------------------------------------------
def cfs_merit(r_cf: Any, r_ff: Any, subset: Sequence[int],
              weights: Any = None) -> float:
    """Merit of a feature subset as computed by Weka's ``CfsSubsetEval``.

    With unit weights this is Hall's CFS merit

    ``merit = k * mean|r_cf| / sqrt(k + k (k - 1) * mean|r_ff|)``

    (mean over the ``k`` features and the ``k (k - 1) / 2`` pairs of the subset).
    With weights ``w`` (Weka uses the features' standard deviations when the class
    is numeric) it is ``sum w_i |r_ic| / sqrt(sum_ij w_i w_j |r_ij|)``.
    The empty subset has merit 0.

    Parameters
    ----------
    r_cf : array-like, shape (p,)
        Feature-class correlations (the absolute value is used).
    r_ff : array-like, shape (p, p)
        Feature-feature correlations (absolute value used; the diagonal is taken as 1).
    subset : sequence of int
        Column indices of the subset.
    weights : array-like, shape (p,), optional
        Per-feature weights (default 1).
    """
    idx = np.asarray(list(subset), dtype=int)
    if idx.size == 0:
        return 0.0
    rc = np.abs(np.asarray(r_cf, dtype=float))[idx]
    rf = np.abs(np.asarray(r_ff, dtype=float))[np.ix_(idx, idx)].copy()
    np.fill_diagonal(rf, 1.0)
    w = np.ones(idx.size) if weights is None else np.asarray(weights, dtype=float)[idx]
    num = float(w @ rc)
    den = abs(float(w @ rf @ w))
    if den == 0.0:
        return 0.0
    return abs(num) / np.sqrt(den)


def _add_to_open_list(open_list: list[tuple[frozenset, float]], item: frozenset, merit: float,
                      max_size: int) -> None:
    """Weka ``BestFirst.LinkedList2.addToList``: sorted by merit, bounded length.

    Equal merits go after the existing entries; when the list is full the new entry
    is dropped if it is not better than the last one, else the last one is evicted.
    """
    if not open_list:
        open_list.append((item, merit))
        return
    if merit > open_list[0][1]:
        if len(open_list) == max_size:
            open_list.pop()
        open_list.insert(0, (item, merit))
        return
    if len(open_list) == max_size and merit <= open_list[-1][1]:
        return
    for i, (_, m) in enumerate(open_list):
        if merit > m:
            if len(open_list) == max_size:
                open_list.pop()
            open_list.insert(i, (item, merit))
            return
    open_list.append((item, merit))


def best_first_search(r_cf: Any, r_ff: Any, *, weights: Any = None, max_stale: int = 5
                      ) -> tuple[list[int], float, int]:
    """Forward best-first search of Weka's ``BestFirst`` (``-D 1 -N max_stale``).

    Starting from the empty set, the head of the open list (the best unexpanded
    subset) is removed and expanded by adding each absent feature in column order;
    each child is evaluated once (later visits reuse the cached merit) and inserted in
    the open list, which is sorted by merit and holds at most ``max_stale`` subsets.
    A child better than the best so far by more than 1e-5 becomes the best and resets
    the stale counter; an expansion that finds no such child increments it. The
    search stops after ``max_stale`` consecutive non-improving expansions or when the
    open list is empty.

    Returns
    -------
    subset : list of int
        Sorted column indices of the best subset.
    merit : float
        Its merit (:func:`cfs_merit`).
    n_evaluated : int
        Number of distinct subsets evaluated (the empty start set included).
    """
    rc = np.abs(np.asarray(r_cf, dtype=float))
    rf = np.abs(np.asarray(r_ff, dtype=float)).copy()
    p = rc.size
    if rf.shape != (p, p):
        raise ValueError(f"'r_ff' must have shape ({p}, {p}); got {rf.shape}")
    np.fill_diagonal(rf, 1.0)
    w = np.ones(p) if weights is None else np.asarray(weights, dtype=float)
    if int(max_stale) < 1:
        raise ValueError(f"'max_stale' must be >= 1; got {max_stale!r}")
    max_stale = int(max_stale)

    # cache: subset -> (merit, numerator, denominator of the merit)
    start: frozenset = frozenset()
    cache: dict[frozenset, tuple[float, float, float]] = {start: (0.0, 0.0, 0.0)}
    best_group, best_merit = start, 0.0
    open_list: list[tuple[frozenset, float]] = []
    _add_to_open_list(open_list, start, 0.0, max_stale)
    stale = 0
    while stale < max_stale:
        if not open_list:
            break
        group, _ = open_list.pop(0)
        _, g_num, g_den = cache[group]
        members = np.fromiter(sorted(group), dtype=int, count=len(group))
        cross = rf[:, members] @ w[members] if members.size else np.zeros(p)
        cand_num = g_num + w * rc
        cand_den = g_den + w * w + 2.0 * w * cross
        added = False
        for i in range(p):
            if i in group:
                continue
            child = group | {i}
            if child in cache:
                merit = cache[child][0]
            else:
                den = abs(cand_den[i])
                merit = 0.0 if den == 0.0 else abs(cand_num[i]) / np.sqrt(den)
                cache[child] = (merit, cand_num[i], cand_den[i])
            _add_to_open_list(open_list, child, merit, max_stale)
            if merit - best_merit > _WEKA_IMPROVEMENT:
                added = True
                stale = 0
                best_merit = merit
                best_group = child
        if not added:
            stale += 1
    return sorted(best_group), float(best_merit), len(cache)


def locally_predictive(r_cf: Any, r_ff: Any, subset: Sequence[int], *, threshold: float = 0.0
                       ) -> list[int]:
    """Weka ``CfsSubsetEval`` post-processing: add locally predictive features.

    Features not in ``subset`` are visited in decreasing ``|r_cf|`` (ties: column
    order); a feature is added when its correlation with every feature already in the
    (growing) subset is at most ``|r_cf| - threshold`` (Weka's default threshold 0).

    Returns
    -------
    list of int
        Sorted column indices of the enlarged subset.
    """
    rc = np.abs(np.asarray(r_cf, dtype=float))
    rf = np.abs(np.asarray(r_ff, dtype=float))
    best = set(int(i) for i in subset)
    remaining = [i for i in range(rc.size) if i not in best]
    # stable sort on -r_cf == Weka's "first index wins on ties" argmax loop
    for j in sorted(remaining, key=lambda i: -rc[i]):
        if all(rf[i, j] <= rc[j] - threshold for i in best):
            best.add(j)
    return sorted(best)


def _pearson_abs(values: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|r| feature-class and feature-feature with Weka's zero-variance conventions.

    A zero-variance feature has correlation 0 with the class and 1 with every other
    feature (Weka ``num_num``), so it is never useful and always redundant.
    """
    n = values.shape[0]
    z, constant = _zscore_columns(values)
    t, t_const = _zscore_columns(target.reshape(-1, 1))
    r_cf = np.abs(z.T @ t[:, 0] / n)
    r_ff = np.abs(z.T @ z / n)
    if constant.any():
        r_ff[constant, :] = 1.0
        r_ff[:, constant] = 1.0
    np.fill_diagonal(r_ff, 1.0)
    np.clip(r_cf, 0.0, 1.0, out=r_cf)
    np.clip(r_ff, 0.0, 1.0, out=r_ff)
    if t_const[0]:
        r_cf[:] = 0.0
    return r_cf, r_ff


class CfsSelector(_FrameSelector):
    """Correlation-based feature subset selection, as Weka ``CfsSubsetEval`` + ``BestFirst``.

    The seed used Weka 3.8.3's correlation-based subset evaluator. With a numeric
    class (the EDSS) Weka does not discretise: every correlation is the absolute
    Pearson correlation on the training rows (symmetric uncertainty on discretised
    data is used only for a nominal class). A subset's merit is
    :func:`cfs_merit`; the search is :func:`best_first_search` (Weka's defaults:
    forward from the empty set, stale limit ``-N 5``); and, as Weka's default
    (``locallyPredictive = true``), the found subset is then enlarged with
    :func:`locally_predictive` features.

    One Weka detail is a choice here: for a numeric class Weka weights each feature
    in the merit by its standard deviation (``m_std_devs``), which makes the merit
    depend on the features' units. ``weighting="equal"`` (default) uses Hall's
    unit-weight merit ``k * mean|r_cf| / sqrt(k + k(k-1) * mean|r_ff|)``, identical to
    Weka on standardised features; ``weighting="weka_std"`` reproduces Weka on raw
    features.

    Parameters
    ----------
    search : {"best_first", "exhaustive"}
        ``"exhaustive"`` scores every subset (at most 16 features; for checks).
    max_stale : int
        Number of consecutive non-improving expansions before stopping (Weka ``-N``).
    locally_predictive : bool
        Add locally predictive features after the search (Weka default ``True``).
    weighting : {"equal", "weka_std"}
        Feature weights in the merit (see above).
    fit_log : object, optional
        Records the training subject ids under ``"selection.cfs"``.

    Attributes
    ----------
    r_cf_ : pandas.Series
        |r| of each feature with the target.
    r_ff_ : pandas.DataFrame
        |r| between features.
    weights_ : pandas.Series
        Feature weights of the merit.
    search_subset_ : list of str
        Subset found by the search (before the locally-predictive step).
    merit_ : float
        Merit of ``search_subset_``.
    added_locally_predictive_ : list of str
        Features added by the post-processing.
    n_evaluated_ : int
        Number of subsets evaluated by the search.
    """

    _log_step = "selection.cfs"

    def __init__(self, search: Literal["best_first", "exhaustive"] = "best_first",
                 max_stale: int = 5, locally_predictive: bool = True,
                 weighting: Literal["equal", "weka_std"] = "equal", fit_log: Any = None) -> None:
        self.search = search
        self.max_stale = max_stale
        self.locally_predictive = locally_predictive
        self.weighting = weighting
        self.fit_log = fit_log

    def fit(self, X: pd.DataFrame, y: Any = None, *, subject_ids: Iterable[Any] | None = None
            ) -> "CfsSelector":
        """Search the best feature subset on the training rows."""
        check_choice("search", self.search, ["best_first", "exhaustive"])
        check_choice("weighting", self.weighting, ["equal", "weka_std"])
        if int(self.max_stale) < 1:
            raise ValueError(f"'max_stale' must be >= 1; got {self.max_stale!r}")
        X = check_frame(X, min_rows=2)
        target = check_target(y, X)
        ids = row_subject_ids(X, subject_ids)
        p = X.shape[1]
        if p == 0:
            raise ValueError("CfsSelector needs at least one feature; got 0 columns")
        values = X.to_numpy(dtype=float)
        r_cf, r_ff = _pearson_abs(values, target)
        if self.weighting == "weka_std":
            sd = values.std(axis=0)
            weights = np.where(sd > 0, sd, 1.0)  # Weka keeps 1.0 for zero variance
        else:
            weights = np.ones(p)
        self.r_cf_ = pd.Series(r_cf, index=X.columns, name="abs_r_target")
        self.r_ff_ = pd.DataFrame(r_ff, index=X.columns, columns=X.columns)
        self.weights_ = pd.Series(weights, index=X.columns, name="weight")

        if self.search == "best_first":
            subset, merit, n_eval = best_first_search(r_cf, r_ff, weights=weights,
                                                      max_stale=int(self.max_stale))
        else:
            if p > 16:
                raise ValueError(f"search='exhaustive' is limited to 16 features; got {p}")
            subset, merit, n_eval = [], 0.0, 0
            for k in range(1, p + 1):
                for combo in combinations(range(p), k):
                    n_eval += 1
                    m = cfs_merit(r_cf, r_ff, combo, weights)
                    if m > merit:
                        subset, merit = list(combo), m
        final = locally_predictive(r_cf, r_ff, subset) if self.locally_predictive else subset
        cols = list(X.columns)
        self.search_subset_ = [cols[i] for i in subset]
        self.merit_ = float(merit)
        self.added_locally_predictive_ = [cols[i] for i in final if i not in set(subset)]
        self.n_evaluated_ = int(n_eval)
        keep = np.zeros(p, dtype=bool)
        keep[final] = True
        self._set_support(X, keep)
        record_fit(self.fit_log, self._log_step, ids)
        logger.info("CfsSelector: merit %.4f with %d features (+%d locally predictive), "
                    "%d subsets evaluated", self.merit_, len(subset),
                    len(self.added_locally_predictive_), n_eval)
        return self

    def merit(self, subset: Sequence[str] | Sequence[int]) -> float:
        """Merit (:func:`cfs_merit`) of a subset given by column names or indices."""
        check_is_fitted(self, "r_cf_")
        names = list(self.feature_names_in_)
        idx = [names.index(s) if isinstance(s, str) else int(s) for s in subset]
        return cfs_merit(self.r_cf_.to_numpy(), self.r_ff_.to_numpy(), idx,
                         self.weights_.to_numpy())


# ----------------------------------------------------------------------------
# the whole selection
# ----------------------------------------------------------------------------
_STAGES = ("input", "stability", "variance", "collinearity", "lasso", "cfs")


class SelectionPipeline(_FrameSelector):
    """Seed-001 selection: stability -> variance -> collinearity -> LASSO -> CFS.

    Fitted on training rows only. The stability stage uses a precomputed keep list
    (:func:`icc_stability` on a training subset): columns listed in
    ``stability_scope`` (default: every column) but absent from ``stable_features``
    are dropped; columns outside the scope (clinical data, volumes) pass through.

    Parameters
    ----------
    stable_features : sequence of str, optional
        Features that passed the ICC test; ``None`` skips the stability stage.
    stability_scope : sequence of str, optional
        Features the ICC was computed on (default: all columns).
    variance_threshold, variance_scaling
        See :class:`VarianceFilter`.
    collinearity_threshold, collinearity_drop
        See :class:`CollinearityFilter`.
    lasso_cv, lasso_n_jobs : int
        See :class:`LassoSelector` (``cv``, ``n_jobs``).
    cfs_max_stale, cfs_locally_predictive, cfs_weighting
        See :class:`CfsSelector`.
    seed : int
        Seed of the LASSO folds.
    fit_log : object, optional
        Every fitted stage records the training subject ids
        (``"selection.variance"``, ``"selection.collinearity"``, ``"selection.lasso"``,
        ``"selection.cfs"``).

    Attributes
    ----------
    steps_ : dict
        Fitted selector of each stage.
    survivors_ : dict
        Stage name -> surviving feature names after that stage.
    """

    def __init__(self, stable_features: Sequence[str] | None = None,
                 stability_scope: Sequence[str] | None = None,
                 variance_threshold: float = 0.01, variance_scaling: str = "minmax",
                 collinearity_threshold: float = 0.8, collinearity_drop: str = "higher_mean_corr",
                 lasso_cv: int = 10, lasso_n_jobs: int | None = None, cfs_max_stale: int = 5,
                 cfs_locally_predictive: bool = True, cfs_weighting: str = "equal", seed: int = 0,
                 fit_log: Any = None) -> None:
        self.stable_features = stable_features
        self.stability_scope = stability_scope
        self.variance_threshold = variance_threshold
        self.variance_scaling = variance_scaling
        self.collinearity_threshold = collinearity_threshold
        self.collinearity_drop = collinearity_drop
        self.lasso_cv = lasso_cv
        self.lasso_n_jobs = lasso_n_jobs
        self.cfs_max_stale = cfs_max_stale
        self.cfs_locally_predictive = cfs_locally_predictive
        self.cfs_weighting = cfs_weighting
        self.seed = seed
        self.fit_log = fit_log

    def fit(self, X: pd.DataFrame, y: Any = None, *, subject_ids: Iterable[Any] | None = None
            ) -> "SelectionPipeline":
        """Run the five stages on the training rows."""
        X = check_frame(X, min_rows=2)
        target = check_target(y, X)
        ids = row_subject_ids(X, subject_ids)
        survivors: dict[str, list[str]] = {"input": list(X.columns)}
        if self.stable_features is None:
            cur = list(X.columns)
        else:
            stable = set(self.stable_features)
            scope = set(X.columns if self.stability_scope is None else self.stability_scope)
            cur = [c for c in X.columns if c not in scope or c in stable]
        survivors["stability"] = cur
        steps: dict[str, Any] = {
            "variance": VarianceFilter(self.variance_threshold, self.variance_scaling,
                                       fit_log=self.fit_log),
            "collinearity": CollinearityFilter(self.collinearity_threshold,
                                               self.collinearity_drop, fit_log=self.fit_log),
            "lasso": LassoSelector(cv=self.lasso_cv, seed=self.seed, n_jobs=self.lasso_n_jobs,
                                   fit_log=self.fit_log),
            "cfs": CfsSelector(max_stale=self.cfs_max_stale,
                               locally_predictive=self.cfs_locally_predictive,
                               weighting=self.cfs_weighting, fit_log=self.fit_log),
        }
        for name, step in steps.items():
            if not cur:
                raise ValueError(f"no feature left before the '{name}' stage "
                                 f"(after {list(survivors)[-1]!r})")
            step.fit(X[cur], target, subject_ids=ids)
            cur = list(step.get_feature_names_out())
            survivors[name] = cur
        self.steps_ = steps
        self.survivors_ = survivors
        kept = set(cur)
        self._set_support(X, np.array([c in kept for c in X.columns]))
        logger.info("SelectionPipeline: %s", " -> ".join(f"{k} {len(v)}"
                                                          for k, v in survivors.items()))
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """The selected columns of ``X`` (other columns of ``X`` are allowed)."""
        check_is_fitted(self, "support_")
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"'X' must be a pandas DataFrame; got {type(X).__name__}")
        names = list(self.get_feature_names_out())
        missing = [c for c in names if c not in X.columns]
        if missing:
            raise ValueError(f"'X' lacks selected columns {missing[:5]}")
        return X.loc[:, names].copy()

    def summary(self, max_names: int = 25) -> pd.DataFrame:
        """Stage table: features in, out, removed, and the survivors when few.

        Parameters
        ----------
        max_names : int
            List the surviving names when at most this many survive.
        """
        check_is_fitted(self, "survivors_")
        rows = []
        prev = None
        for stage, names in self.survivors_.items():
            n_in = len(names) if prev is None else prev
            rows.append({"stage": stage, "n_in": n_in, "n_out": len(names),
                         "n_removed": n_in - len(names),
                         "features": ", ".join(names) if len(names) <= max_names else ""})
            prev = len(names)
        return pd.DataFrame(rows).set_index("stage")
