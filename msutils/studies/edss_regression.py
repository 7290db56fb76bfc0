"""EDSS regression study of seed 001: features, stability, selection, models, ground truth.

The seed paper predicts the EDSS of MS patients from routine T1 / FLAIR MRI plus
clinico-demographic data. This module holds the study-specific steps the
``02_edss_regression`` notebook chains; the generic pieces live elsewhere
(:mod:`msutils.features.radiomics`, :mod:`msutils.features.selection`, :mod:`msutils.features.volumes`,
:mod:`msutils.models.regression`, :mod:`msutils.stats`, :mod:`msutils.data.splits`).

Data (:func:`load_study_data`)
    One row per MS patient (first session), indexed by ``subject_id``:

    - **radiomics** of every grey-matter atlas ROI (deep GM labels 1-8 and the
      cortical parcels 101+) and of the normal-appearing white matter
      (``nawm`` = white-matter label minus the lesion mask) on the T1 image
      (:func:`study_rois`, :func:`extract_radiomics`);
    - **volumes** (mL) of the same GM ROIs, whole-brain volume (WBV), total
      intracranial volume (TIV) and T2 lesion volume (:func:`volume_table`);
    - optional **lesion-disconnection proxy** per GM ROI
      (:func:`disconnection_proxy`), standing in for the seed's NeMo ChaCo scores;
    - **clinical** variables: age, sex, disease duration, course.

Stability (:func:`icc_subset`, :func:`retest_radiomics`)
    The seed re-processed 30 random subjects and kept the radiomic features
    with ICC >= 0.90. Here 30 (configurable) random *training* subjects are
    re-processed (``icc_mode="perturbed"``): every ROI boundary is moved by about
    1 mm, outwards in some places and inwards in others (:func:`resegmented_mask`,
    a re-segmentation proxy) and fresh Gaussian noise is added inside the brain
    (:func:`msutils.features.reliability.perturbed_image`); or, with ``icc_mode="rescan"``,
    the training subjects' second visits (``ses-02``) are extracted as the retest.

Selection and models (:func:`select_features`, :func:`fit_models`, :func:`fit_study`)
    Fitted on the training subjects only, every step recording its subjects in
    a shared :class:`msutils.data.leakage.FitLog`: normative z-scores of the volumes
    (adjusted for age, sex and TIV), the ICC keep list, then
    :class:`msutils.features.selection.SelectionPipeline` (variance 0.01 -> |r| > 0.8
    collinearity -> LASSO -> CFS best first), then the four regressors of
    :mod:`msutils.models.regression`. :func:`fit_study` does it all in one call (the
    leakage canary of the tests calls it twice).

Feature names of the design table
    ``age``, ``sex_M``, ``disease_duration``, ``course_SP`` ... (clinical, see
    :func:`msutils.models.regression.clinical_features`); ``lesion_volume_log`` =
    ln(1 + T2 lesion volume in mL) (lesion volumes are right-skewed; the log is
    the usual transform); ``volume__<roi>`` and ``volume__wbv`` (normative
    z-scores); ``disconnection__<roi>``; radiomics ``<roi>__<class>__<feature>``
    as :mod:`msutils.features.radiomics` names them.

Ground truth (:func:`driver_values`, :func:`driver_of_feature`, :func:`drivers_recovered`)
    A synthetic cohort's sidecar names the true EDSS drivers. A selected
    feature *recovers* a driver by the rules of :data:`DRIVER_RULES`.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msutils.core.parallel import process_map
from msutils.core.validation import check_choice, check_int
from msutils.data.cohort import DEEP_GM_LABELS, DEEP_GM_STRUCTURES, MS_COURSES, PARCEL_OFFSET, WM_LABEL

__all__ = [
    "MODEL_ORDER",
    "FEATURE_SETS",
    "ICC_MODES",
    "LESION_FEATURE",
    "VOLUME_PREFIX",
    "DISCONNECTION_PREFIX",
    "NAWM_ROI",
    "DRIVER_RULES",
    "StudyConfig",
    "StudyData",
    "SelectionResult",
    "StudyFit",
    "SharedStage",
    "subject_table",
    "study_rois",
    "extract_radiomics",
    "volume_table",
    "disconnection_proxy",
    "cohort_disconnection",
    "load_study_data",
    "cv_folds",
    "icc_subset",
    "resegmented_mask",
    "retest_radiomics",
    "feature_group",
    "candidate_features",
    "select_features",
    "design_matrix",
    "feature_matrix",
    "fit_models",
    "fit_study",
    "shared_stage",
    "tune_fold",
    "choose_hyperparameters",
    "predictions",
    "abs_errors",
    "TABLE3_METRICS",
    "table3",
    "paper_table3_long",
    "driver_values",
    "driver_of_feature",
    "drivers_recovered",
    "driver_correlations",
    "roi_description",
    "label_centroids",
    "table2",
    "site_table1",
    "adjusted_site_pvalue",
    "NOISE_FREE_EDSS",
    "model_chosen_by_cv",
    "ceiling_reference",
    "headline",
    "table3_intervals",
    "format_intervals",
    "repeat_study",
    "CHOSEN_BY_CV",
    "repeat_summary",
    "format_mean_sd",
    "course_comparison",
    "ridge_weights",
    "lesion_volume_truth",
    "lesion_truth_agreement",
]

logger = logging.getLogger(__name__)

MODEL_ORDER: tuple[str, ...] = ("ridge", "gaussian_process", "svr", "random_forest")
"""The four regressors of :data:`msutils.models.regression.MODELS`, in the seed's Table 3 order."""

FEATURE_SETS: tuple[str, ...] = ("selected", "clinical")
"""``selected``: the selection's output (main models); ``clinical``: clinico-demographic
variables only (the seed's ancillary models)."""

ICC_MODES: tuple[str, ...] = ("perturbed", "rescan")

LESION_FEATURE = "lesion_volume_log"
VOLUME_PREFIX = "volume__"
DISCONNECTION_PREFIX = "disconnection__"
NAWM_ROI = "nawm"
_WBV = "wbv"

DRIVER_RULES: dict[str, str] = {
    "age": "the clinical feature 'age'",
    "sp_course": "the clinical feature 'course_SP' (secondary-progressive course)",
    "lesion_load": (f"'{LESION_FEATURE}' or any '{DISCONNECTION_PREFIX}*' feature "
                    "(both are computed from the T2 lesion mask)"),
    "thalamus_volume": f"a thalamus volume z-score ('{VOLUME_PREFIX}thalamus_L' / '_R')",
    "texture_amplitude": ("any radiomic feature of a deep grey-matter ROI (thalamus, caudate, "
                          "putamen, pallidum): the generator modulates the T1 texture of all "
                          "deep-GM nuclei"),
}
"""How a selected feature is mapped to a true EDSS driver of the synthetic cohort."""

@dataclass(frozen=True)
class StudyConfig:
    """Every setting of the study's feature extraction and selection.

    Parameters
    ----------
    radiomics_params : str or mapping
        :mod:`msutils.features.radiomics` params (preset name, e.g. ``"seed001"``: first
        order + GLCM/GLRLM/GLSZM/GLDM/NGTDM on the original T1, z-scored x 100,
        bin width 5).
    n_gm_parcels : int, optional
        Use only the first ``n`` cortical parcels (small test profiles); ``None`` = all.
    nawm : bool
        Include the NAWM ROI.
    disconnection : bool
        Include the lesion-disconnection proxy per GM ROI.
    disconnection_radius_mm : float
        WM territory radius of the proxy (see :func:`disconnection_proxy`).
    icc_mode : {"perturbed", "rescan"}
        How the stability re-extraction is made (module docstring).
    icc_subjects : int
        Number of training subjects re-processed (seed: 30).
    icc_threshold : float
        Keep radiomic features with ICC >= this (seed: 0.90).
    icc_type : str
        ICC form (:data:`msutils.features.selection.ICC_TYPES`).
    icc_noise : float
        Noise SD of the perturbed re-processing, as a fraction of the brain's
        intensity SD (0: mask perturbation only).
    icc_shift_mm : float
        Mean ROI boundary displacement of the perturbed re-processing
        (:func:`resegmented_mask`).
    icc_boundary : {"patch", "random"}
        How the boundary moves (:func:`resegmented_mask` ``mode``): ``"patch"``,
        outwards in some patches and inwards in others, as a second run of a
        segmentation pipeline; ``"random"``, the whole boundary one way (a
        stress test: erosion or dilation of the whole ROI).
    variance_threshold, collinearity_threshold : float
        Seed: 0.01 and 0.8.
    lasso_cv : int
        Folds of the LASSO's penalty search.
    cfs_max_stale : int
        Weka BestFirst stale limit.
    seed : int
        Seeds the ICC subset, the perturbations and the LASSO folds.
    n_jobs : int
        Worker processes of the radiomics extraction.
    """

    radiomics_params: str | Mapping[str, Any] = "seed001"
    n_gm_parcels: int | None = None
    nawm: bool = True
    disconnection: bool = True
    disconnection_radius_mm: float = 10.0
    icc_mode: str = "perturbed"
    icc_subjects: int = 30
    icc_threshold: float = 0.90
    icc_type: str = "ICC(A,1)"
    icc_noise: float = 0.02
    icc_shift_mm: float = 1.0
    icc_boundary: str = "patch"
    variance_threshold: float = 0.01
    collinearity_threshold: float = 0.8
    lasso_cv: int = 10
    cfs_max_stale: int = 5
    seed: int = 0
    n_jobs: int = 2

    def __post_init__(self) -> None:
        check_choice("icc_mode", self.icc_mode, ICC_MODES)
        check_choice("icc_boundary", self.icc_boundary, ["patch", "random"])
        if self.n_gm_parcels is not None:
            check_int("n_gm_parcels", self.n_gm_parcels, 0)
        check_int("icc_subjects", self.icc_subjects, 3)
        check_int("lasso_cv", self.lasso_cv, 2)
        check_int("cfs_max_stale", self.cfs_max_stale, 1)
        check_int("n_jobs", self.n_jobs, 1)
        check_int("seed", self.seed, 0)
        if not 0.0 <= float(self.icc_threshold) <= 1.0:
            raise ValueError(f"'icc_threshold' must be in [0, 1]; got {self.icc_threshold!r}")
        if not float(self.icc_shift_mm) > 0.0:
            raise ValueError(f"'icc_shift_mm' must be > 0; got {self.icc_shift_mm!r}")
        if not float(self.icc_noise) >= 0.0:
            raise ValueError(f"'icc_noise' must be >= 0; got {self.icc_noise!r}")
        if not float(self.disconnection_radius_mm) > 0.0:
            raise ValueError(f"'disconnection_radius_mm' must be > 0; got {self.disconnection_radius_mm!r}")


# ---------------------------------------------------------------------------- cohort -> data
_CLINICAL_COLUMNS = ("age", "sex", "course", "disease_duration", "edss")


def subject_table(cohort: Any) -> pd.DataFrame:
    """One row per MS patient: the first session, indexed by ``subject_id``.

    Patients lacking any of age, sex, course, disease duration or EDSS are left
    out (logged). Keeps every column of the cohort table plus ``scan_id``.

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort

    Returns
    -------
    pandas.DataFrame
        Sorted by ``subject_id``.
    """
    from msutils.data.cohort import first_session

    table = cohort.table
    missing = [c for c in ("subject_id", "session", "group", "center", *_CLINICAL_COLUMNS)
               if c not in table.columns]
    if missing:
        raise ValueError(f"cohort table of {cohort.manifest_path} lacks columns {missing}")
    ms = table[table["group"].astype(str) == "MS"]
    if ms.empty:
        raise ValueError(f"cohort {cohort.manifest_path} has no MS patient (group == 'MS')")
    first = first_session(ms).copy()
    first.insert(0, "scan_id", first.index.astype(str))
    incomplete = first[["age", "disease_duration", "edss"]].isna().any(axis=1)
    incomplete |= ~first["course"].astype(str).isin(MS_COURSES)
    if incomplete.any():
        logger.warning("subject_table: %d patient(s) without complete clinical data left out: %s",
                       int(incomplete.sum()), first.loc[incomplete, "subject_id"].tolist()[:10])
        first = first[~incomplete]
    out = first.set_index("subject_id").sort_index()
    out.index = out.index.astype(str)
    out.index.name = "subject_id"
    return out


