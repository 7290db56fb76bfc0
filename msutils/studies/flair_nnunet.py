"""Seed 003 study steps: FLAIR slices -> 2D nnU-Net -> slice- and voxel-level evaluation.

The notebook ``03_flair_nnunet`` chains these steps; each is reusable and tested
on its own. The design follows the paper (Darestani et al., Sci Rep 2025):

Patients and split (:func:`study_scans`, :func:`msutils.data.splits.internal_external_cv`)
    MS patients only (healthy controls have no lesion slices), one scan per
    patient (the first session: the paper has one FLAIR volume per patient).
    25 % of the main center's patients form the **internal test** set
    (seeded); the remaining patients are split into the cross-validation folds
    (subject-level); the patients of the other center(s) form the **external
    test** set. With fewer training
    patients than folds (e.g. a 2-patient real sample: 1 trains, 1 tests) the
    folds cannot be built from patients; they are then contiguous blocks of
    axial slices of the training patients (``fold_unit="slab"``): the test
    patient stays unseen, but the validation Dice becomes a within-patient
    number (optimistic). The split is written once to a splits file and reused.
Slices (:func:`scan_slices`)
    Paper steps 1-5 through :func:`msutils.segmentation.slices.volume_to_slices`: skull
    strip (the manifest's ``brain_mask``; without one, an already
    skull-stripped image's non-zero voxels, else the documented fallback
    :func:`msutils.segmentation.slices.estimate_brain_mask`, see :func:`msutils.segmentation.slices.brain_mask_for`),
    min-max normalisation to [0, 1] inside the brain, resizing to
    ``image_size`` x ``image_size`` (after zero-padding the two in-plane axes
    to a square, so the anatomy keeps its aspect ratio), mask binarisation and
    the entropy exclusion (``H < 0.01`` bits dropped, which also drops every
    lesion-free slice: the training set is lesion slices, as in the paper).
Augmentation and nnU-Net dataset (:func:`prepare_workspace`)
    Paper step 6 runs **offline before export**
    (:func:`msutils.segmentation.slices.augment_slices`, MONAI, 5 copies per slice) on the
    training slices. Every training patient's copies are exported once, but a
    fold only ever trains on copies of its own training patients: copies of a
    validation patient are in neither list of that fold
    (:func:`msutils.segmentation.nnunet.splits_from_subject_folds`), which is the same as
    augmenting each fold's training part separately. nnU-Net's own online
    augmentation (the default ``nnUNetTrainer``: rotation, scaling, noise,
    blur, brightness/contrast, gamma, mirroring) runs on top, unchanged.
    ``splits_final.json`` is the study's folds. Export, splits and nnU-Net
    planning/preprocessing happen once per configuration in a
    content-addressed folder ``<root>/nnunet-<key>``, guarded by a file lock
    (fold processes run in parallel; the first prepares, the others wait).
Training (:func:`train_fold`)
    One fold of the stock ``nnUNetTrainer`` (2D configuration, SGD with
    Nesterov momentum 0.99, weight decay 3e-5, initial LR 0.01 with poly
    decay, Dice + cross-entropy), then the fold's validation Dice (Table 4)
    by predicting its validation patients' original slices with the fold's
    network. The trained subjects are recorded for the leakage audit.
Test sets (:func:`held_out_slices`, :func:`select_slices`, :func:`compute_held_out`)
    Every slice of a test patient's scan that shows brain is preprocessed and
    segmented once by the ensemble of the trained folds (nnU-Net's mean of the
    logits); the protocols then score subsets of these predictions:

    * ``"seed"``, the seed's protocol and the main result: the *positive*
      slices are the lesion slices that pass the entropy check (the seed's
      dataset); as many *negative* slices are drawn at random (seeded, before
      any prediction) from every lesion-free slice of the same patients. Lesion
      slices too small for the entropy check are in neither group.
    * ``"all"``: every slice, all lesion slices (small ones too) and all
      lesion-free slices, unbalanced: what the protocol leaves out.

    Slice level (:func:`evaluate_test_set`): TP if one predicted lesion covers
    >= 10 % of a ground-truth lesion (the seed's rule, ``truth_overlap="instance"``;
    the lenient ``"union"`` rule, coverage by the whole predicted mask, is
    reported beside it), TN if the prediction is empty; exact Clopper-Pearson
    CIs. Voxel level: DSC, PPV, IoU, sensitivity and HD95 (mm) per positive
    slice, averaged over slices, with percentile-bootstrap CIs that resample
    **patients**; the ``"all"`` protocol adds each patient's metrics over the
    whole stack of slices (false positives on lesion-free slices count).
    When the cohort declares the true lesion masks (sidecar ``truth_masks``:
    a truth column of kind ``lesion_mask``, see :meth:`Cohort.truth_column`; a
    synthetic cohort whose manifest masks are rater-like estimates) both
    protocols are also scored against them, and so are the manifest masks
    themselves (beyond the seed). :func:`compute_held_out` computes all of it
    once per test set, for a :class:`msutils.pipeline.cache.FoldCache` entry
    named by :func:`held_out_cache_name`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from msutils.core.device import DEVICES, resolve_device, torch_threads
from msutils.core.seeding import derived_seed
from msutils.core.validation import check_choice, check_int
from msutils.segmentation.lesions import TRUTH_OVERLAP_RULES
from msutils.segmentation.slices import BRAIN_SOURCES, brain_mask_for, pad_to_square
from msutils.segmentation.slice_classification import DEFAULT_THRESHOLDS, draw_negatives
from msutils.core.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_lock,
)

if TYPE_CHECKING:  # pragma: no cover
    from msutils.data.cohort import Cohort
    from msutils.data.leakage import FitLog
    from msutils.segmentation.nnunet import NnUNetWorkspace

__all__ = [
    "EVALUATIONS",
    "PROTOCOLS",
    "REFERENCES",
    "SIM_PROTOCOL_ROWS",
    "SLICE_ROWS",
    "TABLE2_GROUPS",
    "TRUTH_COLUMN",
    "VARIANTS",
    "VOXEL_ROWS",
    "Evaluation",
    "HeldOutSlices",
    "PreparedStudy",
    "ScanSlices",
    "SegConfig",
    "TrainingSlices",
    "acquisition_table",
    "compute_held_out",
    "evaluate_test_set",
    "fold_files",
    "fold_fit_log",
    "fold_groups",
    "fold_index",
    "held_out_cache_name",
    "held_out_files",
    "held_out_slices",
    "load_held_out",
    "load_predictor",
    "paper_slice_metrics",
    "paper_vs_ours_rows",
    "patient_characteristics",
    "predict_slices",
    "prepare_workspace",
    "scan_slices",
    "select_slices",
    "study_scans",
    "table2",
    "table5",
    "train_fold",
    "training_slices",
    "variants_table",
    "workspace_key",
]

logger = logging.getLogger(__name__)

#: Training-set variants: with the offline augmentation (the paper) or without (Fig. 3, left).
VARIANTS: tuple[str, ...] = ("aug", "noaug")
_DATASET_IDS = {"aug": 1, "noaug": 2}
_DATASET_NAMES = {"aug": "FLAIRslices", "noaug": "FLAIRslicesNoAug"}
_NORMALIZATIONS = ("minmax", "percentile")
_MARKER = "prepared.json"
_CASES = "cases.csv"
_SLICES = "training_slices.npz"


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SegConfig:
    """Every setting of the study (preprocessing, network, training, evaluation).

    Attributes
    ----------
    image_size : int
        Slices are resized to ``image_size`` x ``image_size`` (paper: 512).
    n_aug_copies : int
        Offline augmented copies per training slice (paper: 5).
    entropy_threshold : float
        Mask entropy (bits) below which a slice is excluded (paper: 0.01).
    normalization : {"minmax", "percentile"}
        Intensity scaling to [0, 1] inside the brain (paper: min-max).
    brain_source : {"auto", "manifest", "nonzero", "estimate"}
        Skull-stripping mask, see :func:`msutils.segmentation.slices.brain_mask_for`.
    axis : int
        Slicing axis of the volumes (2 = axial for RAS+ arrays).
    negative_ratio : float
        Negative test slices drawn per positive slice (paper: 1, balanced).
    overlap_threshold : float
        Ground-truth lesion coverage that makes a positive slice a TP (paper: 0.1).
    truth_overlap : {"instance", "union"}
        TP rule of the slice level: ``"instance"`` (the seed's) needs one
        predicted lesion to cover ``overlap_threshold`` of a ground-truth
        lesion; ``"union"`` (lenient) lets the whole predicted mask do it. Both
        are reported; this one is the main result.
    n_stages, base_features, max_features, batch_size, patch_size : int or None
        Shrink nnU-Net's planned 2D network (None: nnU-Net's own plan, as the paper).
    num_epochs, iterations_per_epoch, val_iterations : int
        nnU-Net training length (paper: 250 epochs; nnU-Net: 250 and 50 iterations).
    device : {"auto", "cpu", "cuda"}
        ``auto``: CUDA when available.
    n_proc_da : int
        nnU-Net augmentation workers (0: in the main process, repeatable).
    num_threads : int or None
        torch CPU threads for training and prediction (None: torch's default).
    use_mirroring : bool
        nnU-Net's mirroring test-time augmentation at prediction.
    seed : int
        Seeds the split, the augmentation, training and the negative draw.
    """

    image_size: int = 512
    n_aug_copies: int = 5
    entropy_threshold: float = 0.01
    normalization: str = "minmax"
    brain_source: str = "auto"
    axis: int = 2
    negative_ratio: float = 1.0
    overlap_threshold: float = 0.1
    truth_overlap: str = "instance"
    n_stages: int | None = None
    base_features: int | None = None
    max_features: int | None = None
    batch_size: int | None = None
    patch_size: int | None = None
    num_epochs: int = 250
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    device: str = "auto"
    n_proc_da: int = 0
    num_threads: int | None = None
    use_mirroring: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 8)
        check_int("n_aug_copies", self.n_aug_copies, 0)
        for name in ("num_epochs", "iterations_per_epoch", "val_iterations"):
            check_int(name, getattr(self, name), 1)
        for name in ("n_stages", "base_features", "max_features", "batch_size", "patch_size"):
            check_int(name, getattr(self, name), 1, optional=True)
        check_int("num_threads", self.num_threads, 1, optional=True)
        check_int("n_proc_da", self.n_proc_da, 0)
        check_int("seed", self.seed, 0)
        if self.normalization not in _NORMALIZATIONS:
            raise ValueError(f"'normalization' must be one of {list(_NORMALIZATIONS)}; got {self.normalization!r}")
        check_choice("brain_source", self.brain_source, BRAIN_SOURCES)
        check_choice("device", self.device, DEVICES)
        check_choice("truth_overlap", self.truth_overlap, TRUTH_OVERLAP_RULES)
        if self.axis not in (0, 1, 2):
            raise ValueError(f"'axis' must be one of [0, 1, 2]; got {self.axis!r}")
        for name in ("entropy_threshold", "overlap_threshold"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"'{name}' must be a number in [0, 1]; got {v!r}")
        if not isinstance(self.negative_ratio, (int, float)) or not self.negative_ratio >= 0:
            raise ValueError(f"'negative_ratio' must be a number >= 0; got {self.negative_ratio!r}")

    #: Fields that decide the exported dataset and the nnU-Net plan (the workspace key).
    DATA_FIELDS = ("image_size", "n_aug_copies", "entropy_threshold", "normalization", "brain_source", "axis",
                   "n_stages", "base_features", "max_features", "batch_size", "patch_size", "seed")

    def data_settings(self) -> dict[str, Any]:
        """The :attr:`DATA_FIELDS` as a dict."""
        return {k: getattr(self, k) for k in self.DATA_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- patients and split
def study_scans(cohort: Cohort) -> pd.DataFrame:
    """The scans the study uses: MS patients, first session each (index ``scan_id``).

    Raises
    ------
    ValueError
        If the cohort has no MS patient, or an MS scan has no lesion mask.
    """
    table = cohort.table
    ms = table[table["group"] == "MS"]
    if ms.empty:
        raise ValueError(f"cohort {cohort.manifest_path} has no MS patient (column 'group'): nothing to segment")
    missing = [sid for sid, row in ms.iterrows() if not row.get("lesion_mask")]
    if missing:
        raise ValueError(
            f"cohort {cohort.manifest_path}: column 'lesion_mask' is empty for MS scan(s) {missing[:5]}; "
            "lesion segmentation needs the ground-truth masks"
        )
    from msutils.data.cohort import first_session

    return first_session(ms)


# --------------------------------------------------------------------------- slices
@dataclass(frozen=True)
class ScanSlices:
    """The preprocessed slices of one scan.

    Attributes
    ----------
    scan_id, subject_id, center : str
    stack : msutils.segmentation.slices.SliceStack
        Every slice along the cut axis (images, masks, brain masks, entropy).
    spacing : tuple of float
        Pixel size (rows, columns) in mm after padding and resizing.
    brain_source : str
        Which skull-stripping mask was used (``manifest``, ``nonzero``, ``estimate``).
    """

    scan_id: str
    subject_id: str
    center: str
    stack: Any
    spacing: tuple[float, float]
    brain_source: str

    def kept(self, threshold: float = 0.01) -> np.ndarray:
        """Boolean: slices whose mask entropy passes the paper's check (lesion slices kept)."""
        return np.asarray(self.stack.entropy >= threshold, dtype=bool)

    def negatives(self) -> np.ndarray:
        """Boolean: lesion-free slices that show brain (the seed's candidate negative slices)."""
        area = self.stack.brain.reshape(len(self.stack), -1).sum(axis=1)
        lesion = self.stack.masks.reshape(len(self.stack), -1).any(axis=1)
        return (~lesion) & (area > 0)



def scan_slices(cohort: Cohort, scan_id: str, config: SegConfig) -> ScanSlices:
    """Paper preprocessing steps 1-5 for one scan (see the module docstring).

    The FLAIR, the lesion mask and the brain mask are padded to a square in
    plane, then cut and resized by :func:`msutils.segmentation.slices.volume_to_slices`.
    """
    from msutils.segmentation.slices import volume_to_slices

    row = cohort.table.loc[scan_id]
    flair = cohort.array(scan_id, "flair")
    lesion = cohort.array(scan_id, "lesion_mask")
    if lesion.shape != flair.shape:
        raise ValueError(f"scan {scan_id!r}: lesion_mask shape {lesion.shape} differs from FLAIR {flair.shape}")
    brain, used = brain_mask_for(cohort, scan_id, flair, config.brain_source)
    if used == "estimate":
        logger.warning("scan %s: no brain mask and not skull-stripped: using the fallback estimate_brain_mask "
                       "(a foreground mask, not BET)", scan_id)
    flair_sq, _ = pad_to_square(flair, config.axis)
    lesion_sq, _ = pad_to_square(lesion, config.axis)
    brain_sq = pad_to_square(brain, config.axis)[0] if brain is not None else None
    if brain_sq is None:
        from msutils.segmentation.slices import estimate_brain_mask

        brain_sq = pad_to_square(estimate_brain_mask(flair), config.axis)[0]
    stack = volume_to_slices(flair_sq, lesion_sq, brain_sq, size=(config.image_size, config.image_size),
                             axis=config.axis, normalization=config.normalization)
    zooms = [float(z) for z in cohort.image(scan_id, "flair").header.get_zooms()[:3]]
    inplane = [a for a in range(3) if a != config.axis]
    spacing = tuple(zooms[a] * flair_sq.shape[a] / config.image_size for a in inplane)
    return ScanSlices(scan_id=str(scan_id), subject_id=str(row["subject_id"]), center=str(row["center"]),
                      stack=stack, spacing=(float(spacing[0]), float(spacing[1])), brain_source=used)


@dataclass(frozen=True)
class TrainingSlices:
    """The training pool's slices (originals kept by the entropy check, plus augmented copies).

    Attributes
    ----------
    cases : DataFrame
        One row per exported case: ``case_id, subject_id, scan_id, center,
        slice, copy`` (0 = original), ``augmented`` (bool), ``lesion_pixels``.
    images, masks : ndarray
        ``(n_cases, H, W)`` in the order of ``cases``.
    spacing : tuple of float
        Pixel spacing written into the exported files (median over scans).
    counts : DataFrame
        Per scan: ``slices``, ``lesion_slices`` (any lesion pixel),
        ``kept`` (entropy >= threshold), ``excluded_small`` (lesion slices
        dropped by the entropy check), ``copies``, ``brain_source``.
    """

    cases: pd.DataFrame
    images: np.ndarray
    masks: np.ndarray
    spacing: tuple[float, float]
    counts: pd.DataFrame

    def originals(self) -> np.ndarray:
        """Boolean over ``cases``: not an augmented copy."""
        return ~self.cases["augmented"].to_numpy(bool)




def training_slices(
    cohort: Cohort, scan_ids: Sequence[str], config: SegConfig, *, augment: bool = True
) -> TrainingSlices:
    """Slices of the training pool, entropy-filtered, with their offline augmented copies.

    Each scan's copies are drawn with a seed derived from ``config.seed`` and
    the scan id, so they do not depend on the other scans of the pool.
    """
    from msutils.segmentation.nnunet import make_case_id
    from msutils.segmentation.slices import augment_slices

    if not len(scan_ids):
        raise ValueError("'scan_ids' is empty: no training scan")
    rows, images, masks, counts, spacings = [], [], [], [], []
    for sid in scan_ids:
        s = scan_slices(cohort, sid, config)
        keep = s.kept(config.entropy_threshold)
        lesion = s.stack.masks.reshape(len(s.stack), -1).any(axis=1)
        kept = s.stack.select(keep)
        n_copies = int(config.n_aug_copies) if augment and len(kept) else 0
        counts.append({"scan_id": s.scan_id, "subject_id": s.subject_id, "center": s.center,
                       "slices": len(s.stack), "lesion_slices": int(lesion.sum()), "kept": int(keep.sum()),
                       "excluded_small": int((lesion & ~keep).sum()), "copies": int(n_copies * len(kept)),
                       "brain_source": s.brain_source})
        spacings.append(s.spacing)
        for j in range(len(kept)):
            rows.append({"case_id": make_case_id(s.scan_id, int(kept.index[j])), "subject_id": s.subject_id,
                         "scan_id": s.scan_id, "center": s.center, "slice": int(kept.index[j]), "copy": 0,
                         "augmented": False, "lesion_pixels": int(kept.masks[j].sum())})
        images.append(kept.images)
        masks.append(kept.masks)
        if n_copies:
            aug = augment_slices(kept.images, kept.masks, n_copies=n_copies, seed=derived_seed(config.seed, s.scan_id))
            for j in range(len(aug)):
                src = int(kept.index[int(aug.source[j])])
                rows.append({"case_id": make_case_id(s.scan_id, src, int(aug.copy[j])), "subject_id": s.subject_id,
                             "scan_id": s.scan_id, "center": s.center, "slice": src, "copy": int(aug.copy[j]),
                             "augmented": True, "lesion_pixels": int(aug.masks[j].sum())})
            images.append(aug.images)
            masks.append(aug.masks)
    cases = pd.DataFrame(rows, columns=["case_id", "subject_id", "scan_id", "center", "slice", "copy",
                                        "augmented", "lesion_pixels"])
    if cases.empty:
        raise ValueError(f"no training slice passed the entropy check (threshold {config.entropy_threshold}) in "
                         f"{len(scan_ids)} scan(s)")
    sp = np.median(np.asarray(spacings), axis=0)
    size = (0, config.image_size, config.image_size)
    return TrainingSlices(
        cases=cases,
        images=np.concatenate([a for a in images if len(a)] or [np.zeros(size, np.float32)]).astype(np.float32),
        masks=np.concatenate([a for a in masks if len(a)] or [np.zeros(size, np.uint8)]).astype(np.uint8),
        spacing=(float(sp[0]), float(sp[1])),
        counts=pd.DataFrame(counts).set_index("scan_id"),
    )


def fold_groups(cases: pd.DataFrame, split: Mapping[str, Any]) -> tuple[dict[str, str], list[list[str]]]:
    """Group of every training case and the validation groups of each fold.

    Subject folds (``split["fold_unit"] == "subject"``): the group is the
    patient and fold ``k`` validates on the patients in ``split["inner"][k]["test"]``.
    Slab folds: every training patient's kept slices are cut into
    ``n_folds`` contiguous blocks along the slicing axis (by slice position);
    the group is ``"<subject>#slab<k>"`` and fold ``k`` validates on block
    ``k`` of every patient. Augmented copies belong to their source slice's group.
    """
    n_folds = int(split["n_folds"])
    if split.get("fold_unit") == "subject":
        groups = dict(zip(cases["case_id"], cases["subject_id"].astype(str)))
        val = [sorted(map(str, f["test"])) for f in split["inner"]]
        return groups, val
    if split.get("fold_unit") != "slab":
        raise ValueError(f"split 'fold_unit' must be 'subject' or 'slab'; got {split.get('fold_unit')!r}")
    groups: dict[str, str] = {}
    for subject, sub in cases.groupby("subject_id"):
        positions = np.sort(sub["slice"].unique())
        if len(positions) < n_folds:
            raise ValueError(f"patient {subject!r} has {len(positions)} training slice(s) for {n_folds} slab folds; "
                             "lower the number of folds or add patients")
        blocks = np.array_split(positions, n_folds)
        block_of = {int(p): k for k, b in enumerate(blocks) for p in b}
        for cid, pos in zip(sub["case_id"], sub["slice"]):
            groups[cid] = f"{subject}#slab{block_of[int(pos)]}"
    subjects = sorted(cases["subject_id"].astype(str).unique())
    val = [[f"{s}#slab{k}" for s in subjects] for k in range(n_folds)]
    return groups, val


# --------------------------------------------------------------------------- workspace
@dataclass(frozen=True)
class PreparedStudy:
    """A prepared nnU-Net workspace for one variant.

    Attributes
    ----------
    root : Path
        ``<root_dir>/nnunet-<key>``.
    workspace : msutils.segmentation.nnunet.NnUNetWorkspace
    dataset_id : int
    variant : str
        ``"aug"`` or ``"noaug"``.
    info : dict
        What preparation did (counts, spacing, plans edits, seconds), from ``prepared.json``.
    """

    root: Path
    workspace: NnUNetWorkspace
    dataset_id: int
    variant: str
    info: dict

    @property
    def cases(self) -> pd.DataFrame:
        """The exported cases (``cases.csv`` of the variant)."""
        return pd.read_csv(self.root / self.variant / _CASES, dtype={"subject_id": str, "scan_id": str})

    def training_slices(self) -> TrainingSlices:
        """The exported slices (arrays) and per-scan counts, read back from the workspace."""
        with np.load(self.root / self.variant / _SLICES) as data:
            images, masks = data["images"], data["masks"]
        counts = pd.read_csv(self.root / self.variant / "counts.csv", index_col="scan_id",
                             dtype={"subject_id": str, "scan_id": str})
        return TrainingSlices(cases=self.cases, images=images, masks=masks,
                              spacing=tuple(self.info["spacing"]), counts=counts)  # type: ignore[arg-type]

    def model_folder(self) -> Path:
        """nnU-Net's training output folder of this variant (``fold_k/`` inside)."""
        return self.workspace.model_folder(self.dataset_id)

    def checkpoint(self, fold: int) -> Path:
        """``fold_k/checkpoint_final.pth``."""
        return self.model_folder() / f"fold_{int(fold)}" / "checkpoint_final.pth"


def workspace_key(cohort: Cohort, split: Mapping[str, Any], config: SegConfig) -> str:
    """16 hex digits naming the workspace: cohort content, split, data settings, library.

    The library is :func:`msutils.core.fingerprint.library_fingerprint` (msutils' sources
    and the versions of torch, nnU-Net, ...): a fixed bug in the preprocessing, the
    export or the training wrapper prepares and trains a new workspace.
    """
    from msutils.core.fingerprint import library_fingerprint

    payload = {
        "cohort": cohort.content_hash(),
        "split": {k: split.get(k) for k in ("train", "inner", "fold_unit", "n_folds")},
        "config": config.data_settings(),
        "library": library_fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_workspace(
    cohort: Cohort,
    split: Mapping[str, Any],
    config: SegConfig,
    root_dir: str | os.PathLike,
    *,
    variant: str = "aug",
    num_processes: int = 2,
) -> PreparedStudy:
    """Export, write the folds and plan/preprocess once; later calls (any process) reuse it.

    Under an exclusive file lock ``<root_dir>/.nnunet-<key>-<variant>.lock``: if
    ``<root_dir>/nnunet-<key>/<variant>/prepared.json`` exists nothing is done;
    otherwise the training pool's slices are built (:func:`training_slices`,
    with the offline augmentation for ``variant="aug"``), exported with
    :func:`msutils.segmentation.nnunet.export_dataset`, the study's folds written as
    ``splits_final.json`` and nnU-Net's fingerprint, plan (shrunk by the
    config's network settings) and preprocessing run; ``prepared.json`` is
    written last, atomically.

    Parameters
    ----------
    cohort : Cohort
    split : dict
        From :func:`msutils.data.splits.internal_external_cv`.
    config : SegConfig
    root_dir : path-like
        Folder under the run's output folder (nnU-Net writes below it).
    variant : {"aug", "noaug"}
    num_processes : int
        nnU-Net's fingerprint / preprocessing workers.
    """
    from msutils.segmentation import nnunet as N

    if variant not in VARIANTS:
        raise ValueError(f"'variant' must be one of {list(VARIANTS)}; got {variant!r}")
    root_dir = Path(root_dir).expanduser().resolve()
    key = workspace_key(cohort, split, config)
    root = root_dir / f"nnunet-{key}"
    ws = N.NnUNetWorkspace(root / "workspace")
    dataset_id = _DATASET_IDS[variant]
    marker = root / variant / _MARKER
    with file_lock(root_dir / f".nnunet-{key}-{variant}.lock"):
        if not marker.is_file():
            t0 = time.perf_counter()
            scans = study_scans(cohort)
            train_scans = scans.index[scans["subject_id"].astype(str).isin(set(map(str, split["train"])))].tolist()
            slices = training_slices(cohort, train_scans, config, augment=variant == "aug")
            t_slices = time.perf_counter() - t0
            cases = slices.cases
            N.export_dataset(
                ws, dataset_id, _DATASET_NAMES[variant],
                ((c, slices.images[i], slices.masks[i]) for i, c in enumerate(cases["case_id"])),
                spacing=slices.spacing,
            )
            groups, val_groups = fold_groups(cases, split)
            aug_ids = cases.loc[cases["augmented"], "case_id"].tolist()
            nn_splits = N.splits_from_subject_folds(groups, val_groups, exclude_from_val=aug_ids)
            N.write_splits(ws, dataset_id, nn_splits, case_subjects=groups)
            t_export = time.perf_counter() - t0 - t_slices
            patch = (config.patch_size, config.patch_size) if config.patch_size else None
            plans = N.plan_and_preprocess(
                ws, dataset_id, patch_size=patch, n_stages=config.n_stages, base_features=config.base_features,
                max_features=config.max_features, batch_size=config.batch_size, num_processes=num_processes,
            )
            folder = root / variant
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / _CASES, cases.assign(group=cases["case_id"].map(groups)).to_csv(index=False))
            atomic_write_text(folder / "counts.csv", slices.counts.to_csv())
            import io

            buf = io.BytesIO()
            np.savez_compressed(buf, images=slices.images, masks=slices.masks)
            atomic_write_bytes(folder / _SLICES, buf.getvalue())
            cfg2d = plans["configurations"]["2d"]
            info = {
                "key": key, "variant": variant, "dataset_id": dataset_id,
                "dataset": ws.dataset_name(dataset_id), "spacing": list(slices.spacing),
                "n_train_scans": len(train_scans), "n_cases": len(cases),
                "n_original": int((~cases["augmented"]).sum()), "n_augmented": int(cases["augmented"].sum()),
                "fold_unit": split["fold_unit"], "n_folds": int(split["n_folds"]),
                "folds": [{"n_train": len(s["train"]), "n_val": len(s["val"])} for s in nn_splits],
                "plans_2d": {"patch_size": cfg2d["patch_size"], "batch_size": cfg2d["batch_size"],
                             "features_per_stage": cfg2d["architecture"]["arch_kwargs"]["features_per_stage"],
                             "n_stages": cfg2d["architecture"]["arch_kwargs"]["n_stages"],
                             "spacing": cfg2d["spacing"]},
                "plans_edits": plans.get("msutils_overrides", {}).get("2d", {}),
                "config": config.data_settings(),
                "seconds": {"slices_and_augmentation": round(t_slices, 2), "export": round(t_export, 2),
                            "plan_and_preprocess": round(time.perf_counter() - t0 - t_slices - t_export, 2)},
            }
            atomic_write_json(marker, info)
            logger.info("prepared nnU-Net workspace %s (%s): %d cases in %.1f s", root, variant, len(cases),
                        time.perf_counter() - t0)
        else:
            logger.info("reusing prepared nnU-Net workspace %s (%s)", root, variant)
    info = json.loads(marker.read_text())
    return PreparedStudy(root=root, workspace=ws, dataset_id=dataset_id, variant=variant, info=info)


# --------------------------------------------------------------------------- training
def fold_index(fold: str) -> tuple[int, str]:
    """``"fold3"`` -> ``(3, "aug")``; ``"fold0-noaug"`` -> ``(0, "noaug")``."""
    import re

    m = re.fullmatch(r"fold(\d+)(?:-(noaug))?", str(fold))
    if not m:
        raise ValueError(f"fold names must look like 'fold<k>' or 'fold<k>-noaug'; got {fold!r}")
    return int(m.group(1)), m.group(2) or "aug"


def fold_files(result: Mapping[str, Any]) -> list[str]:
    """Files outside the fold cache entry that a :func:`train_fold` result depends on: its checkpoint.

    Pass as ``requires`` to :meth:`msutils.pipeline.cache.FoldCache.get_or_compute`: a fold
    whose checkpoint has been deleted since is trained again.
    """
    return [str(result["checkpoint"])]


def fold_fit_log(prepared: PreparedStudy, fold: int, log: FitLog | None = None) -> FitLog:
    """Record the patients whose slices trained fold ``fold`` (read from ``splits_final.json``).

    Also records ``nnunet-plan-<variant>``: nnU-Net's fingerprint and plan saw
    every exported training case.
    """
    from msutils.segmentation import nnunet as N
    from msutils.data.leakage import FitLog

    log = FitLog() if log is None else log
    cases = prepared.cases
    subject_of = dict(zip(cases["case_id"], cases["subject_id"].astype(str)))
    splits = N.read_splits(prepared.workspace, prepared.dataset_id)
    log.record(f"nnunet-plan-{prepared.variant}", cases["subject_id"].astype(str).unique())
    log.record(f"nnunet-{prepared.variant}-fold{int(fold)}", {subject_of[c] for c in splits[int(fold)]["train"]})
    return log



def train_fold(prepared: PreparedStudy, fold: int, config: SegConfig) -> dict[str, Any]:
    """Train fold ``fold`` and score it on its validation slices (Table 4).

    Returns
    -------
    dict
        ``fold, variant, log`` (nnU-Net's per-epoch losses, DataFrame),
        ``val`` (per validation slice: ``case_id, subject_id, dice, ...``),
        ``val_dice`` (mean per-slice Dice), ``val_dice_pooled`` (Dice of all
        validation pixels together), ``train_subjects``, ``val_subjects``,
        ``fit_log`` (:meth:`FitLog.to_dict`), ``checkpoint`` (path),
        ``settings`` (epochs, iterations, device, torch CPU threads) and ``seconds`` (``train``: this
        call, ~0 when a current checkpoint was reused; ``epochs``: nnU-Net's own
        epoch times, i.e. what training the network took; ``validate``).
    """
    from msutils.segmentation import nnunet as N
    from msutils.segmentation.metrics import voxel_metrics_table

    import torch

    device = resolve_device(config.device)
    threads = int(config.num_threads or torch.get_num_threads())
    t0 = time.perf_counter()
    log = N.train(
        prepared.workspace, prepared.dataset_id, int(fold), num_epochs=config.num_epochs,
        iterations_per_epoch=config.iterations_per_epoch, val_iterations=config.val_iterations, device=device,
        seed=config.seed + int(fold), n_proc_da=config.n_proc_da, num_threads=config.num_threads,
    )
    t_train = time.perf_counter() - t0
    cases = prepared.cases
    splits = N.read_splits(prepared.workspace, prepared.dataset_id)
    val_ids = splits[int(fold)]["val"]
    slices = prepared.training_slices()
    pos = pd.Series(np.arange(len(cases)), index=cases["case_id"])
    idx = pos.loc[val_ids].to_numpy()
    with torch_threads(config.num_threads):
        pred = N.predict(prepared.workspace, prepared.dataset_id, slices.images[idx], folds=(int(fold),),
                         device=device, use_mirroring=config.use_mirroring)
    truth = slices.masks[idx]
    table = voxel_metrics_table(list(zip(pred, truth)), ids=list(val_ids), spacing=slices.spacing)
    val_cases = cases.set_index("case_id").loc[val_ids]
    table = table.reset_index().rename(columns={"case": "case_id"})
    table.insert(1, "subject_id", val_cases["subject_id"].astype(str).to_numpy())
    tp, fp, fn = (int(table[c].sum()) for c in ("tp", "fp", "fn"))
    fit_log = fold_fit_log(prepared, int(fold))
    subject_of = dict(zip(cases["case_id"], cases["subject_id"].astype(str)))
    return {
        "fold": int(fold),
        "variant": prepared.variant,
        "log": log,
        "val": table,
        "val_dice": float(table["dice"].mean()),
        "val_dice_pooled": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan"),
        "n_val_slices": len(table),
        "train_subjects": sorted({subject_of[c] for c in splits[int(fold)]["train"]}),
        "val_subjects": sorted(set(table["subject_id"])),
        "n_train_cases": len(splits[int(fold)]["train"]),
        "fit_log": fit_log.to_dict(),
        "checkpoint": str(prepared.checkpoint(int(fold))),
        "workspace": str(prepared.root),
        "settings": {"num_epochs": config.num_epochs, "iterations_per_epoch": config.iterations_per_epoch,
                     "val_iterations": config.val_iterations, "device": device, "seed": config.seed + int(fold),
                     "torch_threads": threads},
        "seconds": {"train": round(t_train, 2), "validate": round(time.perf_counter() - t0 - t_train, 2),
                    "epochs": round(float(np.nansum(log["epoch_time_s"])), 2)},
    }


# --------------------------------------------------------------------------- test sets
#: Which slices a test set is scored on (see :func:`select_slices`).
PROTOCOLS: tuple[str, ...] = ("seed", "all")
#: Masks the predictions are scored against: the manifest's lesion masks (the seed's manual masks; on the
#: synthetic cohort rater-like estimates) or the cohort's true lesions (``TRUTH_COLUMN``, beyond the seed).
REFERENCES: tuple[str, ...] = ("manifest", "truth")
#: Image column of the true lesion masks of a synthetic cohort (sidecar ``truth_masks``).
TRUTH_COLUMN = "gt_lesion_mask"
#: The evaluations :func:`compute_held_out` runs: key -> (protocol, reference). ``*-truth`` only with true masks.
EVALUATIONS: dict[str, tuple[str, str]] = {
    "seed": ("seed", "manifest"), "all": ("all", "manifest"),
    "seed-truth": ("seed", "truth"), "all-truth": ("all", "truth"),
}
_ARRAYS = "held_out.npz"


@dataclass(frozen=True)
class HeldOutSlices:
    """Every slice of a test set's scans that shows brain (the pool every protocol draws from).

    Attributes
    ----------
    name : str
    slices : DataFrame
        One row per slice, in scan then slice order: ``scan_id, subject_id,
        center, slice`` (index along the cut axis), ``brain_pixels``,
        ``lesion_pixels`` and ``entropy`` of the manifest's lesion mask,
        ``kept`` (entropy >= ``entropy_threshold``: a positive slice of the
        seed's protocol), ``truth_pixels`` (true lesion pixels; -1 without true
        masks), ``spacing_r, spacing_c, spacing_z`` (mm).
    images, masks : ndarray
        ``(n, H, W)`` FLAIR slices and manifest lesion masks, in the order of ``slices``.
    truth : ndarray or None
        ``(n, H, W)`` true lesion masks (:data:`TRUTH_COLUMN`), None when the cohort has none.
    counts : DataFrame
        Per scan (index ``scan_id``): ``subject_id, center, slices`` (along the
        axis), ``brain_slices``, ``lesion_slices``, ``positives`` (kept by the
        entropy check), ``excluded_small`` (lesion slices it removes),
        ``lesion_free`` (brain slices without lesion: the candidate negatives),
        ``brain_source``.
    """

    name: str
    slices: pd.DataFrame
    images: np.ndarray
    masks: np.ndarray
    truth: np.ndarray | None
    counts: pd.DataFrame

    def __len__(self) -> int:
        return len(self.slices)

    def reference(self, reference: str) -> np.ndarray:
        """The masks named by ``reference`` (one of :data:`REFERENCES`)."""
        check_choice("reference", reference, REFERENCES)
        if reference == "manifest":
            return self.masks
        if self.truth is None:
            raise ValueError(f"test set {self.name!r} has no true lesion masks (column {TRUTH_COLUMN!r} of the "
                             "manifest): reference='truth' needs a cohort with known ground truth")
        return self.truth


def _mask_slices(volume: np.ndarray, config: SegConfig) -> np.ndarray:
    """A mask volume cut like :func:`scan_slices` cuts the lesion mask: padded, sliced, resized, binarised."""
    from msutils.segmentation.slices import resize_mask

    sq, _ = pad_to_square(volume, config.axis)
    size = (config.image_size, config.image_size)
    return np.stack([resize_mask(np.take(sq, k, axis=config.axis), size) for k in range(sq.shape[config.axis])])


def held_out_slices(cohort: Cohort, scan_ids: Sequence[str], config: SegConfig, *, name: str = "test"
                    ) -> HeldOutSlices:
    """Preprocess a test set's scans (:func:`scan_slices`) and keep every slice that shows brain.

    Slices without any brain (or lesion) pixel are blank after skull stripping and
    left out (counted in ``counts``). The true lesion masks are read too when the
    cohort has them (:meth:`Cohort.truth_column`).
    """
    if not len(scan_ids):
        raise ValueError(f"test set {name!r}: 'scan_ids' is empty")
    truth_column = cohort.truth_column("lesion_mask", scan_ids)
    rows, images, masks, truths, counts = [], [], [], [], []
    for sid in scan_ids:
        s = scan_slices(cohort, sid, config)
        n = len(s.stack)
        brain = s.stack.brain.reshape(n, -1).sum(axis=1)
        lesion = s.stack.masks.reshape(n, -1).sum(axis=1)
        kept = s.kept(config.entropy_threshold)
        pool = (brain > 0) | (lesion > 0)
        truth = _mask_slices(cohort.array(sid, truth_column), config) if truth_column else None
        zooms = cohort.image(sid, "flair").header.get_zooms()
        counts.append({"scan_id": s.scan_id, "subject_id": s.subject_id, "center": s.center, "slices": n,
                       "brain_slices": int((brain > 0).sum()), "lesion_slices": int((lesion > 0).sum()),
                       "positives": int(kept.sum()), "excluded_small": int(((lesion > 0) & ~kept).sum()),
                       "lesion_free": int(s.negatives().sum()), "brain_source": s.brain_source})
        for k in np.flatnonzero(pool):
            rows.append({"scan_id": s.scan_id, "subject_id": s.subject_id, "center": s.center,
                         "slice": int(s.stack.index[k]), "brain_pixels": int(brain[k]),
                         "lesion_pixels": int(lesion[k]), "entropy": float(s.stack.entropy[k]), "kept": bool(kept[k]),
                         "truth_pixels": int(truth[k].sum()) if truth is not None else -1,
                         "spacing_r": s.spacing[0], "spacing_c": s.spacing[1],
                         "spacing_z": float(zooms[config.axis])})
        images.append(s.stack.images[pool])
        masks.append(s.stack.masks[pool])
        if truth is not None:
            truths.append(truth[pool])
    columns = ["scan_id", "subject_id", "center", "slice", "brain_pixels", "lesion_pixels", "entropy", "kept",
               "truth_pixels", "spacing_r", "spacing_c", "spacing_z"]
    return HeldOutSlices(
        name=name, slices=pd.DataFrame(rows, columns=columns),
        images=np.concatenate(images).astype(np.float32), masks=np.concatenate(masks).astype(np.uint8),
        truth=np.concatenate(truths).astype(np.uint8) if truth_column else None,
        counts=pd.DataFrame(counts).set_index("scan_id"),
    )


def select_slices(pool: HeldOutSlices, protocol: str, config: SegConfig) -> np.ndarray:
    """Indices (into ``pool``, sorted) of the slices a protocol scores.

    ``"seed"``, the seed's protocol: the *positive* slices are the lesion slices
    kept by the entropy check (the seed's dataset); as many *negative* slices
    (``config.negative_ratio`` per positive) are drawn at random
    (:func:`msutils.segmentation.slice_classification.draw_negatives`,
    ``config.seed``) from every lesion-free slice of the test scans ("normal data
    were randomly selected in quantities equal to the existing test data"). Lesion
    slices removed by the entropy check are in neither group.

    ``"all"``: every slice of the pool (every slice showing brain): all lesion
    slices, also the small ones, and all lesion-free slices, unbalanced.
    """
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "all":
        return np.arange(len(pool))
    t = pool.slices
    kept = t["kept"].to_numpy(bool)
    eligible = (t["lesion_pixels"].to_numpy() == 0) & (t["brain_pixels"].to_numpy() > 0)
    drawn = draw_negatives(eligible, int(kept.sum()), config.negative_ratio, config.seed)
    return np.sort(np.concatenate([np.flatnonzero(kept), drawn])).astype(int)


def load_predictor(prepared: PreparedStudy, folds: Sequence[int], config: SegConfig) -> Any:
    """nnU-Net predictor holding the ensemble of ``folds`` (mean of the logits)."""
    from msutils.segmentation import nnunet as N

    return N.load_predictor(prepared.workspace, prepared.dataset_id, list(folds),
                            device=resolve_device(config.device), use_mirroring=config.use_mirroring)


def predict_slices(prepared: PreparedStudy, images: np.ndarray, config: SegConfig, *, predictor: Any = None,
                   folds: Sequence[int] | None = None) -> np.ndarray:
    """Segment ``(n, H, W)`` slices with the fold ensemble (uint8 masks, same shape)."""
    from msutils.segmentation import nnunet as N

    if predictor is None:
        if folds is None:
            raise ValueError("give 'predictor' or 'folds'")
        predictor = load_predictor(prepared, folds, config)
    if len(images) == 0:
        return np.zeros(np.shape(images), np.uint8)
    with torch_threads(config.num_threads):
        return N.predict(prepared.workspace, prepared.dataset_id, images, predictor=predictor,
                         device=resolve_device(config.device), use_mirroring=config.use_mirroring)


# --------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Evaluation:
    """Slice- and voxel-level results of one protocol on one test set.

    Attributes
    ----------
    name : str
        Test set.
    protocol, reference : str
        :data:`PROTOCOLS` and :data:`REFERENCES` entries.
    truth_overlap : str
        The main TP rule (``config.truth_overlap``; the seed's is ``"instance"``).
    slices : DataFrame
        The scored slices (rows of the pool) with ``positive`` (by the reference
        masks) and ``outcome_<rule>`` for both TP rules.
    slice_rules : dict
        Rule -> :func:`msutils.segmentation.metrics.classification_metrics`
        (exact Clopper-Pearson CIs) + counts, for both rules of
        :data:`msutils.segmentation.lesions.TRUTH_OVERLAP_RULES`.
    curves : dict
        Rule -> slice-level metrics vs the TP overlap threshold (Figs 4-5).
    voxel : DataFrame
        Per positive slice: voxel metrics plus ``subject_id``.
    voxel_summary : DataFrame
        Mean and bootstrap CI (resampling patients) per metric.
    patient, patient_summary : DataFrame or None
        Protocol ``"all"`` only: voxel metrics of each patient's whole stack of
        slices (3D, false positives on lesion-free slices included) and their
        mean with a bootstrap CI over patients.
    n_patients : int
    """

    name: str
    protocol: str
    reference: str
    truth_overlap: str
    slices: pd.DataFrame
    slice_rules: dict
    curves: dict
    voxel: pd.DataFrame
    voxel_summary: pd.DataFrame
    patient: pd.DataFrame | None
    patient_summary: pd.DataFrame | None
    n_patients: int

    @property
    def slice_metrics(self) -> dict:
        """Slice-level metrics under the main TP rule."""
        return self.slice_rules[self.truth_overlap]

    @property
    def curve(self) -> pd.DataFrame:
        """Threshold curve under the main TP rule."""
        return self.curves[self.truth_overlap]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly numbers for ``summary.json``."""
        def frame(df: pd.DataFrame | None) -> dict | None:
            if df is None:
                return None
            return {m: {k: (float(v) if k in ("mean", "ci_low", "ci_high") else int(v)) for k, v in row.items()}
                    for m, row in df.to_dict(orient="index").items()}

        m = self.slice_metrics
        return {"protocol": self.protocol, "reference": self.reference, "truth_overlap": self.truth_overlap,
                "n_patients": self.n_patients, "slice_level": dict(m),
                "slice_level_by_rule": {r: dict(v) for r, v in self.slice_rules.items()},
                "voxel_level": frame(self.voxel_summary), "patient_level": frame(self.patient_summary),
                "n_positive_slices": int(m["tp"] + m["fn"]), "n_negative_slices": int(m["tn"] + m["fp"])}


def evaluate_test_set(
    pool: HeldOutSlices,
    preds: np.ndarray,
    config: SegConfig,
    *,
    protocol: str = "seed",
    reference: str = "manifest",
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    n_boot: int = 2000,
) -> Evaluation:
    """Slice-level classification and voxel-level metrics of one test set under one protocol.

    Parameters
    ----------
    pool : HeldOutSlices
    preds : ndarray
        ``(n, H, W)`` binary predictions of every pool slice.
    config : SegConfig
        ``truth_overlap`` (main TP rule), ``overlap_threshold``, ``negative_ratio``, ``seed``.
    protocol : {"seed", "all"}
        Which slices are scored (:func:`select_slices`).
    reference : {"manifest", "truth"}
        The masks scored against; a slice is positive when its reference mask has a lesion.
    thresholds : sequence of float
        TP overlap thresholds of the curves (Figs 4-5).
    n_boot : int
        Bootstrap resamples of the voxel-level CIs (units: patients).
    """
    from msutils.segmentation.lesions import TRUTH_OVERLAP_RULES
    from msutils.segmentation.metrics import summarize_metrics, voxel_metrics_table
    from msutils.segmentation.slice_classification import slice_stack_classification, threshold_curve_from_slices

    check_choice("protocol", protocol, PROTOCOLS)
    ref = pool.reference(reference)
    preds = np.asarray(preds)
    if preds.shape != pool.masks.shape:
        raise ValueError(f"'preds' shape {preds.shape} must match the test masks {pool.masks.shape}")
    idx = select_slices(pool, protocol, config)
    rows = pool.slices.iloc[idx].reset_index(drop=True)
    ids = [f"{sid}:{z}" for sid, z in zip(rows["scan_id"], rows["slice"])]
    rules, curves, outcomes = {}, {}, {}
    for rule in TRUTH_OVERLAP_RULES:
        res = slice_stack_classification(preds[idx], ref[idx], ids=ids, overlap_threshold=config.overlap_threshold,
                                         negative_ratio=None, truth_overlap=rule)
        rules[rule] = res.metrics()
        curves[rule] = threshold_curve_from_slices(res, np.asarray(thresholds, dtype=float))
        outcomes[f"outcome_{rule}"] = res.table["outcome"].to_numpy()
    positive = ref[idx].reshape(len(idx), -1).any(axis=1)
    rows = rows.assign(positive=positive, **outcomes)
    pos = np.flatnonzero(positive)
    pairs = [(preds[idx[i]], ref[idx[i]], (rows["spacing_r"].iat[i], rows["spacing_c"].iat[i])) for i in pos]
    voxel = voxel_metrics_table(pairs, ids=[ids[i] for i in pos])
    voxel.insert(0, "subject_id", rows["subject_id"].iloc[pos].astype(str).to_numpy())
    empty = pd.DataFrame(columns=["mean", "ci_low", "ci_high", "n", "n_units"])
    vsum = summarize_metrics(voxel, units="subject_id", n_boot=n_boot, seed=config.seed) if len(voxel) else empty
    patient = psum = None
    if protocol == "all":
        patient = _patient_metrics(pool, preds, ref)
        psum = summarize_metrics(patient, n_boot=n_boot, seed=config.seed) if len(patient) else empty
    return Evaluation(name=pool.name, protocol=protocol, reference=reference, truth_overlap=config.truth_overlap,
                      slices=rows, slice_rules=rules, curves=curves, voxel=voxel, voxel_summary=vsum,
                      patient=patient, patient_summary=psum, n_patients=int(rows["subject_id"].nunique()))


def _patient_metrics(pool: HeldOutSlices, preds: np.ndarray, ref: np.ndarray) -> pd.DataFrame:
    """Voxel metrics of each scan's slices stacked back into a volume (slices outside the pool are blank)."""
    from msutils.segmentation.metrics import voxel_metrics_table

    pairs, ids = [], []
    for sid, grp in pool.slices.groupby("scan_id", sort=False):
        z = grp["slice"].to_numpy()
        rows = grp.index.to_numpy()
        shape = (int(z.max() - z.min() + 1), *pool.masks.shape[1:])
        p, t = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        p[z - z.min()], t[z - z.min()] = preds[rows], ref[rows]
        first = grp.iloc[0]
        pairs.append((p, t, (first["spacing_z"], first["spacing_r"], first["spacing_c"])))
        ids.append(sid)
    table = voxel_metrics_table(pairs, ids=ids)
    table.insert(0, "subject_id", pool.counts.loc[ids, "subject_id"].astype(str).to_numpy())
    return table


def compute_held_out(
    cohort: Cohort,
    scan_ids: Sequence[str],
    prepared: PreparedStudy,
    folds: Sequence[int],
    config: SegConfig,
    entry_dir: str | os.PathLike,
    *,
    name: str,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Everything the page shows about one test set, computed once: slices, predictions, evaluations.

    The function a :class:`msutils.pipeline.cache.FoldCache` entry computes
    (``get_or_compute(..., pass_dir=True)``), so that an unchanged run reuses the
    predictions instead of running the network again. The pool of slices
    (:func:`held_out_slices`) is segmented by the ensemble of ``folds``; it is
    scored under every entry of :data:`EVALUATIONS` (the ``*-truth`` ones only
    when the cohort has true lesion masks) and, as a reference for the
    network, the manifest's masks themselves are scored against the true ones
    (``"rater-truth"``). The arrays go to ``<entry_dir>/held_out.npz`` (read
    them back with :func:`load_held_out`).

    Returns
    -------
    dict
        ``name, folds, slices, counts`` (pool tables), ``evaluations`` (key ->
        :class:`Evaluation`), ``arrays`` (file name inside the entry),
        ``seconds`` (``slices, predict, evaluate``).
    """
    t0 = time.perf_counter()
    pool = held_out_slices(cohort, scan_ids, config, name=name)
    t1 = time.perf_counter()
    preds = predict_slices(prepared, pool.images, config, folds=folds)
    t2 = time.perf_counter()
    evaluations = {}
    for key, (protocol, reference) in EVALUATIONS.items():
        if reference == "truth" and pool.truth is None:
            continue
        evaluations[key] = evaluate_test_set(pool, preds, config, protocol=protocol, reference=reference,
                                             thresholds=thresholds, n_boot=n_boot)
    if pool.truth is not None:
        evaluations["rater-truth"] = evaluate_test_set(pool, pool.masks, config, protocol="all", reference="truth",
                                                       thresholds=thresholds, n_boot=n_boot)
    t3 = time.perf_counter()
    import io

    arrays = {"images": pool.images, "masks": pool.masks, "preds": preds}
    if pool.truth is not None:
        arrays["truth"] = pool.truth
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(Path(entry_dir) / _ARRAYS, buf.getvalue())
    logger.info("%s: %d slices of %d scans segmented in %.1f s, evaluated in %.1f s", name, len(pool),
                len(pool.counts), t2 - t1, t3 - t2)
    return {"name": name, "folds": [int(f) for f in folds], "slices": pool.slices, "counts": pool.counts,
            "evaluations": evaluations, "arrays": _ARRAYS,
            "seconds": {"slices": round(t1 - t0, 2), "predict": round(t2 - t1, 2), "evaluate": round(t3 - t2, 2)}}


def load_held_out(result: Mapping[str, Any], entry_dir: str | os.PathLike) -> tuple[HeldOutSlices, np.ndarray]:
    """The pool and the predictions of a :func:`compute_held_out` result stored in ``entry_dir``."""
    with np.load(Path(entry_dir) / result["arrays"]) as data:
        arrays = {k: data[k] for k in data.files}
    pool = HeldOutSlices(name=result["name"], slices=result["slices"], images=arrays["images"],
                         masks=arrays["masks"], truth=arrays.get("truth"), counts=result["counts"])
    return pool, arrays["preds"]


def held_out_cache_name(test_set: str, prepared: PreparedStudy, folds: Sequence[int]) -> str:
    """Name of a test set's :class:`msutils.pipeline.cache.FoldCache` entry: ``heldout-<test_set>-<digest>``.

    The cache key already covers the code, the parameters, the cohort and the
    library; the digest (12 hex digits) adds the ensemble's checkpoints (path,
    size, modification time), so networks trained again (e.g. ``--force``) are
    never scored with the predictions of the old ones.
    """
    import re

    if not isinstance(test_set, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", test_set):
        raise ValueError(f"'test_set' must be made of letters, digits, '_', '-', '.'; got {test_set!r}")
    parts = []
    for f in sorted(int(k) for k in folds):
        ckpt = prepared.checkpoint(f)
        st = ckpt.stat()
        parts.append(f"{ckpt}:{st.st_size}:{st.st_mtime_ns}")
    return f"heldout-{test_set}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:12]}"


def held_out_files(prepared: PreparedStudy, folds: Sequence[int]) -> list[str]:
    """The checkpoints a :func:`compute_held_out` result depends on (``requires`` of its cache entry)."""
    return [str(prepared.checkpoint(int(f))) for f in folds]


# --------------------------------------------------------------------------- Table 5 and variants
#: Slice-level rows of Table 5: metric key -> label.
SLICE_ROWS: dict[str, str] = {"accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity",
                              "ppv": "PPV", "npv": "NPV"}
#: Voxel-level rows of Table 5 given in percent: metric key -> label (HD95 follows, in mm).
VOXEL_ROWS: dict[str, str] = {"dice": "DSC", "ppv": "PPV", "iou": "IoU", "sensitivity": "sensitivity"}


def table5(evaluations: Mapping[str, Evaluation | None]) -> pd.DataFrame:
    """The seed's Table 5 layout: one column per test set, estimates with their 95 % intervals.

    Rows: the slice counts, the slice-level ratios with exact (Clopper-Pearson)
    intervals and the voxel-level means with patient-bootstrap intervals, in percent,
    HD95 in mm, and the numbers of slices and patients behind them
    (:func:`msutils.stats.format_ci` formats every cell; ``n/a`` for an undefined value).

    Parameters
    ----------
    evaluations : mapping
        Test-set name -> :class:`Evaluation` (None: the set is absent and left out).
    """
    from msutils.stats import format_ci

    cols = {}
    for name, ev in evaluations.items():
        if ev is None:
            continue
        m, v = ev.slice_metrics, ev.voxel_summary
        col = {"TP / FN / TN / FP": f"{m['tp']} / {m['fn']} / {m['tn']} / {m['fp']}"}
        for k, label in SLICE_ROWS.items():
            col[f"slice {label} (%)"] = format_ci(m[k], m[f"{k}_ci_low"], m[f"{k}_ci_high"])
        for k, label in VOXEL_ROWS.items():
            col[f"voxel {label} (%)"] = format_ci(*v.loc[k, ["mean", "ci_low", "ci_high"]]) if k in v.index else "n/a"
        has_hd = "hd95" in v.index
        col["voxel HD95 (mm)"] = format_ci(*v.loc["hd95", ["mean", "ci_low", "ci_high"]], scale=1) if has_hd else "n/a"
        col["slices (HD95 defined) / patients"] = (f"{len(ev.voxel)} ({int(v.loc['hd95', 'n'])}) / {ev.n_patients}"
                                                   if has_hd else f"0 / {ev.n_patients}")
        cols[name] = col
    return pd.DataFrame(cols)


def variants_table(rows: Mapping[str, Evaluation | tuple[Evaluation, str] | None]) -> pd.DataFrame:
    """One row per evaluation (protocol, reference, TP rule): what each variant of the evaluation gives.

    Parameters
    ----------
    rows : mapping
        Row label -> :class:`Evaluation` (scored under its main TP rule), or
        ``(evaluation, rule)`` for another rule of
        :data:`msutils.segmentation.lesions.TRUTH_OVERLAP_RULES`; None rows are left out.

    Returns
    -------
    DataFrame
        Columns: ``positive / negative slices``, ``TP / FN / TN / FP``, the
        slice-level ratios (%, exact 95 % CI), the mean per-lesion-slice DSC
        (%, patient-bootstrap 95 % CI) and, for protocol ``"all"``, the mean
        per-patient DSC of the whole stack of slices (%, bootstrap CI over patients).
    """
    from msutils.stats import format_ci

    out = {}
    for label, item in rows.items():
        if item is None:
            continue
        ev, rule = item if isinstance(item, tuple) else (item, item.truth_overlap)
        m = ev.slice_rules[rule]
        row = {"positive / negative slices": f"{m['tp'] + m['fn']} / {m['tn'] + m['fp']}",
               "TP / FN / TN / FP": f"{m['tp']} / {m['fn']} / {m['tn']} / {m['fp']}"}
        for k, name in SLICE_ROWS.items():
            row[f"{name} (%)"] = format_ci(m[k], m[f"{k}_ci_low"], m[f"{k}_ci_high"])
        v = ev.voxel_summary
        row["DSC per lesion slice (%)"] = format_ci(*v.loc["dice", ["mean", "ci_low", "ci_high"]]) \
            if "dice" in v.index else "n/a"
        p = ev.patient_summary
        row["DSC per patient, all slices (%)"] = (format_ci(*p.loc["dice", ["mean", "ci_low", "ci_high"]])
                                                  if p is not None and "dice" in p.index else "")
        out[label] = row
    return pd.DataFrame.from_dict(out, orient="index")


# --------------------------------------------------------------------------- Tables 2 and 3
#: Table 2 columns: label -> key of the split (training pool, internal test, external test).
TABLE2_GROUPS: dict[str, str] = {"training": "train", "internal test": "test", "external test": "external"}
_COURSES = ("RR", "SP", "PP", "CIS")
_PAPER_ABSENT = "not reported"


def patient_characteristics(patients: pd.DataFrame) -> dict[str, Any]:
    """The numbers of the seed's Table 2 for one group of patients (one row per patient).

    Returns
    -------
    dict
        ``n``; ``sex`` (counts of ``F``, ``M``); ``age`` (``mean, sd`` (ddof 1),
        ``min, max, q1, median, q3``: linear-interpolation percentiles);
        ``course`` (counts of RR, SP, PP, CIS and ``missing``: ``NA`` or empty);
        ``disease_duration`` (``mean, sd``) and ``edss`` (``median, q1, q3``),
        NaN where no value is known.
    """
    for col in ("sex", "age", "course"):
        if col not in patients.columns:
            raise ValueError(f"'patients' needs column {col!r}; it has {list(map(str, patients.columns))}")

    def spread(col: str) -> np.ndarray:
        return pd.to_numeric(patients[col], errors="coerce").dropna().to_numpy(float) if col in patients else \
            np.array([])

    age, dur, edss = spread("age"), spread("disease_duration"), spread("edss")
    nan = float("nan")
    q = (lambda x, p: float(np.percentile(x, p)) if len(x) else nan)
    course = patients["course"].fillna("NA").astype(str)
    return {
        "n": int(len(patients)),
        "sex": {s: int((patients["sex"] == s).sum()) for s in ("F", "M")},
        "age": {"mean": float(age.mean()) if len(age) else nan, "sd": float(age.std(ddof=1)) if len(age) > 1 else nan,
                "min": float(age.min()) if len(age) else nan, "max": float(age.max()) if len(age) else nan,
                "q1": q(age, 25), "median": q(age, 50), "q3": q(age, 75)},
        "course": {**{c: int((course == c).sum()) for c in _COURSES},
                   "missing": int((~course.isin(_COURSES)).sum())},
        "disease_duration": {"mean": float(dur.mean()) if len(dur) else nan,
                             "sd": float(dur.std(ddof=1)) if len(dur) > 1 else nan},
        "edss": {"median": q(edss, 50), "q1": q(edss, 25), "q3": q(edss, 75)},
    }


def table2(scans: pd.DataFrame, split: Mapping[str, Any], paper: Mapping[str, Mapping[str, Any]] | None = None
           ) -> pd.DataFrame:
    """The seed's Table 2 (patient characteristics) for the training, internal and external patients.

    Parameters
    ----------
    scans : DataFrame
        :func:`study_scans` (one scan per patient).
    split : mapping
        The study's split (``train``, ``test``, ``external`` subject lists).
    paper : mapping, optional
        The paper's columns (``table2`` of ``paper_numbers.load("003")``),
        appended as ``"paper: <column>"``.

    Returns
    -------
    DataFrame
        Index ``(characteristic, item)``; counts as ``n (%)``, ages in years
        with one decimal; ``–`` for a category the column does not have.
    """
    stats = {label: patient_characteristics(scans[scans["subject_id"].astype(str).isin(set(map(str, split[key])))])
             for label, key in TABLE2_GROUPS.items()}
    if paper:
        stats.update({f"paper: {k}": dict(v) for k, v in paper.items()})

    def count(c: int | None, n: int) -> str:
        return "–" if c is None else f"{c} ({100 * c / n:.0f} %)" if n else str(c)

    def num(x: Any) -> str:
        return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{float(x):.1f}"

    rows: dict[tuple[str, str], dict[str, str]] = {}
    for col, s in stats.items():
        n, paper_col = int(s["n"]), col.startswith("paper: ")
        rows.setdefault(("patients", "n"), {})[col] = str(n)
        for code, label in (("F", "female"), ("M", "male")):
            rows.setdefault(("sex, n (%)", label), {})[col] = count(s["sex"].get(code), n)
        for k, label in (("mean", "mean"), ("sd", "SD"), ("min", "minimum"), ("max", "maximum"),
                         ("q1", "25th percentile"), ("median", "median"), ("q3", "75th percentile")):
            rows.setdefault(("age (years)", label), {})[col] = num(s["age"].get(k))
        for c in (*_COURSES, "missing"):
            rows.setdefault(("disease type, n (%)", c), {})[col] = count(s["course"].get(c), n)
        dd, ed = s.get("disease_duration"), s.get("edss")
        rows.setdefault(("disease duration (years)", "mean (SD)"), {})[col] = (
            _PAPER_ABSENT if dd is None else f"{num(dd['mean'])} ({num(dd['sd'])})")
        rows.setdefault(("EDSS", "median [IQR]"), {})[col] = (
            _PAPER_ABSENT if ed is None else f"{num(ed['median'])} [{num(ed['q1'])}, {num(ed['q3'])}]")
        treatments = s.get("treatments")
        if paper_col and treatments:
            for k, v in treatments.items():
                rows.setdefault(("treatments, n (%)", str(k)), {})[col] = count(int(v), n)
    out = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(stats))
    out.index = pd.MultiIndex.from_tuples(out.index, names=["characteristic", "item"])
    return out.fillna("not in this cohort")


#: Protocol parameters of a synthetic center (sidecar ``synthetic.params.centers``) shown in Table 3: key -> label.
SIM_PROTOCOL_ROWS: dict[str, str] = {
    "flair_scale": "FLAIR intensity scale (a.u.)", "gamma": "intensity nonlinearity (gamma)",
    "offset": "intensity offset (fraction of scale)", "bias_strength": "bias field (SD of log gain)",
    "noise_sd": "Rician noise SD (fraction of scale)", "blur_mm": "point spread (Gaussian sigma, mm)",
}


def _unique(values: Sequence[Any]) -> str:
    seen = list(dict.fromkeys(str(v) for v in values))
    return seen[0] if len(seen) == 1 else " / ".join(seen[:4]) + (" / ..." if len(seen) > 4 else "")


def acquisition_table(cohort: Cohort, scans: pd.DataFrame, split: Mapping[str, Any], config: SegConfig
                      ) -> pd.DataFrame:
    """The seed's Table 3 (imaging protocol), one column per center of the study.

    Rows come from the manifest (scanner, patients), the FLAIR NIfTI headers
    (matrix, voxel size, orientation: several values are listed when the
    scans differ), the sidecar (a synthetic center's simulated protocol:
    FLAIR slice thickness and gap, intensity scale, noise, blur, bias; "not
    recorded" for a real cohort, whose sidecar has none) and the
    preprocessing (slice size and pixel spacing after padding and resizing).

    Parameters
    ----------
    cohort : Cohort
    scans : DataFrame
        :func:`study_scans`.
    split : mapping
        The study's split (``internal_center``, ``external_centers``).
    config : SegConfig
        ``axis`` and ``image_size`` of the preprocessing.
    """
    import nibabel as nib

    centers = {split["internal_center"]: "internal (training and internal test)"}
    centers.update({c: "external test" for c in split.get("external_centers", [])})
    sim = ((cohort.meta.get("synthetic") or {}).get("params") or {}).get("centers") or {}
    planes = {2: "axial", 1: "coronal", 0: "sagittal"}
    cols = {}
    for center, role in centers.items():
        sub = scans[scans["center"].astype(str) == str(center)]
        headers = [cohort.image(sid, "flair").header for sid in sub.index]
        shapes = [tuple(int(d) for d in h.get_data_shape()[:3]) for h in headers]
        zooms = [tuple(float(z) for z in h.get_zooms()[:3]) for h in headers]
        codes = ["".join(nib.aff2axcodes(h.get_best_affine())) for h in headers]
        inplane = [a for a in range(3) if a != config.axis]
        pixel = [max(sh[a] * zo[a] for a in inplane) / config.image_size for sh, zo in zip(shapes, zooms)]
        col = {"role": role, "patients": str(len(sub)), "scanner (manifest)": _unique(sub["scanner"]),
               "FLAIR matrix (voxels)": _unique(" x ".join(map(str, s)) for s in shapes),
               "FLAIR voxel size (mm)": _unique(" x ".join(f"{z:.2f}" for z in zo) for zo in zooms),
               "orientation (NIfTI axes)": _unique(codes),
               "slicing plane": f"{planes[config.axis]} (array axis {config.axis})"}
        proto = sim.get(center)
        if proto:
            thick, gap = float(proto.get("flair_slice_mm", 0.0)), float(proto.get("flair_gap_mm", 0.0))
            col["FLAIR slice thickness / gap (mm, sidecar)"] = (
                f"{thick:g} / {gap:g} (2D thick slices, resampled to the grid)" if thick > 0 or gap > 0
                else "3D acquisition (thickness = voxel size)")
            for key, label in SIM_PROTOCOL_ROWS.items():
                if key in proto:
                    col[f"{label}, sidecar"] = f"{float(proto[key]):g}"
        else:
            col["FLAIR slice thickness / gap (mm, sidecar)"] = "not recorded"
        col["slices after preprocessing"] = (f"{config.image_size} x {config.image_size}, "
                                             f"{_unique(f'{p:.2f}' for p in pixel)} mm pixels")
        cols[f"center {center}"] = col
    return pd.DataFrame(cols).fillna("not recorded")


# --------------------------------------------------------------------------- paper comparison
def paper_slice_metrics() -> dict[str, dict[str, float]]:
    """The paper's slice-level metrics recomputed from the counts in its text (labels as they should be).

    The counts are ``slice_counts`` of :func:`msutils.studies.paper_numbers.load` ``("003")``; they
    reproduce the printed Table 5 only with its sensitivity / PPV / NPV labels swapped.
    """
    from msutils.segmentation.metrics import classification_metrics
    from msutils.studies import paper_numbers

    return {row: classification_metrics(**c) for row, c in paper_numbers.load("003")["slice_counts"].items()}


def paper_vs_ours_rows(evaluations: Mapping[str, Evaluation | None]) -> tuple[dict, dict]:
    """``(paper, ours)`` mappings for :func:`msutils.pipeline.report.paper_vs_ours`.

    ``evaluations`` maps ``"center 1 (internal)"`` / ``"center 2 (external)"``
    to a :class:`Evaluation` (or None). The paper's slice-level numbers are
    the ones its counts give (:func:`paper_slice_metrics`).
    """
    names = SLICE_ROWS
    vnames = {"dice": "DSC", "ppv": "voxel PPV", "iou": "IoU", "sensitivity": "voxel sensitivity",
              "hd95": "HD95 (mm)"}
    from msutils.studies import paper_numbers

    voxel = paper_numbers.load("003")["voxel"]
    paper: dict[str, dict[str, float]] = {}
    for row, m in paper_slice_metrics().items():
        paper[row] = {names[k]: m[k] for k in names}
        paper[row].update({vnames[k]: v for k, v in voxel[row].items()})
    ours: dict[str, dict[str, float]] = {}
    for row, ev in evaluations.items():
        if ev is None:
            continue
        ours[row] = {names[k]: ev.slice_metrics[k] for k in names}
        ours[row].update({vnames[k]: float(ev.voxel_summary.loc[k, "mean"]) if k in ev.voxel_summary.index
                          else float("nan") for k in vnames})
    return paper, ours
