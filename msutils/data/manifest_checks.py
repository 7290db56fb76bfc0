"""Parsing and validation of cohort manifests (CSV + YAML sidecar).

This module holds the schema constants and the checks behind
:func:`msutils.data.cohort.validate_manifest` and :func:`msutils.data.cohort.load_cohort`.
Use those public functions; this module is an implementation detail whose
only stable names are the constants re-exported by :mod:`msutils.data.cohort`.

Every problem is one line that names where it is (``row N (subject/session)``
with N the 1-based data row of the CSV, the column, the file) and what was
expected. All problems are collected; nothing stops at the first one.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = [
    "REQUIRED_COLUMNS",
    "GROUPS",
    "COURSES",
    "MS_COURSES",
    "SEXES",
    "DEEP_GM_STRUCTURES",
    "DEEP_GM_LABELS",
    "WM_LABEL",
    "PARCEL_OFFSET",
    "IMAGE_COLUMNS",
    "MASK_COLUMNS",
    "PATH_COLUMNS",
    "NUMERIC_COLUMNS",
    "TRUTH_KINDS",
    "AFFINE_ATOL",
    "ParsedManifest",
    "resolve_manifest_paths",
    "check_manifest",
]

logger = logging.getLogger(__name__)

#: Columns every manifest CSV must have, in the order :func:`write_manifest` writes them.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "subject_id",
    "session",
    "center",
    "scanner",
    "group",
    "course",
    "age",
    "sex",
    "disease_duration",
    "edss",
    "t1",
    "flair",
    "brain_mask",
    "lesion_mask",
    "roi_labels",
)
#: Allowed values of ``group``.
GROUPS: tuple[str, ...] = ("MS", "HC")
#: Disease courses of MS patients (relapsing-remitting first: the reference level of models).
MS_COURSES: tuple[str, ...] = ("RR", "SP", "PP", "CIS")
#: Allowed values of ``course`` (``NA``: healthy control, or course unknown).
COURSES: tuple[str, ...] = MS_COURSES + ("NA",)
#: ROI label convention (``data_manifests/README.md``): the deep grey-matter nuclei, left then right.
DEEP_GM_STRUCTURES: tuple[str, ...] = ("thalamus", "caudate", "putamen", "pallidum")
#: Label value -> name of the deep grey-matter nuclei (1-8).
DEEP_GM_LABELS: dict[int, str] = {2 * i + 1 + k: f"{name}_{side}" for i, name in enumerate(DEEP_GM_STRUCTURES)
                                  for k, side in enumerate("LR")}
#: Label value of the whole white matter (lesion voxels keep it).
WM_LABEL: int = 9
#: Cortical grey-matter parcel ``i`` (1-based) has label ``PARCEL_OFFSET + i``.
PARCEL_OFFSET: int = 100
#: Allowed values of ``sex``.
SEXES: tuple[str, ...] = ("M", "F")
#: Image columns required for every row.
IMAGE_COLUMNS: tuple[str, ...] = ("t1", "flair")
#: Mask columns; a cohort lists the ones it has under the sidecar key ``masks``.
MASK_COLUMNS: tuple[str, ...] = ("brain_mask", "lesion_mask", "roi_labels")
#: All standard path columns.
PATH_COLUMNS: tuple[str, ...] = IMAGE_COLUMNS + MASK_COLUMNS
#: Numeric clinical columns (parsed to float; empty -> NaN).
NUMERIC_COLUMNS: tuple[str, ...] = ("age", "disease_duration", "edss")
#: Kinds of the extra truth image columns a sidecar may declare under ``truth_masks``
#: (column -> kind): checked like ``brain_mask`` (binary, not empty), ``lesion_mask``
#: (binary), ``roi_labels`` (integer labels of the sidecar's table), or ``label_map``
#: (non-negative integers, e.g. a map of kind codes).
TRUTH_KINDS: tuple[str, ...] = ("brain_mask", "lesion_mask", "roi_labels", "label_map")
#: Absolute tolerance (mm) for comparing the affines of one scan's files.
AFFINE_ATOL: float = 1e-3

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BINARY_COLUMNS = ("brain_mask", "lesion_mask")
_MAX_LISTED = 20


@dataclass
class ParsedManifest:
    """What :func:`check_manifest` read; only meaningful when it found no problems."""

    csv_path: Path
    yaml_path: Path
    csv_bytes: bytes = b""
    yaml_bytes: bytes = b""
    header: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None
    image_columns: list[str] = field(default_factory=lambda: list(IMAGE_COLUMNS))
    mask_columns: list[str] = field(default_factory=list)
    labels: dict[int, str] | None = None
    masks_valid: bool = False
    truth_columns: dict[str, str] = field(default_factory=dict)


class _Problems:
    """Problems keyed for a stable, readable order: global first, then by row."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, str]] = []

    def add(self, message: str, row: int = 0) -> None:
        self._items.append((row, len(self._items), message))

    def sorted(self) -> list[str]:
        return [m for _, _, m in sorted(self._items)]

    def __len__(self) -> int:
        return len(self._items)


