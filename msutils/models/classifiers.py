"""Binary radiomics classifiers with inner-CV selection and tuning (seed 000).

Pieces
------
- :func:`make_scaler`: ``robust`` (:class:`~sklearn.preprocessing.RobustScaler`),
  ``minmax`` and ``zscore``; always fitted on training rows only.
- :class:`L1LogisticSelector`: LASSO selection with an L1-penalized logistic
  regression (:class:`~sklearn.linear_model.LogisticRegressionCV`, ``l1_ratios=[1]``,
  liblinear, balanced class weights); the penalty is chosen by an inner
  stratified CV on the training rows (log-loss).
- :class:`TabularResNet`: the residual MLP for tabular data (Gorishniy et al.
  2021): linear stem, ``n_blocks`` x [BatchNorm -> Linear(d, 2d) -> ReLU ->
  Dropout -> Linear(2d, d) -> Dropout] + skip, BatchNorm -> ReLU -> Linear head;
  AdamW, class-weighted cross-entropy, deterministic on CPU for a seed. With an
  ``eval_set`` it records the validation probabilities after every epoch, which
  is how the inner folds early-stop it (:func:`tune`).
- :func:`make_classifier` / :data:`GRIDS`: SVM (RBF / linear; Platt
  probabilities from 5-fold cross-validated decision values,
  :class:`~sklearn.calibration.CalibratedClassifierCV` with ``ensemble=False``), random forest and the ResNet, with the hyper-parameter grids
  per profile.
- :func:`inner_selection`: LASSO in each inner fold; the final list keeps the
  features selected in at least ``min_folds`` of the folds (default 3 of 5, a
  majority); if none reaches it, the ``fallback_k`` most frequently selected
  (ties: larger mean |coefficient|).
- :func:`tune`: grid search over the inner folds; each fold uses its *own*
  LASSO list, so the validation scores never saw a feature choice made with the
  validation rows. Score: mean validation ROC AUC (ties: first grid point). The
  ResNet's epochs come from the mean validation log-loss curve (early stopping
  on the inner folds).
- :func:`fit_final`, :func:`oof_predictions`: the final model of a scenario
  (real rows + synthetic rows) and its out-of-fold probabilities on the inner
  validation rows (synthetic rows join a fold's training part only when their
  source subject is in it), for the a-priori threshold.
- :func:`classification_scores`: F1, accuracy, precision, recall, AUC.
- :func:`explain`: SHAP values of P(MS) with the transformed training data as
  background (permutation explainer).

Every fit can record its subjects in a :class:`msutils.data.leakage.FitLog`.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin

from msutils.core.validation import check_choice
from msutils.data.leakage import record_fit
from msutils.core.device import resolve_device

__all__ = [
    "SCALERS",
    "CLASSIFIERS",
    "GRIDS",
    "make_scaler",
    "make_classifier",
    "L1LogisticSelector",
    "TabularResNet",
    "InnerSelection",
    "TuningResult",
    "inner_selection",
    "tune",
    "fit_final",
    "oof_predictions",
    "classification_scores",
    "explain",
]

logger = logging.getLogger(__name__)

SCALERS: tuple[str, ...] = ("robust", "minmax", "zscore")
CLASSIFIERS: tuple[str, ...] = ("svm", "rf", "resnet")

GRIDS: dict[str, dict[str, dict[str, list[Any]]]] = {
    "smoke": {
        "svm": {"kernel": ["rbf"], "C": [1.0, 10.0], "gamma": ["scale"]},
        "rf": {"n_estimators": [100], "max_depth": [None], "min_samples_leaf": [1], "max_features": ["sqrt"]},
        "resnet": {"width": [32], "n_blocks": [1], "dropout": [0.1], "lr": [3e-3], "weight_decay": [1e-4],
                   "epochs": [30]},
    },
    "quick": {
        "svm": {"kernel": ["rbf", "linear"], "C": [0.1, 1.0, 10.0], "gamma": ["scale"]},
        "rf": {"n_estimators": [200], "max_depth": [None, 4], "min_samples_leaf": [1, 3], "max_features": ["sqrt"]},
        "resnet": {"width": [32, 64], "n_blocks": [2], "dropout": [0.1, 0.3], "lr": [1e-3], "weight_decay": [1e-4],
                   "epochs": [120]},
    },
    "paper": {
        "svm": {"kernel": ["rbf", "linear"], "C": [0.01, 0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 0.01, 0.1]},
        "rf": {"n_estimators": [200, 500], "max_depth": [None, 4, 8], "min_samples_leaf": [1, 2, 4],
               "max_features": ["sqrt", 0.3]},
        "resnet": {"width": [32, 64, 128], "n_blocks": [1, 2, 3], "dropout": [0.1, 0.3], "lr": [1e-3, 3e-3],
                   "weight_decay": [1e-5, 1e-4], "epochs": [300]},
    },
}
"""Hyper-parameter grids per profile and classifier (``epochs`` of the ResNet is the
maximum; the inner folds choose the number actually used)."""


def make_scaler(name: str) -> TransformerMixin:
    """A fresh scaler: ``robust``, ``minmax`` or ``zscore``."""
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    check_choice("scaler", name, SCALERS)
    return {"robust": RobustScaler, "minmax": MinMaxScaler, "zscore": StandardScaler}[name]()


# --------------------------------------------------------------------------- ResNet
class TabularResNet(ClassifierMixin, BaseEstimator):
    """Residual MLP classifier for tabular features (torch, CPU or CUDA).

    Parameters
    ----------
    width : int
        Hidden size ``d`` (blocks expand to ``2d``).
    n_blocks : int
        Residual blocks.
    dropout : float
        Dropout inside the blocks.
    lr, weight_decay : float
        AdamW settings.
    epochs : int
        Training epochs.
    batch_size : int
        Mini-batch size (the last, smaller batch is kept).
    class_weight : {"balanced", None}
        Cross-entropy class weights ``n / (2 n_c)`` or none.
    seed : int
        Seeds the weights and the batch order.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).

    Attributes
    ----------
    classes_ : ndarray
    history_ : dict
        ``train_loss`` per epoch; with ``eval_set`` also ``val_loss`` and
        ``val_proba`` (one array of P(class 1) per epoch).
    """

    def __init__(self, width: int = 64, n_blocks: int = 2, dropout: float = 0.1, lr: float = 1e-3,
                 weight_decay: float = 1e-4, epochs: int = 100, batch_size: int = 32,
                 class_weight: str | None = "balanced", seed: int = 0, device: str = "cpu") -> None:
        self.width = width
        self.n_blocks = n_blocks
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.seed = seed
        self.device = device

    def _device(self) -> Any:
        import torch

        return torch.device(resolve_device(self.device))

    def _build(self, n_in: int) -> Any:
        return _resnet_module(n_in, int(self.width), int(self.n_blocks), float(self.dropout))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if "net_" in state:  # the torch module holds a local class: store its weights instead
            state["net_"] = {k: v.clone() for k, v in state["net_"].state_dict().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        weights = state.get("net_")
        self.__dict__.update(state)
        if isinstance(weights, dict):
            net = self._build(int(state["n_features_in_"]))
            net.load_state_dict(weights)
            self.net_ = net.eval()

    def fit(self, X: Any, y: Any, *, eval_set: tuple[Any, Any] | None = None) -> "TabularResNet":
        """Train; ``eval_set=(X_val, y_val)`` records validation curves in :attr:`history_`."""
        import torch

        for name, lo in (("width", 1), ("n_blocks", 0), ("epochs", 1), ("batch_size", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise ValueError(f"'{name}' must be an integer >= {lo}; got {v!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"'dropout' must be in [0, 1); got {self.dropout!r}")
        check_choice("class_weight", self.class_weight, ("balanced", None))
        Xa = np.asarray(X, dtype=np.float32)
        self.classes_, yi = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) != 2:
            raise ValueError(f"TabularResNet is binary; 'y' has classes {self.classes_.tolist()}")
        dev = self._device()
        gen = torch.Generator().manual_seed(int(self.seed))
        torch.manual_seed(int(self.seed))
        net = self._build(Xa.shape[1]).to(dev)
        counts = np.bincount(yi, minlength=2)
        w = (len(yi) / (2.0 * np.maximum(counts, 1))) if self.class_weight == "balanced" else np.ones(2)
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32, device=dev))
        opt = torch.optim.AdamW(net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        xt = torch.from_numpy(Xa).to(dev)
        yt = torch.from_numpy(yi.astype(np.int64)).to(dev)
        hist: dict[str, list[Any]] = {"train_loss": []}
        if eval_set is not None:
            xv = torch.from_numpy(np.asarray(eval_set[0], dtype=np.float32)).to(dev)
            yv = np.searchsorted(self.classes_, np.asarray(eval_set[1]))
            hist.update(val_loss=[], val_proba=[])
        n = len(yi)
        bs = min(int(self.batch_size), n)
        for _ in range(int(self.epochs)):
            net.train()
            order = torch.randperm(n, generator=gen).to(dev)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                if len(idx) < 2:  # BatchNorm needs two rows
                    continue
                opt.zero_grad()
                loss = loss_fn(net(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            hist["train_loss"].append(total / n)
            if eval_set is not None:
                p = self._proba(net, xv)
                eps = 1e-7
                hist["val_loss"].append(float(-np.mean(yv * np.log(p + eps) + (1 - yv) * np.log(1 - p + eps))))
                hist["val_proba"].append(p)
        self.net_ = net.cpu().eval()
        self.n_features_in_ = Xa.shape[1]
        self.history_ = hist
        return self

    @staticmethod
    def _proba(net: Any, x: Any) -> np.ndarray:
        import torch

        net.eval()
        with torch.no_grad():
            return torch.softmax(net(x), dim=1)[:, 1].cpu().numpy().astype(float)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in :attr:`classes_` order."""
        import torch

        p1 = self._proba(self.net_, torch.from_numpy(np.asarray(X, dtype=np.float32)))
        return np.c_[1 - p1, p1]

    def predict(self, X: Any) -> np.ndarray:
        """Class with probability >= 0.5."""
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]


