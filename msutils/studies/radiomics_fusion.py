"""Seed 002 study steps: FLAIR + concentration-rate / Rényi-entropy maps fused into two U-Nets.

The notebook ``04_radiomics_fusion`` chains these steps; each is reusable and
tested on its own. The design follows the paper (Alsaanova, Bartenev et al.):

Patients and folds (:func:`study_patients`, :func:`cv_splits`)
    MS patients with a FLAIR image and a lesion mask, first session each (the
    paper: 46 patients of one hospital). Six-fold cross-validation **by
    patient** (46 patients: 8, 8, 8, 8, 7, 7), seeded; inside each fold's
    training patients a validation split (``val_fraction`` of them, at least
    one) chooses the checkpoint and gives the validation-Dice curve; the test
    patients are never seen in training. With a single training patient
    (e.g. the 2-patient MSLUB sample: train on one, test on the other) the
    validation slices are the last ``val_fraction`` of that patient's study
    slices (``val_unit = "slices"``, an optimistic within-patient curve).
    A manifest without FLAIR, without lesion masks or with fewer patients than
    folds fails up front with every problem named (:func:`study_patients`).
Slices (:func:`prepare_scan`, :func:`select_slices`)
    Per scan: skull strip (the manifest's brain mask; an already skull-stripped
    image's non-zero voxels; else the documented fallback mask, see
    :func:`msutils.segmentation.slices.brain_mask_for`), min-max normalisation of the
    volume to [0, 1] inside the brain ("intensity normalisation before the
    radiomics"), then the study slices: axial slices with at least
    ``min_lesion_pixels`` lesion pixels, non-adjacent (``slice_gap``; the
    paper's 1102 labelled slices were non-adjacent, about 24 per patient), at
    most ``max_slices_per_patient`` spread evenly. CR and RE maps
    (:mod:`msutils.features.fusion_maps`) are computed on those native slices
    of the normalised volume and cached per scan.
Network inputs (:func:`network_inputs`)
    Each native slice (FLAIR, CR, RE) is zero-padded to a square, resized to
    the network's size (paper: 256 for the ResNeXt U-Net, 224 for the
    attention U-Net; linear for images and maps, nearest neighbour for masks)
    and min-max scaled per slice and channel. The arm ``"mri"`` feeds the
    FLAIR channel, ``"mri+features"`` FLAIR + CR + RE; the ablation arms
    ``"mri+cr"`` and ``"mri+re"`` one map each. Nothing else differs.
Training and test (:func:`run_fold`)
    For every network and arm: seeded initialisation, the seed's recipe
    (:mod:`msutils.segmentation.training`), checkpoint of the best validation
    Dice, prediction of the test patients' slices (sigmoid, threshold 0.5,
    nearest-neighbour resize back to the native grid, padding cropped), and
    per-slice Dice, precision and sensitivity against the native masks
    (:mod:`msutils.segmentation.metrics`). The subjects each network was fitted on and
    chose its checkpoint on are recorded for the leakage audit.
Statistics (:func:`metrics_table`, :func:`dice_by_fold`, :func:`sdd_table`, :func:`inside_outside`)
    Tables 1 and 3: per arm, mean +/- SD over the folds of the per-fold mean
    metric (the paper's SDs are the population SD, ``ddof = 0``, of its
    per-fold Dice values); MRI vs MRI + features compared with the Wilcoxon
    signed-rank test, Bonferroni-adjusted for the three metrics. The pairing
    unit is the **test slice** (the same slice segmented by both arms): the
    paper's p < 0.001 with six folds is only reachable with slice pairing (six
    paired folds cannot give an exact two-sided p below 0.031); the same test
    with the **patient** (mean over the patient's slices) as pairing unit is
    reported beside it. Tables 2 and 4: per-fold mean Dice. Training
    stability (Eqs. 4-5): the SDD of each validation-Dice curve, compared
    between arms over the folds with the Wilcoxon signed-rank test. Maps
    inside vs outside the lesions (Figs. 2-3): values at lesion pixels vs at
    the other brain pixels of the study slices, Mann-Whitney U with the
    probability of superiority and the rank-biserial correlation as effect
    sizes.
Beyond the seed: the true lesions (:func:`vs_truth_table`, :func:`rater_vs_truth`)
    Only when the cohort declares :data:`TRUTH_LESION_COLUMN` among its
    ``truth_columns`` (synthetic cohorts, whose ``lesion_mask`` is a
    rater-like estimate): the study slices are still chosen and the networks
    still trained and scored on ``lesion_mask``, as in the paper; each fold
    also scores the same test predictions against the true lesion mask
    (:data:`TRUTH_METRICS`), and the ``lesion_mask`` itself is scored against
    the truth on the study slices. Real cohorts have neither.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from msutils.core.validation import check_int
from msutils.features.fusion_maps import FusionMapParams

if TYPE_CHECKING:  # pragma: no cover
    from msutils.data.cohort import Cohort
    from msutils.segmentation.training import TrainConfig

__all__ = [
    "ARMS",
    "CHANNELS",
    "MAIN_ARMS",
    "METRICS",
    "TRUTH_LESION_COLUMN",
    "TRUTH_METRICS",
    "FusionConfig",
    "FusionScan",
    "NetInputs",
    "study_patients",
    "cv_splits",
    "select_slices",
    "prepare_scan",
    "minmax_per_slice",
    "network_inputs",
    "to_native",
    "slice_metrics",
    "sdd",
    "run_fold",
    "per_slice_table",
    "fold_table",
    "paired_wilcoxon",
    "metrics_table",
    "dice_by_fold",
    "sdd_table",
    "arm_difference",
    "vs_truth_table",
    "rater_vs_truth",
    "inside_outside",
    "map_samples",
    "paper_numbers",
]

logger = logging.getLogger(__name__)

#: Input channels of the study, in order.
CHANNELS: tuple[str, ...] = ("flair", "cr", "re")
#: Arms: the input channels each one feeds to the networks.
ARMS: dict[str, tuple[str, ...]] = {
    "mri": ("flair",),
    "mri+features": ("flair", "cr", "re"),
    "mri+cr": ("flair", "cr"),
    "mri+re": ("flair", "re"),
}
#: The seed's two arms (the others are the ablation beyond the seed).
MAIN_ARMS: tuple[str, ...] = ("mri", "mri+features")
#: Per-slice test metrics (voxel-level on the native grid).
METRICS: tuple[str, ...] = ("dice", "precision", "sensitivity")
#: Optional truth column: the true lesion mask when ``lesion_mask`` is a rater-like estimate (synthetic cohorts).
TRUTH_LESION_COLUMN: str = "gt_lesion_mask"
#: The same per-slice metrics against :data:`TRUTH_LESION_COLUMN` (beyond the seed; absent on real cohorts).
TRUTH_METRICS: tuple[str, ...] = tuple(f"gt_{m}" for m in METRICS)
_NETS = ("resnext_unet", "attention_unet")
_BRAIN_SOURCES = ("auto", "manifest", "nonzero", "estimate")
_DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FusionConfig:
    """Every setting of the study (defaults: the seed's).

    Attributes
    ----------
    nets : tuple of str
        Networks to train: ``"resnext_unet"``, ``"attention_unet"``.
    arms : tuple of str
        Input arms (keys of :data:`ARMS`); the seed's: ``("mri", "mri+features")``.
    resnext_image_size, attention_image_size : int
        Slice size per network (paper: 256 and 224).
    resnext_epochs, attention_epochs : int
        Paper: 50 and 40.
    resnext_batch_size, attention_batch_size : int
        Paper: 32 and 6.
    warmup_iters : int
        Linear warm-up iterations of the ResNeXt recipe (paper: 100).
    resnext_lr, attention_lr : float
        Base learning rates (paper: 1e-4 both; small networks trained from
        scratch for a few epochs need more, see the profiles).
    resnext_size, attention_size : mapping, optional
        Size overrides of the networks (:func:`msutils.segmentation.nets.build_net`);
        None: the paper's configuration.
    weights : str, optional
        Local ResNeXt-50 (torchvision format) weights for the encoder; None:
        from scratch (no ImageNet weights can be downloaded here).
    min_lesion_pixels : int
        A study slice has at least this many lesion pixels (native grid).
    slice_gap : int
        Study slices of a patient are at least this many slices apart (2: non-adjacent).
    max_slices_per_patient : int, optional
        Cap of study slices per patient (spread evenly); None: no cap.
    val_fraction : float
        Share of a fold's training patients used for validation (at least one).
    brain_source : {"auto", "manifest", "nonzero", "estimate"}
        Skull-stripping mask (see :func:`msutils.segmentation.slices.brain_mask_for`).
    axis : int
        Slicing axis (2: axial for RAS+ arrays).
    maps : FusionMapParams
        CR / RE settings.
    threshold : float
        Probability threshold of the predictions.
    n_examples : int
        Test slices per fold whose native predictions are kept for the figures.
    seed : int
    device : {"auto", "cpu", "cuda"}
    num_threads : int, optional
        torch CPU threads in :func:`run_fold` (None: leave torch's setting).
    """

    nets: tuple[str, ...] = _NETS
    arms: tuple[str, ...] = MAIN_ARMS
    resnext_image_size: int = 256
    attention_image_size: int = 224
    resnext_epochs: int = 50
    attention_epochs: int = 40
    resnext_batch_size: int = 32
    attention_batch_size: int = 6
    warmup_iters: int = 100
    resnext_lr: float = 1e-4
    attention_lr: float = 1e-4
    resnext_size: Mapping[str, Any] | None = None
    attention_size: Mapping[str, Any] | None = None
    weights: str | None = None
    min_lesion_pixels: int = 10
    slice_gap: int = 2
    max_slices_per_patient: int | None = 24
    val_fraction: float = 0.15
    brain_source: str = "auto"
    axis: int = 2
    maps: FusionMapParams = field(default_factory=FusionMapParams)
    threshold: float = 0.5
    n_examples: int = 2
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        nets = tuple(self.nets)
        arms = tuple(self.arms)
        if not nets or any(n not in _NETS for n in nets) or len(set(nets)) != len(nets):
            raise ValueError(f"'nets' must be distinct names among {list(_NETS)}; got {list(nets)!r}")
        if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
            raise ValueError(f"'arms' must be distinct names among {list(ARMS)}; got {list(arms)!r}")
        object.__setattr__(self, "nets", nets)
        object.__setattr__(self, "arms", arms)
        for name in ("resnext_image_size", "attention_image_size", "resnext_epochs", "attention_epochs",
                     "resnext_batch_size", "attention_batch_size", "min_lesion_pixels", "slice_gap",
                     "n_examples"):
            check_int(name, getattr(self, name), 1)
        check_int("max_slices_per_patient", self.max_slices_per_patient, 1, optional=True)
        check_int("num_threads", self.num_threads, 1, optional=True)
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int) or self.warmup_iters < 0:
            raise ValueError(f"'warmup_iters' must be an integer >= 0; got {self.warmup_iters!r}")
        for name in ("resnext_lr", "attention_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"'{name}' must be a positive number; got {v!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise ValueError(f"'val_fraction' must be in (0, 1); got {self.val_fraction!r}")
        if self.brain_source not in _BRAIN_SOURCES:
            raise ValueError(f"'brain_source' must be one of {list(_BRAIN_SOURCES)}; got {self.brain_source!r}")
        if self.device not in _DEVICES:
            raise ValueError(f"'device' must be one of {list(_DEVICES)}; got {self.device!r}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"'axis' must be one of [0, 1, 2]; got {self.axis!r}")
        if not isinstance(self.maps, FusionMapParams):
            raise ValueError(f"'maps' must be a FusionMapParams; got {type(self.maps).__name__}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"'threshold' must be in (0, 1); got {self.threshold!r}")
        for name in ("resnext_size", "attention_size"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"'{name}' must be a mapping of network size parameters or None; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every setting."""
        out = asdict(self)
        out["maps"] = self.maps.to_dict()
        out["nets"] = list(self.nets)
        out["arms"] = list(self.arms)
        return out

    def image_size(self, net: str) -> int:
        """Slice size of ``net``."""
        return self.resnext_image_size if net == "resnext_unet" else self.attention_image_size

    def net_size(self, net: str) -> dict[str, Any]:
        """Size overrides of ``net`` (empty: the paper's configuration)."""
        size = self.resnext_size if net == "resnext_unet" else self.attention_size
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(size or {}).items()}

    def train_config(self, net: str) -> TrainConfig:
        """The seed's recipe for ``net`` with this study's epochs, batch, size, seed and device."""
        from msutils.segmentation.training import paper_config

        if net == "resnext_unet":
            return paper_config(net, epochs=self.resnext_epochs, batch_size=self.resnext_batch_size,
                                image_size=self.resnext_image_size, warmup_iters=self.warmup_iters,
                                lr=float(self.resnext_lr),
                                threshold=self.threshold, seed=self.seed, device=self.device)
        return paper_config(net, epochs=self.attention_epochs, batch_size=self.attention_batch_size,
                            image_size=self.attention_image_size, lr=float(self.attention_lr), threshold=self.threshold, seed=self.seed,
                            device=self.device)


# --------------------------------------------------------------------------------------
# patients and folds
# --------------------------------------------------------------------------------------
def _has(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() != ""


def study_patients(cohort: Cohort, n_folds: int, *, max_patients: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The scans the study uses: MS patients' first sessions with FLAIR and a lesion mask.

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
    n_folds : int
        Cross-validation folds by patient (>= 2); at least as many patients are needed.
    max_patients : int, optional
        Keep this many patients, drawn at random (seeded) from the sorted list; None: all.
    seed : int

    Returns
    -------
    DataFrame
        Rows of ``cohort.table`` (index ``scan_id``), sorted by subject.

    Raises
    ------
    ValueError
        Naming every problem at once: no FLAIR column / images, no lesion-mask
        column / masks, patients without one of them, fewer patients than folds.
    """
    check_int("n_folds", n_folds, 2)
    check_int("max_patients", max_patients, 1, optional=True)
    table = cohort.table
    where = f"cohort {cohort.manifest_path}"
    problems = []
    for col, what in (("flair", "FLAIR images"), ("lesion_mask", "lesion masks")):
        if col not in table.columns or not table[col].map(_has).any():
            problems.append(f"the manifest has no {what} (column {col!r} is missing or empty); this study "
                            f"segments lesions on FLAIR against lesion masks")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    from msutils.data.cohort import first_session

    ms = table[table["group"].astype(str) == "MS"] if "group" in table.columns else table
    first = first_session(ms)
    for col in ("flair", "lesion_mask"):
        lacking = [str(s) for s, v in first[col].items() if not _has(v)]
        if lacking:
            problems.append(f"column {col!r} is empty for patient scan(s) {lacking[:5]}"
                            f"{' ...' if len(lacking) > 5 else ''}")
    n = int(first["subject_id"].nunique())
    if n < n_folds:
        problems.append(f"{n} patient(s) with FLAIR and a lesion mask; {n_folds}-fold cross-validation by "
                        f"patient needs at least {n_folds}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    if max_patients is not None and max_patients < n:
        if max_patients < n_folds:
            raise ValueError(f"'max_patients' ({max_patients}) must be >= the number of folds ({n_folds})")
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(n, size=max_patients, replace=False))
        first = first.iloc[keep]
    return first


def cv_splits(patients: pd.DataFrame, n_folds: int, *, val_fraction: float = 0.15, seed: int = 0) -> list[dict]:
    """Folds by patient with a validation split inside each fold's training patients.

    Parameters
    ----------
    patients : DataFrame
        :func:`study_patients` (column ``subject_id``).
    n_folds : int
    val_fraction : float
        Share of the training patients (rounded, at least 1, at most all but 1)
        that validates; with a single training patient there is no ``inner``
        split and the fold's ``val_unit`` is ``"slices"``.
    seed : int

    Returns
    -------
    list of dict
        :mod:`msutils.data.splits` splits ``fold0 ...``: ``train`` / ``test``
        subjects, ``val_unit`` and (``val_unit == "patient"``) ``inner``:
        ``[{"name": "val", "train": fitted subjects, "test": validation subjects}]``.
    """
    from msutils.data.splits import grouped_kfold

    if not 0 < val_fraction < 1:
        raise ValueError(f"'val_fraction' must be in (0, 1); got {val_fraction!r}")
    folds = grouped_kfold(patients, n_folds, stratify=None, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for f in folds:
        train = list(f["train"])
        split = {"name": f["name"], "fold": f["fold"], "seed": int(seed), "train": train, "test": list(f["test"])}
        if len(train) >= 2:
            n_val = min(max(1, int(round(val_fraction * len(train)))), len(train) - 1)
            val = sorted(rng.choice(train, size=n_val, replace=False).tolist())
            split["val_unit"] = "patient"
            split["inner"] = [{"name": "val", "train": sorted(set(train) - set(val)), "test": val}]
        else:
            split["val_unit"] = "slices"
        out.append(split)
    return out


# --------------------------------------------------------------------------------------
# slices
# --------------------------------------------------------------------------------------
def select_slices(lesion: Any, *, axis: int = 2, min_lesion_pixels: int = 10, gap: int = 2,
                  max_slices: int | None = None) -> np.ndarray:
    """Study slices of one scan: lesion slices, non-adjacent, at most ``max_slices``.

    Slices with at least ``min_lesion_pixels`` lesion pixels are candidates;
    walking up the axis, a candidate is taken when it is at least ``gap``
    slices from the last one taken; if more than ``max_slices`` remain,
    ``max_slices`` of them spread evenly (``numpy.linspace`` over their order)
    are kept.

    Returns
    -------
    numpy.ndarray
        Sorted int slice indices (possibly empty).
    """
    les = np.asarray(lesion) > 0
    if les.ndim != 3:
        raise ValueError(f"'lesion' must be a 3D mask; got shape {les.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"'axis' must be one of [0, 1, 2]; got {axis!r}")
    check_int("min_lesion_pixels", min_lesion_pixels, 1)
    check_int("gap", gap, 1)
    check_int("max_slices", max_slices, 1, optional=True)
    counts = les.sum(axis=tuple(a for a in range(3) if a != axis))
    taken: list[int] = []
    for k in np.flatnonzero(counts >= min_lesion_pixels):
        if not taken or k - taken[-1] >= gap:
            taken.append(int(k))
    out = np.asarray(taken, dtype=int)
    if max_slices is not None and len(out) > max_slices:
        out = out[np.unique(np.linspace(0, len(out) - 1, max_slices).round().astype(int))]
    return out


@dataclass(frozen=True)
class FusionScan:
    """The study slices of one scan on its native grid.

    Attributes
    ----------
    scan_id, subject_id : str
    slices : numpy.ndarray
        ``(n,)`` slice indices along the cut axis.
    flair : numpy.ndarray
        ``(n, X, Y)`` float32, volume min-max normalised to [0, 1] in the brain, 0 outside.
    cr, re : numpy.ndarray
        ``(n, X, Y)`` float32 concentration-rate and Rényi-entropy maps.
    lesion : numpy.ndarray
        ``(n, X, Y)`` uint8 lesion mask.
    brain : numpy.ndarray
        ``(n, X, Y)`` bool brain mask.
    brain_source : str
        ``"manifest"``, ``"nonzero"`` or ``"estimate"``.
    spacing : tuple of float
        Native pixel size (mm) of the two in-plane axes.
    lesion_gt : numpy.ndarray or None
        ``(n, X, Y)`` uint8 true lesion mask of the same slices when the cohort
        declares :data:`TRUTH_LESION_COLUMN` among its ``truth_columns``
        (synthetic cohorts; ``lesion`` is then a rater-like estimate), else None.
    """

    scan_id: str
    subject_id: str
    slices: np.ndarray
    flair: np.ndarray
    cr: np.ndarray
    re: np.ndarray
    lesion: np.ndarray
    brain: np.ndarray
    brain_source: str
    spacing: tuple[float, float]
    lesion_gt: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.slices))

    def channel(self, name: str) -> np.ndarray:
        """``(n, X, Y)`` stack of channel ``name`` (``flair``, ``cr``, ``re``)."""
        if name not in CHANNELS:
            raise ValueError(f"'name' must be one of {list(CHANNELS)}; got {name!r}")
        return getattr(self, name)


def prepare_scan(cohort: Cohort, scan_id: str, config: FusionConfig, *,
                 cache_dir: str | Path | None = None) -> FusionScan:
    """Skull strip, normalise, pick the study slices and compute (or load) their CR / RE maps.

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
    scan_id : str
    config : FusionConfig
    cache_dir : path-like, optional
        Per-scan map cache (:func:`msutils.features.fusion_maps.cached_volume_maps`).

    Returns
    -------
    FusionScan
    """
    from msutils.features.fusion_maps import cached_volume_maps
    from msutils.segmentation.slices import brain_mask_for
    from msutils.segmentation.slices import binarize_mask, estimate_brain_mask, normalize_intensity, skull_strip

    flair = cohort.array(scan_id, "flair")
    lesion = binarize_mask(cohort.array(scan_id, "lesion_mask"))
    if lesion.shape != flair.shape:
        raise ValueError(f"scan {scan_id!r}: lesion_mask shape {lesion.shape} differs from FLAIR {flair.shape}")
    if flair.ndim != 3:
        raise ValueError(f"scan {scan_id!r}: FLAIR must be a 3D volume; got shape {flair.shape}")
    lesion_gt = None
    truth_column = cohort.truth_column("lesion_mask", [scan_id])
    if truth_column is not None:
        lesion_gt = binarize_mask(cohort.array(scan_id, truth_column))
        if lesion_gt.shape != flair.shape:
            raise ValueError(f"scan {scan_id!r}: {truth_column} shape {lesion_gt.shape} differs from FLAIR "
                             f"{flair.shape}")
    brain, used = brain_mask_for(cohort, scan_id, flair, config.brain_source)
    if brain is None:
        logger.warning("scan %s: no brain mask and not skull-stripped: using the fallback estimate_brain_mask "
                       "(a foreground mask, not BET)", scan_id)
        brain = estimate_brain_mask(flair)
    stripped, brain = skull_strip(flair, brain)
    norm = normalize_intensity(stripped, brain, method="minmax")
    idx = select_slices(lesion, axis=config.axis, min_lesion_pixels=config.min_lesion_pixels,
                        gap=config.slice_gap, max_slices=config.max_slices_per_patient)
    zooms = [float(z) for z in cohort.image(scan_id, "flair").header.get_zooms()[:3]]
    inplane = [a for a in range(3) if a != config.axis]
    spacing = (zooms[inplane[0]], zooms[inplane[1]])
    subject = str(cohort.table.loc[scan_id, "subject_id"])
    if idx.size == 0:
        logger.warning("scan %s: no slice with >= %d lesion pixels: no study slice", scan_id,
                       config.min_lesion_pixels)
        empty = np.zeros((0, *(flair.shape[a] for a in inplane)), dtype=np.float32)
        return FusionScan(str(scan_id), subject, idx, empty, empty, empty, empty.astype(np.uint8),
                          empty.astype(bool), used, spacing,
                          None if lesion_gt is None else empty.astype(np.uint8))
    cr, re = cached_volume_maps(norm, config.maps, axis=config.axis, slices=idx, cache_dir=cache_dir,
                                label=str(scan_id))

    def take(vol: np.ndarray, dtype: Any) -> np.ndarray:
        return np.moveaxis(np.take(vol, idx, axis=config.axis), config.axis, 0).astype(dtype)

    return FusionScan(str(scan_id), subject, idx, take(norm, np.float32), take(cr, np.float32), take(re, np.float32),
                      take(lesion, np.uint8), take(brain, bool), used, spacing,
                      None if lesion_gt is None else take(lesion_gt, np.uint8))


def minmax_per_slice(x: Any) -> np.ndarray:
    """Min-max scale every ``(slice, channel)`` image of ``(n, C, H, W)`` to [0, 1] (constant images -> 0)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"'x' must be (n, channels, H, W); got shape {arr.shape}")
    lo = arr.min(axis=(2, 3), keepdims=True)
    span = arr.max(axis=(2, 3), keepdims=True) - lo
    return np.where(span > 0, (arr - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


@dataclass(frozen=True)
class NetInputs:
    """Network inputs of a set of scans at one size.

    Attributes
    ----------
    x : numpy.ndarray
        ``(n, 3, S, S)`` float32: FLAIR, CR, RE, each min-max scaled per slice.
    y : numpy.ndarray
        ``(n, S, S)`` uint8 lesion masks.
    table : DataFrame
        One row per slice: ``scan_id``, ``subject_id``, ``slice`` (index along the
        cut axis), ``row`` (position in its :class:`FusionScan`), ``lesion_pixels``
        (native).
    """

    x: np.ndarray
    y: np.ndarray
    table: pd.DataFrame

    def rows(self, subjects: Sequence[str]) -> np.ndarray:
        """Positions of the slices of ``subjects``."""
        return np.flatnonzero(self.table["subject_id"].isin(set(map(str, subjects))).to_numpy())

    def channels(self, arm: str) -> list[int]:
        """Channel positions fed by ``arm``."""
        if arm not in ARMS:
            raise ValueError(f"'arm' must be one of {list(ARMS)}; got {arm!r}")
        return [CHANNELS.index(c) for c in ARMS[arm]]


def network_inputs(scans: Sequence[FusionScan], size: int) -> NetInputs:
    """Pad each native slice to a square, resize to ``size`` and scale per slice (see the module docstring)."""
    from msutils.segmentation.slices import resize_image, resize_mask
    from msutils.segmentation.slices import pad_to_square

    check_int("size", size, 1)
    xs, ys, rows = [], [], []
    for scan in scans:
        if len(scan) == 0:
            continue
        chans = [pad_to_square(scan.channel(c), axis=0)[0] for c in CHANNELS]
        masks = pad_to_square(scan.lesion, axis=0)[0]
        for i in range(len(scan)):
            xs.append(np.stack([resize_image(ch[i], (size, size)) for ch in chans]))
            ys.append(resize_mask(masks[i], (size, size)))
            rows.append({"scan_id": scan.scan_id, "subject_id": scan.subject_id, "slice": int(scan.slices[i]),
                         "row": i, "lesion_pixels": int(scan.lesion[i].sum())})
    if not xs:
        raise ValueError("no study slice in the given scans")
    return NetInputs(x=minmax_per_slice(np.stack(xs)), y=np.stack(ys).astype(np.uint8), table=pd.DataFrame(rows))


def to_native(binary: Any, native_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a square ``(S, S)`` prediction back to a native ``(X, Y)`` slice.

    The inverse of :func:`network_inputs`' geometry: resize to the padded
    square side ``max(X, Y)``, then crop the centred zero padding.
    """
    from msutils.segmentation.slices import resize_mask

    b = np.asarray(binary)
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        raise ValueError(f"'binary' must be a square 2D array; got shape {b.shape}")
    x, y = (int(s) for s in native_shape)
    side = max(x, y)
    full = resize_mask(b, (side, side))
    top, left = (side - x) // 2, (side - y) // 2
    return full[top:top + x, left:left + y]


def slice_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, precision (PPV) and sensitivity of one native slice (:mod:`msutils.segmentation.metrics` conventions)."""
    from msutils.segmentation.metrics import dice, ppv, sensitivity

    return {"dice": dice(pred, truth), "precision": ppv(pred, truth), "sensitivity": sensitivity(pred, truth)}


def sdd(curve: Any) -> float:
    """Standard deviation of derivatives of a validation curve (Eqs. 4-5).

    ``d_i = val_i - val_{i-1}`` for ``i = 1 .. N`` (N = number of differences),
    ``SDD = sqrt(mean((d - mean(d))^2))``. NaN for fewer than two validations.
    """
    v = np.asarray(curve, dtype=np.float64).ravel()
    if v.size < 2:
        return float("nan")
    d = np.diff(v)
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


# --------------------------------------------------------------------------------------
# one fold
# --------------------------------------------------------------------------------------
def _fold_subjects(split: Mapping[str, Any]) -> tuple[list[str], list[str], list[str], str]:
    test = [str(s) for s in split["test"]]
    if split.get("val_unit", "patient") == "patient":
        inner = split["inner"][0]
        return [str(s) for s in inner["train"]], [str(s) for s in inner["test"]], test, "patient"
    return [str(s) for s in split["train"]], [], test, "slices"


def _val_rows(inputs: NetInputs, train: Sequence[str], val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Within-patient validation: the last ``val_fraction`` of each training patient's slices (slice order)."""
    fit, val = [], []
    for subject in train:
        rows = inputs.rows([subject])
        rows = rows[np.argsort(inputs.table["slice"].to_numpy()[rows], kind="stable")]
        n_val = min(max(1, int(round(val_fraction * len(rows)))), len(rows) - 1) if len(rows) > 1 else 0
        if n_val == 0:
            raise ValueError(f"patient {subject!r} has {len(rows)} study slice(s): a within-patient validation "
                             "split needs at least 2")
        fit.append(rows[:-n_val])
        val.append(rows[-n_val:])
    return np.concatenate(fit), np.concatenate(val)


def run_fold(scans: Mapping[str, FusionScan], split: Mapping[str, Any], config: FusionConfig) -> dict[str, Any]:
    """Train every network x arm on one fold and score its test patients.

    Parameters
    ----------
    scans : mapping of scan_id to FusionScan
        Every study scan (those of the fold's subjects are used).
    split : dict
        One entry of :func:`cv_splits`.
    config : FusionConfig

    Returns
    -------
    dict
        ``fold``, ``val_unit``, ``fit_subjects``, ``val_subjects``,
        ``test_subjects``, ``fit_log`` (:class:`msutils.data.leakage.FitLog` as a
        dict: ``<net>/<arm>/weights`` = fitted subjects,
        ``<net>/<arm>/checkpoint`` = subjects the checkpoint was chosen on),
        ``n_slices`` (fit / val / test) and ``runs[net][arm]``: ``history``,
        ``best_epoch``, ``best_val_dice``, ``sdd``, ``n_parameters``,
        ``seconds``, ``per_slice`` (DataFrame: ``scan_id``, ``subject_id``,
        ``slice``, ``lesion_pixels``, :data:`METRICS` and, for scans with a
        true lesion mask, :data:`TRUTH_METRICS`) and ``examples``
        (``{(scan_id, slice): native uint8 prediction}`` for the
        ``n_examples`` test slices with the most lesion pixels).
    """
    import torch

    from msutils.data.leakage import FitLog
    from msutils.segmentation.nets import build_net, count_parameters
    from msutils.segmentation.training import predict_proba, train_net

    fit_subj, val_subj, test_subj, val_unit = _fold_subjects(split)
    leak = set(test_subj) & (set(fit_subj) | set(val_subj))
    if leak:
        raise ValueError(f"fold {split.get('name')!r}: test patient(s) {sorted(leak)} also in training")
    fold_subjects = set(fit_subj) | set(val_subj) | set(test_subj)
    fold_scans = [s for s in scans.values() if s.subject_id in fold_subjects]
    if config.num_threads is not None:
        torch.set_num_threads(int(config.num_threads))
    log = FitLog()
    runs: dict[str, dict[str, Any]] = {}
    n_slices: dict[str, int] = {}
    for net_name in config.nets:
        size = config.image_size(net_name)
        inputs = network_inputs(fold_scans, size)
        test_rows = inputs.rows(test_subj)
        if val_unit == "patient":
            fit_rows, val_rows = inputs.rows(fit_subj), inputs.rows(val_subj)
        else:
            fit_rows, val_rows = _val_rows(inputs, fit_subj, config.val_fraction)
        for name, rows, subjects in (("fit", fit_rows, fit_subj), ("validation", val_rows, val_subj),
                                     ("test", test_rows, test_subj)):
            if rows.size == 0:
                raise ValueError(f"fold {split.get('name')!r}: no {name} slice (patients {subjects} have no "
                                 "study slice)")
        n_slices = {"fit": int(fit_rows.size), "val": int(val_rows.size), "test": int(test_rows.size)}
        tcfg = config.train_config(net_name)
        device = tcfg.resolved_device()
        table = inputs.table.iloc[test_rows].reset_index(drop=True)
        examples_at = table.sort_values("lesion_pixels", ascending=False, kind="stable").index[:config.n_examples]
        runs[net_name] = {}
        for arm in config.arms:
            ch = inputs.channels(arm)
            torch.manual_seed(config.seed)
            weights = config.weights if net_name == "resnext_unet" else None
            net = build_net(net_name, len(ch), 1, weights=weights, **config.net_size(net_name))
            t0 = time.perf_counter()
            res = train_net(net, inputs.x[fit_rows][:, ch], inputs.y[fit_rows], inputs.x[val_rows][:, ch],
                            inputs.y[val_rows], tcfg)
            log.record(f"{net_name}/{arm}/weights", sorted({inputs.table['subject_id'].iat[r] for r in fit_rows}))
            log.record(f"{net_name}/{arm}/checkpoint", sorted({inputs.table['subject_id'].iat[r] for r in val_rows}))
            prob = predict_proba(net, inputs.x[test_rows][:, ch], batch_size=max(tcfg.batch_size, 8), device=device)
            metrics, examples = [], {}
            for i, r in enumerate(table.itertuples()):
                scan = scans[r.scan_id]
                truth = scan.lesion[r.row]
                pred = to_native(prob[i] >= config.threshold, truth.shape)
                m = slice_metrics(pred, truth)
                if scan.lesion_gt is not None:  # beyond the seed: the same prediction against the true lesions
                    m.update({f"gt_{k}": v for k, v in slice_metrics(pred, scan.lesion_gt[r.row]).items()})
                metrics.append(m)
                if i in examples_at:
                    examples[(r.scan_id, int(r.slice))] = pred.astype(np.uint8)
            per_slice = pd.concat([table[["scan_id", "subject_id", "slice", "lesion_pixels"]],
                                   pd.DataFrame(metrics)], axis=1)
            runs[net_name][arm] = {
                "history": res.history, "best_epoch": res.best_epoch, "best_val_dice": res.best_val_dice,
                "sdd": sdd(res.history["val_dice"]), "n_parameters": count_parameters(net),
                "seconds": {"train": res.seconds, "total": time.perf_counter() - t0}, "per_slice": per_slice,
                "examples": examples, "device": device,
            }
            logger.info("fold %s %s %s: best epoch %d (val Dice %.3f), test Dice %.3f, %.0f s", split.get("name"),
                        net_name, arm, res.best_epoch, res.best_val_dice, per_slice["dice"].mean(), res.seconds)
            del net
    return {"fold": split.get("name"), "val_unit": val_unit, "fit_subjects": sorted(fit_subj),
            "val_subjects": sorted(val_subj), "test_subjects": sorted(test_subj), "fit_log": log.to_dict(),
            "n_slices": n_slices, "runs": runs}


# --------------------------------------------------------------------------------------
# aggregation and statistics
# --------------------------------------------------------------------------------------
def per_slice_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """All folds' per-slice test metrics: ``fold``, ``net``, ``arm``, slice ids, :data:`METRICS` (and :data:`TRUTH_METRICS` if any)."""
    frames = []
    for fold, res in results.items():
        for net, arms in res["runs"].items():
            for arm, run in arms.items():
                frames.append(run["per_slice"].assign(fold=fold, net=net, arm=arm))
    if not frames:
        raise ValueError("'results' holds no run")
    table = pd.concat(frames, ignore_index=True)
    cols = ["fold", "net", "arm", "scan_id", "subject_id", "slice", "lesion_pixels", *METRICS]
    return table[cols + [c for c in TRUTH_METRICS if c in table.columns]]


def fold_table(per_slice: pd.DataFrame) -> pd.DataFrame:
    """Per (fold, net, arm): mean of each metric over the fold's test slices, and the slice count."""
    g = per_slice.groupby(["fold", "net", "arm"], sort=False)
    return g[list(METRICS)].mean().join(g.size().rename("n_slices")).reset_index()


def paired_wilcoxon(a: Any, b: Any) -> float:
    """Two-sided Wilcoxon signed-rank p of paired samples (zero differences dropped; all zero: p = 1)."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"'a' and 'b' must be 1D of equal length; got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(x[ok], y[ok]).pvalue)


def _arm_pairs(per_slice: pd.DataFrame, net: str, arm_a: str, arm_b: str, unit: str) -> pd.DataFrame:
    sub = per_slice[(per_slice["net"] == net) & per_slice["arm"].isin([arm_a, arm_b])]
    keys = ["fold", "scan_id", "slice"] if unit == "slice" else ["subject_id"]
    wide = sub.groupby(keys + ["arm"])[list(METRICS)].mean().unstack("arm")
    return wide.dropna()


def metrics_table(per_slice: pd.DataFrame, net: str, arms: Sequence[str] = MAIN_ARMS) -> pd.DataFrame:
    """Table 1 / 3: per metric, each arm's mean and SD over folds and the adjusted Wilcoxon p-values.

    Parameters
    ----------
    per_slice : DataFrame
        :func:`per_slice_table`.
    net : str
    arms : two arm names
        The compared arms (the seed: MRI vs MRI + features).

    Returns
    -------
    DataFrame
        Index :data:`METRICS`; columns ``<arm> mean``, ``<arm> sd`` (population
        SD over the fold means, as in the paper), ``p slices`` and
        ``p patients`` (Wilcoxon signed-rank over paired test slices / patients,
        Bonferroni x number of metrics, capped at 1), ``n slices``, ``n patients``.
    """
    if len(arms) != 2:
        raise ValueError(f"'arms' must name two arms; got {list(arms)!r}")
    a, b = arms
    folds = fold_table(per_slice[per_slice["net"] == net])
    if folds.empty:
        raise ValueError(f"no result for net {net!r}")
    rows = {}
    slice_pairs = _arm_pairs(per_slice, net, a, b, "slice")
    patient_pairs = _arm_pairs(per_slice, net, a, b, "patient")
    m = len(METRICS)
    for metric in METRICS:
        row: dict[str, float] = {}
        for arm in arms:
            vals = folds.loc[folds["arm"] == arm, metric].to_numpy()
            row[f"{arm} mean"] = float(vals.mean())
            row[f"{arm} sd"] = float(vals.std(ddof=0))
        row["p slices"] = min(1.0, m * paired_wilcoxon(slice_pairs[(metric, b)], slice_pairs[(metric, a)]))
        row["p patients"] = min(1.0, m * paired_wilcoxon(patient_pairs[(metric, b)], patient_pairs[(metric, a)]))
        row["n slices"] = int(len(slice_pairs))
        row["n patients"] = int(len(patient_pairs))
        rows[metric] = row
    return pd.DataFrame(rows).T


def dice_by_fold(per_slice: pd.DataFrame, net: str, arms: Sequence[str] = MAIN_ARMS) -> pd.DataFrame:
    """Table 2 / 4: rows = arms, columns = folds (1-based), mean test Dice of each fold."""
    folds = fold_table(per_slice[(per_slice["net"] == net) & per_slice["arm"].isin(arms)])
    wide = folds.pivot(index="arm", columns="fold", values="dice").reindex(list(arms))
    order = list(dict.fromkeys(per_slice["fold"]))
    wide = wide[[f for f in order if f in wide.columns]]
    wide.columns = [str(i + 1) for i in range(wide.shape[1])]
    return wide


def sdd_table(results: Mapping[str, Mapping[str, Any]], net: str,
              arms: Sequence[str] = MAIN_ARMS) -> tuple[pd.DataFrame, float]:
    """SDD of the validation-Dice curve per fold (rows) and arm (columns), and the Wilcoxon p over folds."""
    data = {arm: {fold: res["runs"][net][arm]["sdd"] for fold, res in results.items() if net in res["runs"]}
            for arm in arms}
    table = pd.DataFrame(data)
    p = paired_wilcoxon(table[arms[0]], table[arms[1]]) if len(arms) == 2 and len(table) else float("nan")
    return table, p


def arm_difference(per_slice: pd.DataFrame, net: str, arm: str, baseline: str = "mri", metric: str = "dice", *,
                   n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean paired per-slice difference ``arm - baseline`` with a patient-cluster bootstrap 95 % CI."""
    from msutils.stats import bootstrap_ci

    if metric not in METRICS:
        raise ValueError(f"'metric' must be one of {list(METRICS)}; got {metric!r}")
    sub = per_slice[(per_slice["net"] == net) & per_slice["arm"].isin([arm, baseline])]
    wide = sub.pivot_table(index=["fold", "scan_id", "subject_id", "slice"], columns="arm", values=metric)
    wide = wide.dropna().reset_index()
    if wide.empty:
        raise ValueError(f"no paired slice of arms {arm!r} and {baseline!r} for net {net!r}")
    diff = (wide[arm] - wide[baseline]).to_numpy()
    ci = bootstrap_ci(diff, units=wide["subject_id"].to_numpy(), n_boot=n_boot, seed=seed)
    return {"mean": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n_slices": int(len(diff)),
            "n_patients": int(ci.n_units)}


def vs_truth_table(per_slice: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Beyond the seed: a metric against the manifest's ``lesion_mask`` and against the true lesions, per net and arm.

    Parameters
    ----------
    per_slice : DataFrame
        :func:`per_slice_table` with :data:`TRUTH_METRICS` (synthetic cohorts).
    metric : str
        One of :data:`METRICS`.

    Returns
    -------
    DataFrame
        Index ``(net, arm)``; columns ``lesion_mask mean``, ``lesion_mask sd``,
        ``gt_lesion_mask mean``, ``gt_lesion_mask sd`` (mean and population SD
        over the folds of the per-fold mean over test slices, as in Tables 1
        and 3) and ``n slices``.

    Raises
    ------
    ValueError
        ``metric`` unknown, or no truth metric in the table (a cohort without
        :data:`TRUTH_LESION_COLUMN`).
    """
    if metric not in METRICS:
        raise ValueError(f"'metric' must be one of {list(METRICS)}; got {metric!r}")
    gt = f"gt_{metric}"
    if gt not in per_slice.columns or not per_slice[gt].notna().any():
        raise ValueError(f"no {gt!r} in the per-slice table: the cohort declares no {TRUTH_LESION_COLUMN!r}")
    means = per_slice.groupby(["net", "arm", "fold"], sort=False)[[metric, gt]].mean()
    g = means.groupby(level=["net", "arm"], sort=False)
    out = pd.DataFrame({"lesion_mask mean": g[metric].mean(), "lesion_mask sd": g[metric].std(ddof=0),
                        f"{TRUTH_LESION_COLUMN} mean": g[gt].mean(), f"{TRUTH_LESION_COLUMN} sd": g[gt].std(ddof=0)})
    out["n slices"] = per_slice.groupby(["net", "arm"], sort=False).size()
    return out


def rater_vs_truth(scans: Sequence[FusionScan]) -> pd.DataFrame:
    """Beyond the seed: the manifest's ``lesion_mask`` scored against the true lesions on every study slice.

    Returns
    -------
    DataFrame
        One row per study slice of the scans with a true lesion mask:
        ``scan_id``, ``subject_id``, ``slice`` and :data:`METRICS` of
        ``lesion`` (as the prediction) against ``lesion_gt``; empty when no
        scan has one.
    """
    rows = []
    for scan in scans:
        if scan.lesion_gt is None:
            continue
        for i, k in enumerate(scan.slices):
            rows.append({"scan_id": scan.scan_id, "subject_id": scan.subject_id, "slice": int(k),
                         **slice_metrics(scan.lesion[i], scan.lesion_gt[i])})
    return pd.DataFrame(rows, columns=["scan_id", "subject_id", "slice", *METRICS])


def _inside_outside_values(scans: Sequence[FusionScan], name: str) -> tuple[np.ndarray, np.ndarray]:
    inside, outside = [], []
    for s in scans:
        if len(s) == 0:
            continue
        v = s.channel(name)
        les = s.lesion > 0
        inside.append(v[les])
        outside.append(v[s.brain & ~les])
    if not inside:
        raise ValueError("no study slice in the given scans")
    return np.concatenate(inside).astype(np.float64), np.concatenate(outside).astype(np.float64)


def inside_outside(scans: Sequence[FusionScan], *, maps: Sequence[str] = ("cr", "re"),
                   max_values: int = 200_000, seed: int = 0) -> pd.DataFrame:
    """Map values inside vs outside the lesions (Figs. 2-3) with Mann-Whitney U and effect sizes.

    Inside: lesion pixels of the study slices; outside: their other brain
    pixels. Mann-Whitney U (two-sided, asymptotic) on at most ``max_values``
    values per side drawn at random (seeded); medians and means use every value.

    Returns
    -------
    DataFrame
        Index = map; columns ``n_inside``, ``n_outside``, ``median_inside``,
        ``median_outside``, ``mean_inside``, ``mean_outside``, ``U``, ``p``,
        ``prob_superiority`` (``U / (n1 n2)``: probability that an inside value
        exceeds an outside one, ties counting half) and ``rank_biserial``
        (``2 * prob_superiority - 1``).
    """
    from scipy.stats import mannwhitneyu

    check_int("max_values", max_values, 1)
    rng = np.random.default_rng(seed)
    rows = {}
    for name in maps:
        inside, outside = _inside_outside_values(scans, name)
        a = inside if inside.size <= max_values else rng.choice(inside, max_values, replace=False)
        b = outside if outside.size <= max_values else rng.choice(outside, max_values, replace=False)
        res = mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
        ps = float(res.statistic) / (a.size * b.size)
        rows[name] = {"n_inside": int(inside.size), "n_outside": int(outside.size),
                      "median_inside": float(np.median(inside)), "median_outside": float(np.median(outside)),
                      "mean_inside": float(inside.mean()), "mean_outside": float(outside.mean()),
                      "U": float(res.statistic), "p": float(res.pvalue), "prob_superiority": ps,
                      "rank_biserial": 2 * ps - 1}
    return pd.DataFrame(rows).T


def map_samples(scans: Sequence[FusionScan], name: str, *, n: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` random values per side of map ``name`` (columns ``value``, ``where``) for violin plots."""
    rng = np.random.default_rng(seed)
    inside, outside = _inside_outside_values(scans, name)
    parts = []
    for label, v in (("inside lesions", inside), ("outside lesions", outside)):
        take = v if v.size <= n else rng.choice(v, n, replace=False)
        parts.append(pd.DataFrame({"value": take, "where": label}))
    return pd.concat(parts, ignore_index=True)


@lru_cache(maxsize=1)
def _paper_yaml() -> dict[str, Any]:
    import yaml

    path = Path(__file__).with_suffix(".yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def paper_numbers() -> dict[str, Any]:
    """The seed's published numbers (Tables 1-4, SDD, cohort), from ``radiomics_fusion.yaml`` beside this module."""
    import copy

    return copy.deepcopy(_paper_yaml())
