"""nnU-Net v2 bridge: export 2D slices, plan, train and predict from Python.

Seed 003 trains nnU-Net's ``2d`` configuration on FLAIR slices with five-fold
cross-validation. nnunetv2 2.8.1's command-line tools cannot be used here: the
trainer look-up (``nnUNetv2_train``) and ``initialize_from_trained_model_folder``
scan the package for classes by name, which imports ``timm`` -> ``torchvision``
and crashes with the CPU build of torch. This module drives the same code from
Python and never triggers those scans:

- :func:`export_dataset` writes ``DatasetXXX_NAME`` into ``nnUNet_raw``: one
  2D NIfTI per slice (``imagesTr/{case}_0000.nii.gz`` float32,
  ``labelsTr/{case}.nii.gz`` uint8 {0, 1}), read by nnU-Net's ``SimpleITKIO``
  as ``(1, 1, H, W)`` with spacing ``(999 x max, sy, sx)``, plus ``dataset.json``
  (``channel_names {"0": "FLAIR"}``, ``labels {"background": 0, "lesion": 1}``,
  ``file_ending ".nii.gz"``, ``overwrite_image_reader_writer "SimpleITKIO"``).
- :func:`write_splits` writes ``splits_final.json`` so nnU-Net's folds are
  the study's folds (built by :func:`splits_from_subject_folds` from subject
  folds: no subject crosses train / val, augmented copies never validate).
- :func:`plan_and_preprocess` runs the fingerprint, the default
  ``ExperimentPlanner`` and the ``DefaultPreprocessor`` through
  ``nnunetv2.experiment_planning.plan_and_preprocess_api``, and can shrink the
  planned network for CPU profiles by editing ``nnUNetPlans.json``
  (patch size, number of stages, features per stage, batch size); every edit
  is recorded in the plans under ``"msutils_overrides"``.
- :func:`train` instantiates the stock ``nnUNetTrainer`` directly (so its
  checkpoints stay loadable by a normal nnU-Net install), sets
  ``num_epochs`` / ``num_iterations_per_epoch`` / ``num_val_iterations_per_epoch``
  on the instance and calls ``run_training()``. It returns nnU-Net's own
  per-epoch log (train / val loss, pseudo Dice, EMA pseudo Dice, learning
  rate) as a DataFrame. nnU-Net's online augmentation is kept.
- :func:`predict` rebuilds the network from the plans
  (``nnUNetTrainer.build_network_architecture``), loads ``checkpoint_final.pth``
  of one or several folds and runs ``nnUNetPredictor`` after
  ``manual_initialization`` (fold ensembles average the logits, as nnU-Net does).

Environment: nnunetv2 2.8.1 reads ``nnUNet_raw`` / ``nnUNet_preprocessed`` /
``nnUNet_results`` lazily from ``os.environ`` each time a path is used
(``nnunetv2.paths._EnvPath``), so :meth:`NnUNetWorkspace.activate` only sets
those variables (plus ``nnUNet_n_proc_DA`` and ``nnUNet_compile``) for the
duration of a call and restores the previous values afterwards; no module
attribute needs patching. Older nnunetv2 versions, which froze the paths at
import time, are refused with an explicit error. The variables are process
wide: do not run two workspaces in threads of one process at the same time
(this module serialises its own calls with a lock).

Determinism: :func:`train` seeds ``random``, NumPy and torch (global states:
nnU-Net draws from them) and by default runs nnU-Net's data augmentation in
the main process (``n_proc_da=0``), which makes CPU training repeatable. More
augmentation workers are faster on a GPU machine but not repeatable.

nnU-Net writes progress with ``print``; those lines go to this module's
logger at DEBUG level unless ``verbose=True``. Its own text log stays in each
fold folder (``training_log_*.txt``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np

from msutils.core.environ import temporary_environ
from msutils.core.io import atomic_write_text
from msutils.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "TRAINER_NAME",
    "PLANS_NAME",
    "NnUNetWorkspace",
    "make_case_id",
    "export_dataset",
    "splits_from_subject_folds",
    "write_splits",
    "read_splits",
    "plan_and_preprocess",
    "train",
    "training_log",
    "load_predictor",
    "predict",
]

logger = logging.getLogger(__name__)

#: Trainer class used (the stock one, imported directly, never looked up by name).
TRAINER_NAME = "nnUNetTrainer"
#: Plans identifier written by nnU-Net's default ExperimentPlanner.
PLANS_NAME = "nnUNetPlans"

_ENV_LOCK = threading.RLock()
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_DEVICES = ["cpu", "cuda"]
_EXPORT_META = "msutils_export.json"
_TRAIN_META = "msutils_train.json"
_LOG_CSV = "training_log.csv"
_PREDICT_CHUNK = 64  # slices preprocessed and held in memory at a time by predict()
_LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time_s"]


# --------------------------------------------------------------------------- workspace
@dataclass(frozen=True)
class NnUNetWorkspace:
    """The three nnU-Net folders of one run, under ``root``.

    Put ``root`` inside the run's output folder (e.g.
    ``out_dir / "nnunet"``), never inside a data folder: nnU-Net writes,
    overwrites and deletes below it.

    Parameters
    ----------
    root : path-like
        Folder holding ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def raw(self) -> Path:
        """``<root>/nnUNet_raw``."""
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        """``<root>/nnUNet_preprocessed``."""
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        """``<root>/nnUNet_results``."""
        return self.root / "nnUNet_results"

    def create(self) -> "NnUNetWorkspace":
        """Create the three folders (idempotent) and return self."""
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def activate(self, *, n_proc_da: int | None = None, compile: bool = False) -> Iterator["NnUNetWorkspace"]:
        """Point nnU-Net at this workspace for the duration of a ``with`` block.

        Sets ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``,
        ``nnUNet_compile`` and (if given) ``nnUNet_n_proc_DA`` in ``os.environ``
        and restores the previous values on exit. Holds a process-wide lock.

        Parameters
        ----------
        n_proc_da : int, optional
            nnU-Net data-augmentation worker processes (0 = main process).
        compile : bool
            Allow ``torch.compile`` (nnU-Net never compiles on CPU anyway).
        """
        _check_lazy_paths()
        self.create()
        values = {
            "nnUNet_raw": str(self.raw),
            "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
            "nnUNet_compile": "true" if compile else "false",
        }
        if n_proc_da is not None:
            values["nnUNet_n_proc_DA"] = str(int(n_proc_da))
        with _ENV_LOCK, temporary_environ(values):
            yield self

    def dataset_name(self, dataset_id: int) -> str:
        """``DatasetXXX_NAME`` of ``dataset_id`` in this workspace (raises if absent or ambiguous)."""
        prefix = f"Dataset{_check_dataset_id(dataset_id):03d}_"
        found = sorted(
            {p.name for base in (self.raw, self.preprocessed, self.results) if base.is_dir() for p in base.iterdir()
             if p.is_dir() and p.name.startswith(prefix)}
        )
        if not found:
            raise FileNotFoundError(
                f"no dataset with id {dataset_id} in workspace {self.root}: call export_dataset(...) first"
            )
        if len(found) > 1:
            raise RuntimeError(f"several datasets with id {dataset_id} in workspace {self.root}: {found}")
        return found[0]

    def model_folder(
        self,
        dataset_id: int,
        *,
        configuration: str = "2d",
        plans_name: str = PLANS_NAME,
        trainer_name: str = TRAINER_NAME,
    ) -> Path:
        """nnU-Net's training output folder (holds ``fold_k/`` and ``plans.json``)."""
        return self.results / self.dataset_name(dataset_id) / f"{trainer_name}__{plans_name}__{configuration}"