def _resnet_module(n_in: int, d: int, n_blocks: int, dropout: float) -> Any:
    """Stem -> residual blocks -> BatchNorm/ReLU/Linear head (2 logits)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.BatchNorm1d(d), nn.Linear(d, 2 * d), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Linear(2 * d, d), nn.Dropout(dropout))

        def forward(self, x: Any) -> Any:
            return x + self.body(x)

    return nn.Sequential(nn.Linear(n_in, d), *[Block() for _ in range(n_blocks)], nn.BatchNorm1d(d), nn.ReLU(),
                         nn.Linear(d, 2))


def make_classifier(name: str, params: Mapping[str, Any] | None = None, *, seed: int = 0,
                    device: str = "cpu") -> Any:
    """A fresh classifier: ``svm`` (calibrated SVC), ``rf`` or ``resnet``, balanced classes."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    check_choice("classifier", name, CLASSIFIERS)
    params = dict(params or {})
    if name == "svm":  # Platt scaling on 5-fold cross-validated decision values, SVC refitted on all rows
        return CalibratedClassifierCV(SVC(class_weight="balanced", random_state=seed, **params), method="sigmoid",
                                      cv=StratifiedKFold(5, shuffle=True, random_state=seed), ensemble=False)
    if name == "rf":
        return RandomForestClassifier(class_weight="balanced", random_state=seed, n_jobs=1, **params)
    return TabularResNet(seed=seed, device=device, **params)