# --------------------------------------------------------------------------- paths


def resolve_manifest_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Return ``(csv_path, yaml_path)`` for a manifest given as CSV, YAML or folder.

    A folder means ``folder/manifest.csv``. The sidecar is the ``.yaml`` file with
    the CSV's stem (``.yml`` is accepted when no ``.yaml`` exists).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "manifest.csv"
    elif p.suffix.lower() in (".yaml", ".yml"):
        p = p.with_suffix(".csv")
    p = p.absolute()
    yaml_path = p.with_suffix(".yaml")
    if not yaml_path.exists() and p.with_suffix(".yml").exists():
        yaml_path = p.with_suffix(".yml")
    return p, yaml_path


# --------------------------------------------------------------------------- small helpers


def _fmt_list(values: Iterable[Any]) -> str:
    vals = list(values)
    if len(vals) > _MAX_LISTED:
        shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in vals[:_MAX_LISTED])
        return f"[{shown}, ...] ({len(vals)} in all)"
    return "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in vals) + "]"


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _parse_number(text: str) -> tuple[float | None, str | None]:
    """Parse a cell; return (value, error) where error completes 'column X: ...'."""
    try:
        value = float(text)
    except ValueError:
        return None, f"{text!r} is not a number"
    if not math.isfinite(value):
        return None, f"{text!r} is not a finite number"
    return value, None


# --------------------------------------------------------------------------- sidecar


