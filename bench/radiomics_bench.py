"""Benchmark: msutils.features.radiomics engine vs naive pyradiomics, measured in one run.

Usage::

    python bench/radiomics_bench.py [--manifest PATH] [--params seed000] [--n-jobs 2]

Takes 20 (scan, ROI) pairs -- the first ``--scans`` scans (one per center first,
in manifest order) x 5 ROIs: three deep-GM nuclei, one cortical GM parcel and the
whole white matter -- and extracts them twice:

(a) naive: serial; per pair, read the image and label map, build the full-size
    SimpleITK image and ROI mask, run ``RadiomicsFeatureExtractor.execute``;
(b) the engine: ``msutils.features.radiomics.extract`` (cropped, full-volume filters /
    normalisation shared per scan, vectorised shape mesh, process-parallel with
    ``--n-jobs`` workers, cold cache).

It checks that every feature agrees (``np.allclose(rtol=1e-6, atol=1e-12)``, NaN
== NaN), prints the maximum differences, per-ROI-type ratios (each type re-run
alone through the engine) and the overall speed ratio; exits 1 if any feature
differs. Default data: the quick synthetic cohort
(``msutils.synth.default_cohort("quick")``, generated on first use).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEEP_GM = ("thalamus_L", "caudate_R", "pallidum_L")


def _choose(cohort, n_scans: int) -> tuple[list[str], dict[str, list[int]], dict[str, str]]:
    """Deterministic scans (round-robin over centers, manifest order) and ROIs."""
    table = cohort.table
    by_center: dict[str, list[str]] = {}
    for sid, center in zip(table.index, table["center"]):
        by_center.setdefault(str(center), []).append(str(sid))
    scans: list[str] = []
    while len(scans) < min(n_scans, len(table)):
        for ids in by_center.values():
            taken = [s for s in ids if s not in scans]
            if taken and len(scans) < n_scans:
                scans.append(taken[0])
    roi_sets = cohort.roi_sets
    parcels = sorted(r for r in roi_sets if r.startswith("gm_"))
    missing = [r for r in DEEP_GM + ("whole_wm",) if r not in roi_sets]
    if missing or not parcels:
        raise SystemExit(f"the cohort's roi_sets lack {missing or 'a gm_* parcel'}; got {sorted(roi_sets)[:12]}...")
    parcel = parcels[len(parcels) // 2]
    rois = {r: list(roi_sets[r]) for r in (*DEEP_GM, parcel, "whole_wm")}
    kinds = {**{r: "deep GM" for r in DEEP_GM}, parcel: "GM parcel", "whole_wm": "whole WM"}
    return scans, rois, kinds


def _naive(cohort, scans, rois, params) -> tuple[dict[tuple[str, str], dict[str, float]], dict[tuple[str, str], float]]:
    """Serial, uncropped pyradiomics, one full read + execute per pair."""
    import nibabel as nib
    import SimpleITK as sitk
    from radiomics import featureextractor

    from msutils.features import radiomics as rad

    extractor = featureextractor.RadiomicsFeatureExtractor(rad._pyradiomics_params(rad.validate_params(params)))
    out, times = {}, {}
    for sid in scans:
        for roi, labels in rois.items():
            t0 = time.perf_counter()
            img = nib.load(cohort.table.at[sid, "t1"])
            arr = np.asarray(np.asanyarray(img.dataobj).T, dtype=np.float64)  # SimpleITK axis order
            lab = np.asanyarray(nib.load(cohort.table.at[sid, "roi_labels"]).dataobj).T
            mask = np.isin(np.rint(lab).astype(np.int64), labels).astype(np.uint8)
            zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
            im, mk = sitk.GetImageFromArray(arr), sitk.GetImageFromArray(mask)
            im.SetSpacing(zooms)
            mk.SetSpacing(zooms)
            try:
                res = extractor.execute(im, mk)
                feats = {rad.rename_pyradiomics_key(k): float(v) for k, v in res.items()
                         if not k.startswith("diagnostics_")}
            except ValueError as exc:  # same ROI failures the engine reports as NaN
                logging.getLogger(__name__).warning("naive %s %s: %s", sid, roi, exc)
                feats = {}
            times[(sid, roi)] = time.perf_counter() - t0
            out[(sid, roi)] = feats
    return out, times


def _engine(cohort, scans, rois, params, n_jobs):
    from msutils.features import radiomics as rad

    with tempfile.TemporaryDirectory(prefix="radbench-") as cache:
        t0 = time.perf_counter()
        df = rad.extract(cohort, rois, params, scan_ids=scans, n_jobs=n_jobs, cache_dir=cache, progress=False)
        return df, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path, default=None,
                    help="cohort manifest CSV (default: msutils.synth.default_cohort('quick'))")
    ap.add_argument("--params", default="seed000", help="preset name or params YAML (default: seed000)")
    ap.add_argument("--n-jobs", type=int, default=2, help="engine worker processes (default: 2)")
    ap.add_argument("--scans", type=int, default=4, help="scans; pairs = scans x 5 ROIs (default: 4 -> 20 pairs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from msutils.features import radiomics as rad
    from msutils.data.cohort import load_cohort

    manifest = args.manifest
    if manifest is None:
        from msutils import synth

        print("default data: quick synthetic cohort (generated on first use, may take minutes)", flush=True)
        manifest = synth.default_cohort("quick")
    cohort = load_cohort(manifest)
    scans, rois, kinds = _choose(cohort, args.scans)
    names = rad.feature_names(args.params)
    print(f"cohort: {manifest} ({len(cohort.table)} scans); params: {args.params} ({len(names)} features)")
    print(f"pairs: {len(scans) * len(rois)} = {len(scans)} scans x {len(rois)} ROIs {list(rois)}")
    shape = np.asanyarray(cohort.image(scans[0], "t1").dataobj).shape
    print(f"volume: {shape}, voxel {tuple(float(z) for z in cohort.image(scans[0], 't1').header.get_zooms()[:3])} mm",
          flush=True)

    # warm the main process (imports, params probe) so neither path pays one-off costs
    import nibabel  # noqa: F401
    import radiomics.featureextractor  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import SimpleITK  # noqa: F401

    logging.getLogger("radiomics").setLevel(logging.ERROR)  # both paths: no per-feature-class log records
    naive, naive_t = _naive(cohort, scans, rois, args.params)
    t_naive = sum(naive_t.values())
    print(f"naive  (serial, uncropped pyradiomics per pair): {t_naive:.2f} s", flush=True)
    df, t_engine = _engine(cohort, scans, rois, args.params, args.n_jobs)
    print(f"engine (cropped, n_jobs={args.n_jobs}, cold cache): {t_engine:.2f} s "
          f"(includes starting the worker processes)", flush=True)
    if args.n_jobs > 1:
        _, t_warm = _engine(cohort, scans, rois, args.params, args.n_jobs)
        print(f"engine again, cold cache, workers already running (a session's later calls): "
              f"{t_warm:.2f} s -> {t_naive / t_warm:.1f}x", flush=True)

    max_abs = max_rel = 0.0
    bad: list[str] = []
    for sid in scans:
        for roi in rois:
            ref = naive[(sid, roi)]
            got = df.loc[sid, [f"{roi}__{n}" for n in names]].to_numpy()
            want = np.array([ref.get(n, np.nan) for n in names])
            both = ~(np.isnan(got) & np.isnan(want))
            diff = np.abs(got - want)[both]
            if diff.size:
                max_abs = max(max_abs, float(np.nanmax(diff)) if not np.isnan(diff).all() else np.inf)
                rel = diff / np.maximum(np.abs(want[both]), 1e-300)
                max_rel = max(max_rel, float(np.nanmax(rel)) if not np.isnan(rel).all() else np.inf)
            if not np.allclose(got, want, rtol=1e-6, atol=1e-12, equal_nan=True):
                bad.append(f"{sid}/{roi}")

    print("per ROI type (engine re-run with that type only, cold cache, workers running):")
    for kind in dict.fromkeys(kinds.values()):
        sub = {r: v for r, v in rois.items() if kinds[r] == kind}
        t_n = sum(t for (s, r), t in naive_t.items() if r in sub)
        _, t_e = _engine(cohort, scans, sub, args.params, args.n_jobs)
        print(f"  {kind:9s} ({len(scans) * len(sub):2d} pairs): naive {t_n:7.2f} s, engine {t_e:6.2f} s -> "
              f"{t_n / t_e:5.1f}x")

    ok = not bad
    verdict = f"features identical: max rel diff {max_rel:.3g} (max abs diff {max_abs:.3g})" if ok else \
        f"FEATURES DIFFER for {len(bad)} pairs: {bad[:5]} (max rel diff {max_rel:.3g}, max abs diff {max_abs:.3g})"
    print(f"speedup: {t_naive / t_engine:.1f}x (naive {t_naive:.1f} s, engine {t_engine:.2f} s), {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
