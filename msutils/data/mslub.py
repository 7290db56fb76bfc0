"""Manifest builder for the public MSLUB dataset (Lesjak et al. 2018).

The dataset ("3D MR image database of Multiple Sclerosis patients with white
matter lesion segmentations", Laboratory of Imaging Technologies, University
of Ljubljana; CC-BY) is used in the layout of the ``muschellij2/open_ms_data``
mirror::

    ROOT/patient_info.csv                 patient_id, age, sex, ms_type, edss, criteria
    ROOT/MNI/patientNN/T1.nii.gz          skull-stripped, N4, MNI152 1 mm (182x218x182)
    ROOT/MNI/patientNN/FLAIR.nii.gz
    ROOT/MNI/patientNN/consensus_gt.nii.gz  consensus lesion mask (0/1)

Mapping to the manifest schema (see ``data_manifests/README.md``):

- one row per ``MNI/patientNN`` folder holding all three files; ``subject_id``
  is the folder name (``patient07``), ``session`` is ``ses-01``;
- ``center`` ``Ljubljana``, ``scanner`` :data:`SCANNER`, ``group`` ``MS``;
- ``course`` from ``ms_type`` by :data:`COURSE_MAP`: ``PR`` (progressive-relapsing,
  1996 Lublin phenotype, patient 15) becomes ``PP`` as in the 2013 revision
  (PP "with activity"); ``N/A`` (patient 3) becomes ``NA`` (unknown course);
  the dataset's own value is kept in the extra column ``ms_type``;
- ``edss`` ``N/A`` -> empty; ``disease_duration`` is not in the dataset -> empty;
- ``brain_mask`` empty (the images are skull-stripped; consumers use
  ``image > 0``), ``lesion_mask`` = ``consensus_gt``, ``roi_labels`` empty;
- extra columns ``ms_type``, ``criteria`` (McDonald version) and
  ``lesion_volume_ml`` (consensus mask voxels x voxel volume).

Paths are written relative to ``data_root``, itself relative to the manifest
folder, so the data never needs to be copied.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["SCANNER", "CENTER", "COURSE_MAP", "CITATION", "build_manifest"]

logger = logging.getLogger(__name__)

#: Scanner of the whole dataset (Lesjak et al. 2018).
SCANNER = "Siemens Magnetom Trio 3T"
#: The single acquisition center.
CENTER = "Ljubljana"
#: ``ms_type`` of ``patient_info.csv`` -> manifest ``course``.
COURSE_MAP: dict[str, str] = {
    "RR": "RR", "SP": "SP", "PP": "PP", "PR": "PP", "CIS": "CIS", "N/A": "NA", "": "NA",
}
#: Reference required by the dataset's CC-BY license.
CITATION = (
    "Lesjak Z, Galimzianova A, Koren A, Lukin M, Pernus F, Likar B, Spiclin Z. A novel public MR image "
    "dataset of multiple sclerosis patients with lesion segmentations based on multi-rater consensus. "
    "Neuroinformatics (2018) 16:51-63. doi:10.1007/s12021-017-9348-7"
)

_FILES = {"t1": "T1.nii.gz", "flair": "FLAIR.nii.gz", "lesion_mask": "consensus_gt.nii.gz"}
_NA = {"", "N/A", "NA", "n/a"}
_PATIENT_RE = re.compile(r"^patient(\d+)$")


def _read_patient_info(path: Path) -> dict[int, dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"MSLUB patient table '{path}' does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        needed = ["patient_id", "age", "sex", "ms_type", "edss"]
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"'{path}': missing columns {missing}")
        info: dict[int, dict[str, str]] = {}
        for i, row in enumerate(reader, 1):
            try:
                pid = int(row["patient_id"])
            except ValueError:
                raise ValueError(
                    f"'{path}' row {i}: column 'patient_id': {row['patient_id']!r} is not an integer"
                ) from None
            info[pid] = {k: (v or "").strip() for k, v in row.items() if k is not None}
    return info


def _lesion_volume_ml(path: Path) -> float:
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return round(int(np.count_nonzero(np.asanyarray(img.dataobj))) * voxel_ml, 4)


def build_manifest(root: str | os.PathLike, out: str | os.PathLike, *, space: str = "MNI") -> Path:
    """Write a validated manifest (``out`` + sidecar) for an MSLUB copy at ``root``.

    Parameters
    ----------
    root : path-like
        Folder with ``patient_info.csv`` and ``<space>/patientNN/`` image folders.
    out : path-like
        Manifest CSV to write (``.csv``); an existing folder means ``out/manifest.csv``.
        The sidecar's ``data_root`` is ``root`` relative to the manifest folder.
    space : str, default "MNI"
        Image folder under ``root``.

    Returns
    -------
    pathlib.Path
        The manifest CSV.

    Raises
    ------
    FileNotFoundError
        No patient table or no patient folder with all of T1, FLAIR, consensus_gt.
    ValueError
        A patient folder missing from ``patient_info.csv`` or an unknown ``ms_type``.
    msutils.data.cohort.ManifestError
        If the written manifest does not validate.
    """
    import pandas as pd

    from msutils.data.cohort import ManifestError, validate_manifest, write_manifest

    root = Path(root).expanduser().absolute()
    out = Path(out).expanduser()
    if out.is_dir():
        out = out / "manifest.csv"
    out = out.absolute()
    info = _read_patient_info(root / "patient_info.csv")
    image_dir = root / space
    if not image_dir.is_dir():
        raise FileNotFoundError(f"MSLUB image folder '{image_dir}' does not exist")

    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        m = _PATIENT_RE.match(folder.name)
        if not m:
            continue
        absent = [f for f in _FILES.values() if not (folder / f).is_file()]
        if absent:
            logger.warning("skipping %s: missing %s", folder, absent)
            continue
        pid = int(m.group(1))
        if pid not in info:
            raise ValueError(f"'{folder}': patient {pid} is not in '{root / 'patient_info.csv'}'")
        p = info[pid]
        ms_type = p["ms_type"]
        if ms_type not in COURSE_MAP:
            raise ValueError(
                f"'{root / 'patient_info.csv'}' patient {pid}: ms_type {ms_type!r} "
                f"is not one of {sorted(COURSE_MAP)}"
            )
        rel = f"{space}/{folder.name}"
        rows.append(
            {
                "subject_id": folder.name,
                "session": "ses-01",
                "center": CENTER,
                "scanner": SCANNER,
                "group": "MS",
                "course": COURSE_MAP[ms_type],
                "age": p["age"],
                "sex": p["sex"],
                "disease_duration": "",
                "edss": "" if p["edss"] in _NA else p["edss"],
                "t1": f"{rel}/{_FILES['t1']}",
                "flair": f"{rel}/{_FILES['flair']}",
                "brain_mask": "",
                "lesion_mask": f"{rel}/{_FILES['lesion_mask']}",
                "roi_labels": "",
                "ms_type": ms_type if ms_type else "N/A",
                "criteria": "" if p.get("criteria", "") in _NA else p["criteria"],
                "lesion_volume_ml": _lesion_volume_ml(folder / _FILES["lesion_mask"]),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no patient folder under '{image_dir}' holds {sorted(_FILES.values())}")

    data_root = Path(os.path.relpath(root, out.parent)).as_posix()
    meta: dict[str, Any] = {
        "name": "mslub",
        "description": (
            "MSLUB: 3D MR image database of MS patients with white-matter lesion segmentations "
            "(Laboratory of Imaging Technologies, University of Ljubljana), as mirrored in "
            f"muschellij2/open_ms_data, {space} space (N4-corrected, skull-stripped, MNI152 1 mm). "
            f"{len(rows)} patient(s) with images."
        ),
        "data_root": data_root,
        "images": ["t1", "flair"],
        "masks": ["lesion_mask"],
        "roi_labels": {},
        "roi_sets": {},
        "source": {
            "dataset": "MSLUB (Lesjak et al. 2018)",
            "mirror": "https://github.com/muschellij2/open_ms_data (cross_sectional/MNI)",
            "license": "CC-BY",
            "citation": CITATION,
        },
        "notes": [
            "Images are skull-stripped: there is no brain mask; use image > 0 as the brain.",
            "lesion_mask is the multi-rater consensus (consensus_gt).",
            "course: ms_type PR (progressive-relapsing) is mapped to PP; N/A to NA (unknown). "
            "The original ms_type is kept in the column ms_type.",
            "edss N/A is left empty; disease_duration is not provided by the dataset.",
            "No ROI label maps: notebooks needing atlas ROIs cannot use this cohort as is.",
        ],
    }
    table = pd.DataFrame(rows)
    write_manifest(table, meta, out)
    problems = validate_manifest(out)
    if problems:
        raise ManifestError(out, problems)
    logger.info("MSLUB manifest with %d patients written to %s", len(rows), out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m msutils.data.mslub ROOT OUT``: (re)build an MSLUB manifest."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m msutils.data.mslub", description=main.__doc__)
    parser.add_argument("root", type=Path, help="folder with patient_info.csv and MNI/patientNN/")
    parser.add_argument("out", type=Path, help="manifest CSV to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_manifest(args.root, args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