def _check_sidecar(
    meta_raw: Any, name: str, csv_dir: Path, problems: _Problems, parsed: ParsedManifest
) -> bool:
    """Check the sidecar mapping; fill ``parsed``; return False if data_root is unusable."""
    where = f"sidecar '{name}'"
    if meta_raw is None:
        problems.add(f"{where}: file is empty; expected a YAML mapping with keys 'name', 'masks', ...")
        return True
    if not isinstance(meta_raw, Mapping):
        problems.add(
            f"{where}: expected a YAML mapping (key: value) at the top level; "
            f"got {type(meta_raw).__name__}"
        )
        return True
    meta = dict(meta_raw)
    parsed.meta = meta

    if not isinstance(meta.get("name"), str) or not meta.get("name", "").strip():
        problems.add(f"{where}: key 'name' is missing or not a non-empty string")
    if "description" in meta and meta["description"] is not None and not isinstance(
        meta["description"], str
    ):
        problems.add(f"{where}: key 'description' must be a string")

    # data_root
    base_ok = True
    data_root = meta.get("data_root", ".")
    if data_root is None:
        data_root = "."
    if not isinstance(data_root, str) or not data_root.strip():
        problems.add(f"{where}: key 'data_root' must be a path string; got {data_root!r}")
        base_ok = False
    else:
        base = Path(os.path.normpath(csv_dir / Path(data_root).expanduser()))
        if not base.is_dir():
            problems.add(
                f"{where}: data_root {data_root!r} (resolved to '{base}') is not a directory; "
                "image files were not checked"
            )
            base_ok = False
        else:
            parsed.base_dir = base

    # images
    images = meta.get("images", list(IMAGE_COLUMNS))
    if not isinstance(images, list) or not all(isinstance(c, str) for c in images):
        problems.add(f"{where}: key 'images' must be a list of column names; got {images!r}")
    else:
        missing = [c for c in IMAGE_COLUMNS if c not in images]
        if missing:
            problems.add(
                f"{where}: key 'images' must include {_fmt_list(IMAGE_COLUMNS)}; missing {_fmt_list(missing)}"
            )
        clash = [c for c in images if c in MASK_COLUMNS]
        if clash:
            problems.add(
                f"{where}: key 'images' lists mask columns {_fmt_list(clash)}; put them under 'masks'"
            )
        parsed.image_columns = list(IMAGE_COLUMNS) + [
            c for c in dict.fromkeys(images) if c not in IMAGE_COLUMNS and c not in MASK_COLUMNS
        ]

    # masks
    if "masks" not in meta:
        problems.add(
            f"{where}: key 'masks' is missing; expected a list, a subset of "
            f"{_fmt_list(MASK_COLUMNS)} (use [] if the cohort has none)"
        )
    else:
        masks = meta["masks"] if meta["masks"] is not None else []
        if not isinstance(masks, list) or not all(isinstance(c, str) for c in masks):
            problems.add(f"{where}: key 'masks' must be a list of column names; got {masks!r}")
        else:
            unknown = [c for c in masks if c not in MASK_COLUMNS]
            if unknown:
                problems.add(
                    f"{where}: key 'masks' lists unknown columns {_fmt_list(unknown)}; "
                    f"expected a subset of {_fmt_list(MASK_COLUMNS)}"
                )
            parsed.mask_columns = [c for c in MASK_COLUMNS if c in masks]
            parsed.masks_valid = not unknown

    # truth_masks: extra image columns holding true masks, checked by kind
    raw_truth = meta.get("truth_masks")
    if raw_truth is not None:
        if not isinstance(raw_truth, Mapping):
            problems.add(
                f"{where}: key 'truth_masks' must be a mapping of column name -> kind "
                f"({_fmt_list(TRUTH_KINDS)}); got {type(raw_truth).__name__}"
            )
        else:
            for col, kind in raw_truth.items():
                if not isinstance(col, str) or not col.strip():
                    problems.add(f"{where}: truth_masks key {col!r} is not a column name")
                elif col in REQUIRED_COLUMNS or col in parsed.image_columns:
                    problems.add(
                        f"{where}: truth_masks column {col!r} clashes with a standard or image column; "
                        "use another name (e.g. prefixed 'gt_')"
                    )
                elif kind not in TRUTH_KINDS:
                    problems.add(f"{where}: truth_masks {col!r} has kind {kind!r}; expected one of "
                                 f"{_fmt_list(TRUTH_KINDS)}")
                else:
                    parsed.truth_columns[col] = str(kind)

    # roi_labels
    labels: dict[int, str] | None = {}
    raw_labels = meta.get("roi_labels")
    if raw_labels is None:
        raw_labels = {}
    if not isinstance(raw_labels, Mapping):
        problems.add(
            f"{where}: key 'roi_labels' must be a mapping of integer label -> name; "
            f"got {type(raw_labels).__name__}"
        )
        labels = None
    else:
        for key, value in raw_labels.items():
            label: int | None
            if isinstance(key, bool):
                label = None
            elif isinstance(key, int):
                label = key
            elif isinstance(key, str) and key.strip().isdigit():
                label = int(key)
            else:
                label = None
            if label is None or label <= 0:
                problems.add(
                    f"{where}: roi_labels key {key!r} is not a positive integer label (0 is background)"
                )
                labels = None
                continue
            if not isinstance(value, str) or not value.strip():
                problems.add(f"{where}: roi_labels {label} has name {value!r}; expected a non-empty string")
                labels = None
                continue
            if labels is not None:
                labels[label] = value
    needs_table = "roi_labels" in parsed.mask_columns or "roi_labels" in parsed.truth_columns.values()
    if needs_table and labels is not None and not labels:
        problems.add(
            f"{where}: key 'masks' (or 'truth_masks') lists 'roi_labels' but the label table 'roi_labels' "
            "is missing or empty"
        )
        labels = None  # do not also flag every label of every map
    parsed.labels = labels

    # roi_sets
    raw_sets = meta.get("roi_sets")
    if raw_sets is None:
        raw_sets = {}
    if not isinstance(raw_sets, Mapping):
        problems.add(
            f"{where}: key 'roi_sets' must be a mapping of ROI name -> list of labels; "
            f"got {type(raw_sets).__name__}"
        )
    else:
        for set_name, members in raw_sets.items():
            if not isinstance(members, list) or not members or not all(
                isinstance(m, int) and not isinstance(m, bool) for m in members
            ):
                problems.add(
                    f"{where}: roi_sets {str(set_name)!r} must be a non-empty list of integer labels; "
                    f"got {members!r}"
                )
                continue
            if labels is not None:
                unknown_labels = sorted({m for m in members if m not in labels})
                if unknown_labels:
                    problems.add(
                        f"{where}: roi_sets {str(set_name)!r} references labels missing from roi_labels: "
                        f"{_fmt_list(unknown_labels)}"
                    )

    synthetic = meta.get("synthetic")
    if synthetic is not None and not isinstance(synthetic, Mapping):
        problems.add(f"{where}: key 'synthetic' must be a mapping; got {type(synthetic).__name__}")
    return base_ok


