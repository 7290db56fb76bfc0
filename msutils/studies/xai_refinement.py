"""Seed 004: instance-level saliency maps of a 3D U-Net, radiomics of the maps, false-positive rejection.

Spagnolo et al., "Exploiting XAI maps to improve MS lesion segmentation and
detection in MRI". The notebook ``05_xai_refinement`` chains these steps; each
is tested on its own. Choices the paper leaves open are documented here and
in the notebook.

Patients and split (:func:`study_scans`, :func:`split_patients`)
    MS patients with FLAIR, T1 and a lesion mask; **all visits** of a patient
    stay in one set. Patients are drawn at random (seeded) into training,
    validation and test (paper: 560 / 90 / 37 patients). With two patients
    (the MSLUB sample) one trains and one is the test set, and there is no
    validation set (the validation-chosen threshold baseline is then n/a).
Images (:func:`load_scan`)
    FLAIR and T1 z-scored over the brain (the manifest's brain mask, else the
    non-zero voxels of a skull-stripped image, else a crude foreground mask;
    see :func:`msutils.segmentation.slices.brain_mask_for`), 0 outside it; optionally
    resampled to ``voxel_mm`` (linear for images, masks re-binarised at 0.5).
Segmentation model (:func:`build_unet`, :func:`train_unet`)
    MONAI ``UNet`` (3D, 2 inputs FLAIR + T1, 2 outputs, batch norm, no
    residual units, Xavier-normal convolution weights: the seed's public
    code; channels 32..512 with strides 2 at paper scale, fewer/narrower in
    the CPU profiles), trained on random patches (``patch_size``^3; half of
    them centred on a lesion voxel, half on a brain voxel; left-right flips)
    with Adam and ``2 x normalized Dice + 1 x blob loss``
    (:mod:`msutils.segmentation.losses`). The CPU profiles start the lesion
    output at a probability of 0.01 (``lesion_prior``) and use a learning rate
    of 0.01 so that a few hundred iterations suffice; the paper profile keeps
    the seed's plain initialisation.
Inference and lesions (:func:`predict_probability`, :func:`find_lesions`)
    Sliding window (patch size, overlap 0.25, Gaussian weighting), softmax,
    lesion where the probability exceeds ``threshold`` = **0.3** (the value in
    the seed's public code; the paper gives none). Lesion instances are the
    connected components with **18-connectivity** (the seed's code), of volume
    **> 5 mm3** (the code drops components of <= 5 voxels at 1 mm; at 2 mm a
    single voxel is 8 mm3 and counts), with :func:`msutils.segmentation.lesions.match_instances`
    (same rule for prediction and truth): a predicted lesion is **TP** if it
    overlaps the ground truth at all, **FP** otherwise; a ground-truth lesion
    without any predicted voxel is an **FN**. Voxel Dice and normalized Dice
    are computed per scan on the thresholded mask.
Saliency (:func:`scan_maps`)
    Eq. 1 through :func:`msutils.segmentation.saliency.instance_smoothgrad`:
    N = 50 noise samples, sigma = 0.05 x the FLAIR range (the public code's
    convention; see that module), gradient of the pre-softmax lesion logit with
    respect to FLAIR, signed maximum over the lesion's voxels, mean over samples.
    Maps are made for the TP and FP lesions of a training subset S (all the
    training scans' lesions, or at most ``max_s_lesions`` of them, FP first:
    :func:`select_subset`; only S is ever capped, never the test set) and of
    every test scan; for Fig. 1 also for
    missed (FN) test lesions and true-negative spheres.
Map statistics and radiomics (:func:`map_record`)
    The lesion mask is dilated by a 5 x 5 x 5 cube (a maximum filter of size 5,
    as in the seed's code, but per lesion: a neighbour's dilation does not cut
    into it). Mean, maximum and minimum of the map inside that ROI feed the
    domain-shift test (Fig. 3) and Fig. 1. For radiomics the map is z-scored
    over the whole image volume (pyradiomics' ``normalizeImage`` as in the
    seed's code, computed exactly from the map's non-zero window) and the 93
    first-order and texture features are extracted with bin width 10 through
    :func:`msutils.features.radiomics.extract_masks`; the number of grey levels per ROI
    is recorded so the page can check the binning.
Refinement (aggregate part: :func:`fit_refiner`, :func:`refine`)
    Standardisation and an L1 logistic regression (liblinear, max_iter 10000)
    fitted on S only, class weights = the TP and FP proportions of S (the
    seed's 0.71 / 0.29 are S's proportions); applied once to every test
    lesion: rejected lesions are removed, a rejected TP becomes an FN.
    F1 = 2 TP / (2 TP + FP + FN), PPV = TP / (TP + FP) with TP counted on the
    predicted lesions (the formula behind the paper's Table 1), 95 %
    percentile-bootstrap intervals over 1000 resamples of test **patients**
    (and of lesions, the seed's choice, labelled as such).
Beyond the seed: the true lesions (:func:`refine_against`, :func:`fp_kind`, :func:`fp_kind_table`)
    Only for a cohort that keeps its truth (``gt_lesion_mask``,
    ``gt_lookalike_labels``: synthetic cohorts, whose ``lesion_mask`` is a
    rater-like estimate; real cohorts have neither). The U-Net is still trained,
    and the refiner still fitted, on ``lesion_mask`` as in the paper; every
    predicted lesion is also scored against the true lesions (``gt_outcome``,
    ``gt_overlap_voxels``) so that the U-Net's and the refined detections can
    be scored against the truth, and every test false positive (against
    ``lesion_mask``) is placed by what it is in the truth: a true lesion the
    rater missed, a look-alike kind, or nothing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from msutils.core.seeding import derived_seed
from msutils.core.device import resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from msutils.data.cohort import Cohort
    from msutils.data.leakage import FitLog
    from msutils.segmentation.saliency import ReceptiveField, SaliencyMap

__all__ = [
    "REQUIRED_COLUMNS",
    "TRUTH_LESION_COLUMN",
    "LOOKALIKE_COLUMN",
    "OUTCOMES",
    "STATS",
    "XaiConfig",
    "Scan",
    "ScanLesions",
    "Refiner",
    "study_scans",
    "split_patients",
    "split_sets",
    "load_or_create_split",
    "load_scan",
    "build_unet",
    "PatchSampler",
    "train_unet",
    "predict_probability",
    "find_lesions",
    "threshold_counts",
    "fp_zone",
    "lookalike_kinds",
    "fp_kind",
    "FP_TRUE_LESION",
    "FP_NOTHING",
    "fp_kind_table",
    "refine_against",
    "tn_spheres",
    "select_subset",
    "scan_maps",
    "map_record",
    "radiomics_params",
    "compute_study",
    "feature_columns",
    "domain_shift",
    "fit_refiner",
    "refine",
    "detection_metrics",
    "choose_threshold",
    "bootstrap_detection",
    "table1",
    "feature_importance",
]

logger = logging.getLogger(__name__)

#: Manifest columns the study needs for every MS scan.
REQUIRED_COLUMNS: tuple[str, ...] = ("flair", "t1", "lesion_mask")
#: Lesion outcomes: predicted (TP, FP), missed (FN), true-negative spheres (TN).
OUTCOMES: tuple[str, ...] = ("TP", "FP", "FN", "TN")
#: Map statistics inside the dilated lesion ROI (Fig. 1 and 3).
STATS: tuple[str, ...] = ("mean", "max", "min")
#: Optional column with the *true* lesion mask when ``lesion_mask`` is a rater-like estimate (synthetic cohorts).
TRUTH_LESION_COLUMN: str = "gt_lesion_mask"
#: Optional column with the true lesion look-alike kind map (synthetic cohorts); codes in the sidecar's ``lookalike_kinds``.
LOOKALIKE_COLUMN: str = "gt_lookalike_labels"
#: :func:`fp_kind` of a false positive (against ``lesion_mask``) that overlaps a true lesion the rater missed.
FP_TRUE_LESION: str = "true lesion missed by the rater"
#: :func:`fp_kind` of a false positive that touches neither a true lesion nor a look-alike.
FP_NOTHING: str = "nothing (no lesion, no look-alike)"
_DEVICES = ("auto", "cpu", "cuda")
_NOISE = ("range", "absolute")
_CONNECTIVITY = (6, 18, 26)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class XaiConfig:
    """Every setting of the study (the notebook's parameters map onto it).

    Split: ``val_size``, ``test_size`` (fractions of patients).
    Network: ``channels``, ``strides``, ``patch_size``, ``batch_size``,
    ``iterations``, ``learning_rate``, ``lesion_prior`` (initial lesion
    probability, see :func:`build_unet`; None = the seed's plain Xavier
    initialisation), ``pos_fraction``, ``lambda_global``,
    ``lambda_blob``, ``val_every`` (iterations between validation losses),
    ``device`` (auto / cpu / cuda), ``num_threads`` (torch CPU threads, None:
    leave torch's default). Inference: ``sw_overlap``, ``sw_batch_size``,
    ``threshold``, ``connectivity``, ``min_lesion_mm3``, ``voxel_mm`` (resample
    to this isotropic size; None keeps the native grid). Saliency:
    ``n_samples``, ``sigma``, ``noise``, ``sample_batch``, ``voxel_batch``,
    ``max_s_lesions`` (cap of S; None = all), ``max_fn_maps`` (FN maps for
    Fig. 1), ``n_tn`` (TN spheres), ``n_sum_compare`` (lesions also mapped
    with the summed-logit variant). Radiomics: ``dilation``, ``bin_width``.
    Refinement: ``lr_c``, ``lr_max_iter``, ``n_boot``. ``seed`` seeds all.
    The defaults are the ``quick`` profile's (the notebook's own defaults).
    """

    val_size: float = 0.15
    test_size: float = 0.15
    channels: tuple[int, ...] = (4, 8, 16)
    strides: tuple[int, ...] = (2, 2)
    patch_size: int = 48
    batch_size: int = 4
    iterations: int = 600
    learning_rate: float = 1e-2
    lesion_prior: float | None = 0.01
    pos_fraction: float = 0.5
    lambda_global: float = 2.0
    lambda_blob: float = 1.0
    val_every: int = 50
    device: str = "auto"
    num_threads: int | None = None
    sw_overlap: float = 0.25
    sw_batch_size: int = 4
    threshold: float = 0.3
    connectivity: int = 18
    min_lesion_mm3: float = 5.0
    voxel_mm: float | None = None
    n_samples: int = 50
    sigma: float = 0.05
    noise: str = "range"
    sample_batch: int = 10
    voxel_batch: int = 1
    max_s_lesions: int | None = 80
    max_fn_maps: int = 20
    n_tn: int = 10
    n_sum_compare: int = 3
    dilation: int = 5
    bin_width: float = 10.0
    lr_c: float = 1.0
    lr_max_iter: int = 10000
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        def frac(name: str, lo: float, hi: float, lo_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (lo < v if lo_open else lo <= v) and v < hi
            if not ok:
                raise ValueError(f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}); got {v!r}")

        def pos_int(name: str, minimum: int = 1, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"'{name}' must be an integer >= {minimum}{' or None' if allow_none else ''}; "
                                 f"got {v!r}")

        def pos_num(name: str, allow_none: bool = False, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
                    v == 0 and not allow_zero):
                raise ValueError(f"'{name}' must be a {'non-negative' if allow_zero else 'positive'} number"
                                 f"{' or None' if allow_none else ''}; got {v!r}")

        frac("val_size", 0.0, 1.0)
        frac("test_size", 0.0, 1.0, lo_open=True)
        if self.val_size + self.test_size >= 1.0:
            raise ValueError(f"'val_size' + 'test_size' must be < 1; got {self.val_size} + {self.test_size}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ValueError(f"'channels' must list >= 2 positive widths; got {self.channels!r}")
        if len(self.strides) != len(self.channels) - 1 or any(s < 1 for s in self.strides):
            raise ValueError(f"'strides' must hold len(channels) - 1 = {len(self.channels) - 1} positive integers; "
                             f"got {self.strides!r}")
        for name in ("patch_size", "batch_size", "iterations", "val_every", "sw_batch_size", "n_samples",
                     "sample_batch", "voxel_batch", "dilation", "lr_max_iter", "n_boot"):
            pos_int(name)
        for name in ("max_fn_maps", "n_tn", "n_sum_compare", "seed"):
            pos_int(name, minimum=0)
        pos_int("max_s_lesions", allow_none=True)
        pos_int("num_threads", allow_none=True)
        multiple = int(np.prod(self.strides))
        if self.patch_size % multiple:
            raise ValueError(f"'patch_size' must be a multiple of the total stride {multiple}; got {self.patch_size}")
        if self.dilation % 2 == 0:
            raise ValueError(f"'dilation' must be odd (a centred cube); got {self.dilation}")
        frac("pos_fraction", 0.0, 1.0 + 1e-12)
        frac("threshold", 0.0, 1.0, lo_open=True)
        frac("sw_overlap", 0.0, 1.0)
        for name in ("learning_rate", "bin_width", "lr_c"):
            pos_num(name)
        for name in ("lambda_global", "lambda_blob", "min_lesion_mm3", "sigma"):
            pos_num(name, allow_zero=True)
        pos_num("voxel_mm", allow_none=True)
        if self.lesion_prior is not None:
            frac("lesion_prior", 0.0, 1.0, lo_open=True)
        if self.device not in _DEVICES:
            raise ValueError(f"'device' must be one of {list(_DEVICES)}; got {self.device!r}")
        if self.noise not in _NOISE:
            raise ValueError(f"'noise' must be one of {list(_NOISE)}; got {self.noise!r}")
        if self.connectivity not in _CONNECTIVITY:
            raise ValueError(f"'connectivity' must be one of {list(_CONNECTIVITY)}; got {self.connectivity!r}")

    @property
    def multiple(self) -> int:
        """Total stride of the U-Net."""
        return int(np.prod(self.strides))

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "XaiConfig":
        """Config from a mapping, ignoring keys that are not fields (e.g. a notebook's other parameters)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k in names})


def study_scans(cohort: Cohort) -> pd.DataFrame:
    """The study's scans: every visit of every MS patient, with FLAIR, T1 and a lesion mask.

    Raises
    ------
    ValueError
        Naming every problem at once: a required column missing from the
        manifest, no MS patient, or MS scans with an empty FLAIR / T1 / lesion mask.
    """
    table = cohort.table
    problems = []
    absent = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if absent:
        problems.append(f"the manifest has no column(s) {absent}")
    if "lesion_mask" in table.columns and "lesion_mask" not in cohort.mask_columns:
        problems.append("the sidecar does not list 'lesion_mask' under 'masks'")
    ms = table[table["group"] == "MS"] if "group" in table.columns else table.iloc[:0]
    if ms.empty:
        problems.append("no MS patient (column 'group')")
    for col in REQUIRED_COLUMNS:
        if col in ms.columns:
            empty = [sid for sid, v in ms[col].items() if v is None or (isinstance(v, float) and math.isnan(v))
                     or str(v) == ""]
            if empty:
                problems.append(f"column '{col}' is empty for MS scan(s) {empty[:5]}"
                                f"{f' and {len(empty) - 5} more' if len(empty) > 5 else ''}")
    if problems:
        raise ValueError(f"cohort {cohort.manifest_path} cannot be used for seed 004 (needs FLAIR, T1 and lesion "
                         f"masks of MS patients): " + "; ".join(problems))
    return ms.sort_values(["subject_id", "session"], kind="stable")


def split_patients(scans: pd.DataFrame, *, val_size: float = 0.15, test_size: float = 0.2,
                   seed: int = 0) -> dict[str, Any]:
    """Random patient-level train / validation / test split (all visits of a patient in one set).

    Parameters
    ----------
    scans : DataFrame
        :func:`study_scans` (column ``subject_id``).
    val_size, test_size : float
        Fractions of patients (rounded, at least 1 test patient, at least 1
        validation patient when ``val_size > 0`` and 3 or more patients exist).
    seed : int

    Returns
    -------
    dict
        A split in the :mod:`msutils.data.splits` format: ``train`` = the
        development patients (training + validation), ``test``, and, when
        there is a validation set, ``inner = [{"name": "validation", "train":
        training patients, "test": validation patients}]``; use
        :func:`split_sets` to read the three sets.

    Raises
    ------
    ValueError
        Fewer than 2 patients (training and test need one each).
    """
    subjects = sorted(scans["subject_id"].astype(str).unique())
    n = len(subjects)
    if n < 2:
        raise ValueError(f"seed 004 needs at least 2 MS patients (1 training + 1 test); the cohort has {n}")
    rng = np.random.default_rng(seed)
    order = [subjects[i] for i in rng.permutation(n)]
    n_test = min(n - 1, max(1, int(round(test_size * n))))
    n_val = 0
    if val_size > 0 and n >= 3:
        n_val = min(n - n_test - 1, max(1, int(round(val_size * n))))
    elif val_size > 0:
        logger.warning("%d patients: no validation set (1 trains, 1 is the test set)", n)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    split: dict[str, Any] = {"name": "seed004", "train": sorted(train + val), "test": sorted(test),
                             "seed": int(seed), "val_size": float(val_size), "test_size": float(test_size)}
    if val:
        split["inner"] = [{"name": "validation", "train": sorted(train), "test": sorted(val)}]
    return split


def split_sets(split: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` subject lists of a :func:`split_patients` split."""
    inner = split.get("inner") or []
    if inner:
        return {"train": list(inner[0]["train"]), "val": list(inner[0]["test"]), "test": list(split["test"])}
    return {"train": list(split["train"]), "val": [], "test": list(split["test"])}


def load_or_create_split(folder: str | Path, scans: pd.DataFrame, cohort_hash: str, *, val_size: float,
                         test_size: float, seed: int) -> dict[str, Any]:
    """The study's :func:`split_patients` split, written once to ``folder`` and reused by every run.

    The file ``splits_<first 12 hex of the cohort hash>_seed004_val<val>_test<test>_seed<seed>.json``
    is created by :func:`msutils.data.splits.load_or_create_splits` and validated
    against ``scans`` on every read.
    """
    from msutils.data.splits import load_or_create_splits

    if not isinstance(cohort_hash, str) or len(cohort_hash) < 12:
        raise ValueError(f"'cohort_hash' must be a hex digest (Cohort.content_hash()); got {cohort_hash!r}")
    path = Path(folder) / f"splits_{cohort_hash[:12]}_seed004_val{val_size}_test{test_size}_seed{int(seed)}.json"
    return load_or_create_splits(
        path, lambda: [split_patients(scans, val_size=val_size, test_size=test_size, seed=seed)],
        seed=seed, table=scans)[0]


# --------------------------------------------------------------------------- images
@dataclass
class Scan:
    """One scan ready for the network.

    Attributes
    ----------
    scan_id, subject_id : str
    image : ndarray, float32, shape (2, X, Y, Z)
        FLAIR and T1, z-scored over the brain, 0 outside it.
    truth : ndarray of bool
        Lesion mask (the manifest's ``lesion_mask``).
    brain : ndarray of bool
    spacing : tuple of float
        Voxel size (mm).
    brain_source : str
        Where the brain mask came from (see :func:`msutils.segmentation.slices.brain_mask_for`).
    zones : ndarray of int or None
        The manifest's ``roi_labels`` (for the location of false positives), if any.
    truth_gt : ndarray of bool or None
        The true lesion mask when the cohort has one besides its (rater-like)
        ``lesion_mask`` (column ``gt_lesion_mask``, synthetic cohorts).
    lookalikes : ndarray of int or None
        The true lesion look-alike kind map (column ``gt_lookalike_labels``), if any.
    """

    scan_id: str
    subject_id: str
    image: np.ndarray = field(repr=False)
    truth: np.ndarray = field(repr=False)
    brain: np.ndarray = field(repr=False)
    spacing: tuple[float, float, float]
    brain_source: str
    zones: np.ndarray | None = field(default=None, repr=False)
    truth_gt: np.ndarray | None = field(default=None, repr=False)
    lookalikes: np.ndarray | None = field(default=None, repr=False)

    @property
    def voxel_mm3(self) -> float:
        """Voxel volume (mm3)."""
        return float(np.prod(self.spacing))


def _zscore(x: np.ndarray, brain: np.ndarray) -> np.ndarray:
    vals = x[brain]
    sd = float(vals.std())
    out = np.zeros_like(x, dtype=np.float32)
    out[brain] = (vals - vals.mean()) / (sd if sd > 0 else 1.0)
    return out


def _resample(arr: np.ndarray, factors: np.ndarray, order: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.zoom(arr, factors, order=order, mode="nearest", grid_mode=True)


def load_scan(cohort: Cohort, scan_id: str, *, voxel_mm: float | None = None, brain_source: str = "auto",
              mask_column: str = "lesion_mask") -> Scan:
    """Read, (optionally) resample and z-score one scan.

    Parameters
    ----------
    cohort : Cohort
    scan_id : str
    voxel_mm : float, optional
        Resample to this isotropic voxel size (linear interpolation; masks
        interpolated and re-binarised at 0.5, ``roi_labels`` nearest neighbour).
    brain_source : str
        See :func:`msutils.segmentation.slices.brain_mask_for`.
    mask_column : str
        Ground-truth lesion mask column.

    Returns
    -------
    Scan
        With ``zones`` (``roi_labels``), ``truth_gt`` (:data:`TRUTH_LESION_COLUMN`)
        and ``lookalikes`` (:data:`LOOKALIKE_COLUMN`) when the cohort has them.
    """
    from msutils.segmentation.slices import brain_mask_for
    from msutils.segmentation.slices import estimate_brain_mask

    if scan_id not in cohort.table.index:
        raise KeyError(f"scan {scan_id!r} is not in cohort {cohort.manifest_path}")
    row = cohort.table.loc[scan_id]
    flair = cohort.array(scan_id, "flair")
    t1 = cohort.array(scan_id, "t1")
    truth = cohort.array(scan_id, mask_column) > 0
    for name, arr in (("t1", t1), (mask_column, truth)):
        if arr.shape != flair.shape:
            raise ValueError(f"scan {scan_id!r}: {name} shape {arr.shape} differs from FLAIR {flair.shape}")
    brain, used = brain_mask_for(cohort, scan_id, flair)
    if brain is None:
        brain = estimate_brain_mask(flair)
    extra: dict[str, np.ndarray | None] = {}
    for name, column, binary in (("zones", "roi_labels", False), ("truth_gt", TRUTH_LESION_COLUMN, True),
                                 ("lookalikes", LOOKALIKE_COLUMN, False)):
        extra[name] = None
        if column in row.index and isinstance(row[column], str) and row[column]:
            arr = cohort.array(scan_id, column, dtype=np.float32 if binary else np.int32)
            extra[name] = arr > 0 if binary else arr
    spacing = tuple(float(z) for z in cohort.image(scan_id, "flair").header.get_zooms()[:3])
    if voxel_mm is not None and not np.allclose(spacing, voxel_mm):
        factors = np.asarray(spacing) / float(voxel_mm)
        flair, t1 = _resample(flair, factors, 1), _resample(t1, factors, 1)
        truth = _resample(truth.astype(np.float32), factors, 1) > 0.5
        brain = _resample(brain.astype(np.float32), factors, 1) > 0.5
        for name, arr in extra.items():
            if arr is not None:
                extra[name] = (_resample(arr.astype(np.float32), factors, 1) > 0.5 if arr.dtype == bool
                               else _resample(arr, factors, 0))
        spacing = (float(voxel_mm),) * 3
    if not brain.any():
        raise ValueError(f"scan {scan_id!r}: empty brain mask")
    image = np.stack([_zscore(flair, brain), _zscore(t1, brain)]).astype(np.float32)
    gt = extra["truth_gt"]
    return Scan(scan_id=str(scan_id), subject_id=str(row["subject_id"]), image=image, truth=truth & brain,
                brain=brain, spacing=spacing, brain_source=used, zones=extra["zones"],
                truth_gt=None if gt is None else gt & brain, lookalikes=extra["lookalikes"])


# --------------------------------------------------------------------------- network
def build_unet(channels: Sequence[int], strides: Sequence[int], *, in_channels: int = 2, out_channels: int = 2,
               seed: int = 0, lesion_prior: float | None = None) -> nn.Module:
    """MONAI 3D ``UNet`` as in the seed's code: batch norm, no residual units, Xavier-normal conv weights.

    Parameters
    ----------
    channels, strides : sequence of int
    in_channels, out_channels : int
    seed : int
        Seeds the weights.
    lesion_prior : float in (0, 1), optional
        Initialise the last layer's biases so the initial lesion probability
        is about this value (``log(prior / (1 - prior))`` on channel 1, 0 on
        channel 0; a standard initialisation for rare foreground classes). With
        None (the seed's code) every voxel starts near 0.5, and the normalized
        Dice, which weighs each false-positive voxel about ``k`` times, barely
        moves for the first hundreds of iterations: too slow for the CPU profiles.
    """
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(int(seed))
    net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
               strides=tuple(strides), norm="batch", num_res_units=0)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    for m in convs:
        torch.nn.init.xavier_normal_(m.weight, gain=1.0)
    if lesion_prior is not None:
        if not 0.0 < float(lesion_prior) < 1.0:
            raise ValueError(f"'lesion_prior' must be in (0, 1); got {lesion_prior!r}")
        last = convs[-1]
        with torch.no_grad():
            last.bias.zero_()
            last.bias[1] = math.log(lesion_prior / (1.0 - lesion_prior))
    return net


class PatchSampler:
    """Random training patches: centred on a lesion voxel with probability ``pos_fraction``, else on a brain voxel.

    Parameters
    ----------
    scans : sequence of Scan
    patch_size : int
    pos_fraction : float
    connectivity : int
        Connectivity of the ground-truth instances (blob loss).
    seed : int
    """

    def __init__(self, scans: Sequence[Scan], patch_size: int, pos_fraction: float, connectivity: int,
                 seed: int) -> None:
        from msutils.segmentation.lesions import instances

        if not scans:
            raise ValueError("'scans' is empty: no training scan")
        self.patch = int(patch_size)
        self.pos_fraction = float(pos_fraction)
        self.rng = np.random.default_rng(seed)
        self.images: list[np.ndarray] = []
        self.inst: list[np.ndarray] = []
        self.lesion_vox: list[np.ndarray] = []
        self.brain_vox: list[np.ndarray] = []
        for s in scans:
            pads = [(0, max(0, self.patch - n)) for n in s.truth.shape]
            img = np.pad(s.image, [(0, 0)] + pads)
            lab, _ = instances(np.pad(s.truth, pads), connectivity=connectivity)
            self.images.append(img)
            self.inst.append(lab.astype(np.int64))
            self.lesion_vox.append(np.argwhere(lab > 0))
            self.brain_vox.append(np.argwhere(np.pad(s.brain, pads)))
        self.with_lesion = [i for i, v in enumerate(self.lesion_vox) if len(v)]

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` patches: images ``(n, 2, p, p, p)`` float32 and instance maps ``(n, p, p, p)`` int64."""
        p = self.patch
        xs = np.empty((n, self.images[0].shape[0], p, p, p), dtype=np.float32)
        ys = np.empty((n, p, p, p), dtype=np.int64)
        for k in range(n):
            positive = self.with_lesion and self.rng.random() < self.pos_fraction
            i = int(self.rng.choice(self.with_lesion)) if positive else int(self.rng.integers(len(self.images)))
            pool = self.lesion_vox[i] if positive else self.brain_vox[i]
            c = pool[self.rng.integers(len(pool))]
            shape = np.array(self.inst[i].shape)
            start = np.clip(c - p // 2, 0, shape - p)
            sl = tuple(slice(int(a), int(a) + p) for a in start)
            x, y = self.images[i][(slice(None),) + sl], self.inst[i][sl]
            if self.rng.random() < 0.5:  # left-right flip
                x, y = x[:, ::-1], y[::-1]
            xs[k], ys[k] = x, y
        return xs, ys


def train_unet(train_scans: Sequence[Scan], val_scans: Sequence[Scan], config: XaiConfig,
               ) -> tuple[nn.Module, pd.DataFrame, dict[str, Any]]:
    """Train the U-Net on patches of the training scans (validation patches only for the loss curve).

    Returns
    -------
    net : torch.nn.Module
        In eval mode, on ``config.device``.
    history : DataFrame
        ``iteration, train_loss`` (mean over the last ``val_every`` iterations)
        and ``val_loss`` (fixed seeded validation patches; NaN without validation scans).
    info : dict
        ``seconds``, ``device``, ``n_train_scans``, ``n_val_patches``, ``spacing`` (mm).
    """
    import torch

    from msutils.segmentation.losses import BlobNormalizedDiceLoss

    device = resolve_device(config.device)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    net = build_unet(config.channels, config.strides, in_channels=train_scans[0].image.shape[0],
                     seed=config.seed, lesion_prior=config.lesion_prior).to(device)
    crit = BlobNormalizedDiceLoss(config.lambda_global, config.lambda_blob)
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    sampler = PatchSampler(train_scans, config.patch_size, config.pos_fraction, config.connectivity, config.seed)
    val = None
    if val_scans:
        vs = PatchSampler(val_scans, config.patch_size, config.pos_fraction, config.connectivity, config.seed + 1)
        vx, vy = vs.sample(max(4, config.batch_size * 2))
        val = (torch.from_numpy(vx).to(device), torch.from_numpy(vy).to(device))
    rows, running = [], []
    t0 = time.perf_counter()
    for it in range(1, config.iterations + 1):
        net.train()
        x, y = sampler.sample(config.batch_size)
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        opt.zero_grad(set_to_none=True)
        loss = crit(net(x), y)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        if it % config.val_every == 0 or it == config.iterations:
            vloss = float("nan")
            if val is not None:
                net.eval()
                with torch.no_grad():
                    vloss = float(crit(net(val[0]), val[1]))
            rows.append({"iteration": it, "train_loss": float(np.mean(running)), "val_loss": vloss})
            logger.info("U-Net iteration %d/%d: train loss %.4f, validation loss %.4f (%.0f s)", it,
                        config.iterations, rows[-1]["train_loss"], vloss, time.perf_counter() - t0)
            running = []
    net.eval()
    info = {"seconds": time.perf_counter() - t0, "device": device, "n_train_scans": len(train_scans),
            "n_val_patches": 0 if val is None else int(val[0].shape[0]), "spacing": list(train_scans[0].spacing)}
    return net, pd.DataFrame(rows), info


def predict_probability(net: nn.Module, scan: Scan, config: XaiConfig) -> np.ndarray:
    """Lesion probability map: sliding window (patch size, overlap, Gaussian weights), softmax channel 1."""
    import torch
    from monai.inferers import sliding_window_inference

    device = next(net.parameters()).device
    x = torch.from_numpy(scan.image[None]).to(device)
    with torch.no_grad():
        logits = sliding_window_inference(x, (config.patch_size,) * 3, config.sw_batch_size, net,
                                          overlap=config.sw_overlap, mode="gaussian")
        prob = torch.softmax(logits, dim=1)[0, 1]
    return prob.cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- lesions
@dataclass
class ScanLesions:
    """Predicted and ground-truth lesion instances of one scan.

    Attributes
    ----------
    scan_id, subject_id : str
    pred_labels, truth_labels : ndarray of int32
        Instance maps (ids as in the tables).
    pred : DataFrame
        ``lesion_id, voxels, volume_mm3, outcome`` (TP / FP), ``prob_max``, ``prob_mean``.
    truth : DataFrame
        ``truth_id, voxels, volume_mm3, outcome`` (TP / FN).
    metrics : dict
        ``dice, normalized_dice`` (voxel level, thresholded mask), ``tp, fp, fn``
        (TP counted on predicted lesions), ``n_pred, n_truth``, ``reason``
        (None, or why the scan has no predicted lesion), ``pred_voxels,
        truth_voxels, overlap_voxels`` (the thresholded mask, the reference
        and their intersection: the voxel Dice is 2 overlap / (pred + truth)).
    """

    scan_id: str
    subject_id: str
    pred_labels: np.ndarray = field(repr=False)
    truth_labels: np.ndarray = field(repr=False)
    pred: pd.DataFrame
    truth: pd.DataFrame
    metrics: dict[str, Any]


def _min_voxels(min_lesion_mm3: float, voxel_mm3: float) -> int:
    """Smallest kept component: volume strictly above ``min_lesion_mm3``."""
    return int(math.floor(min_lesion_mm3 / voxel_mm3)) + 1


def find_lesions(prob: np.ndarray, scan: Scan, config: XaiConfig, *, threshold: float | None = None,
                 truth: np.ndarray | None = None) -> ScanLesions:
    """Threshold, label and match the lesions of one scan (see the module docstring).

    ``truth`` replaces the scan's ``truth`` (e.g. its ``truth_gt``); ``threshold``
    replaces ``config.threshold``.
    """
    from msutils.segmentation.lesions import match_instances
    from msutils.segmentation.metrics import dice, normalized_dice

    thr = config.threshold if threshold is None else float(threshold)
    ref = scan.truth if truth is None else truth
    if prob.shape != ref.shape:
        raise ValueError(f"'prob' shape {prob.shape} differs from the scan's {ref.shape}")
    binary = prob > thr
    min_vox = _min_voxels(config.min_lesion_mm3, scan.voxel_mm3)
    match = match_instances(binary, ref, overlap_threshold=0.0, connectivity=config.connectivity,
                            min_size=min_vox)
    pl, tl = match.pred_labels, match.truth_labels
    n_p = len(match.pred)
    if n_p:
        idx = np.arange(1, n_p + 1)
        from scipy import ndimage

        pmax = ndimage.maximum(prob, pl, idx)
        pmean = ndimage.mean(prob, pl, idx)
    else:
        pmax = pmean = np.zeros(0)
    pred = pd.DataFrame({"lesion_id": match.pred["pred_id"].to_numpy(np.int64),
                         "voxels": match.pred["size"].to_numpy(np.int64),
                         "volume_mm3": match.pred["size"].to_numpy(float) * scan.voxel_mm3,
                         "outcome": match.pred["outcome"].astype(str).to_numpy(),
                         "prob_max": np.asarray(pmax, float), "prob_mean": np.asarray(pmean, float)})
    truth = pd.DataFrame({"truth_id": match.truth["truth_id"].to_numpy(np.int64),
                          "voxels": match.truth["size"].to_numpy(np.int64),
                          "volume_mm3": match.truth["size"].to_numpy(float) * scan.voxel_mm3,
                          "outcome": match.truth["outcome"].astype(str).to_numpy()})
    c = match.counts
    reason = None
    if n_p == 0:
        reason = (f"no predicted lesion (probability > {thr} in a component of >= {min_vox} voxels)")
    metrics = {"dice": dice(binary, ref), "normalized_dice": normalized_dice(binary, ref),
               "tp": c["tp_pred"], "fp": c["fp"], "fn": c["fn"], "tp_truth": c["tp_truth"],
               "n_pred": c["n_pred"], "n_truth": c["n_truth"], "min_voxels": min_vox, "reason": reason,
               "pred_voxels": int(binary.sum()), "truth_voxels": int(ref.sum()),
               "overlap_voxels": int((binary & ref).sum())}
    return ScanLesions(scan_id=scan.scan_id, subject_id=scan.subject_id, pred_labels=pl.astype(np.int32),
                       truth_labels=tl.astype(np.int32), pred=pred, truth=truth, metrics=metrics)


def threshold_counts(prob: np.ndarray, scan: Scan, config: XaiConfig, thresholds: Sequence[float]) -> pd.DataFrame:
    """Lesion counts of one scan at several output thresholds (for the threshold baseline)."""
    rows = []
    for t in thresholds:
        m = find_lesions(prob, scan, config, threshold=float(t)).metrics
        rows.append({"threshold": float(t), "tp": m["tp"], "fp": m["fp"], "fn": m["fn"]})
    out = pd.DataFrame(rows)
    out.insert(0, "scan_id", scan.scan_id)
    out.insert(1, "subject_id", scan.subject_id)
    return out


def fp_zone(lesion: np.ndarray, zones: np.ndarray | None, brain: np.ndarray) -> str:
    """Anatomical zone of a lesion from the ``roi_labels`` map (the FP kinds of the synthetic cohort).

    ``juxtacortical``: the lesion or its 1-voxel neighbourhood touches a
    cortical label (>= 100); ``deep GM``: it touches a deep-GM label (1..8);
    ``periventricular``: it touches CSF inside the brain (label 0 in the
    brain); ``deep WM`` otherwise; ``unknown`` without a label map.
    """
    if zones is None:
        return "unknown"
    from scipy import ndimage

    ring = ndimage.binary_dilation(lesion, ndimage.generate_binary_structure(3, 3))
    labs = zones[ring]
    if (labs >= 100).any():
        return "juxtacortical"
    if ((labs >= 1) & (labs <= 8)).any():
        return "deep GM"
    if ((labs == 0) & brain[ring]).any():
        return "periventricular"
    return "deep WM"


def lookalike_kinds(cohort: Cohort) -> dict[int, str]:
    """Code -> kind of the cohort's lesion look-alike map (the sidecar's ``lookalike_kinds``, searched at any depth).

    Empty when the cohort records no look-alikes.
    """
    def search(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            if isinstance(obj.get("lookalike_kinds"), Mapping):
                return obj["lookalike_kinds"]
            for v in obj.values():
                found = search(v)
                if found is not None:
                    return found
        return None

    raw = search(cohort.meta) or {}
    return {int(k): str(v) for k, v in raw.items()}


def fp_kind(lesion: np.ndarray, lookalikes: np.ndarray | None, kinds: Mapping[int, str], *,
            truth: np.ndarray | None = None) -> str | None:
    """What a false positive (against the manifest's ``lesion_mask``) is in the cohort's truth.

    Parameters
    ----------
    lesion : ndarray of bool
        The predicted lesion.
    lookalikes : ndarray of int or None
        The true look-alike kind map (:data:`LOOKALIKE_COLUMN`).
    kinds : mapping
        Code -> kind (:func:`lookalike_kinds`).
    truth : ndarray of bool, optional
        The true lesion mask (:data:`TRUTH_LESION_COLUMN`).

    Returns
    -------
    str or None
        :data:`FP_TRUE_LESION` when the lesion overlaps ``truth`` (the TP rule:
        any shared voxel); else the look-alike kind with the most voxels in the
        lesion and its 1-voxel neighbourhood; else :data:`FP_NOTHING`. None
        when neither ``truth`` nor ``lookalikes`` is given (a real cohort).
    """
    if lookalikes is None and truth is None:
        return None
    if truth is not None and (lesion & truth).any():
        return FP_TRUE_LESION
    if lookalikes is not None:
        from scipy import ndimage

        ring = ndimage.binary_dilation(lesion, ndimage.generate_binary_structure(3, 3))
        codes = lookalikes[ring]
        codes = codes[codes > 0]
        if codes.size:
            code = int(np.bincount(codes).argmax())
            return kinds.get(code, f"look-alike {code}")
    return FP_NOTHING


def fp_kind_table(fp_lesions: pd.DataFrame, keep: np.ndarray, *, by: Sequence[str] = ("fp_kind",)) -> pd.DataFrame:
    """False positives per kind before and after the refinement (which kinds it removes).

    Parameters
    ----------
    fp_lesions : DataFrame
        The test FP rows (against ``lesion_mask``) with the ``by`` columns (e.g.
        ``fp_kind`` of :func:`fp_kind`, ``fp_zone``) and ``voxels``.
    keep : array of bool
        The refinement's decision per row (True: kept).
    by : sequence of str
        Grouping columns.

    Returns
    -------
    DataFrame
        Indexed by ``by``: ``FPs (U-Net)``, ``removed``, ``FPs after
        refinement``, ``removed (%)`` and ``median voxels``, plus a ``total``
        row; sorted by ``FPs (U-Net)`` (descending), ties by name.
    """
    keep = np.asarray(keep, dtype=bool)
    if len(keep) != len(fp_lesions):
        raise ValueError(f"'keep' has {len(keep)} entries for {len(fp_lesions)} false positives")
    by = list(by)
    missing = [c for c in [*by, "voxels"] if c not in fp_lesions.columns]
    if missing:
        raise ValueError(f"'fp_lesions' has no column(s) {missing}")
    t = fp_lesions[by + ["voxels"]].assign(_removed=~keep)
    g = t.groupby(by, dropna=False)
    out = pd.DataFrame({"FPs (U-Net)": g.size(), "removed": g["_removed"].sum().astype(int),
                        "median voxels": g["voxels"].median()})
    out = out.reset_index().sort_values(["FPs (U-Net)", *by], ascending=[False] + [True] * len(by))
    total = {**{c: "total" if i == 0 else "" for i, c in enumerate(by)}, "FPs (U-Net)": len(t),
             "removed": int(t["_removed"].sum()), "median voxels": float(t["voxels"].median()) if len(t) else np.nan}
    out = pd.concat([out, pd.DataFrame([total])], ignore_index=True).set_index(by)
    out["FPs after refinement"] = out["FPs (U-Net)"] - out["removed"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["removed (%)"] = 100.0 * out["removed"] / out["FPs (U-Net)"].where(out["FPs (U-Net)"] > 0)
    return out[["FPs (U-Net)", "removed", "FPs after refinement", "removed (%)", "median voxels"]]


def tn_spheres(scan: Scan, occupied: np.ndarray, n: int, volume_vox: float, rng: np.random.Generator,
               ) -> np.ndarray:
    """Up to ``n`` non-overlapping spheres of ``volume_vox`` voxels inside the brain, away from ``occupied``.

    Returns an instance map (ids ``1..k``); candidate centres are brain voxels
    drawn at random whose sphere lies inside the brain and touches neither
    ``occupied`` (predicted or true lesions, dilated by one voxel) nor an
    earlier sphere.
    """
    from scipy import ndimage

    r = max(0.5, (3.0 * volume_vox / (4.0 * math.pi)) ** (1.0 / 3.0))
    rad = int(math.ceil(r))
    grid = np.indices((2 * rad + 1,) * 3) - rad
    ball = (grid ** 2).sum(0) <= r * r
    blocked = ndimage.binary_dilation(occupied, iterations=1) | ~scan.brain
    out = np.zeros(scan.brain.shape, dtype=np.int32)
    cand = np.argwhere(scan.brain)
    k = 0
    for _ in range(200 * max(n, 1)):
        if k >= n or len(cand) == 0:
            break
        c = cand[rng.integers(len(cand))]
        lo, hi = c - rad, c + rad + 1
        if (lo < 0).any() or (hi > np.array(out.shape)).any():
            continue
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        if (blocked[sl] & ball).any() or (out[sl][ball] > 0).any():
            continue
        k += 1
        out[sl][ball] = k
        blocked[sl] |= ball
    return out


# --------------------------------------------------------------------------- saliency and radiomics
def radiomics_params(bin_width: float) -> dict[str, Any]:
    """pyradiomics settings of the map features: 93 first-order + texture features, fixed bin width, no normalisation.

    The map is z-scored over the whole volume before (:func:`map_record`), so
    pyradiomics' own normalisation is off (it would only see the crop).
    """
    from msutils.features.radiomics import make_params

    return make_params(("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"), bin_width=bin_width,
                       normalize=False)


def select_subset(rows: Sequence[tuple[str, int, str]], cap: int | None, rng: np.random.Generator,
                  ) -> list[tuple[str, int, str]]:
    """The training subset S: ``(scan_id, lesion_id, outcome)`` rows, at most ``cap`` of them.

    Without a cap (or with fewer lesions) every row is kept. Otherwise up to
    half of the cap is filled with false positives (all of them if fewer) and
    the rest with true positives, each drawn at random; the paper's S was
    built the same way, its FP maps taken from twice as many visits as its TP
    maps (11,569 TP and 9,434 FP from 217 and 439 visits), since a U-Net makes
    fewer FP than TP per visit. Rows keep their input order.
    """
    rows = list(rows)
    if cap is None or len(rows) <= cap:
        return rows
    fp = [i for i, r in enumerate(rows) if r[2] == "FP"]
    tp = [i for i, r in enumerate(rows) if r[2] != "FP"]
    n_fp = min(len(fp), cap // 2)
    n_tp = min(len(tp), cap - n_fp)
    n_fp = min(len(fp), cap - n_tp)
    pick = set(rng.choice(fp, n_fp, replace=False).tolist()) | set(rng.choice(tp, n_tp, replace=False).tolist())
    return [r for i, r in enumerate(rows) if i in pick]


def scan_maps(net: nn.Module, scan: Scan, labels: np.ndarray, ids: Sequence[int], config: XaiConfig,
              receptive: ReceptiveField, *, method: str = "max", tag: str = "") -> dict[int, SaliencyMap]:
    """Instance-level SmoothGrad maps of some lesions of one scan (seeded per scan and ``tag``)."""
    from msutils.segmentation.saliency import instance_smoothgrad

    if not len(ids):
        return {}
    return instance_smoothgrad(net, scan.image, labels, lesion_ids=list(ids), n_samples=config.n_samples,
                               sigma=config.sigma, noise=config.noise, seed=derived_seed(config.seed, scan.scan_id + tag),
                               method=method, crop=True, receptive=receptive, sample_batch=config.sample_batch,
                               voxel_batch=config.voxel_batch, progress=f"{scan.scan_id} {tag} {method}")


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.maximum_filter(mask.astype(np.uint8), size=size) > 0


def map_record(smap: SaliencyMap, labels: np.ndarray, shape: Sequence[int], spacing: Sequence[float],
               config: XaiConfig, *, features: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Statistics (and radiomics) of one lesion's map.

    Returns
    -------
    stats : dict
        ``mean, max, min`` of the map in the dilated lesion ROI, ``roi_voxels``,
        ``z_mean, z_sd`` (whole-volume statistics used for the z-score),
        ``n_bins`` (grey levels of the z-scored map in the ROI at ``bin_width``).
    feats : dict
        The 93 features (empty with ``features=False``), named as the engine does
        (``firstorder__Mean``...); NaN with ``feats_reason`` in ``stats`` if pyradiomics failed.
    """
    from msutils.features.radiomics import extract_masks

    win = smap.window
    lesion = labels[win] == smap.label
    roi = _dilate(lesion, config.dilation)
    vals = smap.values.astype(np.float64)
    n_total = float(np.prod(shape))
    z_mean = vals.sum() / n_total
    z_sd = math.sqrt(max((vals ** 2).sum() / n_total - z_mean ** 2, 0.0))
    inside = vals[roi]
    stats: dict[str, Any] = {"mean": float(inside.mean()), "max": float(inside.max()), "min": float(inside.min()),
                             "roi_voxels": int(roi.sum()), "z_mean": z_mean, "z_sd": z_sd}
    z = (vals - z_mean) / (z_sd if z_sd > 0 else 1.0)
    zin = z[roi]
    stats["n_bins"] = int(np.floor(zin.max() / config.bin_width) - np.floor(zin.min() / config.bin_width) + 1)
    feats: dict[str, float] = {}
    if features:
        df = extract_masks({0: z}, {0: roi}, tuple(spacing), radiomics_params(config.bin_width), min_voxels=1)
        feats = {k: float(v) for k, v in df.iloc[0].items()}
        stats["feats_reason"] = df.attrs["reasons"][0]["reason"] if df.attrs["reasons"] else None
    return stats, feats


def _sagittal(smap: SaliencyMap, labels: np.ndarray, flair: np.ndarray) -> dict[str, Any]:
    """A sagittal slice (constant first axis) through the lesion centroid: map, FLAIR and lesion mask."""
    from scipy import ndimage

    c = ndimage.center_of_mass(labels == smap.label)
    x = int(round(c[0]))
    win = smap.window
    xl = x - win[0].start
    return {"saliency": smap.values[xl].copy(), "flair": flair[x, win[1], win[2]].copy(),
            "mask": (labels[x, win[1], win[2]] == smap.label), "x": x,
            "origin": (win[1].start, win[2].start)}


# --------------------------------------------------------------------------- the whole computation
def compute_study(cohort: Cohort, split: Mapping[str, Any], config: XaiConfig, *,
                  thresholds: Sequence[float] = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))) -> dict[str, Any]:
    """Train, predict, map and extract (the cached part of the notebook).

    Steps: load the scans; train the U-Net on the training patients (the
    validation patients give only the loss curve); predict every validation
    and test scan and the training subset S; lesion instances and metrics;
    threshold curves (validation and test) for the threshold baseline;
    saliency maps of S's TP/FP (``max_s_lesions`` cap), of every test TP/FP,
    of up to ``max_fn_maps`` test FN and ``n_tn`` TN spheres; map statistics,
    radiomics of S and test TP/FP maps; the summed-logit variant for
    ``n_sum_compare`` test lesions; sagittal example slices of test maps.

    Returns
    -------
    dict
        Plain data (DataFrames, arrays, dicts): see the notebook for the keys.

    Notes
    -----
    BLAS pools are limited to one thread while it runs (pyradiomics' GLCM
    eigenvalues gain nothing from more, and spinning BLAS threads slow
    everything down on a shared 2-core machine); torch's own threads are
    ``config.num_threads``.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _compute_study(cohort, split, config, thresholds)


def _compute_study(cohort: Cohort, split: Mapping[str, Any], config: XaiConfig,
                   thresholds: Sequence[float]) -> dict[str, Any]:
    import torch
    from scipy import ndimage

    from msutils.core.progress import Progress
    from msutils.data.leakage import FitLog
    from msutils.segmentation.saliency import receptive_field

    t_start = time.perf_counter()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    scans_table = study_scans(cohort)
    sets = split_sets(split)
    by_set = {k: scans_table.index[scans_table["subject_id"].astype(str).isin(v)].tolist() for k, v in sets.items()}
    load = {sid: None for sid in scans_table.index}

    def get(sid: str) -> Scan:
        if load[sid] is None:
            load[sid] = load_scan(cohort, sid, voxel_mm=config.voxel_mm)
        return load[sid]

    fit_log = FitLog()
    kinds = lookalike_kinds(cohort)
    train_scans = [get(s) for s in by_set["train"]]
    val_scans = [get(s) for s in by_set["val"]]
    net, history, train_info = train_unet(train_scans, val_scans, config)
    fit_log.record("unet", sets["train"])
    receptive = receptive_field(net, train_scans[0].image.shape[0], multiple=config.multiple)

    seconds: dict[str, float] = {"training": train_info["seconds"]}
    t0 = time.perf_counter()
    rows, curves, found = [], [], {}
    found_gt: dict[str, ScanLesions] = {}
    bar = Progress("U-Net prediction", total=sum(len(v) for v in by_set.values()), unit="scans")
    for set_name in ("train", "val", "test"):
        for sid in by_set[set_name]:
            bar.update()
            scan = get(sid)
            prob = predict_probability(net, scan, config)
            les = find_lesions(prob, scan, config)
            found[sid] = les
            row = {"scan_id": sid, "subject_id": scan.subject_id, "set": set_name, "brain_source": scan.brain_source,
                   **les.metrics}
            if scan.truth_gt is not None:  # beyond the seed: the same prediction against the true lesions
                found_gt[sid] = find_lesions(prob, scan, config, truth=scan.truth_gt)
                gt = found_gt[sid].metrics
                row.update({f"gt_{k}": gt[k] for k in ("dice", "normalized_dice", "tp", "fp", "fn", "n_truth",
                                                       "pred_voxels", "truth_voxels", "overlap_voxels")})
            rows.append(row)
            if set_name in ("val", "test"):
                curves.append(threshold_counts(prob, scan, config, thresholds).assign(set=set_name))
            if set_name == "val":
                load[sid] = None  # validation scans are not needed any more
    seconds["prediction"] = time.perf_counter() - t0
    scans_df = pd.DataFrame(rows)

    # training subset S: lesions of the training scans (seeded, FP-first cap)
    s_rows = [(sid, int(r.lesion_id), r.outcome) for sid in by_set["train"] for r in found[sid].pred.itertuples()]
    s_rows = select_subset(s_rows, config.max_s_lesions, np.random.default_rng(config.seed))
    s_ids: dict[str, list[int]] = {}
    for sid, lid, _ in s_rows:
        s_ids.setdefault(sid, []).append(lid)
    for sid in by_set["train"]:
        if sid not in s_ids:
            load[sid] = None  # training scans outside S are not needed any more

    records: list[dict[str, Any]] = []
    examples: dict[str, dict[str, Any]] = {}
    sum_compare: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    test_truth_voxels = [les.truth["voxels"].to_numpy() for sid, les in found.items() if sid in by_set["test"]]
    mean_volume = float(np.mean(np.concatenate(test_truth_voxels))) if test_truth_voxels and len(
        np.concatenate(test_truth_voxels)) else 10.0
    n_fn_left = config.max_fn_maps
    tn_per_scan = np.zeros(len(by_set["test"]), dtype=int)
    if by_set["test"]:
        for i in range(config.n_tn):
            tn_per_scan[i % len(by_set["test"])] += 1
    n_sum_left = config.n_sum_compare
    work = [("S", sid) for sid in by_set["train"] if sid in s_ids] + [("test", sid) for sid in by_set["test"]]
    for k, (set_name, sid) in enumerate(work, 1):
        scan, les = get(sid), found[sid]
        shape = scan.truth.shape
        ids = s_ids[sid] if set_name == "S" else les.pred["lesion_id"].tolist()
        logger.info("maps %d/%d: %s scan %s, %d lesions", k, len(work), set_name, sid, len(ids))
        outcome = dict(zip(les.pred["lesion_id"], les.pred["outcome"]))
        volume = dict(zip(les.pred["lesion_id"], les.pred["voxels"]))
        inside = ndimage.sum(scan.truth, les.pred_labels, ids) if len(ids) else []
        overlap = {lid: {"overlap_voxels": int(v)} for lid, v in zip(ids, inside)}
        true_lesions = None
        if sid in found_gt:  # beyond the seed: each predicted lesion against the true lesions
            gl = found_gt[sid]
            true_lesions = gl.truth_labels > 0
            inside = ndimage.sum(scan.truth_gt, les.pred_labels, ids) if len(ids) else []
            for lid, o, v in zip(ids, gl.pred.set_index("lesion_id").loc[ids, "outcome"], inside):
                overlap[lid].update({"gt_outcome": o, "gt_overlap_voxels": int(v)})
        maps = scan_maps(net, scan, les.pred_labels, ids, config, receptive, tag=set_name)
        for lid, smap in maps.items():
            stats, feats = map_record(smap, les.pred_labels, shape, scan.spacing, config)
            zone = kind = None
            if outcome[lid] == "FP":
                zone = fp_zone(les.pred_labels == lid, scan.zones, scan.brain)
                kind = fp_kind(les.pred_labels == lid, scan.lookalikes, kinds, truth=true_lesions)
            records.append({"set": set_name, "scan_id": sid, "subject_id": scan.subject_id, "lesion_id": lid,
                            "outcome": outcome[lid], "voxels": int(volume[lid]), "fp_zone": zone, "fp_kind": kind,
                            **overlap[lid], "seconds": smap.seconds, **stats, **feats})
            if set_name == "test":
                examples[f"{sid}:{lid}"] = _sagittal(smap, les.pred_labels, scan.image[0])
        if set_name == "test" and n_sum_left > 0 and maps:
            pick = list(maps)[:n_sum_left]
            n_sum_left -= len(pick)
            sums = scan_maps(net, scan, les.pred_labels, pick, config, receptive, method="sum", tag="test")
            for lid in pick:
                a, b = maps[lid].values.ravel(), sums[lid].values.ravel()
                sum_compare.append({"scan_id": sid, "lesion_id": lid, "outcome": outcome[lid],
                                    "voxels": int(volume[lid]), "corr": float(np.corrcoef(a, b)[0, 1]),
                                    "max_over_sum_max": float(np.abs(a).max() / max(np.abs(b).max(), 1e-30)),
                                    "example": _sagittal(sums[lid], les.pred_labels, scan.image[0])})
        if set_name == "test":
            fn_ids = les.truth.loc[les.truth["outcome"] == "FN", "truth_id"].tolist()[:max(n_fn_left, 0)]
            n_fn_left -= len(fn_ids)
            fn_maps = scan_maps(net, scan, les.truth_labels, fn_ids, config, receptive, tag="FN")
            for lid, smap in fn_maps.items():
                stats, _ = map_record(smap, les.truth_labels, shape, scan.spacing, config, features=False)
                records.append({"set": "test", "scan_id": sid, "subject_id": scan.subject_id, "lesion_id": lid,
                                "outcome": "FN", "voxels": smap.n_voxels, "seconds": smap.seconds, **stats})
            n_tn = int(tn_per_scan[by_set["test"].index(sid)])
            if n_tn:
                occupied = (les.pred_labels > 0) | (les.truth_labels > 0)
                spheres = tn_spheres(scan, occupied, n_tn, mean_volume, np.random.default_rng(
                    derived_seed(config.seed, sid + "TN")))
                tn_maps = scan_maps(net, scan, spheres, [int(i) for i in np.unique(spheres) if i > 0], config,
                                    receptive, tag="TN")
                for lid, smap in tn_maps.items():
                    stats, _ = map_record(smap, spheres, shape, scan.spacing, config, features=False)
                    records.append({"set": "test", "scan_id": sid, "subject_id": scan.subject_id,
                                    "lesion_id": lid, "outcome": "TN", "voxels": smap.n_voxels,
                                    "seconds": smap.seconds, **stats})
        if set_name == "S":
            load[sid] = None
    seconds["saliency_and_radiomics"] = time.perf_counter() - t0
    lesions_df = pd.DataFrame(records)
    truth_rows = [les.truth.assign(scan_id=sid, subject_id=les.subject_id) for sid, les in found.items()
                  if sid in by_set["test"]]
    seconds["total"] = time.perf_counter() - t_start
    return {
        "config": config.to_dict(),
        "split": {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in split.items()},
        "scans": scans_df,
        "history": history,
        "train_info": train_info,
        "receptive_field": asdict(receptive),
        "threshold_curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        "lesions": lesions_df,
        "test_truth": pd.concat(truth_rows, ignore_index=True) if truth_rows else pd.DataFrame(),
        "s_cap": {"available": int(sum(len(found[sid].pred) for sid in by_set["train"])), "used": len(s_rows)},
        "tn_volume_voxels": mean_volume,
        "examples": examples,
        "sum_compare": pd.DataFrame(sum_compare),
        "fit_log": fit_log.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- aggregate analysis
def feature_columns(lesions: pd.DataFrame) -> list[str]:
    """The radiomics feature columns (``class__feature``) of a lesion table."""
    return [c for c in lesions.columns if "__" in c]


def domain_shift(lesions: pd.DataFrame, stats: Sequence[str] = STATS) -> pd.DataFrame:
    """Mann-Whitney U of map mean / max / min between S and the test set, per outcome (TP, FP).

    Returns one row per (outcome, statistic): ``n_S, n_test``, mean and SD of
    each set, ``U`` and two-sided ``p`` (NaN when a side is empty).
    """
    from scipy.stats import mannwhitneyu

    rows = []
    for outcome in ("TP", "FP"):
        for st in stats:
            a = lesions.loc[(lesions["set"] == "S") & (lesions["outcome"] == outcome), st].dropna().to_numpy()
            b = lesions.loc[(lesions["set"] == "test") & (lesions["outcome"] == outcome), st].dropna().to_numpy()
            u = p = float("nan")
            if len(a) and len(b):
                res = mannwhitneyu(a, b, alternative="two-sided")
                u, p = float(res.statistic), float(res.pvalue)
            rows.append({"outcome": outcome, "statistic": st, "n_S": len(a), "n_test": len(b),
                         "mean_S": float(a.mean()) if len(a) else float("nan"),
                         "sd_S": float(a.std(ddof=1)) if len(a) > 1 else float("nan"),
                         "mean_test": float(b.mean()) if len(b) else float("nan"),
                         "sd_test": float(b.std(ddof=1)) if len(b) > 1 else float("nan"), "U": u, "p": p})
    return pd.DataFrame(rows)


@dataclass
class Refiner:
    """A fitted TP-vs-FP classifier (scaler + L1 logistic regression) and what it saw.

    Attributes
    ----------
    model : sklearn Pipeline
        ``StandardScaler`` then ``LogisticRegression``; class 1 = TP.
    features : list of str
    class_weight : dict
        ``{0: FP proportion, 1: TP proportion}`` of S.
    subjects : list of str
        Patients whose lesions were used (S).
    n_tp, n_fp : int
    dropped : list of str
        Feature columns dropped because they are NaN or constant in S.
    """

    model: Any
    features: list[str]
    class_weight: dict[int, float]
    subjects: list[str]
    n_tp: int
    n_fp: int
    dropped: list[str]

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray:
        """P(TP) of each row of a lesion table (NaN features imputed with S's means)."""
        return self.model.predict_proba(table[self.features].to_numpy(float))[:, 1]


def fit_refiner(lesions: pd.DataFrame, features: Sequence[str], config: XaiConfig, *,
                fit_log: FitLog | None = None, step: str = "refiner") -> Refiner:
    """Fit standardisation + L1 logistic regression on the TP/FP lesions of S only.

    Parameters
    ----------
    lesions : DataFrame
        Lesion table (``set``, ``outcome``, ``subject_id`` and the feature columns).
    features : sequence of str
        Columns to use (e.g. :func:`feature_columns`, or ``["min", "max"]``).
    config : XaiConfig
        ``lr_c``, ``lr_max_iter``, ``seed``.
    fit_log : FitLog, optional
        Records the S patients under ``step``.

    Raises
    ------
    ValueError
        S lacks TP or FP lesions.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    s = lesions[(lesions["set"] == "S") & lesions["outcome"].isin(["TP", "FP"])]
    y = (s["outcome"] == "TP").to_numpy(int)
    n_tp, n_fp = int(y.sum()), int(len(y) - y.sum())
    if n_tp == 0 or n_fp == 0:
        raise ValueError(f"the training subset S needs TP and FP lesions to fit the refiner; got {n_tp} TP and "
                         f"{n_fp} FP")
    X = s[list(features)].to_numpy(float)
    usable = [f for j, f in enumerate(features) if np.isfinite(X[:, j]).any() and np.nanstd(X[:, j]) > 0]
    dropped = [f for f in features if f not in usable]
    X = s[usable].to_numpy(float)
    weights = {0: n_fp / len(y), 1: n_tp / len(y)}
    lr = LogisticRegression(C=config.lr_c, l1_ratio=1.0, solver="liblinear", max_iter=config.lr_max_iter,
                            class_weight=weights, random_state=config.seed)
    model = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), lr).fit(X, y)
    subjects = sorted(s["subject_id"].astype(str).unique())
    if fit_log is not None:
        fit_log.record(step, subjects)
    return Refiner(model=model, features=usable, class_weight=weights, subjects=subjects, n_tp=n_tp, n_fp=n_fp,
                   dropped=dropped)


def detection_metrics(tp: int, fp: int, fn: int) -> dict[str, float]:
    """``F1 = 2 TP / (2 TP + FP + FN)`` and ``PPV = TP / (TP + FP)`` (NaN on empty denominators)."""
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    ppv = tp / (tp + fp) if (tp + fp) else float("nan")
    return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "f1": float(f1), "ppv": float(ppv)}


def refine(test_lesions: pd.DataFrame, keep: np.ndarray, scans: pd.DataFrame) -> pd.DataFrame:
    """Per-scan TP / FP / FN before and after rejecting the lesions with ``keep == False``.

    Parameters
    ----------
    test_lesions : DataFrame
        Test TP/FP rows (``scan_id``, ``subject_id``, ``outcome``).
    keep : array of bool
        One entry per row of ``test_lesions``.
    scans : DataFrame
        Per-scan table of :func:`compute_study` (``scan_id``, ``subject_id``,
        ``set``, ``tp``, ``fp``, ``fn``, ``reason``): every test scan appears,
        also one without predicted lesion (its counts stay, with its reason).

    Returns
    -------
    DataFrame
        One row per test scan: ``tp, fp, fn`` (before), ``tp_after, fp_after,
        fn_after`` (a rejected TP becomes an FN), ``rejected_tp, rejected_fp``, ``reason``.
    """
    keep = np.asarray(keep, dtype=bool)
    if len(keep) != len(test_lesions):
        raise ValueError(f"'keep' has {len(keep)} entries for {len(test_lesions)} lesions")
    t = test_lesions.assign(_keep=keep)
    rej_tp = t[(t["outcome"] == "TP") & ~t["_keep"]].groupby("scan_id").size()
    rej_fp = t[(t["outcome"] == "FP") & ~t["_keep"]].groupby("scan_id").size()
    out = scans.loc[scans["set"] == "test", ["scan_id", "subject_id", "tp", "fp", "fn", "reason"]].copy()
    out["rejected_tp"] = out["scan_id"].map(rej_tp).fillna(0).astype(int)
    out["rejected_fp"] = out["scan_id"].map(rej_fp).fillna(0).astype(int)
    out["tp_after"] = out["tp"] - out["rejected_tp"]
    out["fp_after"] = out["fp"] - out["rejected_fp"]
    out["fn_after"] = out["fn"] + out["rejected_tp"]
    return out.reset_index(drop=True)


def refine_against(test_lesions: pd.DataFrame, keep: np.ndarray, scans: pd.DataFrame, *,
                   reference: str = "truth") -> pd.DataFrame:
    """Per-scan detection counts and voxel Dice before and after the refinement, against a reference mask.

    ``reference="truth"`` (beyond the seed; synthetic cohorts only): the
    refinement decided on lesions labelled against the manifest's rater-like
    ``lesion_mask``; the same decisions are scored against the true lesion
    mask (:data:`TRUTH_LESION_COLUMN`). ``reference="manifest"``: against
    ``lesion_mask`` (the counts equal :func:`refine`'s). The convention of
    :func:`refine` holds for both: TP counted on the predicted lesions, a
    rejected lesion that overlaps the reference becomes an FN. The voxel Dice
    after the refinement drops the rejected lesions' voxels from the
    thresholded mask: 2 (O - O_rej) / (P - P_rej + T), with O, P, T the
    overlap, predicted and reference voxels of the scan (1 when both masks
    are empty).

    Parameters
    ----------
    test_lesions : DataFrame
        Test TP/FP rows: ``scan_id``, ``voxels`` and, per reference, the
        lesion's outcome and its voxels inside the reference (``outcome`` and
        ``overlap_voxels``; ``gt_outcome`` and ``gt_overlap_voxels``).
    keep : array of bool
        One entry per row of ``test_lesions``.
    scans : DataFrame
        Per-scan table of :func:`compute_study`: ``tp, fp, fn, pred_voxels,
        truth_voxels, overlap_voxels`` (``gt_``-prefixed for the truth).
    reference : str
        ``"truth"`` or ``"manifest"``.

    Returns
    -------
    DataFrame
        One row per test scan: ``scan_id, subject_id, tp, fp, fn, dice`` (before)
        and ``tp_after, fp_after, fn_after, dice_after``.
    """
    if reference not in ("truth", "manifest"):
        raise ValueError(f"'reference' must be one of ['truth', 'manifest']; got {reference!r}")
    keep = np.asarray(keep, dtype=bool)
    if len(keep) != len(test_lesions):
        raise ValueError(f"'keep' has {len(keep)} entries for {len(test_lesions)} lesions")
    pre = "gt_" if reference == "truth" else ""
    if not len(test_lesions):  # no predicted lesion at all: a table without columns
        test_lesions = pd.DataFrame(columns=["scan_id", "voxels", pre + "outcome", pre + "overlap_voxels"])
    need = [pre + c for c in ("tp", "fp", "fn", "pred_voxels", "truth_voxels", "overlap_voxels")]
    missing = [c for c in need if c not in scans.columns]
    missing += [c for c in (pre + "outcome", pre + "overlap_voxels", "voxels") if c not in test_lesions.columns]
    if missing:
        raise ValueError(f"no evaluation against the {reference}: column(s) {missing} missing"
                         + (f" (the cohort has no {TRUTH_LESION_COLUMN!r})" if reference == "truth" else ""))
    rej = test_lesions[~keep]
    rej_tp = rej[rej[pre + "outcome"] == "TP"].groupby("scan_id").size()
    rej_fp = rej[rej[pre + "outcome"] == "FP"].groupby("scan_id").size()
    rej_vox = rej.groupby("scan_id")["voxels"].sum()
    rej_overlap = rej.groupby("scan_id")[pre + "overlap_voxels"].sum()
    test = scans.loc[scans["set"] == "test"]
    out = pd.DataFrame({"scan_id": test["scan_id"].to_numpy(), "subject_id": test["subject_id"].to_numpy(),
                        "tp": test[pre + "tp"].to_numpy(int), "fp": test[pre + "fp"].to_numpy(int),
                        "fn": test[pre + "fn"].to_numpy(int)})
    r_tp = out["scan_id"].map(rej_tp).fillna(0).astype(int)
    r_fp = out["scan_id"].map(rej_fp).fillna(0).astype(int)
    out["tp_after"] = out["tp"] - r_tp
    out["fp_after"] = out["fp"] - r_fp
    out["fn_after"] = out["fn"] + r_tp

    def dice(o: np.ndarray, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        den = p + t
        return np.where(den > 0, 2.0 * o / np.where(den > 0, den, 1), 1.0)

    o = test[pre + "overlap_voxels"].to_numpy(float)
    pv = test[pre + "pred_voxels"].to_numpy(float)
    tv = test[pre + "truth_voxels"].to_numpy(float)
    out["dice"] = dice(o, pv, tv)
    out["dice_after"] = dice(o - out["scan_id"].map(rej_overlap).fillna(0).to_numpy(float),
                             pv - out["scan_id"].map(rej_vox).fillna(0).to_numpy(float), tv)
    return out


def choose_threshold(curves: pd.DataFrame, set_name: str = "val") -> tuple[float, pd.DataFrame]:
    """The output threshold with the best pooled lesion F1 on one set (the threshold baseline).

    Parameters
    ----------
    curves : DataFrame
        :func:`threshold_counts` rows of several scans with a ``set`` column.
    set_name : str
        Set the threshold is chosen on (``"val"``; never the test set).

    Returns
    -------
    threshold : float
        Best F1 (ties: the lowest threshold).
    table : DataFrame
        Pooled ``tp, fp, fn, f1, ppv`` per threshold of that set.

    Raises
    ------
    ValueError
        The set has no rows (e.g. no validation patients).
    """
    sub = curves[curves["set"] == set_name] if len(curves) else curves
    if not len(sub):
        raise ValueError(f"no threshold counts for set {set_name!r}: the threshold baseline needs validation scans")
    pooled = sub.groupby("threshold")[["tp", "fp", "fn"]].sum()
    table = pd.DataFrame([{"threshold": t, **detection_metrics(int(r.tp), int(r.fp), int(r.fn))}
                          for t, r in pooled.iterrows()])
    best = table.loc[table["f1"].fillna(-1.0).idxmax(), "threshold"]
    return float(best), table


def bootstrap_detection(per_scan: pd.DataFrame, *, by: str = "patient", after: bool = True,
                        test_lesions: pd.DataFrame | None = None, keep: np.ndarray | None = None,
                        test_truth: pd.DataFrame | None = None, n_boot: int = 1000, seed: int = 0,
                        ) -> dict[str, dict[str, float]]:
    """95 % percentile-bootstrap intervals of F1 and PPV.

    ``by="patient"``: resample test patients (all their scans' counts pooled);
    ``by="lesion"`` (the seed's choice): resample lesions -- predicted TP/FP
    rows of ``test_lesions`` (with ``keep``) and the missed ground-truth
    lesions (``outcome == "FN"`` rows of ``test_truth``) -- as independent units.

    Returns
    -------
    dict
        ``{"f1": {...}, "ppv": {...}}`` each with ``estimate, low, high, n_units``.
    """
    from msutils.stats import bootstrap_ci

    if by not in ("patient", "lesion"):
        raise ValueError(f"'by' must be one of ['patient', 'lesion']; got {by!r}")
    if by == "patient":
        cols = ["tp_after", "fp_after", "fn_after"] if after else ["tp", "fp", "fn"]
        data = per_scan[cols].to_numpy(float)
        units = per_scan["subject_id"].to_numpy()
    else:
        if test_lesions is None or test_truth is None:
            raise ValueError("by='lesion' needs 'test_lesions' and 'test_truth'")
        kp = np.ones(len(test_lesions), bool) if (keep is None or not after) else np.asarray(keep, bool)
        tp = (test_lesions["outcome"] == "TP").to_numpy()
        rows = np.stack([tp & kp, ~tp & kp, tp & ~kp], axis=1).astype(float)  # TP kept, FP kept, TP -> FN
        n_fn = int((test_truth["outcome"] == "FN").sum())
        data = np.concatenate([rows, np.tile([0.0, 0.0, 1.0], (n_fn, 1))])
        units = None
    out = {}
    for name in ("f1", "ppv"):
        def stat(d: np.ndarray, name: str = name) -> float:
            tp_, fp_, fn_ = d.sum(0)
            return detection_metrics(int(tp_), int(fp_), int(fn_))[name]
        ci = bootstrap_ci(data, stat, units=units, n_boot=n_boot, seed=seed)
        out[name] = {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "n_units": ci.n_units}
    return out


def _ci_text(ci: Mapping[str, Any] | None, key: str) -> str:
    if not ci:
        return ""
    lo, hi = ci[key]["low"], ci[key]["high"]
    return "n/a" if lo is None or not np.isfinite(lo) else f"[{lo:.4f}, {hi:.4f}]"


def table1(before: Mapping[str, Any], after: Mapping[str, Any], ci: Mapping[str, Mapping[str, Any]],
           published: Mapping[str, Any]) -> pd.DataFrame:
    """The paper's Table 1 beside this run's: counts, F1, PPV and their bootstrap intervals.

    Parameters
    ----------
    before, after : mapping
        :func:`detection_metrics` of the U-Net alone and after the refinement.
    ci : mapping
        :func:`bootstrap_detection` results under ``patient_before``,
        ``patient_after``, ``lesion_before``, ``lesion_after`` (missing keys: empty cells).
    published : mapping
        The paper's ``table1`` (``msutils.studies.paper_numbers.load("004")["table1"]``).

    Returns
    -------
    DataFrame
        Rows ``TPs, FPs, FNs, F1 score, PPV`` and the four interval rows (patients
        resampled; lesions resampled, the seed's way); columns ``(paper | this run,
        U-Net only | U-Net + saliency)``. The paper's intervals resample lesions.
    """
    p_u, p_r = published["unet"], published["refined"]
    paper_ci = {k: f"[{p_r[k + '_ci'][0]:.4f}, {p_r[k + '_ci'][1]:.4f}]" for k in ("f1", "ppv")}

    def col(c: Mapping[str, Any], cis: tuple[str, str]) -> list[Any]:
        return [c["tp"], c["fp"], c["fn"], f"{c['f1']:.4f}", f"{c['ppv']:.4f}",
                _ci_text(ci.get(cis[0]), "f1"), _ci_text(ci.get(cis[0]), "ppv"),
                _ci_text(ci.get(cis[1]), "f1"), _ci_text(ci.get(cis[1]), "ppv")]

    data = {
        ("paper", "U-Net only"): [p_u["tp"], p_u["fp"], p_u["fn"], f"{p_u['f1']:.4f}", f"{p_u['ppv']:.4f}",
                                  "", "", "", ""],
        ("paper", "U-Net + saliency"): [p_r["tp"], p_r["fp"], p_r["fn"], f"{p_r['f1']:.4f}", f"{p_r['ppv']:.4f}",
                                        "", "", paper_ci["f1"], paper_ci["ppv"]],
        ("this run", "U-Net only"): col(before, ("patient_before", "lesion_before")),
        ("this run", "U-Net + saliency"): col(after, ("patient_after", "lesion_after")),
    }
    index = ["TPs", "FPs", "FNs", "F1 score", "PPV", "F1 95% CI, patients resampled",
             "PPV 95% CI, patients resampled", "F1 95% CI, lesions resampled (seed)",
             "PPV 95% CI, lesions resampled (seed)"]
    out = pd.DataFrame(data, index=index)
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def feature_importance(refiner: Refiner, top: int = 10) -> pd.DataFrame:
    """Coefficients normalised by the largest magnitude (Fig. 5): the ``top`` positive and negative ones."""
    coef = refiner.model[-1].coef_[0]
    scale = np.abs(coef).max()
    norm = coef / scale if scale > 0 else coef
    df = pd.DataFrame({"feature": refiner.features, "coefficient": coef, "normalized": norm})
    pos = df[df["normalized"] > 0].nlargest(top, "normalized")
    neg = df[df["normalized"] < 0].nsmallest(top, "normalized")
    return pd.concat([pos.assign(sign="positive"), neg.assign(sign="negative")], ignore_index=True)
