"""Benchmark: msutils.features.radiomics engine vs naive pyradiomics, measured in one run.

Usage::

    python bench/radiomics_bench.py [--resolutions 2 1] [--params seed000] [--n-jobs 2]
                                    [--scans 4] [--scans-1mm 2] [--manifest PATH]

At each resolution it takes (scan, ROI) pairs -- ``--scans`` scans (one per center
first, in manifest order; ``--scans-1mm`` at 1 mm) x 5 ROIs: three deep-GM nuclei, one
cortical GM parcel and the whole white matter -- and extracts them:

(a) naive: serial; per pair, read the image and label map, build the full-size
    SimpleITK image and ROI mask, run ``RadiomicsFeatureExtractor.execute``;
(b) the engine, cold pool: ``msutils.features.radiomics.extract`` (cropped, full-volume
    filters / normalisation shared per scan, vectorised shape mesh, ``--n-jobs``
    worker processes started by this call, cold feature cache);
(c) the engine, warm pool: the same call again with the workers already running (what
    a notebook's later extraction calls pay), cold feature cache;
(d) per ROI type: the engine (warm pool) on that type's pairs alone.

Both paths run after this process has imported pyradiomics' stack (the parent of the
engine's workers, as in a notebook that already extracted once or imported the
module). It checks that every feature agrees (``np.allclose(rtol=1e-6, atol=1e-12)``,
NaN == NaN), prints the maximum differences and every ratio, and exits 1 if any
feature differs.

Data: 2 mm, the quick synthetic cohort (``msutils.synth.default_cohort("quick")``); 1 mm,
a small 1 mm synthetic cohort (one subject per center and group, generated once under
``msutils.core.paths.home()/bench``). ``--manifest`` replaces both with one cohort.
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


def _engine(cohort, scans, rois, params, n_jobs, *, cold: bool):
    from msutils.core.parallel import shutdown_pools
    from msutils.features import radiomics as rad

    if cold:
        shutdown_pools()  # no worker left from an earlier call
    with tempfile.TemporaryDirectory(prefix="radbench-") as cache:
        t0 = time.perf_counter()
        df = rad.extract(cohort, rois, params, scan_ids=scans, n_jobs=n_jobs, cache_dir=cache, progress=False)
        return df, time.perf_counter() - t0


def _cohort_1mm() -> Path:
    """A small 1 mm synthetic cohort (one subject per center and group), generated once."""
    from msutils import synth
    from msutils.core.io import file_lock
    from msutils.core.paths import home

    params = synth.get_params("quick").replace(name="bench-1mm", resolution=1, size_factor=0.01, min_per_cell=1,
                                               second_visit_fraction=0.0)
    folder = home() / "bench" / f"bench-1mm-{synth.params_hash(params)[:8]}"
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if not (folder / "manifest.csv").is_file():
            print(f"generating the 1 mm bench cohort in {folder} (once; minutes)", flush=True)
            synth.generate(params, folder, seed=0)
    return folder / "manifest.csv"


def _compare(naive, df, scans, rois, names) -> tuple[list[str], float, float]:
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
    return bad, max_rel, max_abs


def _bench(manifest: Path, label: str, n_scans: int, params: str, n_jobs: int) -> tuple[bool, dict[str, float]]:
    from msutils.data.cohort import load_cohort
    from msutils.features import radiomics as rad

    cohort = load_cohort(manifest)
    scans, rois, kinds = _choose(cohort, n_scans)
    names = rad.feature_names(params)
    img = cohort.image(scans[0], "t1")
    print(f"\n=== {label}: {manifest} ({len(cohort.table)} scans); volume {img.shape}, voxel "
          f"{tuple(float(z) for z in img.header.get_zooms()[:3])} mm")
    print(f"pairs: {len(scans) * len(rois)} = {len(scans)} scans x {len(rois)} ROIs {list(rois)}; "
          f"params {params} ({len(names)} features)", flush=True)
    naive, naive_t = _naive(cohort, scans, rois, params)
    t_naive = sum(naive_t.values())
    print(f"naive (serial, uncropped pyradiomics per pair): {t_naive:.2f} s", flush=True)
    df, t_cold = _engine(cohort, scans, rois, params, n_jobs, cold=True)
    print(f"engine, cold pool (n_jobs={n_jobs}, workers started by the call): {t_cold:.2f} s "
          f"-> {t_naive / t_cold:.1f}x", flush=True)
    _, t_warm = _engine(cohort, scans, rois, params, n_jobs, cold=False)
    print(f"engine, warm pool (workers already running): {t_warm:.2f} s -> {t_naive / t_warm:.1f}x", flush=True)
    bad, max_rel, max_abs = _compare(naive, df, scans, rois, names)
    print("per ROI type (engine, warm pool, that type's pairs alone):")
    for kind in dict.fromkeys(kinds.values()):
        sub = {r: v for r, v in rois.items() if kinds[r] == kind}
        t_n = sum(t for (s, r), t in naive_t.items() if r in sub)
        _, t_e = _engine(cohort, scans, sub, params, n_jobs, cold=False)
        print(f"  {kind:9s} ({len(scans) * len(sub):2d} pairs): naive {t_n:8.2f} s, engine {t_e:6.2f} s -> "
              f"{t_n / t_e:5.1f}x")
    ok = not bad
    print(f"features identical: max rel diff {max_rel:.3g} (max abs diff {max_abs:.3g})" if ok else
          f"FEATURES DIFFER for {len(bad)} pairs: {bad[:5]} (max rel diff {max_rel:.3g}, max abs diff {max_abs:.3g})")
    return ok, {"cold": t_naive / t_cold, "warm": t_naive / t_warm}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[2, 1], choices=[1, 2],
                    help="synthetic cohorts to benchmark, in mm (default: 2 1)")
    ap.add_argument("--manifest", type=Path, default=None, help="benchmark this cohort instead (one resolution)")
    ap.add_argument("--params", default="seed000", help="preset name or params YAML (default: seed000)")
    ap.add_argument("--n-jobs", type=int, default=2, help="engine worker processes (default: 2)")
    ap.add_argument("--scans", type=int, default=4, help="scans at 2 mm; pairs = scans x 5 ROIs (default: 4)")
    ap.add_argument("--scans-1mm", type=int, default=2, help="scans at 1 mm (default: 2)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    # this process imports pyradiomics' stack first, as a notebook kernel has after its first extraction
    from msutils.features import radiomics as rad

    rad.import_worker_modules()
    logging.getLogger("radiomics").setLevel(logging.ERROR)  # both paths: no per-feature-class log records
    if args.manifest is not None:
        runs = [(args.manifest, "cohort", args.scans)]
    else:
        runs = []
        for res in args.resolutions:
            if res == 2:
                from msutils import synth

                print("2 mm data: the quick synthetic cohort (generated on first use, may take minutes)", flush=True)
                runs.append((synth.default_cohort("quick"), "2 mm", args.scans))
            else:
                runs.append((_cohort_1mm(), "1 mm", args.scans_1mm))
    all_ok, summary = True, {}
    for manifest, label, n_scans in runs:
        ok, ratios = _bench(manifest, label, n_scans, args.params, args.n_jobs)
        all_ok &= ok
        summary[label] = ratios
    print("\nspeedups over naive pyradiomics: " + "; ".join(
        f"{label}: {r['cold']:.1f}x cold pool, {r['warm']:.1f}x warm pool" for label, r in summary.items()))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
