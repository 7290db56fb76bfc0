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
6. for every augmentation scenario of :data:`SCENARIOS` (``real``, ``real+tda``,
   ``real+gba``) and each of ``n_repeats`` repetitions (a new synthetic fold and
   classifier seed), fits the final models on the real + synthetic training
   rows, predicts the held-out center and fixes the decision threshold a priori
   at the maximum of Youden's J of the out-of-fold inner-validation predictions;
7. repeats the ``real`` scenario without ComBat (harmonization ablation),
   measures how well the features predict the center before and after ComBat,
   and scores a classifier given the cohort's true generative variables
   (ceiling), when the manifest has them.

Every fitted step records the subjects it saw in a :class:`~msutils.data.leakage.FitLog`
(``combat.new_site`` records the held-out subjects whose *unlabelled* features
estimated the new site's location and scale; it never sees a diagnosis; the
cGAN of inner fold ``k`` records ``cgan-inner<k>``).

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
generated images), the number of images per class, the repetition, a seed, a
folder to write to and a ``state`` dict shared by the repetitions of one
scenario in one LOCO iteration (for work that does not change between them).
A scenario may put a JSON-friendly record of its synthetic fold in
``DataFrame.attrs["quality"]``; :func:`run_loco` keeps it.
:func:`tda_images` is the traditional augmentation, :func:`gba_images` the
cGAN (GBA).

GBA: one call of :func:`gba_images` (repetition ``r`` of a LOCO iteration)
-------------------------------------------------------------------------
1. Inner fold ``k = r mod n_inner``: its training subjects train a conditional
   GAN (:func:`msutils.models.gan.gba_scenario`; a subject-level monitor split
   of them early-stops it), its validation subjects never reach the GAN and give
   the SSIM / PSNR pairs. So the seed's "a distinct cGAN per fold" and "five
   synthetic folds" coincide: synthetic fold ``r`` comes from the cGAN of inner
   fold ``r`` and Table 1 is mean +/- SD over the inner folds.
2. Volumes are cropped to the box around every training brain of the iteration
   (:func:`msutils.models.gan.brain_box`, plus ``margin_vox``, grown to a
   multiple of the GAN's total stride times ``grid_factor``); the GAN runs on
   that box, ``grid_factor`` times coarser.
3. ``n_per_class`` images per class are generated, clipped inside their brain
   mask to the fold's real brain-intensity range (smallest to largest positive
   real training intensity; the generator's output is unbounded) and pasted back into full-size volumes (zero outside
   the box). Each inherits its parent scan's affine, center (its ComBat
   batch), age and sex.
4. The iteration's ROI U-Net (``request.segmenter``) segments every generated
   image, as in the seed; Dice and Jaccard against the known label map (the
   deformed parent label map, exact by construction) are recorded per image
   and per ROI. Radiomics use the known map (``labels_from="truth"``, the
   default: the seed had clinical experts review and correct every
   segmentation) or, with ``labels_from="segmentation"``, the U-Net's output.