def _check_lazy_paths() -> None:
    import nnunetv2
    import nnunetv2.paths as paths

    if not hasattr(paths.nnUNet_raw, "is_set"):
        raise RuntimeError(
            f"nnunetv2 {getattr(nnunetv2, '__version__', '?')} reads nnUNet_raw etc. at import time; "
            "msutils.segmentation.nnunet needs nnunetv2 >= 2.8 (lazy environment paths), pinned in pyproject.toml"
        )


def _check_dataset_id(dataset_id: int) -> int:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"'dataset_id' must be an integer in 1..999; got {dataset_id!r}")
    return int(dataset_id)


# --------------------------------------------------------------------------- stdout -> logging
class _LogStream(io.TextIOBase):
    def __init__(self, level: int) -> None:
        self._level = level
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.strip():
                logger.log(self._level, "nnU-Net: %s", line.rstrip())
        return len(s)

    def flush(self) -> None:
        if self._buf.strip():
            logger.log(self._level, "nnU-Net: %s", self._buf.rstrip())
        self._buf = ""


class _DropFileCopyRecords(logging.Filter):
    """Drops distutils' ``copying a -> b`` INFO records (one per case in ``preprocess_dataset``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("copying ")


@contextlib.contextmanager
def _nnunet_output(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
        return
    stream = _LogStream(logging.DEBUG)
    root = logging.getLogger()
    drop = _DropFileCopyRecords()
    root.addFilter(drop)
    try:
        with contextlib.redirect_stdout(stream):
            try:
                yield
            finally:
                stream.flush()
    finally:
        root.removeFilter(drop)


# --------------------------------------------------------------------------- export
def make_case_id(scan_id: str, index: int, copy: int = 0) -> str:
    """nnU-Net case identifier of one slice: ``{scan_id}_s{index:03d}`` (+ ``_aug{copy}``).

    Characters other than letters, digits, ``_`` and ``-`` in ``scan_id`` are
    replaced by ``-``. Put the subject ID first in ``scan_id`` (the cohort's
    ``scan_id`` is ``{subject_id}_{session}``) so every case names its patient.
    """
    if int(index) != index or index < 0:
        raise ValueError(f"'index' must be a non-negative integer; got {index!r}")
    if int(copy) != copy or copy < 0:
        raise ValueError(f"'copy' must be a non-negative integer; got {copy!r}")
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", str(scan_id)).lstrip("_-")
    if not safe:
        raise ValueError(f"'scan_id' has no usable characters: {scan_id!r}")
    case = f"{safe}_s{int(index):03d}"
    return f"{case}_aug{int(copy)}" if copy else case


def _check_case(kind: str, case: Sequence[Any], with_mask: bool | None) -> tuple[str, np.ndarray, np.ndarray | None]:
    if not isinstance(case, (tuple, list)) or len(case) not in (2, 3):
        raise ValueError(f"{kind} cases must be (case_id, image) or (case_id, image, mask) tuples; got {type(case)}")
    case_id = case[0]
    if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
        raise ValueError(
            f"{kind} case id {case_id!r} must start with a letter or digit and contain only letters, digits, '_' "
            "and '-' (see make_case_id)"
        )
    image = np.asarray(case[1])
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"{kind} case {case_id!r}: image must be a non-empty 2D array; got shape {image.shape}")
    image = image.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{kind} case {case_id!r}: image contains NaN or infinite values")
    mask = None
    if len(case) == 3 and case[2] is not None:
        mask = np.asarray(case[2])
        if mask.shape != image.shape:
            raise ValueError(
                f"{kind} case {case_id!r}: mask shape {mask.shape} does not match image shape {image.shape}"
            )
        values = np.unique(mask)
        if not np.all(np.isin(values, [0, 1])):
            raise ValueError(
                f"{kind} case {case_id!r}: mask values must be 0/1 (binarize with msutils.segmentation.slices.binarize_mask); "
                f"got {values[:10].tolist()}"
            )
        mask = mask.astype(np.uint8)
    if with_mask is True and mask is None:
        raise ValueError(f"{kind} case {case_id!r}: a mask is required")
    return case_id, image, mask


def _write_nifti2d(array: np.ndarray, path: Path, spacing: tuple[float, float]) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing((float(spacing[1]), float(spacing[0])))  # sitk is (x=columns, y=rows)
    sitk.WriteImage(img, str(path), True)


def export_dataset(
    workspace: NnUNetWorkspace,
    dataset_id: int,
    name: str,
    train_cases: Iterable[tuple[str, np.ndarray, np.ndarray]],
    test_cases: Iterable[tuple[str, np.ndarray] | tuple[str, np.ndarray, np.ndarray | None]] = (),
    *,
    spacing: tuple[float, float] = (1.0, 1.0),
    channel_name: str = "FLAIR",
    overwrite: bool = True,
) -> Path:
    """Write 2D slices as an nnU-Net raw dataset ``Dataset{id:03d}_{name}``.

    Parameters
    ----------
    workspace : NnUNetWorkspace
    dataset_id : int
        1..999.
    name : str
        Dataset name (letters, digits, ``_``, ``-``).
    train_cases : iterable of (case_id, image, mask)
        2D float image and binary {0, 1} mask per case (original and
        augmented training slices of *all* folds; :func:`write_splits`
        decides which fold uses which).
    test_cases : iterable of (case_id, image[, mask])
        Optional held-out slices, written to ``imagesTs`` (and ``labelsTs``
        when a mask is given). :func:`predict` takes arrays, so this is only
        for inspection or for nnU-Net's own file-based tools.
    spacing : tuple of float
        In-plane pixel spacing (rows, columns) in mm written into every file.
    channel_name : str
        ``channel_names["0"]`` of dataset.json.
    overwrite : bool
        Replace an existing dataset of the same id and name (its raw folder and
        its stale preprocessed folder; trained models are kept).

    Returns
    -------
    pathlib.Path
        The raw dataset folder. It also holds ``msutils_export.json`` (case
        lists, spacing and a SHA-256 of all exported arrays, used by
        :func:`train` to know whether a stored model is still current).
    """
    _check_dataset_id(dataset_id)
    if not isinstance(name, str) or not _DATASET_NAME.match(name):
        raise ValueError(f"'name' must contain only letters, digits, '_' and '-'; got {name!r}")
    try:
        sp = (float(spacing[0]), float(spacing[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"'spacing' must be two positive numbers (rows, columns); got {spacing!r}") from None
    if len(spacing) != 2 or not all(s > 0 and np.isfinite(s) for s in sp):
        raise ValueError(f"'spacing' must be two positive numbers (rows, columns); got {spacing!r}")
    ds_name = f"Dataset{int(dataset_id):03d}_{name}"
    workspace.create()
    prefix = f"Dataset{int(dataset_id):03d}_"
    for base in (workspace.raw, workspace.preprocessed, workspace.results):
        for other in base.iterdir():
            if other.is_dir() and other.name.startswith(prefix) and other.name != ds_name:
                raise FileExistsError(
                    f"workspace {workspace.root} already holds {other.name} with id {dataset_id}; "
                    "use another dataset_id or workspace"
                )
    final = workspace.raw / ds_name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")

    tmp = Path(tempfile.mkdtemp(prefix=f".{ds_name}.", dir=workspace.raw))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        digest = hashlib.sha256()
        digest.update(json.dumps({"spacing": sp, "channel": channel_name}).encode())
        train_ids: list[str] = []
        seen: set[str] = set()
        for case in train_cases:
            case_id, image, mask = _check_case("train", case, with_mask=True)
            if case_id in seen:
                raise ValueError(f"train case id {case_id!r} appears twice")
            seen.add(case_id)
            assert mask is not None
            _write_nifti2d(image, tmp / "imagesTr" / f"{case_id}_0000.nii.gz", sp)
            _write_nifti2d(mask, tmp / "labelsTr" / f"{case_id}.nii.gz", sp)
            digest.update(f"tr:{case_id}:{image.shape}".encode())
            digest.update(image.tobytes())
            digest.update(mask.tobytes())
            train_ids.append(case_id)
        if not train_ids:
            raise ValueError("'train_cases' is empty")
        test_ids: list[str] = []
        for case in test_cases:
            case_id, image, mask = _check_case("test", case, with_mask=None)
            if case_id in seen:
                raise ValueError(f"test case id {case_id!r} is also a train case id (or appears twice)")
            seen.add(case_id)
            _write_nifti2d(image, tmp / "imagesTs" / f"{case_id}_0000.nii.gz", sp)
            digest.update(f"ts:{case_id}:{image.shape}".encode())
            digest.update(image.tobytes())
            if mask is not None:
                _write_nifti2d(mask, tmp / "labelsTs" / f"{case_id}.nii.gz", sp)
                digest.update(mask.tobytes())
            test_ids.append(case_id)
        dataset_json = {
            "name": name,
            "description": "2D FLAIR slices exported by msutils.segmentation.nnunet (seed 003 reproduction)",
            "channel_names": {"0": channel_name},
            "labels": {"background": 0, "lesion": 1},
            "numTraining": len(train_ids),
            "file_ending": ".nii.gz",
            "overwrite_image_reader_writer": "SimpleITKIO",
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=4) + "\n")
        meta = {
            "dataset": ds_name,
            "content_hash": digest.hexdigest(),
            "spacing": list(sp),
            "train_cases": train_ids,
            "test_cases": test_ids,
        }
        (tmp / _EXPORT_META).write_text(json.dumps(meta, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    stale = workspace.preprocessed / ds_name
    if stale.exists():
        logger.info("removing stale preprocessed data %s", stale)
        shutil.rmtree(stale)
    logger.info("exported %s: %d train and %d test cases", ds_name, len(train_ids), len(test_ids))
    return final


def _export_meta(workspace: NnUNetWorkspace, dataset_id: int) -> dict[str, Any]:
    ds = workspace.dataset_name(dataset_id)
    path = workspace.raw / ds / _EXPORT_META
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: export the dataset with msutils.segmentation.nnunet.export_dataset")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- splits
def splits_from_subject_folds(
    case_subjects: Mapping[str, str],
    val_subjects: Sequence[Collection[str]],
    *,
    exclude_from_val: Collection[str] = (),
) -> list[dict[str, list[str]]]:
    """nnU-Net folds from subject-level folds.

    Fold ``k`` validates on the cases of the subjects in ``val_subjects[k]``
    (minus ``exclude_from_val``, i.e. the augmented copies) and trains on every
    case of every other subject (originals and augmented copies). Copies of a
    validation subject's slices are in neither list of that fold.

    Parameters
    ----------
    case_subjects : mapping
        case_id -> subject_id for every exported training case.
    val_subjects : sequence of collections
        Validation subjects of each fold (disjoint).
    exclude_from_val : collection of str
        Case ids that must never validate (augmented copies).

    Returns
    -------
    list of dict
        ``[{"train": [...], "val": [...]}, ...]``, case ids sorted.
    """
    all_subjects = set(case_subjects.values())
    seen: dict[str, int] = {}
    for k, fold in enumerate(val_subjects):
        fold = set(fold)
        if not fold:
            raise ValueError(f"fold {k} has no validation subjects")
        unknown = sorted(fold - all_subjects)
        if unknown:
            raise ValueError(f"fold {k}: validation subjects without any case: {unknown}")
        for s in fold:
            if s in seen:
                raise ValueError(f"subject {s!r} validates in folds {seen[s]} and {k}")
            seen[s] = k
    excluded = set(exclude_from_val)
    cases = sorted(case_subjects)
    splits = []
    for k, fold in enumerate(val_subjects):
        fold = set(fold)
        val = [c for c in cases if case_subjects[c] in fold and c not in excluded]
        if not val:
            raise ValueError(f"fold {k} has no validation case left after 'exclude_from_val'")
        train_ = [c for c in cases if case_subjects[c] not in fold]
        splits.append({"train": train_, "val": val})
    return splits


def write_splits(
    workspace: NnUNetWorkspace,
    dataset_id: int,
    splits: Sequence[Mapping[str, Sequence[str]]],
    *,
    case_subjects: Mapping[str, str] | None = None,
) -> Path:
    """Write ``splits_final.json`` (nnU-Net's fold definition) for an exported dataset.

    Parameters
    ----------
    workspace : NnUNetWorkspace
    dataset_id : int
    splits : sequence of mappings
        ``[{"train": [case ids], "val": [case ids]}, ...]``, one per fold, e.g.
        from :func:`splits_from_subject_folds`.
    case_subjects : mapping, optional
        case_id -> subject_id; when given, a fold whose train and val share a
        subject is refused.

    Returns
    -------
    pathlib.Path
        ``nnUNet_preprocessed/DatasetXXX_NAME/splits_final.json``, the file
        ``nnUNetTrainer.do_split`` reads (it is left in place by
        :func:`plan_and_preprocess`).
    """
    meta = _export_meta(workspace, dataset_id)
    known = set(meta["train_cases"])
    if not isinstance(splits, Sequence) or isinstance(splits, (str, bytes)) or not splits:
        raise ValueError("'splits' must be a non-empty list of {'train': [...], 'val': [...]} dicts")
    out = []
    for k, fold in enumerate(splits):
        if not isinstance(fold, Mapping) or set(fold) != {"train", "val"}:
            raise ValueError(f"fold {k} must be a dict with exactly the keys 'train' and 'val'")
        tr, va = [str(c) for c in fold["train"]], [str(c) for c in fold["val"]]
        if not tr or not va:
            raise ValueError(f"fold {k}: 'train' and 'val' must both be non-empty")
        for side, ids in (("train", tr), ("val", va)):
            if len(set(ids)) != len(ids):
                raise ValueError(f"fold {k}: duplicate case ids in '{side}'")
            unknown = sorted(set(ids) - known)
            if unknown:
                raise ValueError(f"fold {k}: '{side}' case ids not in the exported dataset: {unknown[:5]}")
        both = sorted(set(tr) & set(va))
        if both:
            raise ValueError(f"fold {k}: cases in both 'train' and 'val': {both[:5]}")
        if case_subjects is not None:
            missing = sorted((set(tr) | set(va)) - set(case_subjects))
            if missing:
                raise ValueError(f"fold {k}: 'case_subjects' has no subject for cases {missing[:5]}")
            leak = sorted({case_subjects[c] for c in tr} & {case_subjects[c] for c in va})
            if leak:
                raise ValueError(f"fold {k}: subjects in both 'train' and 'val': {leak}")
        out.append({"train": tr, "val": va})
    path = workspace.preprocessed / meta["dataset"] / "splits_final.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=4) + "\n")
    return path


def read_splits(workspace: NnUNetWorkspace, dataset_id: int) -> list[dict[str, list[str]]]:
    """Read the dataset's ``splits_final.json``."""
    path = workspace.preprocessed / workspace.dataset_name(dataset_id) / "splits_final.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: call write_splits(...) first")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- planning
