"""Report helpers shared by the notebooks: versions, paper-vs-ours tables, overlays."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.figure

    from msutils.data.cohort import Cohort

__all__ = [
    "KEY_PACKAGES",
    "versions",
    "paper_vs_ours",
    "plot_scan_overlays",
]

KEY_PACKAGES: tuple[str, ...] = (
    "msutils", "numpy", "scipy", "pandas", "scikit-learn", "nibabel", "nilearn",
    "pyradiomics", "torch", "monai", "nnunetv2", "pingouin", "statsmodels", "papermill",
)


def versions(packages: Sequence[str] = KEY_PACKAGES) -> pd.DataFrame:
    """Python and package versions of the running kernel, one row per package."""
    rows = [("python", platform.python_version())]
    for name in packages:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return pd.DataFrame(rows, columns=["package", "version"]).set_index("package")


def paper_vs_ours(
    paper: Mapping[str, Mapping[str, float]],
    ours: Mapping[str, Mapping[str, float]],
    *,
    decimals: int = 3,
) -> pd.DataFrame:
    """Side-by-side table of a paper's published numbers and this run's.

    Parameters
    ----------
    paper, ours
        ``{row: {metric: value}}``; rows missing on one side show as NaN.
    decimals
        Rounding of the displayed values.

    Returns
    -------
    DataFrame indexed by row with a two-level column index
    ``(metric, "paper" | "this run")``.
    """
    rows = list(dict.fromkeys([*paper.keys(), *ours.keys()]))
    metrics = list(dict.fromkeys([m for src in (paper, ours) for r in src.values() for m in r]))
    data: dict[tuple[str, str], list[Any]] = {}
    for metric in metrics:
        for label, src in (("paper", paper), ("this run", ours)):
            data[(metric, label)] = [src.get(row, {}).get(metric, np.nan) for row in rows]
    table = pd.DataFrame(data, index=pd.Index(rows, name=""))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table.astype(float).round(decimals)


def plot_scan_overlays(
    cohort: Cohort,
    scan_id: str,
    *,
    z_mm: float | None = None,
    title: str | None = None,
) -> matplotlib.figure.Figure:
    """T1 and FLAIR axial slices of one scan with lesion contours and ROI labels.

    Uses nilearn's ``plot_anat``; the lesion mask is drawn as a red contour, the
    ROI label map (if the cohort has one) as a semi-transparent overlay on T1.
    ``z_mm`` picks the axial cut (default: the lesion mask's centre of mass, else 10 mm).
    """
    import matplotlib.pyplot as plt
    from nilearn import plotting

    row = cohort.table.loc[scan_id]
    lesion = cohort.image(scan_id, "lesion_mask") if row.get("lesion_mask") else None
    if z_mm is None:
        z_mm = 10.0
        if lesion is not None and np.asanyarray(lesion.dataobj).any():
            ijk = np.argwhere(np.asanyarray(lesion.dataobj) > 0).mean(axis=0)
            z_mm = float((lesion.affine @ np.r_[ijk, 1.0])[2])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, column in zip(axes, ("t1", "flair")):
        display = plotting.plot_anat(
            cohort.image(scan_id, column), display_mode="z", cut_coords=[z_mm],
            axes=ax, title=column.upper(), annotate=False, draw_cross=False, colorbar=False,
        )
        if column == "t1" and row.get("roi_labels"):
            display.add_overlay(cohort.image(scan_id, "roi_labels"), cmap="tab20", transparency=0.4)
        if lesion is not None and np.asanyarray(lesion.dataobj).any():
            display.add_contours(lesion, levels=[0.5], colors="r", linewidths=0.8)
    fig.suptitle(title or scan_id)
    return fig