5. Image quality of the fold (``attrs["quality"]`` and
   ``gba-r<r>-metrics.json`` in ``request.out_dir``): SSIM and PSNR of the
   validation pairs; FID and KID between the generated images and the real
   inner-training images on features of the U-Net's bottleneck (the box,
   normalised as the U-Net sees it; not comparable with Inception-based
   values); the non-copy check against the real inner-training images
   (including how often the nearest real image is the parent's); the
   segmentation overlap; the GAN's training record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msutils.core.io import atomic_write_json
from msutils.core.serialize import to_jsonable
from msutils.core.validation import check_choice, check_int
from msutils.data.augment import TdaParams, traditional_augment
from msutils.data.harmonize import ComBat
from msutils.data.leakage import FitLog
from msutils.features import fidelity
from msutils.models import classifiers as clf
from msutils.models import gan
from msutils.segmentation import metrics as seg_metrics
from msutils.segmentation.roi_unet import (DEEP_GM_CLASSES, ROI_NAMES, RoiSegmenter, RoiUNetConfig, class_map,
                                           class_rois, dice_per_roi, train_roi_unet)
from msutils.stats import bootstrap_ci, diagnostic_utility, friedman_posthoc, youden_threshold

__all__ = [
    "ROI_NAMES",
    "GROUPS",
    "DEEP_GM_ROIS",
    "ROI_GROUPS",
    "GT_VARIABLES",
    "SCENARIOS",
    "StudyDesignError",
    "StudyConfig",
    "AugmentationRequest",
    "GbaOptions",
    "register_scenario",
    "paper_numbers",
    "check_design",
    "study_table",
    "loco_split",
    "real_features",
    "tda_images",
    "gba_images",
    "deep_gm_signal",
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
    "SIGNAL_DIRECTIONS",
    "image_quality_table",
    "synthetic_segmentation_table",
    "fidelity_table",
    "synthetic_class_auc",
    "signal_table",
    "scenario_contrast",
    "verdict_table",
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

GROUPS: tuple[str, ...] = ("HC", "MS")
"""The diagnosis groups; the position is the class code everywhere (``y`` = 1 for MS in the classifiers,
class 1 = MS in the cGAN)."""


class StudyDesignError(ValueError):
    """The manifest cannot support the LOCO design; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("the cohort cannot support the leave-one-center-out design of seed 000:\n  - "
                         + "\n  - ".join(self.problems))


_LABEL_SOURCES = ("segmentation", "truth")


@dataclass(frozen=True)
class GbaOptions:
    """Settings of the ``real+gba`` scenario (:func:`gba_images`; profile parameters).

    Attributes
    ----------
    gan : msutils.models.gan.GanConfig
        The cGAN's hyper-parameters (default: the seed's scale).
    grid_factor : int
        The GAN grid is this many times coarser than the cohort grid.
    margin_vox : int
        Margin around the training brains' bounding box (cohort voxels).
    labels_from : {"truth", "segmentation"}
        Label map used for radiomics: the known label map (default: the
        counterpart of the seed's segmentations, which clinical experts reviewed
        and corrected) or the U-Net's uncorrected segmentation. The U-Net's
        Dice against the known map is recorded either way. Without a segmenter
        the known map is used.
    kid_subsets, kid_subset_size : int
        :func:`msutils.features.fidelity.kid` settings (the subset size is
        capped at the smaller sample).
    """

    gan: gan.GanConfig = field(default_factory=gan.GanConfig)
    grid_factor: int = 1
    margin_vox: int = 2
    labels_from: str = "truth"
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.gan, gan.GanConfig):
            raise TypeError(f"'gan' must be a GanConfig; got {type(self.gan).__name__}")
        check_int("grid_factor", self.grid_factor, 1)
        check_int("margin_vox", self.margin_vox, 0)
        check_choice("labels_from", self.labels_from, _LABEL_SOURCES)
        check_int("kid_subsets", self.kid_subsets, 1)
        check_int("kid_subset_size", self.kid_subset_size, 2)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> GbaOptions:
        """Options from a flat mapping: the fields above, every other key a :class:`GanConfig` field."""
        values = dict(values or {})
        own = {f.name for f in dataclasses.fields(cls)} - {"gan"}
        mine = {k: values.pop(k) for k in list(values) if k in own}
        return cls(gan=gan.GanConfig.from_mapping(values), **mine)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly dict (the inverse of :meth:`from_mapping`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "gan"}
        return {**self.gan.to_dict(), **out}


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
    gba : GbaOptions
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
    scenarios: tuple[str, ...] = ("real", "real+tda", "real+gba")
    n_repeats: int = 5
    n_per_class: int = 50
    tda: TdaParams = TdaParams()
    gba: GbaOptions = field(default_factory=GbaOptions)
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
        if not isinstance(self.gba, GbaOptions):
            raise TypeError(f"'gba' must be a GbaOptions; got {type(self.gba).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (summaries); ``gba`` flat (:meth:`GbaOptions.to_dict`)."""
        out = asdict(self)
        out["gba"] = self.gba.to_dict()
        return out


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
    state: dict[str, Any] = field(default_factory=dict)


SCENARIOS: dict[str, Callable[[AugmentationRequest], pd.DataFrame] | None] = {}
"""Augmentation scenarios by name: ``real`` (None), ``real+tda`` (:func:`tda_images`), ``real+gba``
(:func:`gba_images`)."""


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
        lacking = [g for g in GROUPS if g not in gs]
        if lacking:
            problems.append(f"center {c!r} has no {' and no '.join(lacking)} subjects (groups: {gs}); every center "
                            "needs both MS and HC")
    bad_groups = sorted(set(table["group"].astype(str)) - set(GROUPS))
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
    t["y"] = t["group"].astype(str).map({g: i for i, g in enumerate(GROUPS)}).astype(int)
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
    for group in GROUPS:
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


def _load_boxed(cohort: Any, scans: Sequence[str], start: Sequence[int], size: Sequence[int],
                shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """T1 volumes (float32) and class maps (int16) of ``scans``, each cut to the box as it is read."""
    images = np.zeros((len(scans), *size), dtype=np.float32)
    labels = np.zeros((len(scans), *size), dtype=np.int16)
    for i, scan in enumerate(scans):
        img = cohort.array(scan, "t1")
        if img.shape != shape:
            raise ValueError(f"GBA needs every scan on one grid; scan {scan!r} has shape {img.shape}, the "
                             f"training scans {shape}")
        images[i] = gan.crop_box(img[None], start, size)[0]
        lab = class_map(cohort.array(scan, "roi_labels", dtype=None), cohort.roi_sets)
        labels[i] = gan.crop_box(lab[None], start, size)[0]
    return images, labels


def _gba_box(request: AugmentationRequest) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(start, size, volume shape) of the box around every training brain of the iteration (cached in ``state``)."""
    if "box" not in request.state:
        opts = request.config.gba
        union: np.ndarray | None = None
        for scan in request.train.index:
            brain = request.cohort.array(scan, "t1") != 0
            if union is not None and brain.shape != union.shape:
                raise ValueError(f"GBA needs every scan on one grid; scan {scan!r} has shape {brain.shape}, "
                                 f"others {union.shape}")
            union = brain if union is None else union | brain
        multiple = opts.grid_factor * math.prod(opts.gan.g_strides)
        start, size = gan.brain_box(union[None], multiple=multiple, margin=opts.margin_vox)
        request.state["box"] = (start, size, tuple(union.shape))
    return request.state["box"]


def _unet_features(segmenter: RoiSegmenter, volumes: np.ndarray, device: str) -> np.ndarray:
    """Bottleneck features of the ROI U-Net for box volumes, two at a time (bounded memory)."""
    rows = []
    for i in range(0, len(volumes), 2):
        batch = np.stack([segmenter.network_input(v) for v in volumes[i:i + 2]])
        rows.append(fidelity.network_features(segmenter.network(), batch, batch_size=2, device=device))
    return np.concatenate(rows)


def _real_unet_features(request: AugmentationRequest, scans: Sequence[str], images: np.ndarray,
                        device: str) -> np.ndarray:
    """U-Net features of real box volumes, computed once per scan and iteration (cached in ``state``)."""
    cache: dict[str, np.ndarray] = request.state.setdefault("unet_features", {})
    todo = [i for i, s in enumerate(scans) if s not in cache]
    if todo:
        for i, row in zip(todo, _unet_features(request.segmenter, images[todo], device)):
            cache[scans[i]] = row
    return np.stack([cache[s] for s in scans])


def _overlap_table(seg: np.ndarray, truth: np.ndarray, values: Sequence[int]) -> pd.DataFrame:
    rows = []
    for i, (p, t) in enumerate(zip(seg, truth)):
        for v in values:
            if not (p == v).any() and not (t == v).any():
                continue  # a label absent from both says nothing about the segmentation
            rows.append({"image": i, "label": int(v), "dice": seg_metrics.dice(p == v, t == v),
                         "jaccard": seg_metrics.iou(p == v, t == v)})
    return pd.DataFrame(rows)


def gba_images(request: AugmentationRequest) -> pd.DataFrame:
    """GAN-based augmentation (GBA) for one repetition of a LOCO iteration (module docstring, "GBA").

    Settings come from ``request.config.gba`` (:class:`GbaOptions`) and
    ``request.config.device``.

    Returns
    -------
    DataFrame
        Index ``scan_id`` (``gba-r<r>-<group>-<i>``); columns ``t1``,
        ``roi_labels`` (the label map radiomics uses), ``truth_labels``,
        ``group``, ``source_subject``, ``source_scan``, ``center``, ``age``,
        ``sex``, ``inner_fold``, ``seg_dice``, ``seg_jaccard`` (means over the
        ROIs; NaN without a segmenter). ``attrs["quality"]`` holds the fold's
        image-quality record (also written as ``gba-r<r>-metrics.json``).
    """
    import nibabel as nib

    opts = request.config.gba
    rep = check_int("repetition", request.repetition, 0)
    inner = list(request.inner)
    if not inner:
        raise ValueError("the request has no inner folds to train the cGAN on")
    k = rep % len(inner)
    table = request.train
    tr_subj, va_subj = {str(s) for s in inner[k]["train"]}, {str(s) for s in inner[k]["test"]}
    subjects = table["subject_id"].astype(str)
    outside = sorted((tr_subj | va_subj) - set(subjects))
    if outside:
        raise ValueError(f"inner fold {k} names subjects outside the training rows: {outside[:5]}")
    tr_scans = [str(s) for s in table.index[subjects.isin(tr_subj)]]
    va_scans = [str(s) for s in table.index[subjects.isin(va_subj)]]
    if not tr_scans or not va_scans:
        raise ValueError(f"inner fold {k} needs training and validation scans; got {len(tr_scans)} and "
                         f"{len(va_scans)}")
    t0 = time.perf_counter()
    start, size, full_shape = _gba_box(request)
    tr_img, tr_lab = _load_boxed(request.cohort, tr_scans, start, size, full_shape)
    va_img, va_lab = _load_boxed(request.cohort, va_scans, start, size, full_shape)
    codes = {str(s): GROUPS.index(str(g)) for s, g in zip(table.index, table["group"])}

    def image_set(img: np.ndarray, lab: np.ndarray, scans: list[str]) -> gan.ImageSet:
        return gan.ImageSet(img, lab, np.array([codes[s] for s in scans]),
                            tuple(str(table.at[s, "subject_id"]) for s in scans))

    train_set = image_set(tr_img, tr_lab, tr_scans)
    seed = int(np.random.SeedSequence([int(request.seed), 4711, rep]).generate_state(1)[0] & 0x7FFFFFFF)
    res = gan.gba_scenario(
        train_set, n_folds=1, n_per_class=int(request.n_per_class), seed=seed, config=opts.gan,
        label_values=range(1, len(ROI_NAMES) + 1), validation=image_set(va_img, va_lab, va_scans),
        grid_factor=opts.grid_factor, log=request.fit_log, step=f"cgan-inner{k}", device=request.config.device,
    )
    del va_img, va_lab
    fold = res.folds[0]
    # the generator's output is unbounded: inside the brain, clip to the real brain-intensity range of the fold
    # (a skull-stripped T1 is positive in the brain; outliers would add spurious grey levels to the radiomics)
    real_brain = tr_img[tr_img > 0]
    images = np.where(fold.brain_masks, np.clip(fold.images, float(real_brain.min()), float(real_brain.max())),
                      0.0).astype(np.float32)
    truth = fold.label_maps.astype(np.int16)
    t_seg = time.perf_counter()
    segmenter = request.segmenter
    if segmenter is not None:
        seg = np.stack([np.asarray(segmenter.predict(v)) for v in images]).astype(np.int16)
        overlap = _overlap_table(seg, truth, res.label_values)
        per_image = overlap.groupby("image")[["dice", "jaccard"]].mean()
    else:
        seg, overlap = None, pd.DataFrame(columns=["image", "label", "dice", "jaccard"])
        per_image = pd.DataFrame({"dice": np.nan, "jaccard": np.nan}, index=range(len(images)))
    t_seg = time.perf_counter() - t_seg
    used = truth if seg is None or opts.labels_from == "truth" else seg
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    counters = dict.fromkeys(GROUPS, 0)
    for i, (cls, row) in enumerate(zip(fold.classes.tolist(), fold.parent_rows.tolist())):
        group = GROUPS[cls]
        src = tr_scans[row]
        sid = f"gba-r{rep}-{group}-{counters[group]:03d}"
        counters[group] += 1
        affine = request.cohort.image(src, "t1").affine
        paths = {}
        for col, arr in (("t1", images[i]), ("roi_labels", used[i]), ("truth_labels", truth[i])):
            path = out_dir / f"{sid}_{col}.nii.gz"
            nib.save(nib.Nifti1Image(gan.paste_box(arr[None], start, full_shape)[0], affine), str(path))
            paths[col] = str(path)
        rows[sid] = {**paths, "group": group, "source_subject": str(table.at[src, "subject_id"]),
                     "source_scan": src, "center": str(table.at[src, "center"]),
                     "age": float(table.at[src, "age"]), "sex": float(table.at[src, "sex"]),
                     "inner_fold": k, "seg_dice": float(per_image.at[i, "dice"]),
                     "seg_jaccard": float(per_image.at[i, "jaccard"])}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "scan_id"
    metrics = _gba_quality(request, res, images, tr_img, tr_scans, train_set.subjects, overlap, opts)
    metrics.update(repetition=rep, inner_fold=k, seed=seed, box_start=list(start), box_size=list(size),
                   n_train_scans=len(tr_scans), n_validation_scans=len(va_scans), options=opts.to_dict(),
                   seconds={**res.seconds, "segment": round(t_seg, 3),
                            "total": round(time.perf_counter() - t0, 3)})
    atomic_write_json(out_dir / f"gba-r{rep}-metrics.json", to_jsonable(metrics))
    out.attrs["quality"] = metrics
    logger.info("GBA repetition %d (inner fold %d): %d images, SSIM %.3f, seg Dice %.3f", rep, k, len(out),
                metrics["ssim_mean"], metrics["seg_dice_mean"])
    return out


def _gba_quality(request: AugmentationRequest, res: gan.GbaResult, images: np.ndarray, real: np.ndarray,
                 real_scans: Sequence[str], real_subjects: Sequence[str], overlap: pd.DataFrame,
                 opts: GbaOptions) -> dict[str, Any]:
    """Table 1 quantities of one inner fold (module docstring, "GBA", step 5); ``images``: the generated box
    volumes as written (clipped)."""
    fold, pairs = res.folds[0], res.validation
    data_range = float(pairs.real.max())
    win = min(11, *pairs.real.shape[1:])
    ssim = fidelity.ssim_pairs(pairs.generated, pairs.real, data_range=data_range, win_size=win)
    psnr = fidelity.psnr_pairs(pairs.generated, pairs.real, data_range=data_range)
    nc = fidelity.nearest_neighbour_similarity(images, real, real_groups=list(real_subjects))
    nearest_subject = np.asarray(real_subjects)[nc.synthetic_nn_index]
    out: dict[str, Any] = {
        "images_sha256": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
        "ssim": ssim.tolist(), "psnr": psnr.tolist(), "ssim_mean": float(ssim.mean()),
        "psnr_mean": float(psnr[np.isfinite(psnr)].mean()) if np.isfinite(psnr).any() else float("inf"),
        "ssim_pairs": "generator reconstruction of each inner-validation scan from its own label map and class "
                      "vs that scan's real T1 (brain box, data_range = largest real intensity)",
        "non_copy": {**nc.summary(), "synthetic_nn": nc.synthetic_nn.tolist(), "real_nn": nc.real_nn.tolist(),
                     "nearest_is_parent": float(np.mean(nearest_subject == np.asarray(fold.parents)))},
        "gan": res.fit.summary(),
    }
    segmenter = request.segmenter
    if segmenter is None:
        out.update(fid=float("nan"), kid_mean=float("nan"), kid_std=float("nan"), seg_dice_mean=float("nan"),
                   seg_jaccard_mean=float("nan"))
        return out
    device = "cuda" if next(segmenter.network().parameters()).is_cuda else "cpu"
    f_syn = _unet_features(segmenter, images, device)
    f_real = _real_unet_features(request, list(real_scans), real, device)
    kid = fidelity.kid(f_real, f_syn, n_subsets=opts.kid_subsets, subset_size=opts.kid_subset_size)
    out.update(fid=fidelity.fid(f_real, f_syn), kid_mean=kid.mean, kid_std=kid.std, kid_subset_size=kid.subset_size,
               feature_extractor="global-average-pooled bottleneck of the iteration's ROI U-Net on the brain box; "
                                 "real = inner-training scans; not comparable with Inception-based FID/KID",
               seg_dice_mean=float(overlap["dice"].mean()), seg_jaccard_mean=float(overlap["jaccard"].mean()),
               seg_overlap=overlap.to_dict(orient="list"),
               seg_per_label={int(lab): {"dice_mean": float(g["dice"].mean()), "dice_sd": float(g["dice"].std()),
                                         "jaccard_mean": float(g["jaccard"].mean()),
                                         "jaccard_sd": float(g["jaccard"].std())}
                              for lab, g in overlap.groupby("label")})
    return out


def deep_gm_signal(image: np.ndarray, classes: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """The synthetic cohort's MS signal measured in one image: deep-GM volume and texture.

    Parameters
    ----------
    image : ndarray
        T1 volume.
    classes : ndarray of int, same shape
        Class map of :data:`ROI_NAMES` (1..8 the deep-GM nuclei, 9 whole WM).
    voxel_ml : float
        Voxel volume in ml.

    Returns
    -------
    dict
        ``deep_gm_volume_ml``: nuclei 1..8 together. ``deep_gm_texture``: mean
        over the nuclei of the coefficient of variation (SD / mean) of the T1
        inside the nucleus after a one-voxel erosion (the boundary's partial
        volume would otherwise tie it to the nucleus size; nuclei with fewer
        than 8 interior voxels are skipped; NaN when none is left); the cohort
        generator's texture multiplies deep-GM intensities by
        ``1 + A * noise``, so this grows with ``A``. ``deep_gm_to_wm``: mean
        deep-GM T1 over the median whole-WM T1.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    cls = np.asarray(classes)
    if img.shape != cls.shape:
        raise ValueError(f"'image' {img.shape} and 'classes' {cls.shape} differ in shape")
    if not voxel_ml > 0:
        raise ValueError(f"'voxel_ml' must be > 0; got {voxel_ml!r}")
    deep = np.isin(cls, DEEP_GM_CLASSES)
    cvs = []
    for k in DEEP_GM_CLASSES:
        core = ndimage.binary_erosion(cls == k)
        if core.sum() >= 8:
            v = img[core]
            if v.mean() > 0:
                cvs.append(float(v.std() / v.mean()))
    wm = img[cls == ROI_NAMES.index("whole_wm") + 1]
    wm_median = float(np.median(wm)) if wm.size else float("nan")
    return {"deep_gm_volume_ml": float(deep.sum() * voxel_ml),
            "deep_gm_texture": float(np.mean(cvs)) if cvs else float("nan"),
            "deep_gm_to_wm": float(img[deep].mean() / wm_median) if deep.any() and wm_median > 0 else float("nan")}


register_scenario("real", None)
register_scenario("real+tda", tda_images)
register_scenario("real+gba", gba_images)


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


class _Clock:
    """Wall and CPU seconds per stage. CPU = ``time.process_time`` of this process (all its threads);
    radiomics worker processes are not included."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0


def _signal_rows(images: Mapping[str, tuple[np.ndarray, np.ndarray]], voxel_ml: float) -> pd.DataFrame:
    return pd.DataFrame.from_dict({k: deep_gm_signal(img, cls, voxel_ml) for k, (img, cls) in images.items()},
                                  orient="index")


def _file_signal(meta: pd.DataFrame, voxel_ml: float) -> pd.DataFrame:
    """:func:`deep_gm_signal` of synthetic images from their files (the known label map when there is one)."""
    import nibabel as nib

    col = "truth_labels" if "truth_labels" in meta.columns else "roi_labels"
    out = _signal_rows({sid: (np.asarray(nib.load(str(row["t1"])).dataobj, dtype=np.float32),
                              np.asarray(nib.load(str(row[col])).dataobj))
                        for sid, row in meta.iterrows()}, voxel_ml)
    return out.assign(group=meta["group"].astype(str))


def _synthetic_rows(name: str, request: AugmentationRequest, cache_dir: Path | None, train_raw: pd.DataFrame,
                    progress: bool, clock: _Clock) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    fn = SCENARIOS[name]
    with clock(f"{name}: images"):
        meta = fn(request)
    quality = meta.attrs.get("quality")
    needed = {"t1", "roi_labels", "group", "source_subject", "center", "age", "sex"}
    missing = sorted(needed - set(meta.columns))
    if missing:
        raise ValueError(f"scenario {name!r} returned no columns {missing}")
    train_subjects = set(request.train["subject_id"])
    foreign = sorted(set(meta["source_subject"].astype(str)) - train_subjects)
    if foreign:
        raise ValueError(f"scenario {name!r} derived images from non-training subjects {foreign[:5]}")
    with clock(f"{name}: radiomics"):
        feats = _extract(meta, class_rois(), request.config, cache_dir, progress)
    return meta, feats.reindex(columns=train_raw.columns), quality


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
        ``heldout``, ``split``, ``segmentation`` (Dice per test scan and ROI against
        the manifest's label maps, ``dice``; against the true label maps, and the
        held-out rater's own Dice against them, when the cohort declares them,
        ``dice_truth`` / ``rater_truth``, else None; U-Net history), ``features`` (cleaning info), ``combat`` (estimates),
        ``selection``, ``tuning``, ``predictions`` (long table: scenario,
        classifier, repetition, scan_id, y, proba), ``thresholds``, ``oof``,
        ``models`` (fitted pipelines + their training rows for SHAP),
        ``synthetic`` (per (scenario, repetition): the scenario's image table),
        ``synthetic_features`` (their harmonized features, all cleaned columns),
        ``quality`` (per (scenario, repetition): the scenario's quality
        record, GBA: Table 1, non-copy check, segmentation overlap, GAN),
        ``signal`` (:func:`deep_gm_signal` of the real training scans under
        ``"real"`` and of every synthetic fold), ``train_features`` (harmonized
        training features, all cleaned columns), ``harmonization``,
        ``ceiling``, ``fit_log``, ``seconds`` (wall, per stage) and
        ``cpu_seconds`` (this process's CPU per stage; radiomics workers not
        included).
    """
    check_design(cohort, [heldout])
    clock = _Clock()
    t_start, c_start = time.perf_counter(), time.process_time()
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
    with clock("segmentation"):
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
        truth_col = cohort.truth_column("roi_labels", test.index)
        pred_paths, dice_rows, truth_rows, rater_rows = {}, {}, {}, {}
        for sid in test.index:
            nii = cohort.image(sid, "t1")
            pred = segmenter.predict(np.asarray(nii.dataobj, dtype=np.float32))
            rater = class_map(cohort.array(sid, "roi_labels", dtype=None), cohort.roi_sets)
            dice_rows[sid] = dice_per_roi(pred, rater)
            if truth_col is not None:  # synthetic cohorts: the true label map, beyond the seed
                truth = class_map(cohort.array(sid, truth_col, dtype=None), cohort.roi_sets)
                truth_rows[sid], rater_rows[sid] = dice_per_roi(pred, truth), dice_per_roi(rater, truth)
            pred_paths[sid] = _write_nifti(pred, nii.affine, seg_dir / f"{sid}_classes.nii.gz")
        dice = pd.DataFrame.from_dict(dice_rows, orient="index")
        dice_truth = pd.DataFrame.from_dict(truth_rows, orient="index") if truth_rows else None
        rater_truth = pd.DataFrame.from_dict(rater_rows, orient="index") if rater_rows else None

    # -- radiomics ------------------------------------------------------------------------------
    with clock("radiomics"):
        if features is None:
            features = real_features(cohort.select(train.index), config, rad_cache, progress=progress)
        missing = [s for s in train.index if s not in features.index]
        if missing:
            raise ValueError(f"'features' lacks the training scans {missing[:5]}")
        raw_train = features.loc[train.index]
        test_tab = pd.DataFrame({"t1": test["t1"].astype(str), "roi_labels": pd.Series(pred_paths)})
        raw_test = _extract(test_tab, class_rois(), config, rad_cache, progress).reindex(columns=raw_train.columns)
        raw_train, (raw_test,), clean_info = _clean(raw_train, raw_test)

    # -- ComBat -----------------------------------------------------------------------------------
    covs = list(config.covariates)
    combat = ComBat(covariates=covs, fit_log=log)
    combat.fit(raw_train, train["center"], train[covs], subject_ids=train["subject_id"])
    h_train = combat.transform(raw_train, train["center"], train[covs], subject_ids=train["subject_id"])
    h_test = combat.transform(raw_test, test["center"], test[covs], subject_ids=test["subject_id"])
    combat_info = {"estimates": combat.estimates(), "constant": combat.constant_}
    X_train, X_test = (h_train, h_test) if config.harmonize else (raw_train, raw_test)

    # -- selection and tuning ----------------------------------------------------------------------
    with clock("selection_tuning"):
        y_train, s_train = train["y"], train["subject_id"]
        selection = clf.inner_selection(X_train, y_train, s_train, inner, scaler=config.scaler,
                                        min_folds=config.min_folds, seed=config.seed, fit_log=log)
        feats = selection.selected
        grids = clf.GRIDS[config.grid]
        tuning = {c: clf.tune(c, X_train, y_train, s_train, inner, selection, grid=grids[c], scaler=config.scaler,
                              seed=config.seed, device=config.device, fit_log=log) for c in config.classifiers}

    # -- scenarios ------------------------------------------------------------------------------------
    voxel_ml = float(np.prod(cohort.image(train.index[0], "t1").header.get_zooms()[:3])) / 1000.0
    with clock("signal"):
        real_signal = _signal_rows({s: (cohort.array(s, "t1"), class_map(cohort.array(s, "roi_labels", dtype=None),
                                                                          cohort.roi_sets))
                                    for s in train.index}, voxel_ml).assign(group=train["group"].astype(str))
    preds, thresholds, oof_rows, models = [], {}, [], {}
    synth_info, synth_features, quality, synth_signal = {}, {}, {}, {}
    with clock("scenarios"):
        for scen in config.scenarios:
            if scen not in SCENARIOS:
                raise ValueError(f"scenario {scen!r} is not registered; known: {sorted(SCENARIOS)}")
            state: dict[str, Any] = {}
            for rep in range(config.n_repeats):
                X_syn = y_syn = src_syn = None
                if SCENARIOS[scen] is not None:
                    req = AugmentationRequest(cohort, train, inner, segmenter, config.n_per_class, rep, config.seed,
                                              work / f"synthetic-{heldout}" / scen.replace("+", "_") / f"rep{rep}",
                                              config, log, state)
                    meta, raw_syn, qual = _synthetic_rows(scen, req, rad_cache, raw_train, progress, clock)
                    _, (raw_syn,), _ = _clean(raw_train, raw_syn)
                    raw_syn = raw_syn.reindex(columns=raw_train.columns)
                    X_syn = (combat.transform(raw_syn, meta["center"], meta[covs].astype(float),
                                              subject_ids=meta["source_subject"]) if config.harmonize else raw_syn)
                    y_syn = meta["group"].astype(str).map({g: i for i, g in enumerate(GROUPS)}).astype(int)
                    src_syn = meta["source_subject"].astype(str)
                    synth_info[(scen, rep)] = meta.drop(columns=["transform"], errors="ignore")
                    synth_features[(scen, rep)] = X_syn
                    if qual is not None:
                        quality[(scen, rep)] = qual
                    with clock("signal"):
                        synth_signal[(scen, rep)] = _file_signal(meta, voxel_ml)
                X_fit = X_train if X_syn is None else pd.concat([X_train, X_syn])
                y_fit = y_train if y_syn is None else pd.concat([y_train, y_syn])
                s_fit = s_train if src_syn is None else pd.concat([s_train, src_syn])
                with clock(f"{scen}: classifiers"):
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
                                                   "scan_id": X_test.index,
                                                   "subject_id": test["subject_id"].to_numpy(),
                                                   "y": test["y"].to_numpy(), "proba": p_test}))
                        oof_rows.append(pd.DataFrame({"scenario": scen, "classifier": c, "repetition": rep,
                                                      "scan_id": oof.index, "y": y_train.to_numpy(),
                                                      "proba": oof.to_numpy()}))
                        models[(scen, c, rep)] = {"pipeline": pipe, "X_fit": X_fit[feats]}
                logger.info("LOCO %s: scenario %s repetition %d done", heldout, scen, rep)

    # -- harmonization ablation, center prediction, ceiling ---------------------------------------
    with clock("ablation"):
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
    seconds = {**clock.wall, "total": time.perf_counter() - t_start}
    cpu_seconds = {**clock.cpu, "total": time.process_time() - c_start}
    logger.info("LOCO %s done in %.0f s (%.0f s CPU in this process)", heldout, seconds["total"],
                cpu_seconds["total"])
    return {
        "heldout": heldout,
        "split": split,
        "n_scans": {"train": int(len(train)), "test": int(len(test))},
        "segmentation": {"dice": dice, "dice_truth": dice_truth, "rater_truth": rater_truth,
                         "history": segmenter.history, "best_step": segmenter.best_step,
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
        "synthetic_features": synth_features,
        "quality": quality,
        "signal": {"real": real_signal, **synth_signal},
        "train_features": X_train,
        "train_frame": X_train[feats].assign(y=y_train, center=train["center"]),
        "test_frame": X_test[feats].assign(y=test["y"], center=test["center"]),
        "raw_center_frames": {"raw": both_raw, "harmonized": both_h, "center": centers_all},
        "harmonization": harm,
        "ceiling": ceiling,
        "fit_log": log.to_dict(),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


# --------------------------------------------------------------------------- audit and canary
def leakage_steps(fit_log: Mapping[str, Any]) -> list[str]:
    """Steps that must not have seen a held-out subject: all but ``combat.new_site``
    (which estimates the new center's location/scale from its unlabelled features)."""
    return [s for s in fit_log["steps"] if s != "combat.new_site"]


def fitted_fingerprint(result: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 per fitted object of a :func:`run_loco` result (U-Net weights, ComBat,
    selection, tuning, every model's held-out and out-of-fold probabilities, thresholds,
    the cGANs: their generated images and training curves, and every synthetic fold's features).

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
        "cgan": h({k: (q.get("images_sha256"), {c: np.round(v, 10).tolist() for c, v in q["gan"]["history"].items()
                                                 if c != "seconds"})
                   for k, q in sorted(result["quality"].items()) if "gan" in q}),
        "synthetic": h({k: _scaled_round(v) for k, v in sorted(result["synthetic_features"].items())}),
        "fit_log": h(result["fit_log"]),
    }


def _scaled_round(frame: pd.DataFrame, digits: int = 9) -> list[list[float]]:
    """Values rounded to ``digits`` decimals of their column's largest magnitude.

    Radiomics of the same image computed twice differ in the last bits (relative 4e-14 measured on the canary's
    TDA and GBA images: percentiles, energies of ~1e9); an absolute rounding at 10 decimals would flag that
    noise, a rounding relative to each column's scale does not.
    """
    arr = frame.to_numpy(dtype=float)
    finite = np.where(np.isfinite(arr), np.abs(arr), 0.0)
    scale = finite.max(axis=0) if len(arr) else np.ones(arr.shape[1])
    scale = np.where(scale > 0, scale, 1.0)
    return (np.round(arr / scale, digits) + 0.0).tolist()


# --------------------------------------------------------------------------- aggregation
def roi_of_feature(name: str) -> str:
    """ROI part of a feature column ``roi__family__feature``."""
    return name.split("__", 1)[0]


def roi_group(name: str) -> str:
    """``deep GM``, ``whole WM`` or ``whole GM`` of a feature column."""
    return ROI_GROUPS.get(roi_of_feature(name), "other")


_METRICS = ("f1", "accuracy", "precision", "recall", "auc")


def metrics_long(results: Mapping[str, Mapping[str, Any]], *, source: str = "heldout") -> pd.DataFrame:
    """Metrics per LOCO iteration, scenario, classifier and repetition (threshold 0.5).

    ``source="heldout"``: the held-out center's predictions (Table 3);
    ``source="inner"``: the out-of-fold predictions of the inner validation
    folds (training centers only), the basis for choosing a pipeline.
    """
    check_choice("source", source, ("heldout", "inner"))
    key = "predictions" if source == "heldout" else "oof"
    rows = []
    for fold, r in results.items():
        for (scen, c, rep), g in r[key].groupby(["scenario", "classifier", "repetition"], sort=False):
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


def best_pipeline(results: Mapping[str, Mapping[str, Any]], *, metric: str = "f1") -> tuple[str, str]:
    """(classifier, scenario) chosen **without test data**: the highest mean ``metric`` of the out-of-fold
    inner-validation predictions (training centers only, threshold 0.5) over LOCO x repetitions, among the
    augmented scenarios when there are any (the seed explains and evaluates its best augmented pipeline)."""
    long = metrics_long(results, source="inner")
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


# --------------------------------------------------------------------------- part 2: image quality and fidelity
def _quality_records(results: Mapping[str, Mapping[str, Any]], scenario: str) -> list[tuple[str, int, dict]]:
    return [(r["heldout"], rep, q) for r in results.values() for (scen, rep), q in sorted(r["quality"].items())
            if scen == scenario]


def image_quality_table(results: Mapping[str, Mapping[str, Any]], *, scenario: str = "real+gba") -> pd.DataFrame:
    """One row per LOCO iteration and synthetic fold (= inner fold) of a generative scenario: Table 1 and more.

    Columns: ``inner_fold``, ``FID``, ``KID`` (U-Net-bottleneck features), ``SSIM``, ``PSNR`` (dB; means
    over the inner-validation pairs), the non-copy check (``nn_synthetic``, ``nn_real``: mean cosine
    similarity of synthetic images to their nearest real training image and of real images to their nearest
    other-subject real image; ``nn_p_less``: Mann-Whitney p of "synthetic less similar"; ``nearest_is_parent``:
    share of synthetic images whose nearest real image is their parent's), the segmentation overlap against
    the known label maps (``seg_dice``, ``seg_jaccard``), and the cGAN's ``epochs``, ``best_epoch`` and
    training ``gan_seconds``.
    """
    rows = []
    for loco, rep, q in _quality_records(results, scenario):
        nc = q["non_copy"]
        rows.append({"loco": loco, "repetition": rep, "inner_fold": q["inner_fold"], "FID": q["fid"],
                     "KID": q["kid_mean"], "SSIM": q["ssim_mean"], "PSNR": q["psnr_mean"],
                     "nn_synthetic": nc["synthetic_mean"], "nn_real": nc["real_mean"], "nn_p_less": nc["pvalue"],
                     "nearest_is_parent": nc["nearest_is_parent"], "seg_dice": q["seg_dice_mean"],
                     "seg_jaccard": q["seg_jaccard_mean"], "epochs": q["gan"]["epochs_run"],
                     "best_epoch": q["gan"]["best_epoch"], "gan_seconds": q["gan"]["seconds"]})
    return pd.DataFrame(rows).set_index(["loco", "repetition"]) if rows else pd.DataFrame()


def synthetic_segmentation_table(results: Mapping[str, Mapping[str, Any]], *,
                                 scenario: str = "real+gba") -> pd.DataFrame:
    """Dice and Jaccard of the U-Net's segmentation of every generated image against its known label map:
    mean and SD over all images of all LOCO iterations and folds, per ROI and over the deep GM / all ROIs."""
    parts = [pd.DataFrame(q["seg_overlap"]) for _, _, q in _quality_records(results, scenario) if "seg_overlap" in q]
    if not parts:
        return pd.DataFrame()
    ov = pd.concat(parts, ignore_index=True)
    ov["roi"] = [ROI_NAMES[int(v) - 1] for v in ov["label"]]
    groups = {**{r: ov[ov["roi"] == r] for r in ROI_NAMES}, "deep GM (8 nuclei)": ov[ov["roi"].isin(DEEP_GM_ROIS)],
              "all ten ROIs": ov}
    return pd.DataFrame({name: {"Dice mean": g["dice"].mean(), "Dice SD": g["dice"].std(ddof=1),
                                "Jaccard mean": g["jaccard"].mean(), "Jaccard SD": g["jaccard"].std(ddof=1),
                                "n": len(g)} for name, g in groups.items()}).T


def fidelity_table(results: Mapping[str, Mapping[str, Any]], *, seed: int = 0) -> pd.DataFrame:
    """Feature-level fidelity (Table 2 and the KS analysis) per LOCO iteration, scenario and synthetic fold.

    Against the iteration's real training rows (harmonized features): ``energy_distance``
    (:func:`msutils.features.fidelity.energy_distance`, z-scored with the real rows' statistics) and
    ``ARI`` (:func:`~msutils.features.fidelity.kmeans_ari`, K = 2 clusters of real + synthetic rows vs
    MS / HC), both in the LASSO-selected feature space the classifiers use; ``ks_mean`` (mean two-sample KS
    statistic) and ``ks_significant`` (share with p <= 0.05) over every cleaned feature. Rows with scenario
    ``real`` hold the ARI of the real rows alone.
    """
    rows = []
    for r in results.values():
        real_all = r["train_features"]
        feats = list(r["selection"].selected)
        y_real = r["train_frame"]["y"].to_numpy()
        real = real_all[feats].to_numpy(dtype=float)
        rows.append({"loco": r["heldout"], "scenario": "real", "repetition": -1, "energy_distance": float("nan"),
                     "ARI": fidelity.kmeans_ari(real, y_real, seed=seed), "ks_mean": float("nan"),
                     "ks_significant": float("nan")})
        for (scen, rep), X_syn in sorted(r["synthetic_features"].items()):
            y_syn = r["synthetic"][(scen, rep)]["group"].astype(str).map(
                {g: i for i, g in enumerate(GROUPS)}).to_numpy()
            syn = X_syn[feats].to_numpy(dtype=float)
            ks = fidelity.ks_summary(fidelity.ks_per_feature(real_all, X_syn[real_all.columns]))
            rows.append({"loco": r["heldout"], "scenario": scen, "repetition": rep,
                         "energy_distance": fidelity.energy_distance(real, syn),
                         "ARI": fidelity.kmeans_ari(np.vstack([real, syn]), np.concatenate([y_real, y_syn]),
                                                    seed=seed),
                         "ks_mean": ks["mean_statistic"], "ks_significant": ks["fraction_significant"]})
    return pd.DataFrame(rows)


def synthetic_class_auc(results: Mapping[str, Mapping[str, Any]], classifier: str) -> pd.DataFrame:
    """Does a synthetic image carry its class? AUC of the ``real`` pipeline of ``classifier`` (repetition 0,
    trained on real training rows only) scoring each synthetic fold's images against their class, beside its
    held-out AUC. One row per LOCO iteration, scenario and repetition."""
    rows = []
    for r in results.values():
        key = ("real", classifier, 0)
        if key not in r["models"]:
            raise ValueError(f"no 'real' model of classifier {classifier!r} in LOCO {r['heldout']!r}")
        pipe = r["models"][key]["pipeline"]
        feats = list(r["models"][key]["X_fit"].columns)
        p = r["predictions"]
        held = p[(p["scenario"] == "real") & (p["classifier"] == classifier) & (p["repetition"] == 0)]
        held_auc = clf.classification_scores(held["y"], held["proba"])["auc"]
        for (scen, rep), X_syn in sorted(r["synthetic_features"].items()):
            y = (r["synthetic"][(scen, rep)]["group"].astype(str) == GROUPS[1]).astype(int)
            proba = pipe.predict_proba(X_syn[feats].to_numpy(dtype=float))[:, 1]
            rows.append({"loco": r["heldout"], "scenario": scen, "repetition": rep,
                         "auc_synthetic": clf.classification_scores(y, proba)["auc"],
                         "mean_p_ms_if_ms": float(proba[y.to_numpy() == 1].mean()),
                         "mean_p_ms_if_hc": float(proba[y.to_numpy() == 0].mean()), "auc_heldout_real": held_auc})
    return pd.DataFrame(rows)


SIGNAL_DIRECTIONS: dict[str, int] = {"deep_gm_volume_ml": -1, "deep_gm_texture": 1}
"""Sign of MS - HC that the synthetic cohort's generator puts in: deep-GM atrophy (smaller volume) and a
larger deep-GM texture amplitude (the generator's ``texture_ms_mean`` > ``texture_hc_mean``)."""


def signal_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """MS vs HC in deep-GM volume and texture (:func:`deep_gm_signal`) per LOCO iteration and source.

    Sources: the real training scans (``real``) and the pooled synthetic folds of each scenario. Columns per
    measure: HC and MS means, MS - HC, Cohen's d, the two-sided Mann-Whitney p and whether the sign matches
    :data:`SIGNAL_DIRECTIONS`.
    """
    from scipy import stats as sps

    rows = []
    for r in results.values():
        by_source: dict[str, list[pd.DataFrame]] = {}
        for key, frame in r["signal"].items():
            by_source.setdefault("real" if key == "real" else key[0], []).append(frame)
        for source, frames in by_source.items():
            sig = pd.concat(frames)
            for measure, sign in SIGNAL_DIRECTIONS.items():
                ms = sig.loc[sig["group"] == GROUPS[1], measure].dropna().to_numpy()
                hc = sig.loc[sig["group"] == GROUPS[0], measure].dropna().to_numpy()
                if len(ms) < 2 or len(hc) < 2:
                    continue
                pooled = math.sqrt(((len(ms) - 1) * ms.var(ddof=1) + (len(hc) - 1) * hc.var(ddof=1))
                                   / (len(ms) + len(hc) - 2))
                diff = float(ms.mean() - hc.mean())
                rows.append({"loco": r["heldout"], "source": source, "measure": measure, "n_ms": len(ms),
                             "n_hc": len(hc), "hc_mean": float(hc.mean()), "ms_mean": float(ms.mean()),
                             "ms_minus_hc": diff, "cohen_d": diff / pooled if pooled > 0 else float("nan"),
                             "p": float(sps.mannwhitneyu(ms, hc, alternative="two-sided").pvalue),
                             "direction_as_generated": bool(np.sign(diff) == sign)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- part 2: does GBA beat TDA here?
def _fast_metric(y: np.ndarray, p: np.ndarray, metric: str) -> float:
    """F1 at 0.5 or ROC AUC (Mann-Whitney), vectorised for the bootstrap; NaN when a class is missing."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if metric == "auc":
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        from scipy.stats import rankdata

        ranks = rankdata(p)
        return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    pred = p >= 0.5
    tp = int((pred & pos).sum())
    denom = 2 * tp + int((pred & ~pos).sum()) + int((~pred & pos).sum())
    return 2 * tp / denom if denom else 0.0


def scenario_contrast(results: Mapping[str, Mapping[str, Any]], a: str, b: str, *, classifier: str,
                      metric: str = "f1", n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Held-out ``metric`` of scenario ``a`` minus scenario ``b`` for one classifier, with a 95 % bootstrap CI.

    The estimate is the mean over LOCO iterations x repetitions of the paired difference (the same held-out
    scans); the interval resamples held-out **subjects** (all their scans) with replacement
    (:func:`msutils.stats.bootstrap_ci`), i.e. it reflects how much the difference depends on which scans
    the held-out centers happened to contain. Repetitions stay fixed (they are the synthetic folds).

    Returns
    -------
    dict
        ``estimate``, ``low``, ``high``, ``mean_a``, ``mean_b``, ``n_subjects``, ``n_boot``.
    """
    check_choice("metric", metric, ("f1", "auc"))
    frames = []
    for r in results.values():
        p = r["predictions"]
        p = p[(p["classifier"] == classifier) & p["scenario"].isin([a, b])]
        wide = p.pivot_table(index=["scan_id", "subject_id", "y"], columns=["scenario", "repetition"],
                             values="proba")
        if a not in wide.columns.get_level_values(0) or b not in wide.columns.get_level_values(0):
            raise ValueError(f"scenarios {a!r} and {b!r} must both have predictions of {classifier!r}")
        wide.columns = [f"{s}|{rep}" for s, rep in wide.columns]
        frames.append(wide.reset_index().assign(loco=r["heldout"]))
    data = pd.concat(frames, ignore_index=True)
    cols_a = [c for c in data.columns if c.startswith(f"{a}|")]
    cols_b = [c for c in data.columns if c.startswith(f"{b}|")]

    def means(d: pd.DataFrame) -> tuple[float, float]:
        va, vb = [], []
        for _, g in d.groupby("loco"):
            y = g["y"].to_numpy()
            va += [_fast_metric(y, g[c].to_numpy(), metric) for c in cols_a]
            vb += [_fast_metric(y, g[c].to_numpy(), metric) for c in cols_b]
        return float(np.mean(va)), float(np.mean(vb))

    def diff(d: pd.DataFrame) -> float:
        ma, mb = means(d)
        return ma - mb

    ci = bootstrap_ci(data, diff, units=data["loco"].astype(str) + "|" + data["subject_id"].astype(str),
                      n_boot=n_boot, seed=seed)
    ma, mb = means(data)
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "mean_a": ma, "mean_b": mb,
            "n_subjects": ci.n_units, "n_boot": n_boot}


_PAPER_NAMES = {"svm": "SVM", "rf": "RF", "resnet": "ResNet"}


def verdict_table(results: Mapping[str, Mapping[str, Any]], *, classifiers: Sequence[str],
                  metrics: Sequence[str] = ("f1", "auc"), n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Seed-level verdict: GBA vs TDA, GBA vs real and TDA vs real per classifier and metric, this run's
    difference with its 95 % CI (:func:`scenario_contrast`) beside the seed's difference of Table 3 means.

    ``verdict``: ``"better"`` when the CI lies above 0, ``"worse"`` below, ``"not resolved"`` otherwise;
    ``paper`` is the seed's difference (its Table 3 gives no precision or CI; its Friedman test, p = 0.112,
    found no difference between pipelines).
    """
    paper = paper_numbers()["table3"]
    rows = []
    for c in classifiers:
        for a, b in (("real+gba", "real+tda"), ("real+gba", "real"), ("real+tda", "real")):
            for m in metrics:
                ct = scenario_contrast(results, a, b, classifier=c, metric=m, n_boot=n_boot, seed=seed)
                pc = paper.get(_PAPER_NAMES.get(c, c), {})
                paper_diff = (pc[a][m][0] - pc[b][m][0]) if a in pc and b in pc and m in pc[a] else float("nan")
                verdict = "better" if ct["low"] > 0 else "worse" if ct["high"] < 0 else "not resolved"
                rows.append({"classifier": c, "contrast": f"{a} vs {b}", "metric": m, "this run": ct["estimate"],
                             "CI low": ct["low"], "CI high": ct["high"], "verdict": verdict, "paper": paper_diff,
                             "paper says": ("better" if paper_diff > 0 else "worse" if paper_diff < 0 else "equal")
                             if np.isfinite(paper_diff) else "-"})
    return pd.DataFrame(rows)