# --------------------------------------------------------------------------- CSV rows


def _row_tag(index: int, row: Mapping[str, str]) -> str:
    return f"row {index} ({row.get('subject_id') or '?'}/{row.get('session') or '?'})"


def _check_row_values(
    index: int, row: dict[str, str], parsed: ParsedManifest, problems: _Problems, mask_known: bool
) -> None:
    tag = _row_tag(index, row)

    def add(msg: str) -> None:
        problems.add(f"{tag}: {msg}", index)

    id_columns = (("subject_id", "a subject identifier"), ("session", "a session label such as 'ses-01'"))
    for col, what in id_columns:
        if col not in row:
            continue
        value = row[col]
        if not value:
            add(f"column '{col}': empty; expected {what}")
        elif not _ID_RE.match(value):
            add(f"column '{col}': {value!r} may only contain letters, digits, '.', '_' and '-'")
    text_columns = (("center", "a center name"), ("scanner", "a scanner description ('unknown' if not known)"))
    for col, what in text_columns:
        if col in row and not row[col]:
            add(f"column '{col}': empty; expected {what}")

    group = row.get("group")
    for col, allowed in (("group", GROUPS), ("course", COURSES), ("sex", SEXES)):
        if col not in row:
            continue
        value = row[col]
        if not value:
            add(f"column '{col}': empty; expected one of {_fmt_list(allowed)}")
        elif value not in allowed:
            add(f"column '{col}': {value!r} is not one of {_fmt_list(allowed)}")
        elif col == "course" and group == "HC" and value != "NA":
            add(f"column 'course': {value!r} for group 'HC'; expected 'NA'")

    numbers: dict[str, float] = {}
    if "age" in row:
        text = row["age"]
        if not text:
            add("column 'age': empty; expected a number >= 0 (years)")
        else:
            value, err = _parse_number(text)
            if err:
                add(f"column 'age': {err}")
            elif value is not None and value < 0:
                add(f"column 'age': {text} is negative; expected >= 0 (years)")
            elif value is not None:
                numbers["age"] = value
    for col in ("disease_duration", "edss"):
        if col not in row or not row[col]:
            continue
        text = row[col]
        if group == "HC":
            add(f"column '{col}': {text} for group 'HC'; expected empty")
            continue
        value, err = _parse_number(text)
        if err:
            add(f"column '{col}': {err}")
            continue
        assert value is not None
        if col == "disease_duration":
            if value < 0:
                add(f"column 'disease_duration': {text} is negative; expected >= 0 (years) or empty")
            elif "age" in numbers and value > numbers["age"]:
                add(f"column 'disease_duration': {text} exceeds the age {row['age']}")
        else:
            if value < 0 or value > 10:
                add(f"column 'edss': {text} is outside 0-10")
            elif abs(value * 2 - round(value * 2)) > 1e-9:
                add(f"column 'edss': {text} is not a multiple of 0.5")

    # path cells
    for col in parsed.image_columns:
        if col in row and not row[col]:
            add(f"column '{col}': empty; expected a path to a NIfTI image")
    for col in parsed.truth_columns:
        if col in row and not row[col]:
            add(f"column '{col}': empty, but the sidecar lists it under truth_masks; expected a path to a NIfTI image")
    if not mask_known:
        return
    for col in MASK_COLUMNS:
        if col not in row:
            continue
        value = row[col]
        listed = col in parsed.mask_columns
        if listed and not value and not (col == "lesion_mask" and group == "HC"):
            add(
                f"column '{col}': empty, but the sidecar lists '{col}' under masks; "
                "expected a path to a NIfTI image"
            )
        elif not listed and value:
            add(f"column '{col}': {value!r} given, but the sidecar does not list '{col}' under masks")