def study_rois(cohort: Any, n_gm_parcels: int | None = None) -> dict[str, list[int]]:
    """The grey-matter ROIs of the study: deep GM (labels 1-8) and cortical parcels (101+).

    Uses the project's label convention (see ``data_manifests/README.md``) and the
    cohort's label names. The NAWM ROI is extracted separately (lesions subtracted).

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
    n_gm_parcels : int, optional
        Keep only the first ``n`` parcels (by label value).

    Returns
    -------
    dict
        ROI name -> ``[label]``, deep GM first.
    """
    labels = cohort.labels
    deep = {name: [v] for v, name in sorted(labels.items()) if v in DEEP_GM_LABELS}
    parcels = [(v, name) for v, name in sorted(labels.items()) if v > PARCEL_OFFSET]
    if n_gm_parcels is not None:
        parcels = parcels[: int(n_gm_parcels)]
    if not deep and not parcels:
        raise ValueError(f"cohort {cohort.manifest_path} has no GM ROI labels (1-8 or >= 101) in "
                         "its sidecar 'roi_labels'")
    return {**deep, **{name: [v] for v, name in parcels}}


def _by_subject(frame: pd.DataFrame, subjects: pd.DataFrame) -> pd.DataFrame:
    """Re-index a per-scan frame by the subject of each scan (subjects' order)."""
    scan_to_subject = pd.Series(subjects.index, index=subjects["scan_id"].astype(str))
    out = frame.loc[subjects["scan_id"].astype(str)].copy()
    out.index = pd.Index(scan_to_subject.loc[out.index].to_numpy(), name="subject_id")
    return out


