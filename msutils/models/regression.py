"""EDSS regression models of seed 001: ridge, SVR, random forest, Gaussian process.

Each model is a :class:`sklearn.pipeline.Pipeline` ``StandardScaler -> estimator``
with a hyper-parameter grid. Tuning follows :class:`~sklearn.model_selection.GridSearchCV`
semantics with precomputed folds but is split per fold so a papermill run can compute
one fold (:func:`cv_fold_scores`) and the aggregate run picks the winner
(:func:`select_hyperparameters`): the grid point with the best mean score over folds
(unweighted mean, first grid point on ties, exactly as ``GridSearchCV.best_index_``).

The seed reports neither its tuning criterion nor its grids (they are in its online
supplement). Here the criterion is the mean cross-validated **MAE** (the paper's
error measure and the basis of its repeated-measures ANOVA), and the grids are
listed in :data:`GRIDS` in two sizes: ``"small"`` (a few points; CPU profiles) and
``"paper"`` (a wider grid in the spirit of the seed's Weka/scikit-learn tuning).

Metrics: :func:`msutils.stats.regression_metrics` (Pearson ``r``, ``pearson_r2`` = r
squared, the seed's "R2"; ``r2_score`` = the coefficient of determination; ``mae``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from msutils.core.validation import check_choice, check_frame, check_target
from msutils.data.cohort import MS_COURSES
from msutils.stats import regression_metrics
from msutils.data.leakage import record_fit, row_subject_ids

__all__ = [
    "ModelSpec",
    "MODELS",
    "GRIDS",
    "CLINICAL_FEATURES",
    "make_model",
    "param_grid",
    "param_candidates",
    "make_folds",
    "cv_fold_scores",
    "select_hyperparameters",
    "HyperparameterChoice",
    "fit_final",
    "evaluate",
    "cross_val_predictions",
    "clinical_features",
    "clinical_only",
]

logger = logging.getLogger(__name__)

GRID_SIZES = ("small", "paper")


# ----------------------------------------------------------------------------
# models and grids
# ----------------------------------------------------------------------------
def _pipeline(estimator: Any) -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("model", estimator)])


def _ridge(seed: int) -> Any:
    from sklearn.linear_model import Ridge

    return _pipeline(Ridge(alpha=1.0))


def _svr(seed: int) -> Any:
    from sklearn.svm import SVR

    return _pipeline(SVR(kernel="rbf", C=1.0, epsilon=0.1, gamma="scale"))


def _random_forest(seed: int) -> Any:
    from sklearn.ensemble import RandomForestRegressor

    return _pipeline(RandomForestRegressor(n_estimators=100, random_state=seed, n_jobs=1))


def _gp_kernel(family: str) -> Any:
    from sklearn.gaussian_process import kernels as k

    base = {
        "rbf": lambda: k.RBF(length_scale=1.0),
        "matern12": lambda: k.Matern(length_scale=1.0, nu=0.5),
        "matern32": lambda: k.Matern(length_scale=1.0, nu=1.5),
        "matern52": lambda: k.Matern(length_scale=1.0, nu=2.5),
        "rq": lambda: k.RationalQuadratic(length_scale=1.0, alpha=1.0),
        "dot": lambda: k.DotProduct(sigma_0=1.0),
    }[family]()
    return k.ConstantKernel(1.0) * base + k.WhiteKernel(noise_level=1.0)


def _gaussian_process(seed: int) -> Any:
    from sklearn.gaussian_process import GaussianProcessRegressor

    return _pipeline(GaussianProcessRegressor(kernel=_gp_kernel("rbf"), normalize_y=True,
                                              n_restarts_optimizer=0, random_state=seed))


def _grids() -> dict[str, dict[str, Any]]:
    """The hyper-parameter grids (step ``model`` of the pipeline)."""
    return {
        "ridge": {
            "small": {"model__alpha": [0.1, 1.0, 10.0, 100.0]},
            "paper": {"model__alpha": [float(a) for a in np.logspace(-3, 3, 13)]},
        },
        "svr": {
            "small": {"model__kernel": ["rbf"], "model__C": [0.3, 1.0, 3.0],
                      "model__epsilon": [0.1, 0.5], "model__gamma": ["scale"]},
            "paper": [
                {"model__kernel": ["linear"], "model__C": [0.01, 0.1, 1.0, 10.0],
                 "model__epsilon": [0.05, 0.1, 0.25, 0.5]},
                {"model__kernel": ["rbf"], "model__C": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
                 "model__epsilon": [0.05, 0.1, 0.25, 0.5],
                 "model__gamma": ["scale", 0.01, 0.03, 0.1]},
            ],
        },
        "random_forest": {
            "small": {"model__n_estimators": [100], "model__max_features": [1.0, 0.33],
                      "model__min_samples_leaf": [1, 5]},
            "paper": {"model__n_estimators": [100, 300, 500],
                      "model__max_features": [1.0, "sqrt", 0.33],
                      "model__max_depth": [None, 5, 10],
                      "model__min_samples_leaf": [1, 3, 5, 10]},
        },
        "gaussian_process": {
            "small": {"model__kernel": [_gp_kernel("rbf"), _gp_kernel("matern32")]},
            "paper": {"model__kernel": [_gp_kernel(f) for f in
                                        ("rbf", "matern12", "matern32", "matern52", "rq", "dot")],
                      "model__n_restarts_optimizer": [2]},
        },
    }


@dataclass(frozen=True)
class ModelSpec:
    """A seed model: a pipeline factory and its grids.

    Attributes
    ----------
    name : str
        Key in :data:`MODELS`.
    label : str
        Display name (the paper's wording).
    factory : callable
        ``factory(seed) -> Pipeline`` (unfitted, default hyper-parameters).
    grids : mapping
        ``{"small": grid, "paper": grid}``; a grid is a dict or a list of dicts as
        accepted by :class:`sklearn.model_selection.ParameterGrid`.
    """

    name: str
    label: str
    factory: Callable[[int], Any]
    grids: Mapping[str, Any] = field(repr=False)

    def make(self, seed: int = 0) -> Any:
        """A fresh unfitted pipeline."""
        return self.factory(int(seed))

    def grid(self, size: str = "small") -> Any:
        """The grid of the given size."""
        check_choice("grid", size, GRID_SIZES)
        return self.grids[size]


_GRIDS = _grids()
MODELS: dict[str, ModelSpec] = {
    "ridge": ModelSpec("ridge", "Ridge regression", _ridge, _GRIDS["ridge"]),
    "svr": ModelSpec("svr", "Support-vector machine", _svr, _GRIDS["svr"]),
    "random_forest": ModelSpec("random_forest", "Random forest", _random_forest,
                               _GRIDS["random_forest"]),
    "gaussian_process": ModelSpec("gaussian_process", "Gaussian process", _gaussian_process,
                                  _GRIDS["gaussian_process"]),
}
"""The four seed models, by name."""

GRIDS: dict[str, Mapping[str, Any]] = {name: spec.grids for name, spec in MODELS.items()}
"""``GRIDS[model][size]``: the documented grids (read-only view of :data:`MODELS`)."""


def _spec(model_name: str) -> ModelSpec:
    check_choice("model_name", model_name, list(MODELS))
    return MODELS[model_name]


def make_model(model_name: str, params: Mapping[str, Any] | None = None, *, seed: int = 0) -> Any:
    """Unfitted pipeline of ``model_name`` with ``params`` set (``model__...`` keys)."""
    from sklearn.base import clone

    model = _spec(model_name).make(seed)
    if params:
        model.set_params(**{k: clone(v, safe=False) for k, v in params.items()})
    return model


def param_grid(model_name: str, grid: str = "small") -> Any:
    """The grid (dict or list of dicts) of ``model_name`` at size ``grid``."""
    return _spec(model_name).grid(grid)


def param_candidates(model_name: str, grid: str = "small") -> list[dict[str, Any]]:
    """Grid points in :class:`~sklearn.model_selection.ParameterGrid` order (= GridSearchCV)."""
    from sklearn.model_selection import ParameterGrid

    return list(ParameterGrid(param_grid(model_name, grid)))


# ----------------------------------------------------------------------------
# folds, scores
# ----------------------------------------------------------------------------
def make_folds(n_samples: int, n_splits: int = 10, *, seed: int = 0,
               groups: Sequence[Any] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled K-fold (or group K-fold) positional ``(train, test)`` index pairs.

    Parameters
    ----------
    n_samples : int
        Number of training rows.
    n_splits : int
        Number of folds (the seed: 10).
    seed : int
        Shuffling seed.
    groups : sequence, optional
        Subject of each row; rows of a subject stay in one fold.
    """
    from sklearn.model_selection import GroupKFold, KFold

    if int(n_splits) < 2:
        raise ValueError(f"'n_splits' must be >= 2; got {n_splits!r}")
    dummy = np.zeros((int(n_samples), 1))
    if groups is not None:
        if len(groups) != n_samples:
            raise ValueError(f"'groups' has {len(groups)} entries; expected {n_samples}")
        codes = pd.factorize(pd.Series(list(groups), dtype=object))[0]
        splitter = GroupKFold(n_splits=int(n_splits), shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(dummy, groups=codes)]
    splitter = KFold(n_splits=int(n_splits), shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(dummy)]


def _folds_list(folds: Any, X: pd.DataFrame, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    if hasattr(folds, "split"):
        folds = folds.split(X, y)
    out = [(np.asarray(tr, dtype=int), np.asarray(te, dtype=int)) for tr, te in folds]
    n = len(X)
    for i, (tr, te) in enumerate(out):
        if tr.size == 0 or te.size == 0:
            raise ValueError(f"fold {i} has an empty train or test part")
        if tr.min() < 0 or te.min() < 0 or tr.max() >= n or te.max() >= n:
            raise ValueError(f"fold {i} has indices outside 0..{n - 1}")
        if np.intersect1d(tr, te).size:
            raise ValueError(f"fold {i} has rows in both train and test")
    return out


def cv_fold_scores(model_name: str, X: pd.DataFrame, y: Any, folds: Any, fold_index: int, *,
                   grid: str = "small", seed: int = 0,
                   subject_ids: Iterable[Any] | None = None, fit_log: Any = None
                   ) -> pd.DataFrame:
    """Fit and score every grid point on one cross-validation fold.

    Parameters
    ----------
    model_name : str
        Key of :data:`MODELS`.
    X : pandas.DataFrame
        Training features (selected).
    y : array-like
        Training EDSS.
    folds : iterable of (train, test) or a splitter with ``split(X, y)``
        Positional indices into ``X``, the same ``cv`` one would give GridSearchCV.
    fold_index : int
        Which fold to compute.
    grid : {"small", "paper"}
        Grid size.
    seed : int
        Model seed (random forest, Gaussian process).
    subject_ids : iterable, optional
        Subject of each row (default ``X.index``), recorded in ``fit_log``.
    fit_log : object, optional
        Records the fold's training subjects under ``"regression.<model>.cv.fold<k>"``.

    Returns
    -------
    pandas.DataFrame
        One row per grid point: ``model, grid, params_id, params`` (repr),
        ``fold, n_train, n_test, mae, r, pearson_r2, r2_score, score`` (``score`` = -MAE,
        GridSearchCV's ``neg_mean_absolute_error``). JSON/parquet friendly.
    """
    check_choice("grid", grid, GRID_SIZES)
    X = check_frame(X)
    target = check_target(y, X)
    ids = row_subject_ids(X, subject_ids)
    fl = _folds_list(folds, X, target)
    if not 0 <= int(fold_index) < len(fl):
        raise ValueError(f"'fold_index' must be in 0..{len(fl) - 1}; got {fold_index!r}")
    tr, te = fl[int(fold_index)]
    leaked = set(ids[i] for i in tr) & set(ids[i] for i in te)
    if leaked:
        raise ValueError(f"fold {fold_index}: subjects on both sides "
                         f"{sorted(map(str, leaked))[:5]}")
    record_fit(fit_log, f"regression.{model_name}.cv.fold{int(fold_index)}", [ids[i] for i in tr])
    rows = []
    for pid, params in enumerate(param_candidates(model_name, grid)):
        model = make_model(model_name, params, seed=seed)
        model.fit(X.iloc[tr], target[tr])
        sc = regression_metrics(target[te], model.predict(X.iloc[te]))
        rows.append({"model": model_name, "grid": grid, "params_id": pid, "params": repr(params),
                     "fold": int(fold_index), "n_train": int(tr.size), "n_test": int(te.size),
                     "mae": sc["mae"], "r": sc["r"], "pearson_r2": sc["pearson_r2"], "r2_score": sc["r2_score"],
                     "score": -sc["mae"]})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class HyperparameterChoice:
    """Winner of the grid search.

    Attributes
    ----------
    model_name, grid : str
    params_id : int
        Index in :func:`param_candidates`.
    params : dict
        The chosen hyper-parameters (``model__...`` keys).
    mean_mae : float
        Its mean CV MAE.
    table : pandas.DataFrame
        Per grid point: ``params``, ``mean_score``, ``std_score``, ``mean_mae``,
        ``mean_r``, ``n_folds``, ``rank`` (GridSearchCV ``cv_results_`` semantics).
    """

    model_name: str
    grid: str
    params_id: int
    params: dict[str, Any]
    mean_mae: float
    table: pd.DataFrame = field(repr=False)


def select_hyperparameters(fold_results: pd.DataFrame | Sequence[pd.DataFrame], *,
                           n_folds: int | None = None) -> HyperparameterChoice:
    """Pick the grid point with the best mean fold score (= lowest mean MAE).

    Like GridSearchCV: unweighted mean over folds, the first grid point wins ties.
    Every fold must hold every grid point of one model and grid.

    Parameters
    ----------
    fold_results : DataFrame or sequence of DataFrames
        Outputs of :func:`cv_fold_scores` (one per fold, or concatenated).
    n_folds : int, optional
        Expected number of folds: folds ``0..n_folds-1`` must all be present.
    """
    from scipy.stats import rankdata

    df = fold_results if isinstance(fold_results, pd.DataFrame) else pd.concat(
        list(fold_results), ignore_index=True)
    need = {"model", "grid", "params_id", "fold", "score", "mae", "r"}
    if not need <= set(df.columns):
        raise ValueError(f"'fold_results' lacks columns {sorted(need - set(df.columns))}")
    if df.empty:
        raise ValueError("'fold_results' is empty")
    models, grids = df["model"].unique(), df["grid"].unique()
    if len(models) != 1 or len(grids) != 1:
        raise ValueError(f"'fold_results' mixes models {list(models)} / grids {list(grids)}")
    model_name, grid = str(models[0]), str(grids[0])
    cands = param_candidates(model_name, grid)
    folds = sorted(int(f) for f in df["fold"].unique())
    if n_folds is not None and folds != list(range(int(n_folds))):
        raise ValueError(f"'fold_results' must hold folds 0..{int(n_folds) - 1}; got {folds}")
    dup = df.duplicated(["params_id", "fold"])
    if dup.any():
        raise ValueError(f"'fold_results' has repeated (params_id, fold) rows: "
                         f"{df.loc[dup, ['params_id', 'fold']].values.tolist()[:5]}")
    scores = df.pivot(index="params_id", columns="fold", values="score")
    expected = list(range(len(cands)))
    if list(scores.index) != expected or scores.isna().any().any():
        raise ValueError(f"'fold_results' must hold all {len(cands)} grid points for each of the "
                         f"folds {folds}")
    s = scores.to_numpy()
    mean = np.average(s, axis=1)
    std = np.sqrt(np.average((s - mean[:, None]) ** 2, axis=1))
    filled = np.where(np.isnan(mean), np.nanmin(mean) - 1 if np.isfinite(mean).any() else 0, mean)
    rank = rankdata(-filled, method="min").astype(int)
    best = int(np.argmin(rank))
    table = pd.DataFrame({
        "params": [repr(c) for c in cands],
        "mean_score": mean, "std_score": std,
        "mean_mae": df.pivot(index="params_id", columns="fold", values="mae").mean(axis=1).values,
        "mean_r": df.pivot(index="params_id", columns="fold", values="r").mean(axis=1).values,
        "n_folds": len(folds), "rank": rank,
    }, index=pd.Index(expected, name="params_id"))
    return HyperparameterChoice(model_name=model_name, grid=grid, params_id=best,
                                params=dict(cands[best]),
                                mean_mae=float(table["mean_mae"].iloc[best]), table=table)


def fit_final(model_name: str, params: Mapping[str, Any] | None, X: pd.DataFrame, y: Any, *,
              seed: int = 0, subject_ids: Iterable[Any] | None = None, fit_log: Any = None
              ) -> Any:
    """Fit ``model_name`` with ``params`` on all training rows.

    The fit is recorded in ``fit_log`` under ``"regression.<model>.final"``.
    """
    X = check_frame(X)
    target = check_target(y, X)
    ids = row_subject_ids(X, subject_ids)
    model = make_model(model_name, params, seed=seed)
    model.fit(X, target)
    record_fit(fit_log, f"regression.{model_name}.final", ids)
    return model


def evaluate(model: Any, X: pd.DataFrame, y: Any) -> dict[str, float]:
    """:func:`msutils.stats.regression_metrics` of a fitted model's predictions on ``X``."""
    X = check_frame(X)
    target = check_target(y, X)
    return regression_metrics(target, model.predict(X))


def cross_val_predictions(model_name: str, params: Mapping[str, Any] | None, X: pd.DataFrame,
                          y: Any, folds: Any, *, seed: int = 0,
                          subject_ids: Iterable[Any] | None = None, fit_log: Any = None
                          ) -> np.ndarray:
    """Out-of-fold predictions of one configuration (the seed's "training" CV row).

    The folds must partition the rows. Each fold's fit is recorded under
    ``"regression.<model>.cvpred.fold<k>"``.
    """
    X = check_frame(X)
    target = check_target(y, X)
    ids = row_subject_ids(X, subject_ids)
    fl = _folds_list(folds, X, target)
    tests = np.concatenate([te for _, te in fl])
    if np.sort(tests).tolist() != list(range(len(X))):
        raise ValueError("'folds' test parts must partition the rows")
    pred = np.empty(len(X))
    for k, (tr, te) in enumerate(fl):
        record_fit(fit_log, f"regression.{model_name}.cvpred.fold{k}", [ids[i] for i in tr])
        model = make_model(model_name, params, seed=seed)
        model.fit(X.iloc[tr], target[tr])
        pred[te] = model.predict(X.iloc[te])
    return pred


# ----------------------------------------------------------------------------
# clinical features
# ----------------------------------------------------------------------------
CLINICAL_FEATURES: tuple[str, ...] = ("age", "sex_M", "disease_duration", "course_SP",
                                      "course_PP", "course_CIS")
"""Clinico-demographic design columns (seed: age, sex, disease duration, course)."""


def clinical_features(table: pd.DataFrame) -> pd.DataFrame:
    """Numeric clinico-demographic features from a cohort table.

    ``age``, ``sex_M`` (M = 1, F = 0), ``disease_duration`` and one indicator per
    non-reference course (``course_SP``, ``course_PP``, ``course_CIS``; RR is the
    reference). The columns are fixed, whatever the courses present (an all-zero
    indicator is removed later by the variance filter), so train and test tables
    always agree.

    Raises
    ------
    ValueError
        Naming the rows with a missing or invalid value (e.g. a healthy control).
    """
    from msutils.features.volumes import encode_sex

    need = ["age", "sex", "disease_duration", "course"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"'table' lacks columns {missing}")
    out = pd.DataFrame(index=table.index)
    for col in ("age", "disease_duration"):
        vals = pd.to_numeric(table[col], errors="coerce")
        bad = vals.isna()
        if bad.any():
            raise ValueError(f"column '{col}' has missing/non-numeric values at rows "
                             f"{table.index[bad].tolist()[:5]}")
        out[col] = vals.astype(float)
    out["sex_M"] = encode_sex(table["sex"])
    course = table["course"].astype(str)
    bad = ~course.isin(MS_COURSES)
    if bad.any():
        raise ValueError(f"column 'course' must be one of {list(MS_COURSES)}; got "
                         f"{course[bad].tolist()[:5]} at rows {table.index[bad].tolist()[:5]}")
    for c in MS_COURSES[1:]:
        out[f"course_{c}"] = (course == c).astype(float)
    return out[list(CLINICAL_FEATURES)]


def clinical_only(columns: Iterable[str]) -> list[str]:
    """The clinico-demographic columns among ``columns`` (order kept): the
    feature set of the seed's ancillary clinical-only models."""
    clinical = set(CLINICAL_FEATURES)
    return [c for c in columns if c in clinical]
