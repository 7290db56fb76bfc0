"""Cohort manifests: schema, validation, loading and writing.

A manifest is ``NAME.csv`` (one row per scan) plus the sidecar ``NAME.yaml``
in the same folder. The schema is documented in ``data_manifests/README.md``.

Examples
--------
>>> from msutils.data.cohort import load_cohort, validate_manifest
>>> problems = validate_manifest("data_manifests/mslub/manifest.csv")  # doctest: +SKIP
>>> cohort = load_cohort("data_manifests/mslub/manifest.csv")          # doctest: +SKIP
>>> flair = cohort.array("patient07_ses-01", "flair")                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import pandas as pd

from msutils.core.io import atomic_write_text
from msutils.core.serialize import to_builtin
from msutils.data.manifest_checks import (
    AFFINE_ATOL,
    COURSES,
    DEEP_GM_LABELS,
    DEEP_GM_STRUCTURES,
    GROUPS,
    IMAGE_COLUMNS,
    MASK_COLUMNS,
    MS_COURSES,
    NUMERIC_COLUMNS,
    PARCEL_OFFSET,
    PATH_COLUMNS,
    REQUIRED_COLUMNS,
    SEXES,
    TRUTH_KINDS,
    WM_LABEL,
    ParsedManifest,
    check_manifest,
    resolve_manifest_paths,
)

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib

__all__ = [
    "first_session",
    "manifest_hash",
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
    "TRUTH_KINDS",
    "AFFINE_ATOL",
    "ManifestError",
    "Cohort",
    "validate_manifest",
    "load_cohort",
    "write_manifest",
]

logger = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest failed validation.

    Parameters
    ----------
    path : path-like
        The manifest CSV.
    problems : list of str
        Every problem found, one line each.

    Attributes
    ----------
    path : pathlib.Path
    problems : list of str
    """

    def __init__(self, path: str | os.PathLike, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        n = len(self.problems)
        header = f"manifest '{self.path}' has {n} problem{'s' if n != 1 else ''}:"
        super().__init__("\n".join([header] + [f"  {p}" for p in self.problems]))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across process pools
        return (type(self), (self.path, self.problems))


def _hash_bytes(csv_bytes: bytes, yaml_bytes: bytes) -> str:
    h = hashlib.sha256()
    for part in (csv_bytes, yaml_bytes):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def manifest_hash(path: str | os.PathLike) -> str:
    """sha256 (hex) of a manifest's content: the CSV bytes and the sidecar bytes.

    The one cohort content hash of msutils: :meth:`Cohort.content_hash` of a loaded
    manifest and the fold cache's cohort identity
    (:func:`msutils.pipeline.cache.manifest_identity`) are this value. Image files
    are not part of it. A missing sidecar hashes as empty (such a manifest does
    not load, but its identity is still defined).

    Parameters
    ----------
    path : str or path-like
        The manifest CSV, its sidecar, or a folder holding ``manifest.csv``.

    Raises
    ------
    FileNotFoundError
        The CSV does not exist.
    """
    csv_path, yaml_path = resolve_manifest_paths(path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest {csv_path} does not exist")
    return _hash_bytes(csv_path.read_bytes(), yaml_path.read_bytes() if yaml_path.is_file() else b"")


@dataclass(frozen=True, eq=False)
class Cohort:
    """A validated cohort: one table row per scan plus the sidecar metadata.

    Build it with :func:`load_cohort`. Images are loaded lazily by
    :meth:`image` / :meth:`array`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per scan, index ``scan_id`` = ``f"{subject_id}_{session}"``, in
        manifest order. ``age``, ``disease_duration``, ``edss``: float (NaN when
        empty). ``group``/``course``/``sex``/ids: str (``course`` of HC is the
        string ``"NA"``). Path columns (standard, extra ``images``,
        ``truth_masks``): absolute ``str`` or ``None`` (object dtype). Extra
        columns are kept: numeric when every non-empty cell is a number
        (empty -> NaN), otherwise the CSV strings.
    meta : dict
        The sidecar, as parsed (``roi_labels`` keys as written in YAML).
    manifest_path : pathlib.Path
        Absolute path of the manifest CSV.
    source_hash : str
        sha256 of the CSV and sidecar bytes read at load time.
    selection : tuple of str or None
        Scan ids of a :meth:`select` subset, ``None`` for the full manifest.
    """

    table: pd.DataFrame
    meta: dict[str, Any]
    manifest_path: Path
    source_hash: str = field(default="", repr=False)
    selection: tuple[str, ...] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ metadata
    @property
    def name(self) -> str:
        """Cohort name from the sidecar (``name``)."""
        return str(self.meta.get("name", self.manifest_path.stem))

    @property
    def labels(self) -> dict[int, str]:
        """ROI label value -> name, from the sidecar ``roi_labels`` (empty if none)."""
        raw = self.meta.get("roi_labels") or {}
        return {int(k): str(v) for k, v in raw.items()}

    @property
    def roi_sets(self) -> dict[str, list[int]]:
        """Named ROIs as lists of label values, from the sidecar ``roi_sets``."""
        raw = self.meta.get("roi_sets") or {}
        return {str(k): [int(v) for v in vals] for k, vals in raw.items()}

    @property
    def image_columns(self) -> list[str]:
        """Image columns of this cohort: ``t1``, ``flair`` and extra ``images`` of the sidecar."""
        images = self.meta.get("images") or list(IMAGE_COLUMNS)
        return list(IMAGE_COLUMNS) + [c for c in images if c not in IMAGE_COLUMNS and c not in MASK_COLUMNS]

    @property
    def mask_columns(self) -> list[str]:
        """Mask columns the sidecar lists as available (subset of :data:`MASK_COLUMNS`)."""
        masks = self.meta.get("masks") or []
        return [c for c in MASK_COLUMNS if c in masks]

    @property
    def truth_columns(self) -> dict[str, str]:
        """Truth image columns the sidecar declares under ``truth_masks`` -> their kind.

        Synthetic cohorts keep the true masks there (``gt_lesion_mask`` ...)
        beside the rater-like ``masks``; real cohorts usually have none.
        """
        raw = self.meta.get("truth_masks") or {}
        return {str(k): str(v) for k, v in raw.items()}

    def truth_column(self, kind: str, scan_ids: Iterable[str] | None = None) -> str | None:
        """The truth image column of ``kind`` when every scan (of ``scan_ids``) has a file in it.

        Parameters
        ----------
        kind : str
            Mask kind, e.g. ``"lesion_mask"`` (one of :data:`TRUTH_KINDS`).
        scan_ids : iterable of str, optional
            The scans that must have it; default every scan.

        Returns
        -------
        str or None
            The first column the sidecar's ``truth_masks`` declares with that kind
            (``gt_lesion_mask`` on a synthetic cohort), or None when none is declared
            or no scan has a file in it (a real cohort).

        Raises
        ------
        ValueError
            If the declared column is missing from the manifest, or empty for some of
            the scans but not for others.
        """
        columns = [c for c, k in self.truth_columns.items() if k == kind]
        if not columns:
            return None
        column = columns[0]
        table = self.table if scan_ids is None else self.table.loc[list(scan_ids)]
        if column not in table.columns:
            raise ValueError(f"cohort {self.manifest_path}: the sidecar declares truth mask {column!r} but the "
                             "manifest has no such column")
        present = table[column].notna() & (table[column].astype(str) != "")
        if present.all():
            return column
        if present.any():
            raise ValueError(f"cohort {self.manifest_path}: column {column!r} is empty for scan(s) "
                             f"{list(table.index[~present])[:5]} but not for others")
        return None

    @property
    def centers(self) -> list[str]:
        """Sorted unique centers."""
        return sorted(self.table["center"].astype(str).unique().tolist())

    @property
    def subjects(self) -> list[str]:
        """Sorted unique subject ids."""
        return sorted(self.table["subject_id"].astype(str).unique().tolist())

    @property
    def scan_ids(self) -> list[str]:
        """Scan ids in table order."""
        return [str(s) for s in self.table.index]

    def __len__(self) -> int:
        return len(self.table)

    # ------------------------------------------------------------------ images
    def path(self, scan_id: str, column: str) -> Path:
        """Absolute path of ``column`` for ``scan_id``.

        Raises
        ------
        KeyError
            Unknown ``scan_id``.
        ValueError
            Unknown ``column``, or the manifest cell is empty.
        """
        allowed = self.image_columns + list(MASK_COLUMNS) + list(self.truth_columns)
        if column not in allowed:
            raise ValueError(f"'column' must be one of {allowed}; got {column!r}")
        if scan_id not in self.table.index:
            raise KeyError(f"scan_id {scan_id!r} is not in cohort {self.name!r} ({self.manifest_path})")
        value = self.table.at[scan_id, column]
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            raise ValueError(
                f"scan {scan_id!r} has no {column!r}: the manifest cell is empty "
                f"(available masks: {self.mask_columns})"
            )
        return Path(str(value))

    def image(self, scan_id: str, column: str) -> "nib.Nifti1Image":
        """Load ``column`` of ``scan_id`` lazily (header now, voxels on access)."""
        import nibabel as nib

        return nib.load(str(self.path(scan_id, column)))  # type: ignore[return-value]

    def array(self, scan_id: str, column: str, dtype: Any = np.float32) -> np.ndarray:
        """Voxel array of ``column`` for ``scan_id`` (scaled by the NIfTI slope), as ``dtype``."""
        data = np.asanyarray(self.image(scan_id, column).dataobj)
        return np.asarray(data, dtype=dtype) if dtype is not None else np.asarray(data)

    # ------------------------------------------------------------------ subsets
    def select(self, scan_ids: Iterable[str]) -> "Cohort":
        """Subset of scans in the given order, with the same metadata.

        Raises
        ------
        KeyError
            If a scan id is not in the cohort (all unknown ids are named).
        ValueError
            If a scan id is given twice.
        """
        if isinstance(scan_ids, str):
            scan_ids = [scan_ids]
        ids = [str(s) for s in scan_ids]
        unknown = [s for s in ids if s not in self.table.index]
        if unknown:
            raise KeyError(f"scan ids not in cohort {self.name!r}: {unknown}")
        dups = sorted({s for s in ids if ids.count(s) > 1})
        if dups:
            raise ValueError(f"scan ids given more than once: {dups}")
        return Cohort(
            table=self.table.loc[ids].copy(),
            meta=copy.deepcopy(self.meta),
            manifest_path=self.manifest_path,
            source_hash=self.source_hash,
            selection=tuple(ids),
        )

    def content_hash(self) -> str:
        """sha256 (hex) of the manifest CSV and sidecar bytes as loaded (:func:`manifest_hash`).

        A :meth:`select` subset hashes the source hash together with its scan
        ids, so different subsets of one manifest never share a hash. Image
        files are not part of the hash.
        """
        base = self.source_hash or manifest_hash(self.manifest_path)
        if self.selection is None:
            return base
        h = hashlib.sha256(base.encode())
        h.update(b"\nselect\n" + "\n".join(self.selection).encode())
        return h.hexdigest()


# ---------------------------------------------------------------------------- public API


def first_session(table: pd.DataFrame) -> pd.DataFrame:
    """One row per subject: its first session (sessions sort as text, ``ses-01`` first).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of scans with ``subject_id`` and ``session`` columns (e.g. ``Cohort.table``).

    Returns
    -------
    pandas.DataFrame
        The first-session rows, sorted by subject, index kept.
    """
    ordered = table.sort_values(["subject_id", "session"], kind="stable")
    return ordered.drop_duplicates("subject_id", keep="first")


def validate_manifest(path: str | os.PathLike, *, check_images: bool = True) -> list[str]:
    """Check a manifest and return every problem found (``[]`` if valid).

    Parameters
    ----------
    path : path-like
        The manifest CSV (``NAME.csv``), its sidecar (``NAME.yaml``), or a folder
        holding ``manifest.csv``.
    check_images : bool, default True
        Read every image's voxel data (once per file) to detect corrupt files,
        NaN/inf voxels, non-binary masks and bad label maps. With ``False`` only
        existence, headers, dimensionality, shapes and affines are checked.

    Returns
    -------
    list of str
        One line per problem, e.g.
        ``row 3 (sub-007/ses-01): column 'edss': 10.5 is outside 0-10``.
    """
    problems, _ = check_manifest(path, check_images=check_images)
    return problems


def _build_table(parsed: ParsedManifest) -> pd.DataFrame:
    header = parsed.header
    rows = parsed.rows
    assert parsed.base_dir is not None
    base = parsed.base_dir
    path_cols = set(parsed.image_columns) | set(MASK_COLUMNS) | set(parsed.truth_columns)
    data: dict[str, Any] = {}
    for col in header:
        cells = [row[col] for row in rows]
        if col in path_cols:
            data[col] = pd.Series(
                [os.path.normpath(base / Path(c).expanduser()) if c else None for c in cells], dtype=object
            )
        elif col in NUMERIC_COLUMNS:
            data[col] = pd.Series([float(c) if c else np.nan for c in cells], dtype=float)
        elif col in REQUIRED_COLUMNS:
            data[col] = pd.Series(cells, dtype=object).astype(str)
        else:
            given = pd.Series([c if c else None for c in cells], dtype=object)
            numeric = pd.to_numeric(given, errors="coerce")
            n_given = sum(1 for c in cells if c)
            if n_given and int(numeric.notna().sum()) == n_given:
                data[col] = numeric.astype(float) if numeric.dtype == object else numeric
            else:
                data[col] = pd.Series(cells, dtype=object).astype(str)
    table = pd.DataFrame(data)
    table.index = pd.Index(
        [f"{row['subject_id']}_{row['session']}" for row in rows], name="scan_id", dtype=object
    ).astype(str)
    return table


def load_cohort(path: str | os.PathLike, *, check_images: bool = True) -> Cohort:
    """Validate and load a manifest.

    Parameters
    ----------
    path : path-like
        The manifest CSV, its sidecar, or a folder holding ``manifest.csv``.
    check_images : bool, default True
        Passed to the validation (see :func:`validate_manifest`).

    Returns
    -------
    Cohort

    Raises
    ------
    ManifestError
        With every problem found (``.problems``); nothing is loaded.
    """
    problems, parsed = check_manifest(path, check_images=check_images)
    if problems:
        raise ManifestError(parsed.csv_path, problems)
    table = _build_table(parsed)
    logger.info("loaded cohort %r: %d scans from %s", parsed.meta.get("name"), len(table), parsed.csv_path)
    return Cohort(
        table=table,
        meta=parsed.meta,
        manifest_path=parsed.csv_path,
        source_hash=_hash_bytes(parsed.csv_bytes, parsed.yaml_bytes),
    )


def _yaml_dumper() -> type:
    """A SafeDumper writing mappings in block style and lists of numbers / short strings inline."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _repr_list(dumper: yaml.SafeDumper, data: list) -> Any:
        numbers = all(isinstance(v, (int, float, bool)) or v is None for v in data)
        short_strings = all(isinstance(v, str) for v in data) and sum(len(v) + 2 for v in data) < 60
        flow = numbers or short_strings
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    _Dumper.add_representer(list, _repr_list)
    return _Dumper


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def write_manifest(table: pd.DataFrame, meta: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a manifest CSV and its YAML sidecar atomically.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per scan with at least :data:`REQUIRED_COLUMNS` (a
        ``Cohort.table`` works: its ``scan_id`` index is dropped). Absolute
        paths are written relative to the manifest folder joined with
        ``meta['data_root']`` (if any), in the standard path columns and the
        sidecar's extra ``images`` and ``truth_masks``; relative paths are written as given
        (they must already be relative to that folder). Missing values are
        written as empty cells. Required columns come first, extras keep
        their order.
    meta : mapping
        Sidecar content (see ``data_manifests/README.md``).
    path : path-like
        Manifest CSV path, ending in ``.csv``; the sidecar is written beside it
        with the suffix ``.yaml``.

    Returns
    -------
    pathlib.Path
        The CSV path. The manifest is not validated; call
        :func:`validate_manifest` once the images exist.
    """
    import yaml

    path = Path(path).expanduser()
    if path.suffix.lower() != ".csv":
        raise ValueError(f"'path' must end with '.csv'; got '{path}'")
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"'table' must be a pandas DataFrame; got {type(table).__name__}")
    if not isinstance(meta, Mapping):
        raise TypeError(f"'meta' must be a mapping; got {type(meta).__name__}")
    df = table.copy()
    if df.index.name == "scan_id":
        df = df.reset_index(drop=True)
    if "scan_id" in df.columns:
        df = df.drop(columns="scan_id")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"'table' is missing required columns {missing}")

    data_root = meta.get("data_root") or "."
    base = Path(os.path.normpath(path.parent.absolute() / Path(str(data_root)).expanduser()))
    images = list(meta.get("images") or []) + list(meta.get("truth_masks") or {})
    path_cols = list(PATH_COLUMNS) + [c for c in images if c in df.columns and c not in PATH_COLUMNS]
    for col in path_cols:
        df[col] = [
            "" if _is_missing(v) or str(v) == ""
            else (os.path.relpath(str(v), base) if os.path.isabs(str(v)) else str(v)).replace(os.sep, "/")
            for v in df[col]
        ]
    columns = list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]
    csv_text = df[columns].to_csv(index=False, lineterminator="\n", na_rep="")
    yaml_text = yaml.dump(
        to_builtin(dict(meta)),
        Dumper=_yaml_dumper(),
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )
    atomic_write_text(path.with_suffix(".yaml"), yaml_text)
    atomic_write_text(path, csv_text)
    logger.info("wrote manifest %s (%d rows)", path, len(df))
    return path