def _shrink_configuration(
    cfg: dict[str, Any],
    *,
    patch_size: Sequence[int] | None,
    n_stages: int | None,
    base_features: int | None,
    max_features: int | None,
    batch_size: int | None,
) -> dict[str, list[Any]]:
    """Edit one plans configuration in place; return {key: [old, new]}."""
    arch = cfg["architecture"]["arch_kwargs"]
    changes: dict[str, list[Any]] = {}

    def record(key: str, old: Any, new: Any) -> None:
        if old != new:
            changes[key] = [old, new]

    planned_stages = int(arch["n_stages"])
    if n_stages is not None:
        if int(n_stages) != n_stages or not 2 <= n_stages <= planned_stages:
            raise ValueError(
                f"'n_stages' must be an integer in 2..{planned_stages} (the planned depth); got {n_stages}"
            )
        n = int(n_stages)
        old = {k: arch[k] for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage")}
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
            arch[key] = arch[key][:n]
        arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][: n - 1]
        arch["n_stages"] = n
        for key, value in old.items():
            record(key, value, arch[key])
    if base_features is not None or max_features is not None:
        for label, value in (("base_features", base_features), ("max_features", max_features)):
            if value is not None and (int(value) != value or value < 1):
                raise ValueError(f"'{label}' must be a positive integer; got {value}")
        old_f = list(arch["features_per_stage"])
        base = int(base_features) if base_features is not None else int(old_f[0])
        top = int(max_features) if max_features is not None else int(max(old_f))
        arch["features_per_stage"] = [min(base * 2**i, top) for i in range(int(arch["n_stages"]))]
        record("features_per_stage", old_f, arch["features_per_stage"])
    if patch_size is not None:
        ps = [int(p) for p in patch_size]
        if len(ps) != len(cfg["patch_size"]) or any(p < 1 for p in ps):
            raise ValueError(f"'patch_size' must be {len(cfg['patch_size'])} positive integers; got {patch_size!r}")
        record("patch_size", list(cfg["patch_size"]), ps)
        cfg["patch_size"] = ps
    factor = np.prod(np.asarray(arch["strides"], dtype=int), axis=0)
    if any(p % f for p, f in zip(cfg["patch_size"], factor)):
        raise ValueError(
            f"patch size {list(cfg['patch_size'])} must be divisible by {factor.tolist()} (the network's total "
            f"downsampling with {arch['n_stages']} stages); change 'patch_size' or 'n_stages'"
        )
    if batch_size is not None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"'batch_size' must be a positive integer; got {batch_size}")
        record("batch_size", cfg["batch_size"], int(batch_size))
        cfg["batch_size"] = int(batch_size)
    return changes