def _check_cross_rows(rows: list[tuple[int, dict[str, str]]], problems: _Problems) -> None:
    first_seen: dict[tuple[str, str], int] = {}
    subject_center: dict[str, tuple[str, int]] = {}
    for index, row in rows:
        sid, ses, center = row.get("subject_id", ""), row.get("session", ""), row.get("center", "")
        if not sid:
            continue
        tag = _row_tag(index, row)
        if "session" in row:
            key = (sid, ses)
            if key in first_seen:
                problems.add(f"{tag}: duplicate (subject_id, session); first in row {first_seen[key]}", index)
            else:
                first_seen[key] = index
        if "center" in row and center:
            if sid in subject_center and subject_center[sid][0] != center:
                first_center, first_row = subject_center[sid]
                problems.add(
                    f"{tag}: subject '{sid}' is in center {center!r} here but in center "
                    f"{first_center!r} in row {first_row}; a subject belongs to one center",
                    index,
                )
            elif sid not in subject_center:
                subject_center[sid] = (center, index)


# --------------------------------------------------------------------------- images


@dataclass
class _Header:
    error: str | None = None  # completes "file 'x' (column 'c') ..."
    shape: tuple[int, ...] | None = None
    affine: np.ndarray | None = None


@dataclass
class _Voxels:
    error: str | None = None
    nonfinite: int = 0
    nonbinary: list[float] | None = None  # example values other than 0/1
    any_nonzero: bool = False
    nonint: list[float] | None = None
    labels: list[int] | None = None


def _read_header(path: Path) -> tuple[_Header, Any]:
    import nibabel as nib

    if not path.exists():
        return _Header(error="does not exist"), None
    if not path.is_file():
        return _Header(error="is not a file"), None
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:  # nibabel raises many types for bad files
        return _Header(error=f"is not a readable NIfTI image ({type(exc).__name__}: {_one_line(exc)})"), None
    if len(shape) != 3:
        return _Header(error=f"is {len(shape)}D with shape {shape}; expected a 3D image", shape=shape), None
    return _Header(shape=shape, affine=affine), img


def _examples(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.unique(values)[:5]]


def _load_data(img: Any, path: Path) -> np.ndarray:
    """Voxel data of ``img``; a gzip file is decompressed whole so its CRC is verified.

    nibabel reads exactly the bytes it needs from a ``.gz`` stream and never
    reaches the gzip trailer, so a corrupted (but not truncated) stream would
    go unnoticed; ``gzip.decompress`` checks the CRC and length.
    """
    if path.name.lower().endswith(".gz") and hasattr(type(img), "from_bytes"):
        import gzip

        raw = gzip.decompress(path.read_bytes())
        img = type(img).from_bytes(raw)
    return np.asanyarray(img.dataobj)


def _read_voxels(img: Any, roles: set[str], path: Path) -> _Voxels:
    """Read the voxel data once and compute what the file's roles need."""
    try:
        data = _load_data(img, path)
    except Exception as exc:  # corrupt gzip -> BadGzipFile, zlib.error, EOFError, ...
        return _Voxels(error=f"could not be read ({type(exc).__name__}: {_one_line(exc)})")
    out = _Voxels()
    if data.dtype.kind not in "biufc":
        return _Voxels(error=f"has unsupported voxel type {data.dtype}; expected numbers")
    finite = np.isfinite(data) if data.dtype.kind in "fc" else None
    if finite is not None:
        out.nonfinite = int(data.size - np.count_nonzero(finite))
    values = data if finite is None or out.nonfinite == 0 else data[finite]
    if roles & set(_BINARY_COLUMNS):
        is_binary = (values == 0) | (values == 1)
        if not bool(np.all(is_binary)):
            out.nonbinary = _examples(values[~is_binary])
        out.any_nonzero = bool(np.any(values != 0))
    if roles & {"roi_labels", "label_map"}:
        if values.dtype.kind in "fc":
            nonint = values != np.round(values)
            if bool(np.any(nonint)):
                out.nonint = _examples(values[nonint])
                return out
            ints = values.astype(np.int64)
        else:
            ints = values.astype(np.int64, copy=False)
        if ints.size and int(ints.min()) >= 0 and int(ints.max()) < (1 << 20):
            present = np.flatnonzero(np.bincount(ints.ravel()))
        else:
            present = np.unique(ints)
        out.labels = [int(v) for v in present]
        out.any_nonzero = any(v != 0 for v in out.labels)
    return out


