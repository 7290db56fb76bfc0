"""Seed 000: leave-one-center-out MS-vs-HC basal-ganglia radiomics with augmentation.

The study of the ``01_gan_augmentation`` notebook (Lopez-Rios & Alvarez-Padilla
2025). One LOCO iteration (:func:`run_loco`) holds one center out and, on the
other centers only:

1. splits the training subjects into inner 5-fold (80/20, subject-level,
   stratified by diagnosis) folds (:func:`loco_split`, the splits module's
   :func:`~msutils.data.splits.nested_loco`: all visits of a subject together, a
   subject also scanned at the held-out center excluded from training);
2. trains the 3D ROI U-Net (:mod:`msutils.segmentation.roi_unet`) on the
   training T1 scans and their ten-ROI maps, early-stopped on the validation
   subjects of inner fold 0, and segments the held-out scans with it (held-out
   features never use the true labels; Dice against them is reported);
3. extracts the 107 x 10 = 1,070 pyradiomics features (``seed000`` settings of
   :mod:`msutils.features.radiomics`) of the training scans (true label maps) and of the
   held-out scans (predicted maps); features undefined on the training scans
   are dropped, a held-out ROI the U-Net missed gets the training medians;
4. harmonizes with ComBat fitted on the training centers (covariates age and
   sex), the held-out center through the new-site step
   (:class:`msutils.data.harmonize.ComBat`);
5. selects features with L1 logistic regression in every inner fold and keeps
   those selected in at least ``min_folds`` folds; tunes SVM, random forest and
   the tabular ResNet over the inner folds (:mod:`msutils.models.classifiers`);
6. for every augmentation scenario of :data:`SCENARIOS` (``real``, ``real+tda``;
   part 2 registers ``real+gba`` with :func:`register_scenario`) and each of
   ``n_repeats`` repetitions (a new synthetic fold and classifier seed), fits
   the final models on the real + synthetic training rows, predicts the held-out
   center and fixes the decision threshold a priori at the maximum of Youden's J
   of the out-of-fold inner-validation predictions;
7. repeats the ``real`` scenario without ComBat (harmonization ablation),
   measures how well the features predict the center before and after ComBat,
   and scores a classifier given the cohort's true generative variables
   (ceiling), when the manifest has them.

Every fitted step records the subjects it saw in a :class:`~msutils.data.leakage.FitLog`
(``combat.new_site`` records the held-out subjects whose *unlabelled* features
estimated the new site's location and scale; it never sees a diagnosis).

Augmentation scenarios
----------------------
A scenario is a name mapped to ``None`` (no synthetic data) or to a callable
``fn(request: AugmentationRequest) -> DataFrame`` returning one row per synthetic
image (index: unique image id) with columns ``t1`` and ``roi_labels`` (NIfTI
paths; the label file is a class map of :data:`ROI_NAMES`, class k = ROI k),
``group`` (MS / HC), ``source_subject`` (the training subject the image derives
from, or the subject whose data trained the generator), ``center`` (the ComBat
batch of the image), ``age`` and ``sex`` (0/1). The request carries the
training rows, the inner folds, the U-Net of the iteration (to segment
generated images), the number of images per class, the repetition, a seed and a
folder to write to. :func:`tda_images` is the traditional augmentation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msutils.data.augment import TdaParams, traditional_augment
from msutils.data.harmonize import ComBat
from msutils.data.leakage import FitLog
from msutils.models import classifiers as clf
from msutils.segmentation.roi_unet import (ROI_NAMES, RoiSegmenter, RoiUNetConfig, class_map, class_rois,
                                           dice_per_roi, train_roi_unet)
from msutils.stats import diagnostic_utility, friedman_posthoc, youden_threshold

__all__ = [
    "ROI_NAMES",
    "DEEP_GM_ROIS",
    "ROI_GROUPS",
    "GT_VARIABLES",
    "SCENARIOS",
    "StudyDesignError",
    "StudyConfig",
    "AugmentationRequest",
    "register_scenario",
    "paper_numbers",
    "check_design",
    "study_table",
    "loco_split",
    "real_features",
    "tda_images",
    "run_loco",
    "leakage_steps",
    "fitted_fingerprint",
    "roi_of_feature",
    "roi_group",
    "metrics_long",
    "table3",
    "friedman_tests",
    "best_pipeline",
    "utility_table",
]

logger = logging.getLogger(__name__)

DEEP_GM_ROIS: tuple[str, ...] = ROI_NAMES[:8]
ROI_GROUPS: dict[str, str] = {**{r: "deep GM" for r in DEEP_GM_ROIS}, "whole_wm": "whole WM", "whole_gm": "whole GM"}
"""ROI -> group. In the synthetic cohort the MS signal lives in the deep GM
(atrophy, texture) and the whole WM (T1-hypointense lesions); the cortical GM
carries none."""

GT_VARIABLES: dict[str, tuple[str, ...]] = {
    "deep-GM generative variables": ("gt_thalamus_volume_factor", "gt_texture_amplitude"),
    "all generative variables": ("gt_thalamus_volume_factor", "gt_texture_amplitude", "gt_lesion_volume_ml"),
}
"""Ground-truth columns given to the ceiling classifier (synthetic cohorts)."""

_GROUPS = ("MS", "HC")


class StudyDesignError(ValueError):
    """The manifest cannot support the LOCO design; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("the cohort cannot support the leave-one-center-out design of seed 000:\n  - "
                         + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class StudyConfig:
    """Settings of one LOCO study run (profile-scaled).

    Attributes
    ----------
    n_inner : int
        Inner folds (seed: 5, subject-level 80/20).
    scaler : str
        Scaler of the classifiers and of LASSO (``robust``, ``minmax``, ``zscore``).
    min_folds : int
        Inner folds a feature must be selected in.
    classifiers : tuple of str
    grid : str
        Hyper-parameter grid profile of :data:`msutils.models.classifiers.GRIDS`.
    scenarios : tuple of str
        Names of :data:`SCENARIOS` to run (``real`` first).
    n_repeats : int
        Repetitions per scenario (synthetic folds; classifier seeds).
    n_per_class : int
        Synthetic images per class and synthetic fold (seed: 50).
    tda : TdaParams
    unet : RoiUNetConfig
    harmonize : bool
        ComBat (False: raw features in the main pipeline).
    covariates : tuple of str
        ComBat covariates (age and sex).
    radiomics_params : str
        Preset of :data:`msutils.features.radiomics.PARAMS`.
    n_jobs : int
        Radiomics worker processes.
    seed : int
    device : str
        Torch device of the U-Net and the ResNet (``cpu``, ``cuda``, ``auto``).
    """

    n_inner: int = 5
    scaler: str = "robust"
    min_folds: int = 3
    classifiers: tuple[str, ...] = clf.CLASSIFIERS
    grid: str = "quick"
    scenarios: tuple[str, ...] = ("real", "real+tda")
    n_repeats: int = 5
    n_per_class: int = 50
    tda: TdaParams = TdaParams()
    unet: RoiUNetConfig = RoiUNetConfig()
    harmonize: bool = True
    covariates: tuple[str, ...] = ("age", "sex")
    radiomics_params: str = "seed000"
    n_jobs: int = 1
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if int(self.n_inner) < 2:
            raise ValueError(f"'n_inner' must be >= 2; got {self.n_inner!r}")
        if not 1 <= int(self.min_folds) <= int(self.n_inner):
            raise ValueError(f"'min_folds' must be in [1, {self.n_inner}]; got {self.min_folds!r}")
        clf.make_scaler(self.scaler)
        for c in self.classifiers:
            if c not in clf.CLASSIFIERS:
                raise ValueError(f"'classifiers' entries must be one of {list(clf.CLASSIFIERS)}; got {c!r}")
        if self.grid not in clf.GRIDS:
            raise ValueError(f"'grid' must be one of {list(clf.GRIDS)}; got {self.grid!r}")
        if not self.scenarios or self.scenarios[0] != "real":
            raise ValueError(f"'scenarios' must start with 'real'; got {list(self.scenarios)!r}")
        for name in ("n_repeats", "n_per_class", "n_jobs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"'{name}' must be >= 1; got {getattr(self, name)!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"'device' must be one of ['cpu', 'cuda', 'auto']; got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (summaries)."""
        return asdict(self)


@dataclass
class AugmentationRequest:
    """What a scenario callable gets (see the module docstring)."""

    cohort: Any
    train: pd.DataFrame
    inner: list[dict[str, Any]]
    segmenter: RoiSegmenter | None
    n_per_class: int
    repetition: int
    seed: int
    out_dir: Path
    config: StudyConfig
    fit_log: FitLog | None = None


SCENARIOS: dict[str, Callable[[AugmentationRequest], pd.DataFrame] | None] = {}
"""Augmentation scenarios by name (``real``, ``real+tda``; part 2 adds ``real+gba``)."""


def register_scenario(name: str, fn: Callable[[AugmentationRequest], pd.DataFrame] | None) -> None:
    """Add (or replace) an augmentation scenario, e.g. ``register_scenario("real+gba", gba_images)``."""
    if not isinstance(name, str) or not name.startswith("real"):
        raise ValueError(f"'name' must be a string starting with 'real'; got {name!r}")
    if fn is not None and not callable(fn):
        raise TypeError(f"'fn' must be callable or None; got {type(fn).__name__}")
    SCENARIOS[name] = fn


@lru_cache(maxsize=1)
def paper_numbers() -> dict[str, Any]:
    """The seed's published numbers (``gan_augmentation.yaml`` beside this module)."""
    import yaml

    return yaml.safe_load((Path(__file__).with_suffix(".yaml")).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- design checks
def check_design(cohort: Any, heldout_centers: Sequence[str]) -> None:
    """Raise :class:`StudyDesignError` naming every reason the cohort cannot run the design.

    Checks: at least three centers; MS and HC subjects in every center; a
    ``roi_labels`` column with a file for every scan and the ten ROIs of
    :data:`ROI_NAMES` among the sidecar's ``roi_sets``; every held-out center
    exists (and is not the only training center left).
    """
    table = cohort.table
    problems: list[str] = []
    centers = sorted(table["center"].astype(str).unique())
    if len(centers) < 3:
        problems.append(f"it needs at least 3 centers (two to train on, one held out); the manifest has "
                        f"{len(centers)}: {centers}")
    groups = table.groupby(table["center"].astype(str))["group"].agg(lambda g: sorted(set(g.astype(str))))
    for c, gs in groups.items():
        lacking = [g for g in _GROUPS if g not in gs]
        if lacking:
            problems.append(f"center {c!r} has no {' and no '.join(lacking)} subjects (groups: {gs}); every center "
                            "needs both MS and HC")
    bad_groups = sorted(set(table["group"].astype(str)) - set(_GROUPS))
    if bad_groups:
        problems.append(f"column 'group' must hold MS or HC; got {bad_groups}")
    if "roi_labels" not in table.columns:
        problems.append("the manifest has no 'roi_labels' column (the ten-ROI label maps train the U-Net and "
                        "define the radiomics ROIs)")
    else:
        empty = table.index[table["roi_labels"].isna() | (table["roi_labels"].astype(str) == "")].tolist()
        if empty:
            problems.append(f"{len(empty)} scan(s) have no roi_labels file: {empty[:5]}")
        missing = [r for r in ROI_NAMES if r not in cohort.roi_sets]
        if missing:
            problems.append(f"the sidecar's roi_sets lack the ROIs {missing}; seed 000 needs exactly "
                            f"{list(ROI_NAMES)}")
    for h in heldout_centers:
        if str(h) not in centers:
            problems.append(f"held-out center {h!r} does not exist; centers: {centers}")
    if problems:
        raise StudyDesignError(problems)


def study_table(cohort: Any) -> pd.DataFrame:
    """One row per scan: ``subject_id``, ``center``, ``group``, ``y`` (1 = MS), ``age``, ``sex`` (M = 1), paths, gt."""
    from msutils.features.volumes import encode_sex

    t = cohort.table.copy()
    t["subject_id"] = t["subject_id"].astype(str)
    t["center"] = t["center"].astype(str)
    t["y"] = (t["group"].astype(str) == "MS").astype(int)
    t["sex"] = encode_sex(t["sex"])
    t["age"] = t["age"].astype(float)
    return t


def loco_split(table: pd.DataFrame, heldout: str, *, n_inner: int = 5, seed: int = 0) -> dict[str, Any]:
    """The LOCO split holding ``heldout`` out, with ``n_inner`` inner folds over its training subjects."""
    from msutils.data.splits import nested_loco

    return nested_loco(table, n_inner, seed, stratify="group", centers=[heldout])[0]


# --------------------------------------------------------------------------- features
@dataclass
class _ImageTable:
    """The minimal cohort-like object :func:`msutils.features.radiomics.extract` reads (``table`` of paths)."""

    table: pd.DataFrame


def _extract(table: pd.DataFrame, rois: Mapping[str, Sequence[int]], config: StudyConfig,
             cache_dir: Path | None, progress: bool) -> pd.DataFrame:
    from msutils.features import radiomics

    if table.empty:
        return pd.DataFrame()
    return radiomics.extract(_ImageTable(table[["t1", "roi_labels"]]), rois, config.radiomics_params,
                             n_jobs=config.n_jobs, cache_dir=cache_dir, progress=progress)


def real_features(cohort: Any, config: StudyConfig, cache_dir: Path | None = None, *,
                  progress: bool = True) -> pd.DataFrame:
    """Radiomics of every scan on its true label map (the ten ROIs), index ``scan_id``.

    Used for *training* rows only: a LOCO iteration takes the rows of its
    training scans; held-out scans are featurized from their U-Net segmentation.
    """
    from msutils.features import radiomics

    rois = {r: cohort.roi_sets[r] for r in ROI_NAMES}
    return radiomics.extract(cohort, rois, config.radiomics_params, n_jobs=config.n_jobs, cache_dir=cache_dir,
                             progress=progress)


def _write_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> str:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return str(path)


def _clean(train: pd.DataFrame, *others: pd.DataFrame) -> tuple[pd.DataFrame, list[pd.DataFrame], dict[str, Any]]:
    """Drop features undefined or constant on the training rows; fill others' NaN with training medians."""
    values = train.to_numpy(dtype=float)
    finite = np.isfinite(values).all(axis=0)
    varying = np.nanstd(values, axis=0) > 0
    keep = train.columns[finite & varying]
    med = train[keep].median()
    cleaned, n_imputed = [], 0
    for o in others:
        o = o.reindex(columns=keep)
        n_imputed += int(o.isna().to_numpy().sum())
        cleaned.append(o.fillna(med))
    info = {"n_features": int(len(keep)), "dropped": [c for c in train.columns if c not in set(keep)],
            "n_imputed_values": n_imputed}
    return train[keep], cleaned, info


# --------------------------------------------------------------------------- scenarios
def tda_images(request: AugmentationRequest) -> pd.DataFrame:
    """Traditional augmentation: ``n_per_class`` random transforms of training scans per class.

    Source scans are drawn uniformly (with replacement) among the training scans
    of the class; image and label map get the same flip / rotation /
    translation / isotropic scaling (:func:`msutils.data.augment.traditional_augment`).
    """
    cohort, train = request.cohort, request.train
    rng = np.random.default_rng([request.seed, 17, request.repetition])
    rows = {}
    for group in _GROUPS:
        pool = train.index[train["group"].astype(str) == group].tolist()
        if not pool:
            raise ValueError(f"no training scan of group {group!r} to augment")
        for i in range(request.n_per_class):
            src = pool[int(rng.integers(len(pool)))]
            img_nii = cohort.image(src, "t1")
            labels = class_map(cohort.array(src, "roi_labels", dtype=None), cohort.roi_sets)
            img, lab, t = traditional_augment(np.asarray(img_nii.dataobj, dtype=np.float32), labels, rng,
                                              request.config.tda)
            sid = f"tda-r{request.repetition}-{group}-{i:03d}"
            rows[sid] = {
                "t1": _write_nifti(img, img_nii.affine, request.out_dir / f"{sid}_t1.nii.gz"),
                "roi_labels": _write_nifti(lab, img_nii.affine, request.out_dir / f"{sid}_classes.nii.gz"),
                "group": group, "source_subject": str(train.at[src, "subject_id"]), "source_scan": src,
                "center": str(train.at[src, "center"]), "age": float(train.at[src, "age"]),
                "sex": float(train.at[src, "sex"]), "transform": t,
            }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "scan_id"
    return out


register_scenario("real", None)
register_scenario("real+tda", tda_images)


# --------------------------------------------------------------------------- one LOCO iteration
def _center_accuracy(X: pd.DataFrame, centers: pd.Series, seed: int) -> float:
    """5-fold cross-validated balanced accuracy of predicting the center from the features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(5, centers.value_counts().min()))
    if k < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    return float(cross_val_score(model, X.to_numpy(dtype=float), centers.to_numpy(), cv=cv,
                                 scoring="balanced_accuracy").mean())


def _ceiling(table: pd.DataFrame, train_ids: Sequence[str], test_ids: Sequence[str]) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    for name, cols in GT_VARIABLES.items():
        if not all(c in table.columns for c in cols):
            continue
        tr, te = table.loc[list(train_ids)], table.loc[list(test_ids)]
        if tr[list(cols)].isna().any().any() or te[list(cols)].isna().any().any():
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(tr[list(cols)], tr["y"])
        out[name] = clf.classification_scores(te["y"], model.predict_proba(te[list(cols)])[:, 1])["auc"]
    return out


def _synthetic_rows(name: str, request: AugmentationRequest, cache_dir: Path | None, train_raw: pd.DataFrame,
                    progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    fn = SCENARIOS[name]
    meta = fn(request)
    needed = {"t1", "roi_labels", "group", "source_subject", "center", "age", "sex"}
    missing = sorted(needed - set(meta.columns))
    if missing:
        raise ValueError(f"scenario {name!r} returned no columns {missing}")
    train_subjects = set(request.train["subject_id"])
    foreign = sorted(set(meta["source_subject"].astype(str)) - train_subjects)
    if foreign:
        raise ValueError(f"scenario {name!r} derived images from non-training subjects {foreign[:5]}")
    feats = _extract(meta, class_rois(), request.config, cache_dir, progress)
    return meta, feats.reindex(columns=train_raw.columns)


def run_loco(cohort: Any, heldout: str, config: StudyConfig, work_dir: str | os.PathLike, *,
             features: pd.DataFrame | None = None, progress: bool = True) -> dict[str, Any]:
    """One LOCO iteration (see the module docstring); returns plain data for the fold cache.

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
    heldout : str
        The held-out center.
    config : StudyConfig
    work_dir : path-like
        Folder for segmentations, synthetic images and the radiomics cache.
    features : DataFrame, optional
        :func:`real_features` of the cohort (rows of the training scans are
        used); computed for the training scans when None.
    progress : bool
        Progress bars.

    Returns
    -------
    dict
        ``heldout``, ``split``, ``segmentation`` (Dice per test scan and ROI, U-Net
        history), ``features`` (cleaning info), ``combat`` (estimates),
        ``selection``, ``tuning``, ``predictions`` (long table: scenario,
        classifier, repetition, scan_id, y, proba), ``thresholds``, ``oof``,
        ``models`` (fitted pipelines + their training rows for SHAP),
        ``harmonization``, ``ceiling``, ``fit_log``, ``seconds``.
    """
    check_design(cohort, [heldout])
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    work = Path(work_dir)
    rad_cache = work / "radiomics"
    log = FitLog()
    table = study_table(cohort)
    split = loco_split(table, heldout, n_inner=config.n_inner, seed=config.seed)
    train_subj = set(split["train"])
    train = table[table["subject_id"].isin(train_subj)]
    test = table[table["center"] == heldout]
    inner = split["inner"]
    logger.info("LOCO %s: %d training scans (%d subjects), %d held-out scans", heldout, len(train),
                len(train_subj), len(test))

    # -- segmentation U-Net -----------------------------------------------------------------
    t0 = time.perf_counter()
    es_subj = set(inner[0]["test"])
    fit_rows = train[~train["subject_id"].isin(es_subj)]
    es_rows = train[train["subject_id"].isin(es_subj)]
    load = lambda ids: ([cohort.array(s, "t1") for s in ids],  # noqa: E731
                        [class_map(cohort.array(s, "roi_labels", dtype=None), cohort.roi_sets) for s in ids])
    xi, ci = load(fit_rows.index)
    vi, vc = load(es_rows.index)
    unet_cfg = replace(config.unet, seed=config.seed, device=config.device)
    segmenter = train_roi_unet(xi, ci, vi, vc, unet_cfg, subjects=sorted(set(fit_rows["subject_id"])),
                               val_subjects=sorted(es_subj), fit_log=log, progress=progress)
    del xi, ci, vi, vc
    seg_dir = work / f"segmentation-{heldout}"
    pred_paths, dice_rows = {}, {}
    for sid in test.index:
        nii = cohort.image(sid, "t1")
        pred = segmenter.predict(np.asarray(nii.dataobj, dtype=np.float32))
        truth = class_map(cohort.array(sid, "roi_labels", dtype=None), cohort.roi_sets)
        dice_rows[sid] = dice_per_roi(pred, truth)
        pred_paths[sid] = _write_nifti(pred, nii.affine, seg_dir / f"{sid}_classes.nii.gz")
    dice = pd.DataFrame.from_dict(dice_rows, orient="index")
    seconds["segmentation"] = time.perf_counter() - t0

    # -- radiomics ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if features is None:
        features = real_features(cohort.select(train.index), config, rad_cache, progress=progress)
    missing = [s for s in train.index if s not in features.index]
    if missing:
        raise ValueError(f"'features' lacks the training scans {missing[:5]}")
    raw_train = features.loc[train.index]
    test_tab = pd.DataFrame({"t1": test["t1"].astype(str), "roi_labels": pd.Series(pred_paths)})
    raw_test = _extract(test_tab, class_rois(), config, rad_cache, progress).reindex(columns=raw_train.columns)
    raw_train, (raw_test,), clean_info = _clean(raw_train, raw_test)
    seconds["radiomics"] = time.perf_counter() - t0

    # -- ComBat -----------------------------------------------------------------------------------
    covs = list(config.covariates)
    combat = ComBat(covariates=covs, fit_log=log)
    combat.fit(raw_train, train["center"], train[covs], subject_ids=train["subject_id"])
    h_train = combat.transform(raw_train, train["center"], train[covs], subject_ids=train["subject_id"])
    h_test = combat.transform(raw_test, test["center"], test[covs], subject_ids=test["subject_id"])
    combat_info = {"estimates": combat.estimates(), "constant": combat.constant_}
    X_train, X_test = (h_train, h_test) if config.harmonize else (raw_train, raw_test)

    # -- selection and tuning ----------------------------------------------------------------------
    t0 = time.perf_counter()
    y_train, s_train = train["y"], train["subject_id"]
    selection = clf.inner_selection(X_train, y_train, s_train, inner, scaler=config.scaler,
                                    min_folds=config.min_folds, seed=config.seed, fit_log=log)
    feats = selection.selected
    grids = clf.GRIDS[config.grid]
    tuning = {c: clf.tune(c, X_train, y_train, s_train, inner, selection, grid=grids[c], scaler=config.scaler,
                          seed=config.seed, device=config.device, fit_log=log) for c in config.classifiers}
    seconds["selection_tuning"] = time.perf_counter() - t0

    # -- scenarios ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    preds, thresholds, oof_rows, models, synth_info = [], {}, [], {}, {}
    for scen in config.scenarios:
        if scen not in SCENARIOS:
            raise ValueError(f"scenario {scen!r} is not registered; known: {sorted(SCENARIOS)}")
        n_rep = config.n_repeats
        for rep in range(n_rep):
            X_syn = y_syn = src_syn = None
            if SCENARIOS[scen] is not None:
                req = AugmentationRequest(cohort, train, inner, segmenter, config.n_per_class, rep, config.seed,
                                          work / f"synthetic-{heldout}" / scen.replace("+", "_") / f"rep{rep}",
                                          config, log)
                meta, raw_syn = _synthetic_rows(scen, req, rad_cache, raw_train, progress)
                _, (raw_syn,), _ = _clean(raw_train, raw_syn)
                raw_syn = raw_syn.reindex(columns=raw_train.columns)
                X_syn = (combat.transform(raw_syn, meta["center"], meta[covs].astype(float),
                                          subject_ids=meta["source_subject"]) if config.harmonize else raw_syn)
                y_syn = (meta["group"].astype(str) == "MS").astype(int)
                src_syn = meta["source_subject"].astype(str)
                synth_info[(scen, rep)] = meta.drop(columns=["transform"], errors="ignore")
            X_fit = X_train if X_syn is None else pd.concat([X_train, X_syn])
            y_fit = y_train if y_syn is None else pd.concat([y_train, y_syn])
            s_fit = s_train if src_syn is None else pd.concat([s_train, src_syn])
            for c in config.classifiers:
                params = tuning[c].params
                seed = config.seed + rep
                pipe = clf.fit_final(c, params, X_fit, y_fit, s_fit, feats, scaler=config.scaler, seed=seed,
                                     device=config.device, fit_log=log)
                p_test = pipe.predict_proba(X_test[feats].to_numpy(dtype=float))[:, 1]
                oof = clf.oof_predictions(c, params, X_train, y_train, s_train, inner, feats, X_syn=X_syn,
                                          y_syn=y_syn, source_syn=src_syn, scaler=config.scaler, seed=seed,
                                          device=config.device, fit_log=log)
                thr, j = youden_threshold(y_train, oof)
                thresholds[(scen, c, rep)] = {"threshold": thr, "youden_j_inner": j}
                preds.append(pd.DataFrame({"scenario": scen, "classifier": c, "repetition": rep,
                                           "scan_id": X_test.index, "y": test["y"].to_numpy(), "proba": p_test}))
                oof_rows.append(pd.DataFrame({"scenario": scen, "classifier": c, "repetition": rep,
                                              "scan_id": oof.index, "y": y_train.to_numpy(), "proba": oof.to_numpy()}))
                models[(scen, c, rep)] = {"pipeline": pipe, "X_fit": X_fit[feats]}
            logger.info("LOCO %s: scenario %s repetition %d done", heldout, scen, rep)
    seconds["scenarios"] = time.perf_counter() - t0

    # -- harmonization ablation, center prediction, ceiling ---------------------------------------
    t0 = time.perf_counter()
    harm: dict[str, Any] = {}
    if config.harmonize:
        sel_raw = clf.inner_selection(raw_train, y_train, s_train, inner, scaler=config.scaler,
                                      min_folds=config.min_folds, seed=config.seed)
        rows = {}
        for c in config.classifiers:
            pipe = clf.fit_final(c, tuning[c].params, raw_train, y_train, s_train, sel_raw.selected,
                                 scaler=config.scaler, seed=config.seed, device=config.device)
            p = pipe.predict_proba(raw_test[sel_raw.selected].to_numpy(dtype=float))[:, 1]
            rows[c] = clf.classification_scores(test["y"], p)
        harm["no_combat"] = {"selected": sel_raw.selected, "scores": rows}
    both_raw = pd.concat([raw_train, raw_test])
    both_h = pd.concat([h_train, h_test])
    centers_all = pd.concat([train["center"], test["center"]])
    harm["center_accuracy"] = {"before": _center_accuracy(both_raw, centers_all, config.seed),
                               "after": _center_accuracy(both_h, centers_all, config.seed),
                               "chance": 1.0 / centers_all.nunique()}
    ceiling = _ceiling(table, train.index, test.index)
    seconds["ablation"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    logger.info("LOCO %s done in %.0f s", heldout, seconds["total"])
    return {
        "heldout": heldout,
        "split": split,
        "n_scans": {"train": int(len(train)), "test": int(len(test))},
        "segmentation": {"dice": dice, "history": segmenter.history, "best_step": segmenter.best_step,
                         "seconds": segmenter.seconds, "config": asdict(unet_cfg), "segmenter": segmenter},
        "features": clean_info,
        "combat": combat_info,
        "selection": selection,
        "tuning": {c: {"params": t.params, "scores": t.scores} for c, t in tuning.items()},
        "predictions": pd.concat(preds, ignore_index=True),
        "oof": pd.concat(oof_rows, ignore_index=True),
        "thresholds": thresholds,
        "models": models,
        "synthetic": synth_info,
        "train_frame": X_train[feats].assign(y=y_train, center=train["center"]),
        "test_frame": X_test[feats].assign(y=test["y"], center=test["center"]),
        "raw_center_frames": {"raw": both_raw, "harmonized": both_h, "center": centers_all},
        "harmonization": harm,
        "ceiling": ceiling,
        "fit_log": log.to_dict(),
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- audit and canary
def leakage_steps(fit_log: Mapping[str, Any]) -> list[str]:
    """Steps that must not have seen a held-out subject: all but ``combat.new_site``
    (which estimates the new center's location/scale from its unlabelled features)."""
    return [s for s in fit_log["steps"] if s != "combat.new_site"]


def fitted_fingerprint(result: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 per fitted object of a :func:`run_loco` result (U-Net weights, ComBat,
    selection, tuning, every model's held-out and out-of-fold probabilities, thresholds).

    Two runs whose held-out diagnoses differ must give identical fingerprints.
    """
    def h(obj: Any) -> str:
        return hashlib.sha256(repr(obj).encode()).hexdigest()

    seg: RoiSegmenter = result["segmentation"]["segmenter"]
    preds = result["predictions"]
    return {
        "roi_unet": h([(k, v.numpy().tobytes()) for k, v in sorted(seg.state.items())]),
        "combat": h(result["combat"]["estimates"].round(12).to_dict()),
        "selection": h(result["selection"].selected),
        "tuning": h({c: t["params"] for c, t in result["tuning"].items()}),
        "models": h(np.round(preds["proba"].to_numpy(), 12).tolist()),
        "oof": h(np.round(result["oof"]["proba"].to_numpy(), 12).tolist()),
        "thresholds": h({k: round(v["threshold"], 12) for k, v in result["thresholds"].items()}),
        "fit_log": h(result["fit_log"]),
    }


# --------------------------------------------------------------------------- aggregation
def roi_of_feature(name: str) -> str:
    """ROI part of a feature column ``roi__family__feature``."""
    return name.split("__", 1)[0]


def roi_group(name: str) -> str:
    """``deep GM``, ``whole WM`` or ``whole GM`` of a feature column."""
    return ROI_GROUPS.get(roi_of_feature(name), "other")


_METRICS = ("f1", "accuracy", "precision", "recall", "auc")


def metrics_long(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Held-out metrics per LOCO iteration, scenario, classifier and repetition (threshold 0.5)."""
    rows = []
    for fold, r in results.items():
        for (scen, c, rep), g in r["predictions"].groupby(["scenario", "classifier", "repetition"], sort=False):
            rows.append({"loco": r["heldout"], "scenario": scen, "classifier": c, "repetition": int(rep),
                         **clf.classification_scores(g["y"], g["proba"])})
    return pd.DataFrame(rows)


def table3(long: pd.DataFrame, *, by_loco: bool = False) -> pd.DataFrame:
    """Mean and SD of each metric per classifier and scenario (over LOCO iterations x repetitions).

    ``by_loco=True`` adds the LOCO iteration to the rows (over repetitions).
    """
    keys = (["loco"] if by_loco else []) + ["classifier", "scenario"]
    g = long.groupby(keys, sort=False)[list(_METRICS)]
    mean, sd = g.mean(), g.std(ddof=1)
    out = pd.concat({"mean": mean, "sd": sd}, axis=1).swaplevel(axis=1)
    return out[[(m, s) for m in _METRICS for s in ("mean", "sd")]]


def friedman_tests(long: pd.DataFrame, *, metric: str = "f1", alpha: float = 0.05) -> dict[str, Any]:
    """Per scenario: Friedman across classifiers with (LOCO, repetition) blocks, Wilcoxon-Holm post hoc."""
    out = {}
    for scen, g in long.groupby("scenario", sort=False):
        wide = g.pivot_table(index=["loco", "repetition"], columns="classifier", values=metric)
        if wide.shape[1] < 2 or wide.shape[0] < 2:
            continue
        out[scen] = friedman_posthoc(wide, alpha=alpha) | {"scores": wide}
    return out


def best_pipeline(long: pd.DataFrame, *, metric: str = "f1") -> tuple[str, str]:
    """(classifier, scenario) with the highest mean ``metric`` over LOCO x repetitions, among augmented scenarios
    when there are any (the seed explains and evaluates its best augmented pipeline)."""
    aug = long[long["scenario"] != "real"]
    pool = aug if len(aug) else long
    means = pool.groupby(["classifier", "scenario"])[metric].mean()
    return means.idxmax()


def utility_table(results: Mapping[str, Mapping[str, Any]], classifier: str, scenario: str, *,
                  repetition: int = 0, prevalences: Sequence[float] = (0.1, 0.3, 0.5)) -> dict[str, Any]:
    """Clinical utility of one pipeline: each LOCO iteration's held-out scans at its a-priori threshold, pooled.

    Returns :func:`msutils.stats.diagnostic_utility` of the pooled decisions
    plus ``thresholds`` per LOCO iteration and ``per_repetition`` sensitivity /
    specificity (each repetition pooled over the LOCO iterations) for stability.
    """
    def pooled(rep: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        ys, decisions, thr = [], [], {}
        for r in results.values():
            t = r["thresholds"][(scenario, classifier, rep)]["threshold"]
            p = r["predictions"]
            g = p[(p["scenario"] == scenario) & (p["classifier"] == classifier) & (p["repetition"] == rep)]
            ys.append(g["y"].to_numpy())
            decisions.append((g["proba"].to_numpy() >= t).astype(float))
            thr[r["heldout"]] = t
        return np.concatenate(ys), np.concatenate(decisions), thr

    y, d, thr = pooled(repetition)
    out = diagnostic_utility(y, d, 0.5, prevalences=prevalences)
    out["thresholds"] = thr
    reps = sorted({k[2] for r in results.values() for k in r["thresholds"] if k[:2] == (scenario, classifier)})
    stab = {}
    for rep in reps:
        yr, dr, _ = pooled(rep)
        u = diagnostic_utility(yr, dr, 0.5, prevalences=prevalences)
        stab[rep] = {"sensitivity": u["sensitivity"], "specificity": u["specificity"]}
    out["per_repetition"] = stab
    return out