def extract_radiomics(cohort: Any, subjects: pd.DataFrame, rois: Mapping[str, Sequence[int]],
                      config: StudyConfig, *, scan_ids: Sequence[str] | None = None,
                      cache_dir: str | os.PathLike | None = None, progress: bool = True
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """T1 radiomics of the GM ROIs and the NAWM for each subject.

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
    subjects : DataFrame
        :func:`subject_table` rows (index subject_id, column ``scan_id``).
    rois : mapping
        GM ROIs (:func:`study_rois`).
    config : StudyConfig
    scan_ids : sequence of str, optional
        One scan per subject row (default: ``subjects["scan_id"]``), e.g. the
        second visits for a rescan ICC.
    cache_dir : path-like, optional
        :func:`msutils.features.radiomics.extract`'s per (scan, ROI) cache.
    progress : bool
        Progress bars.

    Returns
    -------
    features : DataFrame
        Index subject_id, columns ``roi__class__feature`` (GM ROIs, then ``nawm``).
    reasons : DataFrame
        ``subject_id, scan_id, roi, reason`` of NaN ROIs.
    """
    from msutils.features import radiomics as rad

    sids = list(subjects["scan_id"].astype(str)) if scan_ids is None else [str(s) for s in scan_ids]
    if len(sids) != len(subjects):
        raise ValueError(f"'scan_ids' has {len(sids)} entries; expected one per subject ({len(subjects)})")
    common = {"params": config.radiomics_params, "scan_ids": sids, "n_jobs": config.n_jobs,
              "cache_dir": cache_dir, "progress": progress}
    parts = [rad.extract(cohort, dict(rois), **common)]
    if config.nawm:
        parts.append(rad.extract(cohort, {NAWM_ROI: [WM_LABEL]}, subtract="lesion_mask", **common))
    reasons = pd.concat([rad.reasons(p) for p in parts], ignore_index=True)
    feats = pd.concat(parts, axis=1)
    feats.index = pd.Index(subjects.index, name="subject_id")
    scan_to_subject = dict(zip(sids, subjects.index))
    reasons.insert(0, "subject_id", reasons["scan_id"].map(scan_to_subject))
    return feats, reasons


def volume_table(cohort: Any, subjects: pd.DataFrame, rois: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """Volumes (mL) of the GM ROIs, ``wbv_ml``, ``tiv_ml`` and ``lesion_volume_ml`` per subject.

    Measured from each scan's label map, lesion mask and brain mask
    (:func:`msutils.features.volumes.cohort_volumes`).
    """
    from msutils.features.volumes import cohort_volumes

    vols = cohort_volumes(cohort, scan_ids=list(subjects["scan_id"].astype(str)), roi_sets=dict(rois))
    cols = list(rois) + ["wbv_ml", "tiv_ml", "lesion_volume_ml"]
    out = _by_subject(vols[cols], subjects)
    bad = out.columns[out.isna().all()].tolist()
    if bad:
        raise ValueError(f"volumes {bad} could not be measured: the cohort lacks the masks they need "
                         f"(masks: {cohort.mask_columns})")
    return out


def disconnection_proxy(labels: np.ndarray, lesion: np.ndarray, spacing: Sequence[float],
                        rois: Mapping[str, Sequence[int]], *, wm_labels: Sequence[int] = (WM_LABEL,),
                        radius_mm: float = 10.0) -> dict[str, float]:
    """Lesion-disconnection proxy of each GM ROI: lesion fraction of its nearby WM.

    A simple, local stand-in for NeMo's change-in-connectivity (ChaCo) score,
    which needs a tractography atlas this project does not have. Every white
    matter voxel (``wm_labels`` or lesion) within ``radius_mm`` of grey matter is
    assigned to the GM ROI whose voxel is nearest (Euclidean distance transform,
    in mm); the proxy of an ROI is the fraction of its WM territory that is
    lesioned. It ignores long-range tracts: a lesion far from an ROI never
    counts, unlike ChaCo.

    Parameters
    ----------
    labels : ndarray of int
        ROI label map.
    lesion : ndarray
        Lesion mask (non-zero = lesion), same shape.
    spacing : sequence of float
        Voxel size (mm) per axis.
    rois : mapping
        GM ROI name -> label values (every label of every ROI counts as GM).
    wm_labels : sequence of int
        White-matter label values.
    radius_mm : float
        Territory radius.

    Returns
    -------
    dict
        ROI name -> fraction in [0, 1] (0 when the ROI has no WM territory).
    """
    from scipy import ndimage

    lab = np.asarray(labels)
    les = np.asarray(lesion) != 0
    if lab.shape != les.shape:
        raise ValueError(f"'lesion' shape {les.shape} differs from 'labels' shape {lab.shape}")
    if len(spacing) != lab.ndim:
        raise ValueError(f"'spacing' has {len(spacing)} values for a {lab.ndim}-D label map")
    if not float(radius_mm) > 0:
        raise ValueError(f"'radius_mm' must be > 0; got {radius_mm!r}")
    gm_values = sorted({int(v) for vals in rois.values() for v in vals})
    gm = np.isin(lab, gm_values)
    out = {name: 0.0 for name in rois}
    if not gm.any():
        return out
    dist, idx = ndimage.distance_transform_edt(~gm, sampling=[float(s) for s in spacing],
                                               return_indices=True)
    nearest = lab[tuple(idx)]
    territory = (np.isin(lab, list(wm_labels)) | les) & (dist <= float(radius_mm)) & ~gm
    near_t = nearest[territory]
    les_t = les[territory]
    for name, vals in rois.items():
        sel = np.isin(near_t, list(vals))
        n = int(sel.sum())
        out[name] = float(les_t[sel].sum()) / n if n else 0.0
    return out


def cohort_disconnection(cohort: Any, subjects: pd.DataFrame, rois: Mapping[str, Sequence[int]],
                         *, radius_mm: float = 10.0) -> pd.DataFrame:
    """:func:`disconnection_proxy` of every subject's scan; columns ``disconnection__<roi>``."""
    rows = {}
    for subject, sid in subjects["scan_id"].astype(str).items():
        img = cohort.image(sid, "roi_labels")
        lab = np.asarray(np.rint(np.asanyarray(img.dataobj)), dtype=np.int32)
        les = cohort.array(sid, "lesion_mask", dtype=None) != 0
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        rows[subject] = disconnection_proxy(lab, les, spacing, rois, radius_mm=radius_mm)
    out = pd.DataFrame.from_dict(rows, orient="index")[list(rois)]
    out.columns = [f"{DISCONNECTION_PREFIX}{c}" for c in out.columns]
    out.index.name = "subject_id"
    return out


@dataclass
class StudyData:
    """Everything measured per subject, before any fitting.

    Attributes
    ----------
    subjects : DataFrame
        :func:`subject_table` (index subject_id; clinical columns, ``center``,
        ``scan_id``, ground-truth ``gt_*`` columns of a synthetic cohort).
    radiomics : DataFrame
        Index subject_id; ``roi__class__feature`` columns.
    volumes : DataFrame
        Index subject_id; raw mL (:func:`volume_table`).
    disconnection : DataFrame or None
        Index subject_id; ``disconnection__<roi>`` columns.
    rois : dict
        GM ROIs (name -> labels).
    reasons : DataFrame
        NaN radiomics ROIs and why.
    ground_truth : dict
        The sidecar's ``synthetic.ground_truth.edss`` ({} for a real cohort).
    """

    subjects: pd.DataFrame
    radiomics: pd.DataFrame
    volumes: pd.DataFrame
    disconnection: pd.DataFrame | None
    rois: dict[str, list[int]]
    reasons: pd.DataFrame = field(default_factory=pd.DataFrame)
    ground_truth: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        idx = self.subjects.index
        for name in ("radiomics", "volumes", "disconnection"):
            frame = getattr(self, name)
            if frame is not None and not frame.index.equals(idx):
                raise ValueError(f"StudyData.{name} must be indexed like 'subjects' (same subject_id order)")

    @property
    def edss(self) -> pd.Series:
        """EDSS per subject."""
        return self.subjects["edss"].astype(float)

    @property
    def deep_gm_rois(self) -> list[str]:
        """Names of the deep-GM ROIs (labels 1-8)."""
        return [n for n, v in self.rois.items() if any(x in DEEP_GM_LABELS for x in v)]

    def with_edss(self, edss: pd.Series) -> StudyData:
        """A copy whose subjects carry other EDSS values (for permutation checks)."""
        subjects = self.subjects.copy()
        subjects["edss"] = pd.Series(edss, dtype=float).reindex(subjects.index).to_numpy()
        return replace(self, subjects=subjects)


def load_study_data(cohort: Any, config: StudyConfig, *, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> StudyData:
    """Subjects, radiomics, volumes and disconnection proxy of a cohort (nothing fitted).

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
    config : StudyConfig
    cache_dir : path-like, optional
        Radiomics cache folder.
    progress : bool
        Progress bars of the extraction.
    """
    subjects = subject_table(cohort)
    rois = study_rois(cohort, config.n_gm_parcels)
    radiomics, reasons = extract_radiomics(cohort, subjects, rois, config, cache_dir=cache_dir,
                                           progress=progress)
    volumes = volume_table(cohort, subjects, rois)
    disc = (cohort_disconnection(cohort, subjects, rois, radius_mm=config.disconnection_radius_mm)
            if config.disconnection else None)
    truth = ((cohort.meta.get("synthetic") or {}).get("ground_truth") or {}).get("edss") or {}
    logger.info("study data: %d subjects, %d radiomic features, %d ROIs", len(subjects),
                radiomics.shape[1], len(rois) + int(config.nawm))
    return StudyData(subjects=subjects, radiomics=radiomics, volumes=volumes, disconnection=disc,
                     rois=rois, reasons=reasons, ground_truth=dict(truth))


# ---------------------------------------------------------------------------- splits
def cv_folds(split: Mapping[str, Any], train_index: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positional ``(train, validation)`` pairs of the split's inner folds over ``train_index``.

    ``split`` is a :func:`msutils.data.splits.internal_external_cv` split with subject
    folds (``inner``).
    """
    if "inner" not in split:
        raise ValueError(f"split {split.get('name')!r} has no subject-level folds ('inner'; fold_unit "
                         f"{split.get('fold_unit')!r}): the models' cross-validation needs at least as many "
                         "training subjects as folds")
    pos = {str(s): i for i, s in enumerate(train_index)}
    out = []
    for inner in split["inner"]:
        missing = [s for s in list(inner["train"]) + list(inner["test"]) if str(s) not in pos]
        if missing:
            raise ValueError(f"inner split {inner.get('name')!r} names subjects absent from the "
                             f"training rows: {missing[:5]}")
        out.append((np.sort([pos[str(s)] for s in inner["train"]]),
                    np.sort([pos[str(s)] for s in inner["test"]])))
    return out


# ---------------------------------------------------------------------------- ICC re-extraction
def icc_subset(cohort: Any, data: StudyData, train_subjects: Iterable[str], config: StudyConfig
               ) -> dict[str, str]:
    """Training subjects re-processed for the stability test -> the scan to re-extract.

    ``perturbed``: ``config.icc_subjects`` random training subjects (their study
    scan, re-processed). ``rescan``: training subjects with another session at
    the same center (their second scan), at most ``config.icc_subjects``.
    """
    train = sorted(str(s) for s in train_subjects)
    unknown = [s for s in train if s not in data.subjects.index]
    if unknown:
        raise ValueError(f"training subjects not in the study data: {unknown[:5]}")
    rng = np.random.default_rng([int(config.seed), 11])
    if config.icc_mode == "perturbed":
        pool = {s: str(data.subjects.at[s, "scan_id"]) for s in train}
    else:
        table = cohort.table
        pool = {}
        for s in train:
            first = str(data.subjects.at[s, "scan_id"])
            others = table[(table["subject_id"].astype(str) == s) & (table.index.astype(str) != first)
                           & (table["center"].astype(str) == str(data.subjects.at[s, "center"]))]
            if len(others):
                pool[s] = str(min(others.index.astype(str)))
    ids = sorted(pool)
    if len(ids) < 3:
        raise ValueError(f"icc_mode={config.icc_mode!r}: only {len(ids)} training subject(s) available "
                         "for the stability test; need >= 3")
    if len(ids) > config.icc_subjects:
        ids = sorted(rng.choice(ids, size=config.icc_subjects, replace=False).tolist())
    return {s: pool[s] for s in ids}


def resegmented_mask(mask: np.ndarray, rng: Any, spacing: Sequence[float], *, shift_mm: float = 1.0,
                     mode: str = "patch", patch_mm: float = 2.0) -> np.ndarray:
    """A re-segmentation proxy: the ROI boundary moved by about ``shift_mm``.

    The boundary moves by whole voxels of the one-voxel shells of the mask
    (6-connectivity, :func:`msutils.features.reliability.perturbed_mask`): the
    outer shell (dilation minus mask) and the inner shell (mask minus erosion).
    Each shell voxel that a mode selects changes with probability
    ``p = min(1, shift_mm / mean voxel size)``: a 1 mm image gets full one-voxel
    steps, a 2 mm image half of them (a displacement of about 1 mm in volume
    terms, whatever the resolution).

    ``mode="patch"`` (default) moves the boundary as a second run of a
    segmentation pipeline does, outwards in some places and inwards in others:
    white noise smoothed by a Gaussian of sigma ``patch_mm`` gives every voxel a
    direction; where it is >= 0 the outer shell joins the mask, where it is < 0
    the inner shell leaves it. The volume then changes by a few percent instead of
    the 20-45 % of a whole-ROI step (a 7 ml ball at 1 mm: Dice 0.90 with the
    original in both modes; mean volume change 2 % here, 21 % for a whole-ROI step). ``"erode"``, ``"dilate"`` and ``"random"``
    (one of the two, p = 0.5) move the whole boundary one way: a stress test that
    volume-dominated features (energy) and boundary-composition features
    (minimum, skewness) cannot survive.

    Parameters
    ----------
    mask : ndarray of bool
        ROI mask (not modified).
    rng : numpy.random.Generator or int
        Draws the direction field (``"patch"``) or the operation (``"random"``),
        and the changed voxels.
    spacing : sequence of float
        Voxel size (mm).
    shift_mm : float
        Mean boundary displacement (> 0).
    mode : {"patch", "erode", "dilate", "random"}
    patch_mm : float
        Smoothing sigma of the direction field of ``mode="patch"`` (mm, > 0).

    Returns
    -------
    ndarray of bool
    """
    from scipy import ndimage

    from msutils.features.reliability import perturbed_mask

    check_choice("mode", mode, ["patch", "erode", "dilate", "random"])
    if not float(shift_mm) > 0:
        raise ValueError(f"'shift_mm' must be > 0; got {shift_mm!r}")
    if not float(patch_mm) > 0:
        raise ValueError(f"'patch_mm' must be > 0; got {patch_mm!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    m = np.asarray(mask).astype(bool)
    vox = np.asarray([float(s) for s in spacing], dtype=float)
    if mode == "patch":
        direction = ndimage.gaussian_filter(gen.standard_normal(m.shape), float(patch_mm) / vox, mode="wrap")
        outer = perturbed_mask(m, mode="dilate").astype(bool) & ~m
        inner = m & ~perturbed_mask(m, mode="erode").astype(bool)
        changed = (outer & (direction >= 0)) | (inner & (direction < 0))
    else:
        changed = perturbed_mask(m, gen, mode=mode).astype(bool) != m
    p = min(1.0, float(shift_mm) / float(np.mean(vox)))
    if p < 1.0:
        changed &= gen.random(m.shape) < p
    return m ^ changed


def _perturbed_scan(task: Mapping[str, Any]) -> dict[str, list[float]]:
    """Worker: re-process one scan with perturbed ROI boundaries and image noise."""
    import nibabel as nib

    from msutils.features import radiomics as rad
    from msutils.features.reliability import perturbed_image

    img = nib.load(task["t1"])
    arr = np.asarray(img.dataobj, dtype=np.float32)
    lab = np.asarray(np.rint(np.asanyarray(nib.load(task["roi_labels"]).dataobj)), dtype=np.int32)
    les = np.asanyarray(nib.load(task["lesion_mask"]).dataobj) != 0
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    rng = np.random.default_rng([int(task["seed"]), 12, int(task["key"])])
    if task["noise"] > 0:
        brain = arr != 0
        noisy = perturbed_image(arr, rng, float(task["noise"]), mask=brain)
        arr = np.where(brain, noisy, 0.0).astype(np.float32)
    from scipy import ndimage

    objs = ndimage.find_objects(np.maximum(lab, 0))
    masks = {}
    for roi, vals in task["rois"].items():
        boxes = [objs[v - 1] for v in vals if 0 < v <= len(objs) and objs[v - 1] is not None]
        m = np.zeros(lab.shape, dtype=bool)
        if boxes:  # perturb a crop around the ROI (2 voxels of room), paste it back
            lo = np.maximum(np.min([[s.start for s in b] for b in boxes], axis=0) - 2, 0)
            hi = np.minimum(np.max([[s.stop for s in b] for b in boxes], axis=0) + 2, lab.shape)
            region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            m[region] = resegmented_mask(np.isin(lab[region], vals), rng, spacing,
                                         shift_mm=float(task["shift_mm"]), mode=task["boundary"])
        if roi in task["subtract_lesions"]:
            m &= ~les
        masks[roi] = m.T  # SimpleITK order, as msutils.features.radiomics.extract reads NIfTI files
    with rad.quiet_pyradiomics():
        df = rad.extract_masks(arr.T, masks, spacing[::-1], task["params"], margin=task["margin"])
    return {roi: df.loc[roi].tolist() for roi in masks}


def retest_radiomics(cohort: Any, data: StudyData, retest_scans: Mapping[str, str], config: StudyConfig,
                     *, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> pd.DataFrame:
    """The second extraction of the stability test (same columns as ``data.radiomics``).

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
    data : StudyData
    retest_scans : mapping
        :func:`icc_subset` output (subject -> scan).
    config : StudyConfig
    cache_dir : path-like, optional
        Radiomics cache (``rescan`` mode).
    progress : bool

    Returns
    -------
    DataFrame
        Index subject_id (``retest_scans`` order), columns of ``data.radiomics``.
    """
    from msutils.features import radiomics as rad

    subjects = data.subjects.loc[list(retest_scans)]
    if config.icc_mode == "rescan":
        feats, _ = extract_radiomics(cohort, subjects, data.rois, config, scan_ids=list(retest_scans.values()),
                                     cache_dir=cache_dir, progress=progress)
        return feats[list(data.radiomics.columns)]
    rois = {**data.rois, **({NAWM_ROI: [WM_LABEL]} if config.nawm else {})}
    names = rad.feature_names(config.radiomics_params)
    table = cohort.table
    tasks = []
    for subject, sid in retest_scans.items():
        tasks.append({
            "t1": str(table.at[sid, "t1"]), "roi_labels": str(table.at[sid, "roi_labels"]),
            "lesion_mask": str(table.at[sid, "lesion_mask"]), "rois": rois,
            "subtract_lesions": [NAWM_ROI], "params": config.radiomics_params, "margin": 2,
            "noise": float(config.icc_noise), "shift_mm": float(config.icc_shift_mm),
            "boundary": config.icc_boundary,
            "seed": int(config.seed),
            "key": zlib.crc32(str(subject).encode()),
        })
    if config.n_jobs > 1:
        rad.import_worker_modules()
    results = process_map(_perturbed_scan, tasks, n_jobs=config.n_jobs, desc="ICC re-processing", unit="scans",
                          progress=progress, preload=rad.WORKER_PRELOAD, fork_if_safe=True)
    rows = []
    for res in results:
        rows.append([v for roi in rois for v in res[roi]])
    cols = [f"{roi}__{n}" for roi in rois for n in names]
    out = pd.DataFrame(rows, index=pd.Index(list(retest_scans), name="subject_id"), columns=cols)
    return out[list(data.radiomics.columns)]


# ---------------------------------------------------------------------------- features
def feature_group(name: str) -> str:
    """Group of a design-table column: clinical, lesion, volume, disconnection or radiomics."""
    from msutils.models.regression import CLINICAL_FEATURES

    if name in CLINICAL_FEATURES:
        return "clinical"
    if name == LESION_FEATURE:
        return "lesion"
    if name.startswith(VOLUME_PREFIX):
        return "volume"
    if name.startswith(DISCONNECTION_PREFIX):
        return "disconnection"
    if name.count("__") == 2:
        return "radiomics"
    raise ValueError(f"cannot tell the group of feature {name!r}")


def _volume_frame(data: StudyData) -> pd.DataFrame:
    """Volumes named ``volume__<roi>`` / ``volume__wbv`` plus the covariates age, sex, tiv."""
    vols = data.volumes
    frame = pd.DataFrame(index=data.subjects.index)
    for roi in data.rois:
        frame[f"{VOLUME_PREFIX}{roi}"] = vols[roi].astype(float)
    frame[f"{VOLUME_PREFIX}{_WBV}"] = vols["wbv_ml"].astype(float)
    frame["age"] = data.subjects["age"].astype(float)
    frame["sex"] = data.subjects["sex"].astype(str)
    frame["tiv"] = vols["tiv_ml"].astype(float)
    return frame


def candidate_features(data: StudyData, scorer: Any, subjects: Sequence[str] | None = None) -> pd.DataFrame:
    """The full design table (every candidate feature) of ``subjects``.

    Parameters
    ----------
    data : StudyData
    scorer : msutils.features.volumes.NormativeZScorer
        Fitted on the training subjects.
    subjects : sequence of str, optional
        Default: all.
    """
    from msutils.models.regression import clinical_features

    ids = list(data.subjects.index) if subjects is None else [str(s) for s in subjects]
    clin = clinical_features(data.subjects.loc[ids])
    lesion = np.log1p(data.volumes.loc[ids, "lesion_volume_ml"].astype(float)).rename(LESION_FEATURE)
    z = scorer.transform(_volume_frame(data).loc[ids])
    parts = [clin, lesion.to_frame(), z]
    if data.disconnection is not None:
        parts.append(data.disconnection.loc[ids])
    parts.append(data.radiomics.loc[ids])
    return pd.concat(parts, axis=1)


@dataclass
class SelectionResult:
    """The fitted feature pipeline of one training set.

    Attributes
    ----------
    train_subjects : list of str
    scorer : msutils.features.volumes.NormativeZScorer
        Volume z-scores fitted on the training subjects.
    icc : msutils.features.reliability.IccResult or None
        Stability test (``None``: no re-extraction given).
    pipeline : msutils.features.selection.SelectionPipeline
        Variance -> collinearity -> LASSO -> CFS, fitted on the training subjects.
    candidates : list of str
        Columns that entered the selection.
    dropped_missing : list of str
        Columns dropped because a training subject had no value (e.g. an empty ROI).
    medians : pandas.Series
        Training medians of ``candidates`` (fill values for missing test values).
    clinical : list of str
        Clinical columns of the ancillary models (non-constant in training).
    groups : dict
        Column -> :func:`feature_group` of every candidate.
    """

    train_subjects: list[str]
    scorer: Any
    icc: Any
    pipeline: Any
    candidates: list[str]
    dropped_missing: list[str]
    medians: pd.Series
    clinical: list[str]
    groups: dict[str, str] = field(repr=False)

    @property
    def selected(self) -> list[str]:
        """Selected feature names (input order)."""
        return [str(c) for c in self.pipeline.get_feature_names_out()]

    def stages(self) -> pd.DataFrame:
        """Features left after each stage, in total and per group (paper counts beside)."""
        order = ["clinical", "lesion", "volume", "disconnection", "radiomics"]
        rows = []
        n_total = len(self.candidates) + len(self.dropped_missing)
        rows.append({"stage": "extracted", "n_features": n_total,
                     **{g: sum(1 for c in self.groups if self.groups[c] == g)
                        + sum(1 for c in self.dropped_missing if feature_group(c) == g) for g in order}})
        for stage, names in self.pipeline.survivors_.items():
            label = {"input": "complete in training", "stability": f"ICC >= {self._icc_threshold()}",
                     "variance": "variance > 0.01", "collinearity": "|r| <= 0.8",
                     "lasso": "LASSO", "cfs": "CFS best first"}.get(stage, stage)
            counts = {g: 0 for g in order}
            for c in names:
                counts[self.groups[c]] += 1
            rows.append({"stage": label, "n_features": len(names), **counts})
        out = pd.DataFrame(rows).set_index("stage")
        out.insert(1, "removed", (-out["n_features"].diff()).fillna(0).astype(int))
        return out

    def _icc_threshold(self) -> str:
        return f"{self.icc.threshold:.2f}" if self.icc is not None else "(not tested)"


def _complete_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    values = frame.to_numpy(dtype=float)
    ok = np.isfinite(values).all(axis=0)
    cols = list(frame.columns)
    return [c for c, k in zip(cols, ok) if k], [c for c, k in zip(cols, ok) if not k]


def select_features(data: StudyData, train_subjects: Iterable[str], config: StudyConfig, *,
                    retest: pd.DataFrame | None = None, fit_log: Any = None) -> SelectionResult:
    """Fit the feature pipeline on the training subjects only.

    1. normative z-scores of the GM ROI volumes and WBV (``volume ~ age + sex + TIV``,
       :class:`msutils.features.volumes.NormativeZScorer`);
    2. columns with a missing value in a training subject are dropped;
    3. ICC of the radiomic features between ``data.radiomics`` and ``retest``
       (:func:`msutils.features.reliability.icc_stability`) on the retest subjects, which must
       be training subjects;
    4. :class:`msutils.features.selection.SelectionPipeline` with the ICC keep list (scope:
       the radiomic columns), EDSS as target.

    Parameters
    ----------
    data : StudyData
    train_subjects : iterable of str
    config : StudyConfig
    retest : DataFrame, optional
        :func:`retest_radiomics` output; ``None`` skips the stability stage.
    fit_log : msutils.data.leakage.FitLog, optional
        Shared by every fitted step.
    """
    from msutils.models.regression import clinical_features
    from msutils.features.reliability import icc_stability
    from msutils.features.selection import SelectionPipeline
    from msutils.features.volumes import NormativeZScorer

    train = [str(s) for s in train_subjects]
    unknown = [s for s in train if s not in data.subjects.index]
    if unknown:
        raise ValueError(f"training subjects not in the study data: {unknown[:5]}")
    if len(set(train)) != len(train):
        raise ValueError("'train_subjects' lists a subject more than once")
    vol_frame = _volume_frame(data).loc[train]
    vol_cols = [c for c in vol_frame.columns if c.startswith(VOLUME_PREFIX)]
    scorer = NormativeZScorer(covariates=("age", "sex", "tiv"), columns=vol_cols, fit_log=fit_log)
    scorer.fit(vol_frame)
    X = candidate_features(data, scorer, train)
    candidates, dropped = _complete_columns(X)
    if dropped:
        logger.warning("select_features: %d feature(s) with missing training values dropped, e.g. %s",
                       len(dropped), dropped[:3])
    X = X[candidates]
    medians = X.median()
    groups = {c: feature_group(c) for c in candidates}
    radiomic = [c for c in candidates if groups[c] == "radiomics"]

    icc = None
    stable = None
    if retest is not None:
        rt = [str(s) for s in retest.index]
        outside = sorted(set(rt) - set(train))
        if outside:
            raise ValueError(f"'retest' subjects must be training subjects; not in training: {outside[:5]}")
        cols = [c for c in radiomic if c in retest.columns]
        icc = icc_stability(data.radiomics.loc[rt, cols], retest.loc[rt, cols], threshold=config.icc_threshold,
                            icc_type=config.icc_type, fit_log=fit_log)
        stable = icc.keep
    y = data.edss.loc[train]
    pipe = SelectionPipeline(stable_features=stable, stability_scope=radiomic,
                             variance_threshold=config.variance_threshold,
                             collinearity_threshold=config.collinearity_threshold,
                             lasso_cv=config.lasso_cv, cfs_max_stale=config.cfs_max_stale,
                             seed=config.seed, fit_log=fit_log)
    pipe.fit(X, y)
    clin = clinical_features(data.subjects.loc[train])
    clinical = [c for c in clin.columns if np.ptp(clin[c].to_numpy()) > 0]
    return SelectionResult(train_subjects=train, scorer=scorer, icc=icc, pipeline=pipe,
                           candidates=candidates, dropped_missing=dropped, medians=medians,
                           clinical=clinical, groups=groups)


def design_matrix(selection: SelectionResult, data: StudyData, subjects: Sequence[str],
                  columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Selected features (or ``columns``) of any subjects, with the training-fitted transforms.

    A missing value (e.g. an ROI empty in a test scan) is filled with the training
    median (logged).
    """
    cols = selection.selected if columns is None else list(columns)
    X = candidate_features(data, selection.scorer, subjects)[cols]
    missing = ~np.isfinite(X.to_numpy(dtype=float))
    if missing.any():
        logger.warning("design_matrix: %d missing value(s) filled with training medians", int(missing.sum()))
        X = X.where(~missing, selection.medians[cols], axis=1)
    return X


def feature_matrix(selection: SelectionResult, data: StudyData, subjects: Sequence[str],
                   feature_set: str = "selected") -> pd.DataFrame:
    """Design matrix of a feature set (:data:`FEATURE_SETS`)."""
    from msutils.models.regression import clinical_features

    check_choice("feature_set", feature_set, FEATURE_SETS)
    ids = [str(s) for s in subjects]
    if feature_set == "selected":
        return design_matrix(selection, data, ids)
    return clinical_features(data.subjects.loc[ids])[selection.clinical]


def fit_models(selection: SelectionResult, data: StudyData,
               hyperparameters: Mapping[str, Mapping[str, Any] | None] | None = None, *,
               feature_set: str = "selected", models: Sequence[str] = MODEL_ORDER, seed: int = 0,
               fit_log: Any = None) -> dict[str, Any]:
    """Fit the regressors on the training subjects of ``selection``.

    Parameters
    ----------
    selection : SelectionResult
    data : StudyData
    hyperparameters : mapping, optional
        Model -> ``model__...`` parameters (e.g. the tuned ones); missing -> defaults.
    feature_set : {"selected", "clinical"}
    models : sequence of str
        Keys of :data:`msutils.models.regression.MODELS`.
    seed : int
    fit_log : msutils.data.leakage.FitLog, optional

    Returns
    -------
    dict
        Model name -> fitted pipeline.
    """
    from msutils.models.regression import fit_final

    train = selection.train_subjects
    X = feature_matrix(selection, data, train, feature_set)
    y = data.edss.loc[train]
    hp = dict(hyperparameters or {})
    return {m: fit_final(m, hp.get(m), X, y, seed=seed, fit_log=fit_log) for m in models}


@dataclass
class StudyFit:
    """:func:`fit_study` output: the selection, the fitted models and their predictions.

    Attributes
    ----------
    selection : SelectionResult
    models : dict
        ``{feature_set: {model: fitted pipeline}}`` (fitted on all training subjects).
    predictions : dict
        ``{feature_set: {cohort: DataFrame}}`` (index subject_id, one column per
        model): ``"training"`` holds the out-of-fold predictions of the
        cross-validation (when folds were given), then one entry per test set.
    """

    selection: SelectionResult
    models: dict[str, dict[str, Any]]
    predictions: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)

    def predict(self, data: StudyData, subjects: Sequence[str], feature_set: str = "selected") -> pd.DataFrame:
        """Predicted EDSS of ``subjects``: one column per model."""
        X = feature_matrix(self.selection, data, subjects, feature_set)
        return predictions(self.models[feature_set], X)

    def scores(self, edss: pd.Series) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """:func:`msutils.stats.regression_metrics` of every prediction against the observed ``edss``.

        Returns
        -------
        dict
            ``{feature_set: {cohort: {model: metrics}}}`` (Table 3's cells).
        """
        from msutils.stats import regression_metrics

        y = pd.Series(edss, dtype=float)
        return {fs: {c: {m: regression_metrics(y.loc[p.index], p[m]) for m in p} for c, p in per.items()}
                for fs, per in self.predictions.items()}


def fit_study(data: StudyData, train_subjects: Iterable[str], config: StudyConfig, *,
              retest: pd.DataFrame | None = None, selection: SelectionResult | None = None,
              hyperparameters: Mapping[str, Mapping[str, Mapping[str, Any] | None]] | None = None,
              folds: Sequence[Mapping[str, Any]] | None = None,
              test_sets: Mapping[str, Sequence[str]] | None = None,
              feature_sets: Sequence[str] = FEATURE_SETS, models: Sequence[str] = MODEL_ORDER,
              fit_log: Any = None) -> StudyFit:
    """Everything fitted in the study, in one call: selection, final models, their predictions.

    1. :func:`select_features` on the training subjects (or the given ``selection``,
       which must have been fitted on the same subjects);
    2. per feature set, every model refitted with its hyper-parameters on all training
       subjects (:func:`fit_models`);
    3. with ``folds``: the out-of-fold predictions of the training subjects (the
       seed's cross-validated "training" row of Table 3,
       :func:`msutils.models.regression.cross_val_predictions`);
    4. with ``test_sets``: the final models' predictions of each test set.

    Only the training subjects' EDSS and features are used; test subjects' values
    can change without changing anything fitted or predicted (the leakage canary of
    the tests calls this function twice, as the notebook calls it once).

    Parameters
    ----------
    data, train_subjects, config, retest, fit_log
        See :func:`select_features`.
    selection : SelectionResult, optional
        An already fitted selection of these training subjects (the notebook's
        shared stage); ``retest`` is then unused.
    hyperparameters : mapping, optional
        ``{feature_set: {model: params}}``; default hyper-parameters otherwise.
    folds : sequence of splits, optional
        The cross-validation folds over the training subjects (the split's ``inner``).
    test_sets : mapping, optional
        ``{name: subject ids}``, e.g. ``{"internal": split["test"], "external": split["external"]}``.
    feature_sets : sequence of str
        Among :data:`FEATURE_SETS`.
    models : sequence of str
    """
    from msutils.models.regression import cross_val_predictions

    train = [str(s) for s in train_subjects]
    if selection is None:
        selection = select_features(data, train, config, retest=retest, fit_log=fit_log)
    elif sorted(selection.train_subjects) != sorted(train):
        raise ValueError("'selection' was fitted on other subjects than 'train_subjects'")
    hp = dict(hyperparameters or {})
    fitted = {fs: fit_models(selection, data, hp.get(fs), feature_set=fs, models=models, seed=config.seed,
                             fit_log=fit_log) for fs in feature_sets}
    preds: dict[str, dict[str, pd.DataFrame]] = {}
    for fs in feature_sets:
        preds[fs] = {}
        if folds is not None:
            X = feature_matrix(selection, data, selection.train_subjects, fs)
            y = data.edss.loc[selection.train_subjects]
            cv = cv_folds({"name": "folds", "inner": list(folds)}, selection.train_subjects)
            preds[fs]["training"] = pd.DataFrame(
                {m: cross_val_predictions(m, (hp.get(fs) or {}).get(m), X, y, cv, seed=config.seed,
                                          fit_log=fit_log) for m in models}, index=X.index)
        for name, ids in (test_sets or {}).items():
            preds[fs][name] = predictions(fitted[fs], feature_matrix(selection, data, ids, fs))
    return StudyFit(selection=selection, models=fitted, predictions=preds)


@dataclass(frozen=True)
class SharedStage:
    """What every cross-validation fold of the study shares (:func:`shared_stage`).

    Attributes
    ----------
    data : StudyData
    split : dict
        The study split (:func:`msutils.data.splits.internal_external_cv`), as read
        back from its splits file.
    retest_scans : dict
        Training subject -> re-processed scan (:func:`icc_subset`).
    retest : DataFrame
        :func:`retest_radiomics`.
    selection : SelectionResult
        Fitted on the training subjects.
    fit_log : dict
        :meth:`msutils.data.leakage.FitLog.to_dict` of the fitted steps.
    seconds : dict
        ``features``, ``icc_reprocessing``, ``total``.
    """

    data: StudyData
    split: dict[str, Any]
    retest_scans: dict[str, str]
    retest: pd.DataFrame
    selection: SelectionResult
    fit_log: dict[str, Any]
    seconds: dict[str, float]

    @property
    def train(self) -> list[str]:
        """Training subjects, in the selection's order."""
        return list(self.selection.train_subjects)

    @property
    def test_sets(self) -> dict[str, list[str]]:
        """``{"internal": split["test"], "external": split["external"]}``."""
        return {"internal": list(self.split["test"]), "external": list(self.split["external"])}


def shared_stage(cohort: Any, config: StudyConfig, work_dir: str | os.PathLike, *,
                 internal_center: str | None = None, test_size: float = 0.2, n_folds: int = 10,
                 progress: bool = True) -> SharedStage:
    """The study's steps before the model tuning, in one call.

    1. :func:`load_study_data` (radiomics cached per scan and ROI under
       ``<work_dir>/radiomics_cache``);
    2. the split: the internal center's subjects 80/20 (``test_size``), the other
       center external, ``n_folds`` CV folds over the training subjects, written once
       to ``<work_dir>/splits_*.json`` and reused
       (:func:`msutils.data.splits.load_or_create_internal_external_cv`);
    3. the stability re-extraction of ``config.icc_subjects`` training subjects
       (:func:`icc_subset`, :func:`retest_radiomics`);
    4. :func:`select_features` on the training subjects, recording every fitted step.

    Parameters
    ----------
    cohort : msutils.data.cohort.Cohort
    config : StudyConfig
        ``config.seed`` also seeds the split.
    work_dir : path-like
        The notebook's output folder.
    internal_center : str, optional
        Default: the center with the most patients.
    test_size : float
        Internal test share (seed: 0.2).
    n_folds : int
        Cross-validation folds (seed: 10).
    progress : bool
        Progress lines of the extraction.
    """
    import time

    from msutils.data.leakage import FitLog
    from msutils.data.splits import load_or_create_internal_external_cv

    work = Path(work_dir)
    t0 = time.perf_counter()
    data = load_study_data(cohort, config, cache_dir=work / "radiomics_cache", progress=progress)
    t_features = time.perf_counter() - t0
    split = load_or_create_internal_external_cv(
        work, data.subjects.reset_index(), cohort.content_hash(), internal_center=internal_center,
        test_size=test_size, n_folds=n_folds, seed=config.seed)
    retest_scans = icc_subset(cohort, data, split["train"], config)
    retest = retest_radiomics(cohort, data, retest_scans, config, cache_dir=work / "radiomics_cache",
                              progress=progress)
    t_retest = time.perf_counter() - t0 - t_features
    log = FitLog()
    selection = select_features(data, split["train"], config, retest=retest, fit_log=log)
    return SharedStage(data=data, split=split, retest_scans=retest_scans, retest=retest, selection=selection,
                       fit_log=log.to_dict(), seconds={"features": t_features, "icc_reprocessing": t_retest,
                                                       "total": time.perf_counter() - t0})


def tune_fold(shared: SharedStage, fold: int, *, grid: str = "small", seed: int = 0,
              feature_sets: Sequence[str] = FEATURE_SETS, models: Sequence[str] = MODEL_ORDER) -> dict[str, Any]:
    """One cross-validation fold of the hyper-parameter search (one papermill fold run).

    Every grid point of every model (:func:`msutils.models.regression.cv_fold_scores`)
    fitted on the fold's training part and scored on its validation part, per feature set.

    Returns
    -------
    dict
        ``scores`` (one row per feature set, model and grid point) and ``fit_log``
        (:meth:`msutils.data.leakage.FitLog.to_dict`).
    """
    from msutils.data.leakage import FitLog
    from msutils.models.regression import cv_fold_scores

    train = shared.train
    y = shared.data.edss.loc[train]
    cv = cv_folds(shared.split, train)
    log = FitLog()
    X = {fs: feature_matrix(shared.selection, shared.data, train, fs) for fs in feature_sets}
    scores = [cv_fold_scores(m, X[fs], y, cv, int(fold), grid=grid, seed=seed, fit_log=log).assign(feature_set=fs)
              for fs in feature_sets for m in models]
    return {"scores": pd.concat(scores, ignore_index=True), "fit_log": log.to_dict()}


def choose_hyperparameters(cv_scores: pd.DataFrame, n_folds: int, *,
                           feature_sets: Sequence[str] = FEATURE_SETS, models: Sequence[str] = MODEL_ORDER
                           ) -> dict[str, dict[str, Any]]:
    """The winning grid point of every model and feature set over the folds of :func:`tune_fold`.

    Returns
    -------
    dict
        ``{feature_set: {model: msutils.models.regression.HyperparameterChoice}}``.
    """
    from msutils.models.regression import select_hyperparameters

    return {fs: {m: select_hyperparameters(cv_scores[(cv_scores["feature_set"] == fs) & (cv_scores["model"] == m)],
                                           n_folds=n_folds)
                 for m in models} for fs in feature_sets}


def predictions(models: Mapping[str, Any], X: pd.DataFrame) -> pd.DataFrame:
    """Predictions of fitted models on ``X``: index of ``X``, one column per model."""
    return pd.DataFrame({m: np.asarray(model.predict(X), dtype=float) for m, model in models.items()},
                        index=X.index)


def abs_errors(y_true: pd.Series, preds: pd.DataFrame) -> pd.DataFrame:
    """Long table ``subject, model, abs_error`` (input of :func:`msutils.stats.rm_anova_errors`)."""
    y = pd.Series(y_true, dtype=float).reindex(preds.index)
    if y.isna().any():
        raise ValueError(f"'y_true' lacks subjects {preds.index[y.isna()].tolist()[:5]}")
    err = preds.sub(y, axis=0).abs()
    err.index.name = "subject"
    return err.reset_index().melt(id_vars="subject", var_name="model", value_name="abs_error")


# ---------------------------------------------------------------------------- tables
_COHORT_LABELS = {"training": "Training (cross-validation)", "internal": "Internal test",
                  "external": "External test"}


#: Table 3's metric columns: score key -> column label. The seed's "R2" is the squared Pearson r
#: (``pearson_r2``); the coefficient of determination (``r2_score``) stands beside it, labelled.
TABLE3_METRICS: dict[str, str] = {"r": "r", "pearson_r2": "R² (= r², paper)",
                                  "r2_score": "R² (coefficient of determination)", "mae": "MAE"}


def table3(scores: Mapping[str, Mapping[str, Mapping[str, float]]],
           pvalues: Mapping[str, float] | None = None, *, models: Sequence[str] = MODEL_ORDER,
           labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The seed's Table 3 layout: one row per cohort, (model, metric) columns, P value.

    Metrics: :data:`TABLE3_METRICS`. The seed's R² is the squared Pearson correlation
    (``pearson_r2``); the coefficient of determination (``r2_score``) is shown beside
    it, labelled (NaN where the scores lack it, e.g. the paper's table).

    Parameters
    ----------
    scores : mapping
        ``{cohort: {model: {"r", "pearson_r2", "r2_score", "mae"}}}`` (cohorts ``training``,
        ``internal``, ``external``), e.g. :func:`msutils.stats.regression_metrics` values.
    pvalues : mapping, optional
        ``{cohort: RM-ANOVA p}`` (shown formatted; missing -> "-").
    models : sequence of str
    labels : mapping, optional
        Cohort -> row label.
    """
    from msutils.models.regression import MODELS
    from msutils.stats import format_p

    labels = {**_COHORT_LABELS, **dict(labels or {})}
    cols = pd.MultiIndex.from_tuples([(MODELS[m].label, label) for m in models for label in TABLE3_METRICS.values()])
    rows, index = [], []
    for cohort, per_model in scores.items():
        rows.append([per_model.get(m, {}).get(k, np.nan) for m in models for k in TABLE3_METRICS])
        index.append(labels.get(cohort, cohort))
    out = pd.DataFrame(rows, index=pd.Index(index, name="cohort"), columns=cols).astype(float).round(3)
    p = dict(pvalues or {})
    out[("", "P value")] = [format_p(p[c]) if c in p and p[c] is not None else "-" for c in scores]
    return out


def paper_table3_long(scores: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None
                      ) -> dict[str, dict[str, float]]:
    """``{"<cohort> / <model>": {metric label: value}}`` rows (the paper's Table 3 by default)
    for :func:`msutils.pipeline.report.paper_vs_ours`; metrics the scores lack are left out."""
    from msutils.models.regression import MODELS
    from msutils.studies import paper_numbers

    src = paper_numbers.load("001")["table3"] if scores is None else scores
    return {f"{_COHORT_LABELS.get(c, c)} / {MODELS[m].label}":
            {label: float(v[k]) for k, label in TABLE3_METRICS.items() if k in v}
            for c, per in src.items() for m, v in per.items()}


# ---------------------------------------------------------------------------- ground truth
def driver_values(subjects: pd.DataFrame, ground_truth: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """True EDSS driver values per subject (synthetic cohorts).

    Definitions (:data:`msutils.synth.EDSS_DRIVERS`, sidecar ``driver_definitions``):
    ``lesion_load = ln(gt_lesion_volume_design_ml + 0.1)``,
    ``thalamus_volume = gt_thalamus_volume_factor``,
    ``texture_amplitude = gt_texture_amplitude``, ``age``,
    ``sp_course = course == "SP"``.

    Raises
    ------
    ValueError
        The table lacks the ground-truth columns (not a synthetic cohort).
    """
    need = ["gt_lesion_volume_design_ml", "gt_thalamus_volume_factor", "gt_texture_amplitude", "age", "course"]
    missing = [c for c in need if c not in subjects.columns]
    if missing:
        raise ValueError(f"no ground truth: the subject table lacks columns {missing}")
    out = pd.DataFrame({
        "lesion_load": np.log(subjects["gt_lesion_volume_design_ml"].astype(float) + 0.1),
        "thalamus_volume": subjects["gt_thalamus_volume_factor"].astype(float),
        "texture_amplitude": subjects["gt_texture_amplitude"].astype(float),
        "age": subjects["age"].astype(float),
        "sp_course": (subjects["course"].astype(str) == "SP").astype(float),
    }, index=subjects.index)
    drivers = list((ground_truth or {}).get("drivers") or out.columns)
    unknown = [d for d in drivers if d not in out.columns]
    if unknown:
        raise ValueError(f"ground truth names drivers this module cannot compute: {unknown}")
    return out[drivers]


def driver_of_feature(name: str, deep_gm_rois: Sequence[str] | None = None) -> str | None:
    """The true driver a feature stands for, by the rules of :data:`DRIVER_RULES` (or None).

    Parameters
    ----------
    name : str
        Design-table column.
    deep_gm_rois : sequence of str, optional
        Deep-GM ROI names (default: names starting with thalamus, caudate, putamen, pallidum).
    """
    group = feature_group(name)
    if group == "clinical":
        return {"age": "age", "course_SP": "sp_course"}.get(name)
    if group in ("lesion", "disconnection"):
        return "lesion_load"
    if group == "volume":
        return "thalamus_volume" if name[len(VOLUME_PREFIX):].startswith("thalamus") else None
    roi = name.split("__")[0]
    deep = (roi in deep_gm_rois) if deep_gm_rois is not None else roi.startswith(DEEP_GM_STRUCTURES)
    return "texture_amplitude" if deep else None


def drivers_recovered(selected: Iterable[str], drivers: Sequence[str],
                      deep_gm_rois: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Driver -> the selected features that stand for it (empty list: not recovered)."""
    out: dict[str, list[str]] = {d: [] for d in drivers}
    for f in selected:
        d = driver_of_feature(f, deep_gm_rois)
        if d in out:
            out[d].append(f)
    return out


def driver_correlations(X: pd.DataFrame, drivers: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of every feature (rows) with every true driver (columns), on shared rows."""
    common = X.index.intersection(drivers.index)
    a = X.loc[common].astype(float)
    b = drivers.loc[common].astype(float)
    za = (a - a.mean()) / a.std(ddof=0).replace(0, np.nan)
    zb = (b - b.mean()) / b.std(ddof=0).replace(0, np.nan)
    return (za.T @ zb / len(common)).astype(float)


# ---------------------------------------------------------------------------- Table 2
_CLASS_INFO: dict[str, tuple[str, str]] = {
    "firstorder": ("First order", "Describes the distribution of voxel intensities"),
    "glcm": ("Gray level co-occurrence matrix",
             "Quantifies how often pairs of voxels with specific values occur in a specified spatial range"),
    "glrlm": ("Gray level run length matrix",
              "Quantifies gray level runs (consecutive voxels with the same gray level)"),
    "glszm": ("Gray level size-zone matrix",
              "Quantifies gray level zones (connected voxels sharing the same gray level)"),
    "gldm": ("Gray level dependence matrix",
             ("Quantifies gray level dependencies (connected voxels within a distance that are "
              "dependent on the center voxel)")),
    "ngtdm": ("Neighbouring gray tone difference matrix",
              "Quantifies the difference between a gray value and the average gray value of its neighbours"),
}

_FEATURE_MEANING: dict[str, str] = {
    # first order
    "10Percentile": "10th percentile of the intensities", "90Percentile": "90th percentile of the intensities",
    "Energy": "Magnitude of voxel values (sum of squares; grows with ROI size)",
    "Entropy": "Uncertainty / randomness of the intensity histogram",
    "InterquartileRange": "Spread of the middle 50 % of intensities",
    "Kurtosis": "Peakedness of the intensity distribution", "Maximum": "Maximum intensity",
    "MeanAbsoluteDeviation": "Mean distance of intensities from their mean", "Mean": "Mean intensity",
    "Median": "The median gray level intensity", "Minimum": "Minimum intensity",
    "Range": "Range of intensities",
    "RobustMeanAbsoluteDeviation": "Mean absolute deviation of the intensities within the 10-90th percentiles",
    "RootMeanSquared": "Square root of the mean squared intensity", "Skewness": "Asymmetry of the intensity distribution",
    "TotalEnergy": "Energy scaled by the voxel volume", "Uniformity": "Homogeneity of the intensity histogram",
    "Variance": "Spread of the intensities around the mean",
    # GLCM
    "Autocorrelation": "Magnitude of the fineness and coarseness of texture",
    "ClusterProminence": "Skewness and asymmetry of the GLCM",
    "ClusterShade": "Skewness and uniformity of the GLCM",
    "ClusterTendency": "Groupings of voxels with similar gray levels",
    "Contrast": "Local intensity variation", "Correlation":
        "Linear dependency of gray level values to their respective voxels in the GLCM",
    "DifferenceAverage": "Mean gray level difference of neighbouring voxels",
    "DifferenceEntropy": "Randomness of neighbourhood intensity differences",
    "DifferenceVariance": "Heterogeneity of neighbourhood intensity differences",
    "Id": "Inverse difference: local homogeneity", "Idm": "Inverse difference moment: local homogeneity",
    "Idmn": "Normalized inverse difference moment", "Idn": "Normalized inverse difference",
    "Imc1": "Informational measure of correlation 1: complexity of the texture",
    "Imc2": "Informational measure of correlation 2: complexity of the texture",
    "InverseVariance": "Inverse variance of neighbourhood differences",
    "JointAverage": "Mean gray level of the GLCM", "JointEnergy": "Homogeneous patterns in the image",
    "JointEntropy": "Randomness of the neighbourhood intensity values",
    "MCC": "Maximal correlation coefficient: complexity of the texture",
    "MaximumProbability": "Occurrence of the most predominant pair of neighbouring intensities",
    "SumAverage": "Relation between pairs of lower and higher intensity values",
    "SumEntropy": "Sum of neighbourhood intensity value differences",
    "SumSquares": "Distribution of neighbouring intensity pairs about the mean",
    # GLRLM
    "GrayLevelNonUniformity": "Variability of gray level intensities (size dependent)",
    "GrayLevelNonUniformityNormalized": "Variability of gray level intensities (normalized)",
    "GrayLevelVariance": "Variance of gray levels",
    "HighGrayLevelRunEmphasis": "Concentration of high gray-level values",
    "LongRunEmphasis": "Distribution of long run lengths (coarse texture)",
    "LongRunHighGrayLevelEmphasis": "Joint distribution of long runs with high gray levels",
    "LongRunLowGrayLevelEmphasis": "Joint distribution of long runs with low gray levels",
    "LowGrayLevelRunEmphasis": "Concentration of low gray-level values",
    "RunEntropy": "Uncertainty of run lengths and gray levels",
    "RunLengthNonUniformity": "Similarity of run lengths (size dependent)",
    "RunLengthNonUniformityNormalized": "Similarity of run lengths (normalized)",
    "RunPercentage": "Coarseness of the texture (runs per voxel)", "RunVariance": "Variance of run lengths",
    "ShortRunEmphasis": "Distribution of short run lengths (fine texture)",
    "ShortRunHighGrayLevelEmphasis": "Joint distribution of short runs with high gray levels",
    "ShortRunLowGrayLevelEmphasis": "Joint distribution of short runs with low gray levels",
    # GLSZM
    "HighGrayLevelZoneEmphasis": "Distribution of higher gray-level zones",
    "LargeAreaEmphasis": "Distribution of large zones (coarse texture)",
    "LargeAreaHighGrayLevelEmphasis": "Joint distribution of large zones with high gray levels",
    "LargeAreaLowGrayLevelEmphasis": "Joint distribution of large zones with low gray levels",
    "LowGrayLevelZoneEmphasis": "Distribution of lower gray-level zones",
    "SizeZoneNonUniformity": "Variability of size-zone volumes",
    "SizeZoneNonUniformityNormalized": "Variability of size-zone volumes (normalized)",
    "SmallAreaEmphasis": "Distribution of small zones (fine texture)",
    "SmallAreaHighGrayLevelEmphasis": "Joint distribution of small zones with high gray levels",
    "SmallAreaLowGrayLevelEmphasis": "Joint distribution of small zones with low gray levels",
    "ZoneEntropy": "Uncertainty of zone sizes and gray levels", "ZonePercentage": "Coarseness (zones per voxel)",
    "ZoneVariance": "Variance of zone sizes",
    # GLDM
    "DependenceEntropy": "Uncertainty of dependence sizes and gray levels",
    "DependenceNonUniformity": "Similarity of dependence sizes (size dependent)",
    "DependenceNonUniformityNormalized": "Similarity of dependence sizes (normalized)",
    "DependenceVariance": "Variance of dependence sizes",
    "HighGrayLevelEmphasis": "Distribution of higher gray-level values",
    "LargeDependenceEmphasis": "Distribution of large dependencies (homogeneous texture)",
    "LargeDependenceHighGrayLevelEmphasis": "Joint distribution of large dependence with higher gray levels",
    "LargeDependenceLowGrayLevelEmphasis": "Joint distribution of large dependence with lower gray levels",
    "LowGrayLevelEmphasis": "Distribution of lower gray-level values",
    "SmallDependenceEmphasis": "Distribution of small dependencies (heterogeneous texture)",
    "SmallDependenceHighGrayLevelEmphasis": "Joint distribution of small dependence with higher gray levels",
    "SmallDependenceLowGrayLevelEmphasis": "Joint distribution of small dependence with lower gray levels",
    # NGTDM
    "Busyness": "Rapid changes of intensity between neighbouring voxels",
    "Coarseness": "Spatial rate of change of intensity (coarse texture)",
    "Complexity": "Non-uniformity and rapid changes of gray levels",
    "Strength": "Primitives that are easily defined and visible",
}
# class-specific meanings where the same feature name means something else
_FEATURE_MEANING_BY_CLASS: dict[tuple[str, str], str] = {
    ("ngtdm", "Contrast"): "Spatial intensity change and overall gray-level range",
    ("glszm", "GrayLevelNonUniformity"): "Variability of gray levels across zones (size dependent)",
    ("glszm", "GrayLevelNonUniformityNormalized"): "Variability of gray levels across zones (normalized)",
    ("glszm", "GrayLevelVariance"): "Variance of gray levels across zones",
}

_DEEP_GM_TEXT = {"thalamus": "thalamus", "caudate": "caudate nucleus", "putamen": "putamen",
                 "pallidum": "pallidum"}


def roi_description(roi: str, centroid: Sequence[float] | None = None, n_parcels: int | None = None) -> str:
    """Anatomical label of an ROI name, e.g. ``thalamus_L`` -> "Left thalamus".

    Cortical parcels of the synthetic atlas (``gm_001`` ...) are k-means
    clusters, the first half in the left hemisphere; ``centroid`` (MNI mm)
    locates them.
    """
    side = {"L": "Left", "R": "Right"}
    if roi == NAWM_ROI:
        return "Normal-appearing white matter"
    if roi == _WBV:
        return "Whole brain"
    base, _, s = roi.rpartition("_")
    if base in _DEEP_GM_TEXT and s in side:
        text = f"{side[s]} {_DEEP_GM_TEXT[base]}"
    elif roi.startswith("gm_") and roi[3:].isdigit():
        k = int(roi[3:])
        hemi = ""
        if centroid is not None:
            hemi = "left " if centroid[0] < 0 else "right "
        elif n_parcels:
            hemi = "left " if k <= n_parcels // 2 else "right "
        text = f"Cortical GM parcel {k} ({hemi}hemisphere)" if hemi else f"Cortical GM parcel {k}"
    else:
        text = roi.replace("_", " ")
    if centroid is not None:
        text += f", centroid ({centroid[0]:.0f}, {centroid[1]:.0f}, {centroid[2]:.0f}) mm"
    return text


def label_centroids(label_image: Any, labels: Mapping[int, str]) -> dict[str, tuple[float, float, float]]:
    """World (scanner / MNI) coordinates in mm of each label's centre of mass in one label map."""
    from scipy import ndimage

    arr = np.asarray(np.rint(np.asanyarray(label_image.dataobj)), dtype=np.int64)
    values = [int(v) for v in labels if (arr == int(v)).any()]
    coms = ndimage.center_of_mass(np.ones(arr.shape), arr, values)
    out = {}
    for v, c in zip(values, coms):
        xyz = label_image.affine @ np.r_[np.asarray(c, float), 1.0]
        out[str(labels[v])] = (float(xyz[0]), float(xyz[1]), float(xyz[2]))
    return out


def table2(selected: Sequence[str], *, centroids: Mapping[str, Sequence[float]] | None = None,
           n_parcels: int | None = None) -> pd.DataFrame:
    """The seed's Table 2 for the selected features (all groups, not only radiomics).

    Columns: ``feature`` (design name), ``anatomic label``, ``feature class``,
    ``class characteristics``, ``feature`` name, ``feature characteristics`` (one
    line, after the pyradiomics documentation).
    """
    rows = []
    centroids = dict(centroids or {})
    for name in selected:
        group = feature_group(name)
        if group == "clinical":
            text = {"age": "Age at MRI (years)", "sex_M": "Male sex",
                    "disease_duration": "Disease duration (years)",
                    "course_SP": "Secondary-progressive course", "course_PP": "Primary-progressive course",
                    "course_CIS": "Clinically isolated syndrome"}[name]
            row = ("-", "Clinical", "Clinico-demographic variable", name, text)
        elif group == "lesion":
            row = ("White matter", "Lesion load", "T2 lesion volume from the lesion mask",
                   "ln(1 + lesion volume, mL)", "Total T2 lesion burden")
        elif group == "volume":
            roi = name[len(VOLUME_PREFIX):]
            row = (roi_description(roi, centroids.get(roi), n_parcels), "Volume",
                   "Normative z-score adjusted for age, sex and TIV (training fit)", "Volume z-score",
                   "Atrophy (negative) or hypertrophy (positive) relative to the training cohort")
        elif group == "disconnection":
            roi = name[len(DISCONNECTION_PREFIX):]
            row = (roi_description(roi, centroids.get(roi), n_parcels), "Disconnection proxy",
                   "Lesion fraction of the WM territory of the region (ChaCo stand-in)",
                   "Lesion fraction", "Local WM damage next to the region")
        else:
            roi, family, feat = name.split("__")
            image_type, _, cls = family.rpartition("_")
            title, info = _CLASS_INFO.get(cls, (family, ""))
            if image_type:  # a filtered image (LoG, wavelet) of the paper profile
                title = f"{title}, {image_type} image"
            meaning = _FEATURE_MEANING_BY_CLASS.get((cls, feat), _FEATURE_MEANING.get(feat, ""))
            row = (roi_description(roi, centroids.get(roi), n_parcels), title, info, feat, meaning)
        rows.append((name, *row))
    return pd.DataFrame(rows, columns=["design column", "anatomic label", "feature class",
                                       "class characteristics", "feature", "feature characteristics"])


# ---------------------------------------------------------------------------- Table 1
def adjusted_site_pvalue(df: pd.DataFrame, variable: str, *, by: str = "center",
                         covariates: Sequence[str] = ("age", "sex", "tiv_ml")) -> float:
    """p-value of the site term of ``variable ~ site + covariates`` (OLS), as the seed's
    "adjusted for age, sex and TIV" comparison of MRI measures between sites."""
    import statsmodels.api as sm

    from msutils.features.volumes import encode_sex

    need = [variable, by, *covariates]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"'df' lacks columns {missing}")
    d = df[need].dropna()
    levels = sorted(d[by].astype(str).unique())
    if len(levels) != 2:
        raise ValueError(f"'{by}' must have exactly 2 levels; got {levels}")
    X = pd.DataFrame({"site": (d[by].astype(str) == levels[1]).astype(float)}, index=d.index)
    for c in covariates:
        X[c] = encode_sex(d[c]) if c == "sex" else d[c].astype(float)
    fit = sm.OLS(d[variable].astype(float), sm.add_constant(X)).fit()
    return float(fit.pvalues["site"])


def site_table1(data: StudyData, *, order: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """The seed's Table 1: the two sites compared.

    Student t-test for age and disease duration, Fisher exact test for sex and
    secondary-progressive course, Mood's median test for EDSS
    (:func:`msutils.stats.table1`); T2 lesion volume and WBV as mean (SD) with the
    site p-value adjusted for age, sex and TIV (:func:`adjusted_site_pvalue`).
    """
    from msutils.stats import format_p, format_table1, table1

    df = data.subjects.copy()
    df["secondary_progressive"] = np.where(df["course"].astype(str) == "SP", "yes", "no")
    df["lesion_volume_ml"] = data.volumes["lesion_volume_ml"]
    df["wbv_ml"] = data.volumes["wbv_ml"]
    df["tiv_ml"] = data.volumes["tiv_ml"]
    variables = {"age": "continuous", "sex": "categorical", "secondary_progressive": "categorical",
                 "disease_duration": "continuous", "edss": "ordinal", "lesion_volume_ml": "continuous",
                 "wbv_ml": "continuous"}
    t = table1(df, "center", variables, order=order, seed=seed)
    wide = format_table1(t)
    for var in ("lesion_volume_ml", "wbv_ml"):
        row = f"{var}, mean (SD)"
        if df["center"].nunique() == 2:
            wide.loc[row, "P value"] = format_p(adjusted_site_pvalue(df, var))
            wide.loc[row, "test"] = "OLS site term, adjusted for age, sex, TIV"
    return wide



# ---------------------------------------------------------------------------- headline: model chosen by CV
#: The generator's noise-free EDSS column of a synthetic cohort (:func:`ceiling_reference`).
NOISE_FREE_EDSS = "gt_edss_noisefree"


def model_chosen_by_cv(choices: Mapping[str, Any], models: Sequence[str] = MODEL_ORDER) -> str:
    """The model whose tuned configuration has the lowest cross-validated MAE on the training set.

    The seed tunes every model by 10-fold cross-validated MAE on the training set;
    the headline model is chosen by the same criterion, never by a test-set metric
    (the test sets are for reporting only). Ties go to the first model of ``models``.

    Parameters
    ----------
    choices : mapping
        Model -> :class:`msutils.models.regression.HyperparameterChoice` (anything with a
        ``mean_mae``), e.g. one feature set of :func:`choose_hyperparameters`.
    models : sequence of str
        The candidates.
    """
    missing = [m for m in models if m not in choices]
    if missing:
        raise ValueError(f"'choices' lacks models {missing}")
    mae = {m: float(choices[m].mean_mae) for m in models}
    bad = [m for m, v in mae.items() if not np.isfinite(v)]
    if bad:
        raise ValueError(f"cross-validated MAE of {bad} is not finite")
    return min(models, key=lambda m: mae[m])


def ceiling_reference(subjects: pd.DataFrame, ids: Sequence[str] | None = None) -> float:
    """Pearson r of the observed EDSS with the generator's noise-free EDSS on ``ids``.

    A reference for the test set it is computed on (what the noise-free EDSS itself
    would score), not a bound: a model can exceed it on a given sample. NaN when the
    table lacks :data:`NOISE_FREE_EDSS` (a real cohort) or the values are constant.

    Parameters
    ----------
    subjects : DataFrame
        :attr:`StudyData.subjects` (index subject_id, ``edss``).
    ids : sequence of str, optional
        The patients (default: all).
    """
    if NOISE_FREE_EDSS not in subjects.columns:
        return float("nan")
    d = subjects if ids is None else subjects.loc[[str(i) for i in ids]]
    obs = d["edss"].astype(float).to_numpy()
    ref = d[NOISE_FREE_EDSS].astype(float).to_numpy()
    ok = np.isfinite(obs) & np.isfinite(ref)
    if ok.sum() < 3 or np.ptp(obs[ok]) == 0 or np.ptp(ref[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(obs[ok], ref[ok])[0, 1])


def headline(choices: Mapping[str, Any], scores: Mapping[str, Mapping[str, Mapping[str, float]]], *,
             ceilings: Mapping[str, float] | None = None, models: Sequence[str] = MODEL_ORDER) -> dict[str, Any]:
    """The headline numbers of one feature set: the model chosen by training-CV MAE and its scores.

    The choice (:func:`model_chosen_by_cv`) reads only ``choices``; ``scores`` (which
    hold the test sets) are reported for that model, never compared across models.

    Parameters
    ----------
    choices : mapping
        Model -> :class:`msutils.models.regression.HyperparameterChoice`.
    scores : mapping
        ``{cohort: {model: metrics}}`` (:meth:`StudyFit.scores` of one feature set).
    ceilings : mapping, optional
        ``{cohort: ceiling r}`` (:func:`ceiling_reference` per test set).
    models : sequence of str

    Returns
    -------
    dict
        ``model_chosen_by_cv``, ``cv_mae`` (every model's), ``params`` (the chosen
        model's hyper-parameters, repr), ``scores`` (``{cohort: metrics}`` of the chosen
        model) and ``fraction_of_ceiling`` (``{cohort: r / ceiling}`` where a finite
        ceiling is given).
    """
    chosen = model_chosen_by_cv(choices, models)
    ours = {c: dict(per[chosen]) for c, per in scores.items() if chosen in per}
    frac = {c: ours[c]["r"] / float(v) for c, v in (ceilings or {}).items()
            if c in ours and np.isfinite(float(v)) and float(v) != 0}
    return {"model_chosen_by_cv": chosen, "cv_mae": {m: float(choices[m].mean_mae) for m in models},
            "params": repr(getattr(choices[chosen], "params", None)), "scores": ours, "fraction_of_ceiling": frac}


# ---------------------------------------------------------------------------- confidence intervals
def table3_intervals(preds: Mapping[str, pd.DataFrame], edss: pd.Series, *,
                     cohorts: Sequence[str] = ("internal", "external"), n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0) -> pd.DataFrame:
    """Bootstrap confidence intervals (over the test patients) of Table 3's metrics.

    Per cohort, the patients are resampled with replacement and every model is scored
    on the same resamples (:func:`msutils.stats.bootstrap_regression_metrics`).

    Parameters
    ----------
    preds : mapping
        ``{cohort: DataFrame}`` (index subject_id, one column per model), one feature set
        of :attr:`StudyFit.predictions`.
    edss : Series
        Observed EDSS per subject.
    cohorts : sequence of str
        The cohorts of ``preds`` to bootstrap (default: the two test sets).
    n_boot, alpha, seed
        See :func:`msutils.stats.bootstrap_regression_metrics`.

    Returns
    -------
    DataFrame
        Columns ``cohort, model, metric, estimate, low, high, n_valid``.
    """
    from msutils.stats import bootstrap_regression_metrics

    missing = [c for c in cohorts if c not in preds]
    if missing:
        raise ValueError(f"'preds' lacks cohorts {missing}; has {list(preds)}")
    y = pd.Series(edss, dtype=float)
    parts = []
    for c in cohorts:
        p = preds[c]
        ci = bootstrap_regression_metrics(y.loc[p.index].to_numpy(), p, n_boot=n_boot, alpha=alpha, seed=seed)
        parts.append(ci.rename(columns={"predictor": "model"}).assign(cohort=c))
    out = pd.concat(parts, ignore_index=True)
    return out[["cohort", "model", "metric", "estimate", "low", "high", "n_valid"]]


def format_intervals(intervals: pd.DataFrame, *, decimals: int = 3) -> pd.DataFrame:
    """:func:`table3_intervals` as a table: (cohort, model) rows, one "estimate (low-high)" column
    per metric of :data:`TABLE3_METRICS`."""
    from msutils.models.regression import MODELS
    from msutils.stats import format_ci

    d = intervals.assign(cell=[format_ci(e, lo, hi, scale=1.0, decimals=decimals)
                               for e, lo, hi in intervals[["estimate", "low", "high"]].to_numpy()])
    wide = d.pivot_table(index=["cohort", "model"], columns="metric", values="cell", aggfunc="first", sort=False)
    wide = wide[[k for k in TABLE3_METRICS if k in wide.columns]].rename(columns=TABLE3_METRICS)
    wide.index = pd.MultiIndex.from_tuples([(_COHORT_LABELS.get(c, c), MODELS[m].label if m in MODELS else m)
                                            for c, m in wide.index], names=["cohort", "model"])
    wide.columns.name = None
    return wide


# ---------------------------------------------------------------------------- repeated splits
def repeat_study(shared: SharedStage, config: StudyConfig, split_seed: int, *, grid: str = "small",
                 feature_sets: Sequence[str] = FEATURE_SETS, models: Sequence[str] = MODEL_ORDER) -> dict[str, Any]:
    """The whole study on another random 80/20 split of the internal center (one papermill fold).

    1. :func:`msutils.data.splits.internal_external_cv` with ``split_seed`` (same centers,
       test share and number of CV folds as ``shared.split``);
    2. the stability test on the shared stage's re-processed subjects that fall in this
       training set (the ICC is recomputed on them; none of this split's test subjects);
    3. :func:`select_features` on this training set (``config`` reseeded with ``split_seed``);
    4. the grid search over every CV fold (:func:`msutils.models.regression.cv_fold_scores`),
       :func:`choose_hyperparameters`, the model chosen by CV MAE (:func:`headline`);
    5. :func:`fit_study`: out-of-fold training predictions and both test sets; their
       scores and the ceiling reference of each test set.

    Returns
    -------
    dict
        ``split_seed``, ``split`` (train / test / external ids), ``selected``,
        ``hyperparameters`` (repr), ``metrics`` (``{feature_set: {cohort: {model:
        metrics}}}``), ``headline`` (``{feature_set: headline}``), ``ceiling``
        (``{cohort: r}``), ``n_icc_subjects`` and ``fit_log``.
    """
    from msutils.data.leakage import FitLog, assert_no_leak
    from msutils.data.splits import heldout_subjects, internal_external_cv
    from msutils.models.regression import cv_fold_scores

    split_seed = check_int("split_seed", split_seed, 0)
    base = shared.split
    split = internal_external_cv(shared.data.subjects.reset_index(), internal_center=base["internal_center"],
                                 external_centers=base["external_centers"], test_size=base["test_size"],
                                 n_folds=int(base["n_folds"]), seed=split_seed)
    train = [str(s) for s in split["train"]]
    cfg = replace(config, seed=split_seed)
    retest = shared.retest.loc[[s for s in shared.retest.index if str(s) in set(train)]]
    log = FitLog()
    selection = select_features(shared.data, train, cfg, retest=retest if len(retest) >= 3 else None, fit_log=log)
    y = shared.data.edss.loc[selection.train_subjects]
    cv = cv_folds(split, selection.train_subjects)
    X = {fs: feature_matrix(selection, shared.data, selection.train_subjects, fs) for fs in feature_sets}
    cv_scores = pd.concat([cv_fold_scores(m, X[fs], y, cv, k, grid=grid, seed=split_seed, fit_log=log)
                           .assign(feature_set=fs)
                           for k in range(len(cv)) for fs in feature_sets for m in models], ignore_index=True)
    choices = choose_hyperparameters(cv_scores, len(cv), feature_sets=feature_sets, models=models)
    hyper = {fs: {m: ch.params for m, ch in per.items()} for fs, per in choices.items()}
    test_sets = {"internal": list(split["test"]), "external": list(split["external"])}
    study = fit_study(shared.data, selection.train_subjects, cfg, selection=selection, hyperparameters=hyper,
                      folds=split["inner"], test_sets=test_sets, feature_sets=feature_sets, models=models,
                      fit_log=log)
    assert_no_leak(log, heldout_subjects(split))
    scores = study.scores(shared.data.edss)
    ceiling = {c: ceiling_reference(shared.data.subjects, ids) for c, ids in test_sets.items()}
    metrics = {fs: {c: {m: {k: float(v[k]) for k in ("n", "r", "pearson_r2", "r2_score", "mae")}
                        for m, v in per.items()} for c, per in by.items()} for fs, by in scores.items()}
    return {"split_seed": split_seed, "split": {k: list(split[k]) for k in ("train", "test", "external")},
            "selected": selection.selected, "n_icc_subjects": int(len(retest)),
            "hyperparameters": {fs: {m: repr(p) for m, p in per.items()} for fs, per in hyper.items()},
            "metrics": metrics, "headline": {fs: headline(choices[fs], metrics[fs], ceilings=ceiling, models=models)
                                             for fs in feature_sets},
            "ceiling": ceiling, "fit_log": log.to_dict()}


#: Label of the CV-chosen model's rows in :func:`repeat_summary`.
CHOSEN_BY_CV = "chosen by CV"


def repeat_summary(runs: Sequence[Mapping[str, Any]], *, feature_set: str = "selected",
                   metrics: Sequence[str] = ("r", "pearson_r2", "r2_score", "mae")) -> pd.DataFrame:
    """Mean and SD over split seeds of every model's metrics (and of the model chosen by CV).

    Parameters
    ----------
    runs : sequence of dict
        One per split seed, each with ``split_seed``, ``metrics`` and ``headline`` as
        :func:`repeat_study` returns them.
    feature_set : str
    metrics : sequence of str

    Returns
    -------
    DataFrame
        Index (cohort, model) with :data:`CHOSEN_BY_CV` as an extra model; columns
        ``<metric> mean``, ``<metric> SD`` per metric and ``seeds``.
    """
    check_choice("feature_set", feature_set, FEATURE_SETS)
    if len(runs) < 2:
        raise ValueError(f"'runs' must hold at least 2 split seeds; got {len(runs)}")
    rows = []
    for run in runs:
        per = run["metrics"][feature_set]
        chosen = run["headline"][feature_set]["model_chosen_by_cv"]
        for cohort, by_model in per.items():
            for m, v in list(by_model.items()) + [(CHOSEN_BY_CV, by_model[chosen])]:
                rows.append({"seed": run["split_seed"], "cohort": cohort, "model": m,
                             **{k: float(v[k]) for k in metrics}})
    long = pd.DataFrame(rows)
    g = long.groupby(["cohort", "model"], sort=False)
    out = pd.concat({f"{k} {stat}": g[k].agg(stat) for k in metrics for stat in ("mean", "std")}, axis=1)
    out.columns = [c.replace(" std", " SD") for c in out.columns]
    out["seeds"] = g["seed"].nunique()
    return out


def format_mean_sd(summary: pd.DataFrame, *, decimals: int = 3) -> pd.DataFrame:
    """:func:`repeat_summary` as "mean ± SD" cells, metric columns labelled as in :data:`TABLE3_METRICS`."""
    from msutils.models.regression import MODELS

    keys = [k for k in TABLE3_METRICS if f"{k} mean" in summary.columns]
    out = pd.DataFrame({TABLE3_METRICS[k]: [f"{m:.{decimals}f} ± {s:.{decimals}f}" for m, s in
                                            summary[[f"{k} mean", f"{k} SD"]].to_numpy()] for k in keys},
                       index=pd.MultiIndex.from_tuples(
                           [(_COHORT_LABELS.get(c, c), MODELS[m].label if m in MODELS else m)
                            for c, m in summary.index], names=["cohort", "model"]))
    out["seeds"] = summary["seeds"].to_numpy()
    return out


# ---------------------------------------------------------------------------- further analyses of the seed
def course_comparison(subjects: pd.DataFrame, *, covariates: Sequence[str] = ("age", "sex", "disease_duration")
                      ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """EDSS of secondary-progressive against relapsing-remitting patients, adjusted for covariates.

    The seed compares the EDSS of SP and RR patients of the whole study population
    "accounting for age, sex, and disease duration": here the course term of
    ``EDSS ~ course + age + sex + disease duration`` (OLS / ANCOVA,
    :func:`msutils.stats.adjusted_difference`).

    Returns
    -------
    table : DataFrame
        Per course (RR, SP): ``n``, ``EDSS median``, ``EDSS IQR``.
    adjusted : dict
        :func:`msutils.stats.adjusted_difference` (``difference`` = SP minus RR, its CI, ``p``).
    """
    from msutils.stats import adjusted_difference

    d = subjects[subjects["course"].astype(str).isin(["RR", "SP"])]
    table = pd.DataFrame({c: {"n": int(len(g)), "EDSS median": float(g["edss"].median()),
                              "EDSS IQR": "{:.1f}-{:.1f}".format(*g["edss"].astype(float).quantile([0.25, 0.75]))}
                          for c, g in d.groupby(d["course"].astype(str))}).T
    table.index.name = "course"
    return table, adjusted_difference(d, "edss", "course", list(covariates), levels=["RR", "SP"])


def ridge_weights(model: Any) -> pd.Series:
    """Weights of a fitted ridge pipeline (:func:`msutils.models.regression.make_model`), per feature.

    The pipeline standardizes the features, so a weight is the change of the
    predicted EDSS per training SD of its feature (the seed's supplement lists the
    ridge weights of the final model). The intercept is under ``"(intercept)"``.
    """
    steps = getattr(model, "named_steps", {})
    ridge = steps.get("model")
    if ridge is None or type(ridge).__name__ != "Ridge":
        raise ValueError(f"'model' must be a fitted ridge pipeline (steps 'scale', 'model'); got {model!r}")
    names = [str(c) for c in getattr(model, "feature_names_in_", range(len(ridge.coef_)))]
    out = pd.Series(np.asarray(ridge.coef_, dtype=float).ravel(), index=names, name="weight (EDSS per SD)")
    out["(intercept)"] = float(ridge.intercept_)
    return out


def lesion_volume_truth(cohort: Any, data: StudyData) -> pd.DataFrame:
    """The measured T2 lesion volume beside the truth, per patient.

    ``measured_ml``: the volume of the manifest's ``lesion_mask`` (what the study
    uses). ``truth_ml``: the volume of the cohort's true lesion mask, when the cohort
    declares one (``cohort.truth_columns``, kind ``lesion_mask``, e.g. ``gt_lesion_mask``
    of a synthetic cohort); ``design_ml``: the generator's designed lesion volume
    (``gt_lesion_volume_design_ml``, the true lesion-load driver), when present.
    Columns the cohort cannot provide are left out.
    """
    from msutils.features.volumes import mask_volume

    out = pd.DataFrame({"measured_ml": data.volumes["lesion_volume_ml"].astype(float)})
    truth = [c for c, kind in (getattr(cohort, "truth_columns", None) or {}).items() if kind == "lesion_mask"]
    if truth:
        vols = {}
        for subject, sid in data.subjects["scan_id"].astype(str).items():
            img = cohort.image(sid, truth[0])
            arr = np.asanyarray(img.dataobj) > 0.5
            vols[subject] = mask_volume(arr, img.header.get_zooms()[:arr.ndim])
        out["truth_ml"] = pd.Series(vols, dtype=float)
        out.attrs["truth_column"] = truth[0]
    if "gt_lesion_volume_design_ml" in data.subjects.columns:
        out["design_ml"] = data.subjects["gt_lesion_volume_design_ml"].astype(float)
    return out


def lesion_truth_agreement(volumes: pd.DataFrame, edss: pd.Series) -> pd.DataFrame:
    """How well the measured lesion volume recovers the true one (:func:`lesion_volume_truth`).

    Returns
    -------
    DataFrame
        One row per column of ``volumes``: ``Pearson r with measured (log)`` (on
        ln(1 + mL), the study's feature scale), ``Spearman rho with measured``,
        ``median (measured - this), mL`` and ``Spearman rho with EDSS``.
    """
    from scipy import stats as st

    if "measured_ml" not in volumes.columns:
        raise ValueError(f"'volumes' lacks 'measured_ml'; has {list(volumes.columns)}")
    y = pd.Series(edss, dtype=float).reindex(volumes.index)
    m = volumes["measured_ml"].astype(float)
    rows = {}
    for c in volumes.columns:
        v = volumes[c].astype(float)
        rows[c] = {"Pearson r with measured (log)": float(np.corrcoef(np.log1p(m), np.log1p(v))[0, 1]),
                   "Spearman rho with measured": float(st.spearmanr(m, v).statistic),
                   "median (measured - this), mL": float((m - v).median()),
                   "Spearman rho with EDSS": float(st.spearmanr(v, y).statistic)}
    return pd.DataFrame(rows).T.rename_axis("lesion volume")