def _check_files(
    rows: list[tuple[int, dict[str, str]]],
    parsed: ParsedManifest,
    problems: _Problems,
    check_images: bool,
) -> None:
    assert parsed.base_dir is not None
    base = parsed.base_dir
    # masks the sidecar does not list were already reported when given; skip their files
    masks = parsed.mask_columns if parsed.masks_valid else list(MASK_COLUMNS)
    truth = parsed.truth_columns
    columns = list(parsed.image_columns) + list(masks) + list(truth)
    headers: dict[Path, tuple[_Header, Any]] = {}
    roles: dict[Path, set[str]] = {}
    refs: list[tuple[int, str, str, str, Path]] = []  # (row, tag, column, cell, path)

    # pass 1: headers, once per file
    for index, row in rows:
        tag = _row_tag(index, row)
        for col in columns:
            cell = row.get(col, "")
            if not cell:
                continue
            path = Path(os.path.normpath(base / Path(cell).expanduser()))
            if path not in headers:
                headers[path] = _read_header(path)
            roles.setdefault(path, set()).add(truth.get(col, col))
            refs.append((index, tag, col, cell, path))
    logger.info("checked %d file headers", len(headers))

    by_row: dict[int, list[tuple[str, str, str, Path]]] = {}
    for index, tag, col, cell, path in refs:
        by_row.setdefault(index, []).append((tag, col, cell, path))
    for index, items in by_row.items():
        ref_col: str | None = None
        ref_header: _Header | None = None
        for tag, col, cell, path in items:
            header = headers[path][0]
            where = f"{tag}: file '{cell}' (column '{col}')"
            if header.error:
                problems.add(f"{where} {header.error}", index)
                continue
            if ref_header is None:
                ref_col, ref_header = col, header
                continue
            assert header.shape is not None and ref_header.shape is not None
            if header.shape != ref_header.shape:
                problems.add(
                    f"{where} has shape {header.shape}; expected {ref_header.shape} as in column '{ref_col}'",
                    index,
                )
                continue
            assert header.affine is not None and ref_header.affine is not None
            if not np.allclose(header.affine, ref_header.affine, rtol=0.0, atol=AFFINE_ATOL):
                diff = float(np.max(np.abs(header.affine - ref_header.affine)))
                problems.add(
                    f"{where} has an affine that differs from column '{ref_col}' by up to "
                    f"{diff:.3g} (tolerance {AFFINE_ATOL:g})",
                    index,
                )

    if not check_images:
        return

    # pass 2: voxel data, once per file
    voxels: dict[Path, _Voxels] = {}
    readable = [p for p, (h, img) in headers.items() if h.error is None and img is not None]
    for n, path in enumerate(readable, 1):
        voxels[path] = _read_voxels(headers[path][1], roles[path], path)
        if n % 50 == 0:
            logger.info("read voxel data of %d/%d files", n, len(readable))
    labels = parsed.labels
    for index, tag, col, cell, path in refs:
        vox = voxels.get(path)
        if vox is None:
            continue
        where = f"{tag}: file '{cell}' (column '{col}')"
        if vox.error:
            problems.add(f"{where} {vox.error}", index)
            continue
        if vox.nonfinite:
            problems.add(f"{where} contains {vox.nonfinite} NaN/inf voxels", index)
        kind = truth.get(col, col)
        if kind in _BINARY_COLUMNS:
            if vox.nonbinary:
                shown = ", ".join(_fmt_num(v) for v in vox.nonbinary)
                problems.add(f"{where} is not binary: found values other than 0 and 1 (e.g. {shown})", index)
            elif kind == "brain_mask" and not vox.any_nonzero:
                problems.add(f"{where} is empty (all voxels are 0)", index)
        elif kind == "label_map":
            if vox.nonint:
                shown = ", ".join(_fmt_num(v) for v in vox.nonint)
                problems.add(f"{where} has non-integer values (e.g. {shown}); expected integer codes", index)
            elif vox.labels is not None and any(v < 0 for v in vox.labels):
                problems.add(f"{where} has negative values; expected integer codes >= 0", index)
        elif kind == "roi_labels":
            if vox.nonint:
                shown = ", ".join(_fmt_num(v) for v in vox.nonint)
                problems.add(f"{where} has non-integer values (e.g. {shown}); expected integer labels", index)
                continue
            if not vox.any_nonzero:
                problems.add(f"{where} is empty (all voxels are 0)", index)
                continue
            if labels is not None and vox.labels is not None:
                unknown = [v for v in vox.labels if v != 0 and v not in labels]
                if unknown:
                    problems.add(
                        f"{where} contains labels missing from the sidecar roi_labels table: "
                        f"{_fmt_list(unknown)}",
                        index,
                    )