# --------------------------------------------------------------------------- LASSO
class L1LogisticSelector(TransformerMixin, BaseEstimator):
    """Keep the features with a non-zero L1-penalized logistic coefficient.

    Parameters
    ----------
    Cs : sequence of float or int
        Inverse penalties tried (LogisticRegressionCV); default 10 values from
        0.01 to 10 on a log scale (larger values keep almost every feature and
        converge slowly).
    cv : int
        Stratified folds choosing the penalty (by log-loss).
    seed : int
        Fold shuffling.
    max_iter : int
        liblinear iterations.

    Attributes
    ----------
    support_ : ndarray of bool
    coef_ : pandas.Series
        Coefficients (on the input scale; scale the features first).
    C_ : float
        Chosen inverse penalty.
    """

    def __init__(self, Cs: int | Sequence[float] = tuple(np.logspace(-2, 1, 10)), cv: int = 5, seed: int = 0,
                 max_iter: int = 2000) -> None:
        self.Cs = Cs
        self.cv = cv
        self.seed = seed
        self.max_iter = max_iter

    def fit(self, X: pd.DataFrame, y: Any) -> "L1LogisticSelector":
        """Fit LogisticRegressionCV (L1) on the training rows."""
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold

        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"'X' must be a pandas DataFrame; got {type(X).__name__}")
        yv = np.asarray(y)
        n_min = int(np.bincount(pd.factorize(yv)[0]).min()) if len(yv) else 0
        cv = max(2, min(int(self.cv), n_min))
        if n_min < 2:
            raise ValueError(f"LASSO selection needs >= 2 rows of each class; got class counts "
                             f"{pd.Series(yv).value_counts().to_dict()}")
        model = LogisticRegressionCV(
            Cs=list(self.Cs) if not isinstance(self.Cs, int) else self.Cs, l1_ratios=[1.0], solver="liblinear", class_weight="balanced", scoring="neg_log_loss",
            cv=StratifiedKFold(cv, shuffle=True, random_state=self.seed), max_iter=int(self.max_iter),
            random_state=self.seed, use_legacy_attributes=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # liblinear convergence chatter on tiny folds
            model.fit(X.to_numpy(dtype=float), yv)
        coef = np.ravel(model.coef_)
        self.coef_ = pd.Series(coef, index=X.columns, name="coef")
        self.support_ = coef != 0
        self.C_ = float(np.ravel(model.C_)[0])
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Selected feature names."""
        return self.feature_names_in_[self.support_].copy()

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """The selected columns of ``X``."""
        return X.loc[:, list(self.get_feature_names_out())]


# --------------------------------------------------------------------------- inner CV
def _fold_rows(subjects: pd.Series, fold: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    tr = subjects.isin([str(s) for s in fold["train"]]).to_numpy()
    va = subjects.isin([str(s) for s in fold["test"]]).to_numpy()
    return tr, va


@dataclass
class InnerSelection:
    """LASSO selections of the inner folds and the final list.

    Attributes
    ----------
    per_fold : list of list of str
        Features selected in each inner fold.
    counts : pandas.Series
        Folds selecting each feature (all features, descending).
    mean_abs_coef : pandas.Series
        Mean |coefficient| over the folds.
    selected : list of str
        Final list (selected in >= ``min_folds`` folds, or the fallback).
    rule : str
        How the list was formed, in words.
    C : list of float
        Penalty chosen per fold.
    """

    per_fold: list[list[str]]
    counts: pd.Series
    mean_abs_coef: pd.Series
    selected: list[str]
    rule: str
    C: list[float] = field(default_factory=list)


def inner_selection(X: pd.DataFrame, y: pd.Series, subjects: pd.Series, folds: Sequence[Mapping[str, Any]], *,
                    scaler: str = "robust", min_folds: int = 3, fallback_k: int = 10,
                    Cs: int | Sequence[float] = tuple(np.logspace(-2, 1, 10)),
                    seed: int = 0, fit_log: Any = None) -> InnerSelection:
    """LASSO (L1 logistic) in every inner fold on that fold's scaled training rows.

    Parameters
    ----------
    X : DataFrame
        Real training rows (index = scan ids).
    y : Series
        0/1 labels of the rows (1 = MS).
    subjects : Series
        Subject of each row.
    folds : sequence of split dicts
        Inner folds (``train`` / ``test`` subject lists).
    scaler : str
        Scaler fitted on each fold's training rows before LASSO.
    min_folds : int
        Folds a feature must be selected in to enter the final list.
    fallback_k : int
        If no feature reaches ``min_folds``: keep the ``fallback_k`` most frequent.
    Cs, seed
        :class:`L1LogisticSelector` settings.
    fit_log : FitLog, optional
        Records ``"scaler"`` and ``"lasso"``.
    """
    if not 1 <= int(min_folds) <= len(folds):
        raise ValueError(f"'min_folds' must be in [1, {len(folds)}]; got {min_folds!r}")
    per_fold, coefs, cs = [], [], []
    for k, fold in enumerate(folds):
        tr, _ = _fold_rows(subjects, fold)
        sc = make_scaler(scaler).set_output(transform="pandas")
        Xs = sc.fit_transform(X[tr])
        record_fit(fit_log, "scaler", subjects[tr])
        sel = L1LogisticSelector(Cs=Cs, seed=seed + k).fit(Xs, y[tr])
        record_fit(fit_log, "lasso", subjects[tr])
        per_fold.append(list(sel.get_feature_names_out()))
        coefs.append(sel.coef_.abs())
        cs.append(sel.C_)
    counts = pd.Series(0, index=X.columns, dtype=int)
    for f in per_fold:
        counts[f] += 1
    mean_abs = pd.concat(coefs, axis=1).mean(axis=1)
    order = pd.DataFrame({"n": counts, "c": mean_abs}).sort_values(["n", "c"], ascending=False)
    chosen = order.index[order["n"] >= min_folds].tolist()
    rule = f"selected in >= {min_folds} of {len(folds)} inner folds"
    if not chosen:
        chosen = order.index[order["n"] > 0][:fallback_k].tolist() or order.index[:fallback_k].tolist()
        rule = (f"no feature reached {min_folds} of {len(folds)} folds: the {len(chosen)} most frequently "
                "selected (ties: larger mean |coefficient|)")
    logger.info("inner LASSO: %s per fold, final %d features (%s)", [len(f) for f in per_fold], len(chosen), rule)
    return InnerSelection(per_fold, order["n"], order["c"], chosen, rule, cs)


@dataclass
class TuningResult:
    """Grid search of one classifier over the inner folds.

    Attributes
    ----------
    classifier : str
    params : dict
        Chosen hyper-parameters (ResNet: ``epochs`` = the early-stopping epoch).
    scores : pandas.DataFrame
        One row per grid point: the parameters, ``mean_auc``, ``sd_auc``.
    """

    classifier: str
    params: dict[str, Any]
    scores: pd.DataFrame


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def tune(name: str, X: pd.DataFrame, y: pd.Series, subjects: pd.Series, folds: Sequence[Mapping[str, Any]],
         selection: InnerSelection, *, grid: Mapping[str, Sequence[Any]], scaler: str = "robust", seed: int = 0,
         device: str = "cpu", fit_log: Any = None) -> TuningResult:
    """Grid search by mean inner-validation ROC AUC, each fold with its own LASSO list.

    The ResNet trains each grid point for ``epochs`` (the maximum) with the fold's
    validation rows as ``eval_set``; the epoch with the lowest mean validation
    log-loss over the folds is the early-stopping point, and the AUC at that
    epoch is the grid point's score.
    """
    check_choice("classifier", name, CLASSIFIERS)
    keys = list(grid)
    rows, points = [], []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        aucs, curves, probas, ys = [], [], [], []
        for k, fold in enumerate(folds):
            tr, va = _fold_rows(subjects, fold)
            feats = selection.per_fold[k] or selection.selected
            sc = make_scaler(scaler)
            xtr = sc.fit_transform(X.loc[tr, feats])
            xva = sc.transform(X.loc[va, feats])
            clf = make_classifier(name, params, seed=seed, device=device)
            if name == "resnet":
                clf.fit(xtr, y[tr].to_numpy(), eval_set=(xva, y[va].to_numpy()))
                curves.append(clf.history_["val_loss"])
                probas.append(clf.history_["val_proba"])
                ys.append(y[va].to_numpy())
            else:
                clf.fit(xtr, y[tr].to_numpy())
                aucs.append(_auc(y[va].to_numpy(), clf.predict_proba(xva)[:, 1]))
            record_fit(fit_log, f"tuning.{name}", subjects[tr])
        if name == "resnet":
            best_epoch = int(np.argmin(np.mean(curves, axis=0)))
            aucs = [_auc(yk, pk[best_epoch]) for yk, pk in zip(ys, probas)]
            params = {**params, "epochs": best_epoch + 1}
        points.append(params)
        rows.append({**{f"param_{k}": v for k, v in params.items()}, "mean_auc": float(np.nanmean(aucs)),
                     "sd_auc": float(np.nanstd(aucs, ddof=1)) if len(aucs) > 1 else float("nan")})
    scores = pd.DataFrame(rows)
    best = int(np.nanargmax(scores["mean_auc"].to_numpy()))
    chosen = points[best]
    logger.info("tuning %s: %d grid points, best %s (inner AUC %.3f)", name, len(scores), chosen,
                scores["mean_auc"].iloc[best])
    return TuningResult(name, chosen, scores)


def fit_final(name: str, params: Mapping[str, Any], X: pd.DataFrame, y: pd.Series, subjects: pd.Series,
              features: Sequence[str], *, scaler: str = "robust", seed: int = 0, device: str = "cpu",
              fit_log: Any = None, step: str = "classifier") -> Any:
    """Scaler + classifier fitted on all given training rows (real and synthetic), as a Pipeline."""
    from sklearn.pipeline import Pipeline

    if not features:
        raise ValueError("'features' is empty: nothing to train on")
    pipe = Pipeline([("scaler", make_scaler(scaler)),
                     ("clf", make_classifier(name, params, seed=seed, device=device))])
    pipe.fit(X.loc[:, list(features)].to_numpy(dtype=float), y.to_numpy())
    record_fit(fit_log, f"{step}.scaler", subjects)
    record_fit(fit_log, step, subjects)
    return pipe


def oof_predictions(name: str, params: Mapping[str, Any], X: pd.DataFrame, y: pd.Series, subjects: pd.Series,
                    folds: Sequence[Mapping[str, Any]], features: Sequence[str], *,
                    X_syn: pd.DataFrame | None = None, y_syn: pd.Series | None = None,
                    source_syn: pd.Series | None = None, scaler: str = "robust", seed: int = 0,
                    device: str = "cpu", fit_log: Any = None) -> pd.Series:
    """Out-of-fold P(MS) of the real training rows over the inner folds.

    Fold ``k`` trains on its real training rows plus the synthetic rows whose
    source subject is among them, and predicts its real validation rows.
    """
    out = pd.Series(np.nan, index=X.index)
    for fold in folds:
        tr, va = _fold_rows(subjects, fold)
        Xk, yk, sk = X[tr], y[tr], subjects[tr]
        if X_syn is not None and len(X_syn):
            keep = source_syn.isin([str(s) for s in fold["train"]]).to_numpy()
            Xk = pd.concat([Xk, X_syn[keep]])
            yk = pd.concat([yk, y_syn[keep]])
            sk = pd.concat([sk, source_syn[keep]])
        pipe = fit_final(name, params, Xk, yk, sk, features, scaler=scaler, seed=seed, device=device,
                         fit_log=fit_log, step="threshold")
        out[va] = pipe.predict_proba(X.loc[va, list(features)].to_numpy(dtype=float))[:, 1]
    if out.isna().any():
        raise ValueError(f"inner folds do not cover the training rows {out.index[out.isna()].tolist()[:5]}")
    return out


def classification_scores(y_true: Any, proba: Any, threshold: float = 0.5) -> dict[str, float]:
    """F1, accuracy, precision, recall (sensitivity), specificity and ROC AUC; positive class 1 (MS)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, dtype=float)
    pred = (p >= threshold).astype(int)
    tn = int(np.sum((pred == 0) & (y == 0)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    return {
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "auc": _auc(y, p),
    }


def explain(pipe: Any, X_background: pd.DataFrame, X_explain: pd.DataFrame, *, max_background: int = 100,
            seed: int = 0) -> pd.DataFrame:
    """SHAP values of P(MS) for ``X_explain`` (rows x features).

    The model is explained in the transformed (scaled) feature space with the
    transformed training rows as background (at most ``max_background``, drawn
    with ``seed``): a permutation explainer of the probability of class 1.
    Returns a DataFrame like ``X_explain`` (index and columns); ``attrs``:
    ``base_value`` and the scaled feature values ``data``.
    """
    import shap

    scaler, clf = pipe.named_steps["scaler"], pipe.named_steps["clf"]
    bg = scaler.transform(X_background.to_numpy(dtype=float))
    xe = scaler.transform(X_explain.to_numpy(dtype=float))
    rng = np.random.default_rng(seed)
    if len(bg) > max_background:
        bg = bg[rng.choice(len(bg), max_background, replace=False)]
    masker = shap.maskers.Independent(bg, max_samples=len(bg))
    explainer = shap.explainers.Permutation(lambda a: clf.predict_proba(a)[:, 1], masker, seed=seed)
    res = explainer(xe, max_evals=max(2 * xe.shape[1] + 1, 10 * xe.shape[1]), silent=True)
    vals = np.asarray(res.values)
    if vals.ndim == 3:  # (n, features, classes) when the output is multi-class
        vals = vals[..., 1]
    out = pd.DataFrame(vals, index=X_explain.index, columns=X_explain.columns)
    out.attrs["base_value"] = float(np.ravel(res.base_values)[0])
    out.attrs["data"] = pd.DataFrame(xe, index=X_explain.index, columns=X_explain.columns)
    return out
