"""ICC retention of radiomic features on the synthetic cohort under notebook 02's re-processing.

Generates a small EDSS-design cohort (MS patients of both sites) at each
requested resolution, extracts the seed-001 radiomics (first order + texture on
T1) of the deep-GM nuclei, some cortical parcels and the NAWM with
:func:`msutils.studies.edss_regression.load_study_data`, re-processes every
subject as notebook 02 does (:func:`~msutils.studies.edss_regression.retest_radiomics`:
ROI boundaries moved by ~1 mm, outwards in some patches and inwards in others, or
with ``--boundary random`` the whole boundary one way; fresh noise) and prints
the fraction of features with ICC(A,1) >= 0.90 per feature class and ROI group,
the median ICC of every first-order feature over ROIs, and the retention of the
features that carry the deep-GM texture effect (deep-GM features whose Spearman
correlation with the true texture amplitude ``gt_texture_amplitude`` is at least
0.5 in absolute value), also per nucleus.

    python bench/synth_icc_retention.py --resolutions 2 1 --subjects 30 --parcels 8 [--boundary random]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from msutils import synth
from msutils.data.cohort import load_cohort
from msutils.features.reliability import icc_stability
from msutils.studies import edss_regression as es


def retention(resolution: int, n_subjects: int, n_parcels: int, seed: int, n_jobs: int,
              workdir: Path, boundary: str = "patch") -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(retention table, per-feature frame, generation seconds) of one resolution.

    The per-feature frame has ``icc``, ``roi_group``, ``feature_class``,
    ``feature``, ``kept`` and ``texture_rho`` (Spearman correlation with the
    true deep-GM texture amplitude over the subjects).
    """
    n2 = max(2, n_subjects // 4)
    params = synth.PRESETS["edss-quick"].replace(
        name=f"icc-{resolution}mm", resolution=resolution, size_factor=1.0, min_per_cell=0,
        counts={"site1": {"MS": n_subjects - n2}, "site2": {"MS": n2}}, second_visit_fraction=0.0)
    t0 = time.perf_counter()
    manifest = synth.generate(params, workdir / f"icc{resolution}", seed=seed, n_jobs=n_jobs, progress=False)
    gen_s = time.perf_counter() - t0
    cohort = load_cohort(manifest)
    config = es.StudyConfig(n_gm_parcels=n_parcels, icc_subjects=n_subjects, disconnection=False,
                            n_jobs=n_jobs, seed=seed, icc_boundary=boundary)
    data = es.load_study_data(cohort, config, progress=False)
    scans = es.icc_subset(cohort, data, data.subjects.index, config)
    retest = es.retest_radiomics(cohort, data, scans, config, progress=False)
    subs = list(scans)
    icc = icc_stability(data.radiomics.loc[subs], retest.loc[subs], threshold=config.icc_threshold).icc
    parts = icc.index.to_series().str.split("__", expand=True)
    deep = set(data.deep_gm_rois)
    group = parts[0].map(lambda r: "deep_gm" if r in deep else ("nawm" if r == es.NAWM_ROI else "cortical"))
    frame = pd.DataFrame({"icc": icc, "roi_group": group, "feature_class": parts[1], "feature": parts[2]})
    frame["kept"] = frame["icc"] >= config.icc_threshold
    amp = data.subjects.loc[subs, "gt_texture_amplitude"].astype(float)
    frame["texture_rho"] = data.radiomics.loc[subs, frame.index].apply(lambda col: col.corr(amp, method="spearman"))
    table = frame.pivot_table(index="feature_class", columns="roi_group", values="kept", aggfunc="mean")
    table["all"] = frame.groupby("feature_class")["kept"].mean()
    table.loc["all"] = list(frame.groupby("roi_group")["kept"].mean().reindex(table.columns[:-1])) + [
        frame["kept"].mean()]
    return table, frame, gen_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[2])
    ap.add_argument("--subjects", type=int, default=30)
    ap.add_argument("--parcels", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--boundary", choices=["patch", "random"], default="patch",
                    help="how the re-processing moves ROI boundaries (StudyConfig.icc_boundary)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.resolutions:
            table, frame, gen_s = retention(res, args.subjects, args.parcels, args.seed, args.jobs, Path(tmp),
                                            args.boundary)
            print(f"\n{res} mm: {args.subjects} subjects, {args.parcels} cortical parcels "
                  f"(generated in {gen_s:.0f} s); fraction of features with ICC(A,1) >= 0.90:")
            print(table.round(2).to_string())
            fo = frame[frame["feature_class"] == "firstorder"]
            print("median ICC of each first-order feature over ROIs (deep GM | cortical | all):")
            med = fo.pivot_table(index="feature", columns="roi_group", values="icc", aggfunc="median")
            med["all"] = fo.groupby("feature")["icc"].median()
            print(med.round(2).to_string())
            effect = frame[(frame["roi_group"] == "deep_gm") & (frame["texture_rho"].abs() >= 0.5)]
            print(f"deep-GM texture-effect features (|rho| >= 0.5 with the true amplitude): {len(effect)}, "
                  f"ICC >= 0.90: {effect['kept'].mean():.2f} (median ICC {effect['icc'].median():.2f})")
            nucleus = effect.index.str.split("__").str[0].str.rsplit("_", n=1).str[0]
            per = effect.groupby(nucleus).agg(features=("icc", "size"), kept=("kept", "mean"),
                                              median_icc=("icc", "median"))
            print("per nucleus (left + right):")
            print(per.round(2).to_string())


if __name__ == "__main__":
    main()