# --------------------------------------------------------------------------- entry point


def check_manifest(path: str | os.PathLike, *, check_images: bool = True) -> tuple[list[str], ParsedManifest]:
    """Validate a manifest and return ``(problems, parsed)``.

    ``parsed`` is complete only when ``problems`` is empty. The input files are
    only read, never written.
    """
    csv_path, yaml_path = resolve_manifest_paths(path)
    parsed = ParsedManifest(csv_path=csv_path, yaml_path=yaml_path)
    problems = _Problems()
    csv_name, yaml_name = csv_path.name, yaml_path.name

    # files
    if not csv_path.is_file():
        what = "does not exist" if not csv_path.exists() else "is not a file"
        problems.add(f"manifest file '{csv_path}' {what}")
    else:
        parsed.csv_bytes = csv_path.read_bytes()
    sidecar_ok = False
    if not yaml_path.is_file():
        problems.add(
            f"sidecar file '{yaml_path}' does not exist; expected beside the manifest, with the same name"
        )
    else:
        parsed.yaml_bytes = yaml_path.read_bytes()
        import yaml

        try:
            meta_raw = yaml.safe_load(parsed.yaml_bytes.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            problems.add(f"sidecar '{yaml_name}': not UTF-8 text ({exc.reason} at byte {exc.start})")
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            reason = getattr(exc, "problem", None) or _one_line(exc)
            problems.add(f"sidecar '{yaml_name}': unparsable YAML{at}: {reason}")
        else:
            base_ok = _check_sidecar(meta_raw, yaml_name, csv_path.parent, problems, parsed)
            sidecar_ok = isinstance(meta_raw, Mapping) and base_ok
    if not csv_path.is_file():
        return problems.sorted(), parsed

    # CSV
    try:
        text = parsed.csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.add(f"manifest '{csv_name}': not UTF-8 text ({exc.reason} at byte {exc.start})")
        return problems.sorted(), parsed
    try:
        records = [r for r in csv.reader(io.StringIO(text, newline=""))]
    except csv.Error as exc:
        problems.add(f"manifest '{csv_name}': unparsable CSV ({exc})")
        return problems.sorted(), parsed
    records = [r for r in records if any(cell.strip() for cell in r)]
    if not records:
        problems.add(
            f"manifest '{csv_name}': empty file; expected a header row with columns "
            f"{_fmt_list(REQUIRED_COLUMNS)}"
        )
        return problems.sorted(), parsed
    header = [h.strip() for h in records[0]]
    parsed.header = header
    dup_cols = sorted({h for h in header if header.count(h) > 1})
    if dup_cols:
        problems.add(f"manifest '{csv_name}': duplicate column names {_fmt_list(dup_cols)}")
    if "" in header:
        problems.add(f"manifest '{csv_name}': column {header.index('') + 1} has an empty name")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        problems.add(f"manifest '{csv_name}': missing required columns {_fmt_list(missing)}")
    extra_images = [c for c in parsed.image_columns if c not in IMAGE_COLUMNS and c not in header]
    if extra_images:
        problems.add(
            f"manifest '{csv_name}': columns {_fmt_list(extra_images)} listed under the sidecar's "
            "'images' are missing"
        )
    missing_truth = [c for c in parsed.truth_columns if c not in header]
    if missing_truth:
        problems.add(
            f"manifest '{csv_name}': columns {_fmt_list(missing_truth)} listed under the sidecar's "
            "'truth_masks' are missing"
        )
    if len(records) == 1:
        problems.add(f"manifest '{csv_name}': no data rows")

    rows: list[tuple[int, dict[str, str]]] = []
    for index, record in enumerate(records[1:], 1):
        cells = [c.strip() for c in record]
        row = {h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header)}
        if len(cells) != len(header):
            problems.add(
                f"{_row_tag(index, row)}: has {len(cells)} cells; expected {len(header)} as in the header "
                "(row not checked further)",
                index,
            )
            continue
        rows.append((index, row))
        _check_row_values(index, row, parsed, problems, mask_known=parsed.masks_valid)
    parsed.rows = [row for _, row in rows]
    _check_cross_rows(rows, problems)

    if sidecar_ok and parsed.base_dir is not None:
        _check_files(rows, parsed, problems, check_images)
    return problems.sorted(), parsed
