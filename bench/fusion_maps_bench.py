"""Benchmark: msutils.features.fusion_maps vs the per-window references, measured in one run.

Usage::

    python bench/fusion_maps_bench.py [--size 256] [--rows 256] [--source mslub|random] [--min-ratio 50]

On one ``size x size`` slice (default 256 x 256: an axial MSLUB FLAIR slice
through the most lesion voxels, min-max normalised in the brain and resized,
or uniform noise with ``--source random``; the random slice is used when the
MSLUB sample is absent) it computes the pair of maps (CR with s=2, num=15,
m=5; RE with s=5, alpha=7, 256 levels, distances 1 and 2, four directions)
twice:

(a) reference: a Python loop over the pixels, ``numpy.sort`` of each 5 x 5
    window (CR) and ``skimage.feature.graycomatrix`` of each 11 x 11 window,
    the eight matrices summed (RE);
(b) ``msutils.features.fusion_maps.fusion_maps`` (strided windows +
    ``numpy.partition``; the compiled numba GLCM kernel, warmed up first so the
    one-off compilation is not timed).

The reference takes minutes on a full 256 x 256 slice; ``--rows N`` runs it on
the N middle rows only (the vectorised maps still run on the whole slice) and
scales its time by ``size / N`` (every pixel costs the same: one window). The
values of the reference rows are compared with the vectorised maps (max
absolute difference; "identical" means <= 1e-9). Prints the per-map and the
pair speed ratios; exits 1 if a value differs or the pair ratio is below
``--min-ratio``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-9


def _slice(source: str, size: int) -> tuple[np.ndarray, str]:
    from msutils.segmentation.slices import resize_image

    data = Path(os.environ.get("MSUTILS_TEST_MSLUB", REPO.parent / "shared" / "data" / "open_ms_data"))
    flair_path = data / "MNI" / "patient07" / "FLAIR.nii.gz"
    if source == "mslub" and flair_path.is_file():
        import nibabel as nib

        flair = np.asarray(nib.load(flair_path).dataobj, dtype=np.float64)
        lesion = np.asarray(nib.load(flair_path.with_name("consensus_gt.nii.gz")).dataobj) > 0
        brain = flair > 0
        norm = np.where(brain, (flair - flair[brain].min()) / (flair[brain].max() - flair[brain].min()), 0.0)
        k = int(np.argmax(lesion.sum(axis=(0, 1))))
        img = resize_image(norm[:, :, k], (size, size)).astype(np.float64)
        return img, f"MSLUB patient07 axial slice {k} resized to {size} x {size}"
    rng = np.random.default_rng(0)
    why = "" if source == "random" else f" (MSLUB sample not found at {data})"
    return rng.random((size, size)), f"uniform noise {size} x {size}{why}"


def main(argv: list[str] | None = None) -> int:
    from msutils.features import fusion_maps as F

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rows", type=int, default=None, help="reference rows (default: all)")
    ap.add_argument("--source", choices=["mslub", "random"], default="mslub")
    ap.add_argument("--min-ratio", type=float, default=50.0)
    args = ap.parse_args(argv)
    rows = args.size if args.rows is None else max(1, min(args.rows, args.size))
    img, what = _slice(args.source, args.size)
    p = F.FusionMapParams()
    levels = F.quantize(img, p.levels, p.value_range)
    print(f"slice: {what}; maps: {p.to_dict()}")

    F.fusion_maps(img[:8, :8], p)  # compile the numba kernel (or load it from numba's cache) outside the timing
    t0 = time.perf_counter()
    cr = F.concentration_rate(img, s=p.cr_s, num=p.cr_num, m=p.cr_m, pad_mode=p.pad_mode)
    t_cr = time.perf_counter() - t0
    t0 = time.perf_counter()
    re = F.renyi_entropy(levels, s=p.re_s, alpha=p.alpha, distances=p.distances, angles=p.angles, levels=p.levels,
                         symmetric=p.symmetric, diagonal=p.diagonal, log_base=p.log_base, pad_mode=p.pad_mode)
    t_re = time.perf_counter() - t0

    # the reference on the middle rows [r0, r0 + rows): cut them, with `pad` rows of true neighbours (or of the
    # full slice's padding) on each side, from the padded slice
    pad = p.margin
    r0 = (args.size - rows) // 2
    padded = np.pad(img, pad, mode=p.pad_mode)
    padded_lv = np.pad(levels, pad, mode=p.pad_mode)
    band = slice(r0, r0 + rows + 2 * pad)
    t0 = time.perf_counter()
    cr_ref = F.concentration_rate_reference(padded[band, pad:-pad], s=p.cr_s, num=p.cr_num, m=p.cr_m,
                                            pad_mode=p.pad_mode)
    t_cr_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    re_ref = F.renyi_entropy_reference(padded_lv[band, pad:-pad], s=p.re_s, alpha=p.alpha, distances=p.distances,
                                       angles=p.angles, levels=p.levels, symmetric=p.symmetric, diagonal=p.diagonal,
                                       log_base=p.log_base, pad_mode=p.pad_mode)
    t_re_ref = time.perf_counter() - t0
    # rows [pad, pad + rows) of the band's maps are the slice's rows [r0, r0 + rows): their windows lie in the band
    cr_ref, re_ref = cr_ref[pad:pad + rows], re_ref[pad:pad + rows]
    scale = args.size / rows
    t_cr_ref_full, t_re_ref_full = t_cr_ref * scale, t_re_ref * scale

    d_cr = float(np.abs(cr[r0:r0 + rows] - cr_ref).max())
    d_re = float(np.abs(re[r0:r0 + rows] - re_ref).max())
    same = d_cr <= TOL and d_re <= TOL
    pair = (t_cr_ref_full + t_re_ref_full) / (t_cr + t_re)
    note = "" if rows == args.size else f" (reference timed on the {rows} middle rows of {args.size}, scaled x{scale:.1f})"
    print(f"{'map':<6}{'reference s':>14}{'vectorised s':>14}{'ratio':>10}{'max |diff|':>13}")
    print(f"{'CR':<6}{t_cr_ref_full:>14.2f}{t_cr:>14.3f}{t_cr_ref_full / t_cr:>10.1f}{d_cr:>13.2e}")
    print(f"{'RE':<6}{t_re_ref_full:>14.2f}{t_re:>14.3f}{t_re_ref_full / t_re:>10.1f}{d_re:>13.2e}")
    print(f"{'pair':<6}{t_cr_ref_full + t_re_ref_full:>14.2f}{t_cr + t_re:>14.3f}{pair:>10.1f}{'':>13}{note}")
    print(f"values identical (<= {TOL:g}): {'yes' if same else 'NO'}; pair speed ratio {pair:.0f}x "
          f"(target >= {args.min_ratio:g}x)")
    return 0 if same and pair >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