def plan_and_preprocess(
    workspace: NnUNetWorkspace,
    dataset_id: int,
    *,
    configuration: str = "2d",
    patch_size: Sequence[int] | None = None,
    n_stages: int | None = None,
    base_features: int | None = None,
    max_features: int | None = None,
    batch_size: int | None = None,
    num_processes: int = 2,
    verify: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Fingerprint, plan (default ``ExperimentPlanner``) and preprocess one configuration.

    The optional arguments shrink the planned network (for CPU profiles) by
    editing ``nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json`` between
    planning and preprocessing (the network does not change preprocessing):

    - ``n_stages``: keep the first ``n_stages`` resolution stages (encoder
      features, kernels, strides, convolutions; the decoder follows);
    - ``base_features`` / ``max_features``: ``features_per_stage[i] =
      min(base * 2**i, max)`` (nnU-Net's rule; its defaults are 32 and 512);
    - ``patch_size``: the training patch (must be divisible by the total
      downsampling of the network);
    - ``batch_size``.

    The edits are stored in the plans as
    ``plans["msutils_overrides"][configuration] = {key: [planned, used]}``.

    Parameters
    ----------
    workspace : NnUNetWorkspace
    dataset_id : int
    configuration : str
        nnU-Net configuration (``"2d"`` for seed 003).
    patch_size, n_stages, base_features, max_features, batch_size
        Optional overrides, see above.
    num_processes : int
        Worker processes of fingerprinting / preprocessing (nnU-Net spawns them).
    verify : bool
        Run nnU-Net's dataset integrity check first.
    verbose : bool
        Let nnU-Net print to stdout instead of the DEBUG log.

    Returns
    -------
    dict
        The final plans (as saved).
    """
    _check_dataset_id(dataset_id)
    if int(num_processes) != num_processes or num_processes < 1:
        raise ValueError(f"'num_processes' must be a positive integer; got {num_processes}")
    ds = workspace.dataset_name(dataset_id)
    if not (workspace.raw / ds / "dataset.json").is_file():
        raise FileNotFoundError(f"{workspace.raw / ds / 'dataset.json'} is missing: call export_dataset(...) first")
    with workspace.activate(n_proc_da=max(1, int(num_processes))), _nnunet_output(verbose):
        from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
            DatasetFingerprintExtractor,
        )
        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprint_dataset,
            plan_experiment_dataset,
            preprocess_dataset,
        )

        extract_fingerprint_dataset(
            int(dataset_id), DatasetFingerprintExtractor, int(num_processes), check_dataset_integrity=verify,
            clean=True, verbose=verbose, show_progress_bar=False,
        )
        _, plans_name = plan_experiment_dataset(int(dataset_id), ExperimentPlanner)
        plans_file = workspace.preprocessed / ds / f"{plans_name}.json"
        plans = json.loads(plans_file.read_text())
        if configuration not in plans["configurations"]:
            raise ValueError(
                f"'configuration' must be one of {sorted(plans['configurations'])}; got {configuration!r}"
            )
        changes = _shrink_configuration(
            plans["configurations"][configuration], patch_size=patch_size, n_stages=n_stages,
            base_features=base_features, max_features=max_features, batch_size=batch_size,
        )
        plans.setdefault("msutils_overrides", {})[configuration] = changes
        atomic_write_text(plans_file, json.dumps(plans, indent=4) + "\n")
        if changes:
            logger.info("plans %s/%s edited: %s", ds, configuration, changes)
        preprocess_dataset(
            int(dataset_id), plans_name, (configuration,), (int(num_processes),), verbose=verbose,
            show_progress_bar=False,
        )
    return plans


# --------------------------------------------------------------------------- training
def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_device(device: str) -> "Any":
    import torch

    if device not in _DEVICES:
        raise ValueError(f"'device' must be one of {_DEVICES}; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch.cuda.is_available() is False")
    return torch.device(device)


def _check_fold(fold: int | str) -> int | str:
    if fold == "all":
        return "all"
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or fold < 0:
        raise ValueError(f"'fold' must be a non-negative integer or 'all'; got {fold!r}")
    return int(fold)


def _log_frame(logging_dict: Mapping[str, Sequence[Any]]) -> "pd.DataFrame":
    import pandas as pd

    n = min(len(logging_dict[k]) for k in ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs"))
    start = list(logging_dict.get("epoch_start_timestamps", []))
    end = list(logging_dict.get("epoch_end_timestamps", []))
    times = [float(e - s) for s, e in zip(start, end)][:n]
    times += [float("nan")] * (n - len(times))
    frame = pd.DataFrame(
        {
            "epoch": np.arange(n, dtype=int),
            "train_loss": [float(v) for v in logging_dict["train_losses"][:n]],
            "val_loss": [float(v) for v in logging_dict["val_losses"][:n]],
            "pseudo_dice": [float(v) for v in logging_dict["mean_fg_dice"][:n]],
            "ema_pseudo_dice": [float(v) for v in logging_dict["ema_fg_dice"][:n]],
            "lr": [float(v) for v in logging_dict["lrs"][:n]],
            "epoch_time_s": times,
        }
    )
    return frame[_LOG_COLUMNS]


def train(
    workspace: NnUNetWorkspace,
    dataset_id: int,
    fold: int | str,
    *,
    num_epochs: int,
    iterations_per_epoch: int,
    val_iterations: int,
    device: str = "cpu",
    seed: int = 0,
    configuration: str = "2d",
    n_proc_da: int = 0,
    num_threads: int | None = None,
    reuse: bool = True,
    plot_progress: bool = False,
    verbose: bool = False,
) -> "pd.DataFrame":
    """Train one fold with the stock ``nnUNetTrainer`` and return its per-epoch log.

    Parameters
    ----------
    workspace : NnUNetWorkspace
    dataset_id : int
    fold : int or "all"
        Index into ``splits_final.json`` (written by :func:`write_splits`,
        required: nnU-Net would otherwise draw its own random split, blind to
        subjects). ``"all"`` trains on every case (nnU-Net's convention).
    num_epochs, iterations_per_epoch, val_iterations : int
        Set on the trainer instance (nnU-Net defaults: 1000, 250, 50; the
        paper: 250 epochs).
    device : {"cpu", "cuda"}
    seed : int
        Seeds ``random``, NumPy and torch before training (global states).
    configuration : str
    n_proc_da : int
        nnU-Net augmentation worker processes; 0 (default) = in the main
        process, repeatable. More is faster on GPU machines, not repeatable.
    num_threads : int, optional
        torch CPU threads during training (restored afterwards).
    reuse : bool
        If ``checkpoint_final.pth`` exists and was trained by this function
        with the same settings on the same exported data, plans and splits,
        return its log instead of training again.
    plot_progress : bool
        Let nnU-Net redraw ``progress.png`` after every epoch (slow on CPU).
    verbose : bool
        Let nnU-Net print to stdout instead of the DEBUG log.

    Returns
    -------
    pandas.DataFrame
        One row per epoch: ``epoch, train_loss, val_loss, pseudo_dice,
        ema_pseudo_dice, lr, epoch_time_s`` (nnU-Net's ``mean_fg_dice`` is the
        "pseudo Dice" of its validation batches). Also written to
        ``fold_k/training_log.csv``.
    """
    _check_dataset_id(dataset_id)
    fold = _check_fold(fold)
    for label, value in (
        ("num_epochs", num_epochs), ("iterations_per_epoch", iterations_per_epoch), ("val_iterations", val_iterations)
    ):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"'{label}' must be a positive integer; got {value!r}")
    if int(n_proc_da) != n_proc_da or n_proc_da < 0:
        raise ValueError(f"'n_proc_da' must be a non-negative integer; got {n_proc_da!r}")
    torch_device = _check_device(device)
    ds = workspace.dataset_name(dataset_id)
    pre = workspace.preprocessed / ds
    plans_file = pre / f"{PLANS_NAME}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} is missing: call plan_and_preprocess(...) first")
    splits_file = pre / "splits_final.json"
    if fold != "all":
        if not splits_file.is_file():
            raise FileNotFoundError(
                f"{splits_file} is missing: call write_splits(...) first (nnU-Net would otherwise make its own "
                "random split, which ignores subjects)"
            )
        n_folds = len(json.loads(splits_file.read_text()))
        if fold >= n_folds:
            raise ValueError(f"'fold' must be < {n_folds} (folds in splits_final.json); got {fold}")
    settings = {
        "fold": fold,
        "configuration": configuration,
        "num_epochs": int(num_epochs),
        "iterations_per_epoch": int(iterations_per_epoch),
        "val_iterations": int(val_iterations),
        "device": device,
        "seed": int(seed),
        "n_proc_da": int(n_proc_da),
        "export_hash": _export_meta(workspace, dataset_id)["content_hash"],
        "plans_sha256": _sha256_file(plans_file),
        "splits_sha256": _sha256_file(splits_file) if splits_file.is_file() else None,
    }
    out_dir = workspace.model_folder(dataset_id, configuration=configuration) / f"fold_{fold}"
    if reuse and (out_dir / "checkpoint_final.pth").is_file() and (out_dir / _TRAIN_META).is_file():
        if json.loads((out_dir / _TRAIN_META).read_text()) == settings:
            logger.info("reusing trained model %s", out_dir)
            return training_log(workspace, dataset_id, fold, configuration=configuration)

    import torch

    for stale in (_TRAIN_META, _LOG_CSV):  # a run that dies half-way leaves nothing to reuse
        (out_dir / stale).unlink(missing_ok=True)
    plans = json.loads(plans_file.read_text())
    if configuration not in plans["configurations"]:
        raise ValueError(f"'configuration' must be one of {sorted(plans['configurations'])}; got {configuration!r}")
    dataset_json = json.loads((pre / "dataset.json").read_text())
    plans["continue_training"] = False  # popped by nnUNetTrainer.__init__

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch_device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        with workspace.activate(n_proc_da=int(n_proc_da)), _nnunet_output(verbose):
            from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

            trainer = nnUNetTrainer(plans, configuration, fold, dataset_json, torch_device)
            trainer.num_epochs = int(num_epochs)
            trainer.num_iterations_per_epoch = int(iterations_per_epoch)
            trainer.num_val_iterations_per_epoch = int(val_iterations)
            if not plot_progress:
                trainer.logger.plot_progress_png = lambda *args, **kwargs: None
            with Progress(f"nnU-Net training {ds} fold {fold}", total=int(num_epochs), unit="epochs") as bar:
                epoch_end = trainer.on_epoch_end

                def on_epoch_end() -> None:  # one progress line per epoch (at most every 10 s)
                    epoch_end()
                    bar.update()

                trainer.on_epoch_end = on_epoch_end
                trainer.run_training()
            frame = _log_frame(trainer.logger.get_checkpoint())
    finally:
        torch.set_num_threads(old_threads)
    atomic_write_text(out_dir / _LOG_CSV, frame.to_csv(index=False))
    atomic_write_text(out_dir / _TRAIN_META, json.dumps(settings, indent=1) + "\n")
    logger.info("trained %s fold %s: %d epochs, last val loss %.4f", ds, fold, len(frame), frame["val_loss"].iloc[-1])
    return frame


def training_log(
    workspace: NnUNetWorkspace,
    dataset_id: int,
    fold: int | str,
    *,
    configuration: str = "2d",
) -> "pd.DataFrame":
    """Per-epoch log of a trained fold (same columns as :func:`train` returns).

    Read from ``fold_k/training_log.csv`` when present, else from the
    ``logging`` entry of nnU-Net's ``checkpoint_final.pth``.
    """
    import pandas as pd

    fold = _check_fold(fold)
    out_dir = workspace.model_folder(dataset_id, configuration=configuration) / f"fold_{fold}"
    if (out_dir / _LOG_CSV).is_file():
        return pd.read_csv(out_dir / _LOG_CSV)[_LOG_COLUMNS]
    ckpt = out_dir / "checkpoint_final.pth"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} is missing: train fold {fold} first")
    import torch

    return _log_frame(torch.load(ckpt, map_location="cpu", weights_only=False)["logging"])


# --------------------------------------------------------------------------- prediction
def load_predictor(
    workspace: NnUNetWorkspace,
    dataset_id: int,
    folds: int | str | Sequence[int | str] = (0,),
    *,
    configuration: str = "2d",
    checkpoint: str = "checkpoint_final.pth",
    device: str = "cpu",
    use_mirroring: bool = True,
    tile_step_size: float = 0.5,
) -> Any:
    """An ``nnUNetPredictor`` holding the trained weights of ``folds``.

    The network is built from the stored ``plans.json`` with
    ``nnUNetTrainer.build_network_architecture`` and handed to
    ``nnUNetPredictor.manual_initialization`` (no trainer look-up by name).
    Several folds form nnU-Net's ensemble (mean of the logits).
    """
    import torch

    torch_device = _check_device(device)
    if not 0 < tile_step_size <= 1:
        raise ValueError(f"'tile_step_size' must be in (0, 1]; got {tile_step_size}")
    fold_list = [folds] if isinstance(folds, (int, str, np.integer)) else list(folds)
    if not fold_list:
        raise ValueError("'folds' is empty")
    fold_list = [_check_fold(f) for f in fold_list]
    model_dir = workspace.model_folder(dataset_id, configuration=configuration)
    for name in ("plans.json", "dataset.json"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} is missing: train a fold first")
    with workspace.activate():
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_manager = PlansManager(json.loads((model_dir / "plans.json").read_text()))
        dataset_json = json.loads((model_dir / "dataset.json").read_text())
        config_manager = plans_manager.get_configuration(configuration)
        parameters = []
        mirror_axes = None
        for f in fold_list:
            path = model_dir / f"fold_{f}" / checkpoint
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: train fold {f} first")
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            parameters.append(ckpt["network_weights"])
            mirror_axes = ckpt.get("inference_allowed_mirroring_axes", mirror_axes)
        network = nnUNetTrainer.build_network_architecture(
            plans_manager,
            config_manager,
            determine_num_input_channels(plans_manager, config_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )
        network.load_state_dict(parameters[0])
        with _nnunet_output(False):
            predictor = nnUNetPredictor(
                tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                perform_everything_on_device=torch_device.type == "cuda", device=torch_device, verbose=False,
                verbose_preprocessing=False, allow_tqdm=False,
            )
            predictor.manual_initialization(
                network, plans_manager, config_manager, parameters, dataset_json, TRAINER_NAME,
                tuple(mirror_axes) if mirror_axes is not None else None,
            )
    return predictor


def predict(
    workspace: NnUNetWorkspace,
    dataset_id: int,
    images: np.ndarray,
    *,
    folds: int | str | Sequence[int | str] = (0,),
    configuration: str = "2d",
    checkpoint: str = "checkpoint_final.pth",
    device: str = "cpu",
    use_mirroring: bool = True,
    tile_step_size: float = 0.5,
    spacing: tuple[float, float] | None = None,
    return_probabilities: bool = False,
    predictor: Any = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment 2D slices with trained fold model(s).

    Each slice goes through nnU-Net's own inference steps, as one 2D case:
    ``DefaultPreprocessor.run_case_npy`` (crop to nonzero, z-score, resample),
    ``nnUNetPredictor.predict_sliding_window_return_logits`` (sliding window,
    Gaussian weighting, mirroring test-time augmentation) for each fold's
    weights, logits averaged over folds as in
    ``predict_logits_from_preprocessed_data`` (but each fold's weights are
    loaded once per 64 slices, not once per slice), and
    ``convert_predicted_logits_to_segmentation_with_correct_shape`` (back to
    the input grid). Results equal ``predictor.predict_single_npy_array``.
    Slices that are all zero (no brain) are not run through the network: their
    mask and probability are 0 (nnU-Net would z-score an empty image into NaNs;
    its mask would be empty too).

    Parameters
    ----------
    workspace : NnUNetWorkspace
    dataset_id : int
    images : numpy.ndarray
        ``(n, H, W)`` or ``(H, W)`` slices preprocessed like the training ones.
    folds : int, "all" or sequence
        Fold model(s) to use (several = ensemble).
    configuration, checkpoint : str
    device : {"cpu", "cuda"}
    use_mirroring : bool
        nnU-Net's mirroring test-time augmentation (default on, as nnU-Net).
    tile_step_size : float
        Sliding-window step as a fraction of the patch (nnU-Net default 0.5).
    spacing : tuple of float, optional
        Pixel spacing (rows, columns) of ``images``; None -> the spacing the
        model was trained at (no resampling).
    return_probabilities : bool
        Also return the lesion probability (softmax) per pixel.
    predictor : nnUNetPredictor, optional
        Reuse one from :func:`load_predictor` (skips loading the weights;
        ``folds``, ``checkpoint``, ``device``, ``use_mirroring`` and
        ``tile_step_size`` are then those it was built with).

    Returns
    -------
    masks : numpy.ndarray
        uint8 {0, 1}, shape of ``images``.
    probabilities : numpy.ndarray
        float32 lesion probabilities, shape of ``images`` (only with
        ``return_probabilities=True``).
    """
    import torch

    arr = np.asarray(images)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3 or arr.size == 0:
        raise ValueError(f"'images' must be a (n, H, W) or (H, W) array; got shape {np.shape(images)}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("'images' contains NaN or infinite values")
    if predictor is None:
        predictor = load_predictor(
            workspace, dataset_id, folds, configuration=configuration, checkpoint=checkpoint, device=device,
            use_mirroring=use_mirroring, tile_step_size=tile_step_size,
        )
    pm, cm = predictor.plans_manager, predictor.configuration_manager
    if spacing is None:
        sp = [float(s) for s in cm.spacing[-2:]]
    else:
        if len(spacing) != 2 or not all(float(s) > 0 for s in spacing):
            raise ValueError(f"'spacing' must be two positive numbers (rows, columns); got {spacing!r}")
        sp = [float(s) for s in spacing]

    masks = np.zeros(arr.shape, dtype=np.uint8)
    probs = np.zeros(arr.shape, dtype=np.float32) if return_probabilities else None
    todo = [i for i in range(arr.shape[0]) if np.any(arr[i])]
    with workspace.activate(), _nnunet_output(False), torch.inference_mode():
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        from torch._dynamo import OptimizedModule

        preprocessor = cm.preprocessor_class(verbose=False)
        network = predictor.network
        if isinstance(network, OptimizedModule):
            network = network._orig_mod
        parameters = predictor.list_of_parameters
        threads = torch.get_num_threads()
        for start in range(0, len(todo), _PREDICT_CHUNK):
            chunk = todo[start : start + _PREDICT_CHUNK]
            prepared = []
            for i in chunk:
                props = {"spacing": [999.0 * max(sp), *sp]}
                data, _, props = preprocessor.run_case_npy(arr[i][None, None], None, props, pm, cm,
                                                           predictor.dataset_json)
                prepared.append((torch.from_numpy(data), props))
            # fold weights outer, slices inner: one load_state_dict per fold and chunk (nnU-Net's
            # predict_logits_from_preprocessed_data reloads every fold for every case); same arithmetic:
            # half-precision logits summed fold by fold, then divided by the number of folds
            logits: list[Any] = [None] * len(chunk)
            for k, params in enumerate(parameters):
                if len(parameters) > 1 or start == 0:
                    network.load_state_dict(params)
                for j, (data, _) in enumerate(prepared):
                    pred = predictor.predict_sliding_window_return_logits(data).to("cpu")
                    if k == 0:
                        logits[j] = pred
                    else:
                        logits[j] += pred
            for j, (i, (_, props)) in enumerate(zip(chunk, prepared)):
                if len(parameters) > 1:
                    logits[j] /= len(parameters)
                out = convert_predicted_logits_to_segmentation_with_correct_shape(
                    logits[j], pm, cm, predictor.label_manager, props,
                    return_probabilities=return_probabilities, num_threads_torch=threads,
                )
                if return_probabilities:
                    seg, prob = out
                    probs[i] = np.asarray(prob[1, 0], dtype=np.float32)  # type: ignore[index]
                else:
                    seg = out
                masks[i] = (np.asarray(seg)[0] > 0).astype(np.uint8)
    if single:
        masks = masks[0]
        probs = probs[0] if probs is not None else None
    return (masks, probs) if return_probabilities else masks
