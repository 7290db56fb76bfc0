"""Benchmark: instance-level SmoothGrad, fast path vs the straightforward loop, measured in one run.

Usage::

    python bench/saliency_bench.py [--manifest PATH] [--lesions 4] [--samples 10] [--channels 8,16,32]
                                   [--strides 2,2] [--threads 2]

Takes the first MS scan of the manifest (default: the quick synthetic cohort,
2 mm, generated on first use), z-scores FLAIR and T1 inside the brain as the
study does, labels its ground-truth lesions (18-connectivity) and keeps the
``--lesions`` largest of at most 40 voxels (a cap so the loop finishes in
minutes). A MONAI 3D U-Net of the given channels / strides (the ``quick``
profile's network by default; seeded random weights, eval mode, non-trivial
batch-norm statistics: speed does not depend on training) maps the same
lesions twice with the same noise:

(a) loop: :func:`msutils.segmentation.saliency.smoothgrad_reference` -- whole
    volume, one forward per noise sample, one ``autograd.grad`` per output
    voxel per sample;
(b) fast: :func:`msutils.segmentation.saliency.instance_smoothgrad` -- noise
    samples batched, receptive-field crops.

Prints both times, the speed ratio and the largest difference of the maps
relative to each map's largest magnitude; exits 1 if a map differs by more
than 1e-5 or the ratio is below 10.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=None, help="cohort manifest (default: quick synthetic cohort)")
    ap.add_argument("--lesions", type=int, default=4)
    ap.add_argument("--samples", type=int, default=10, help="noise samples N (the study uses 50)")
    ap.add_argument("--channels", type=_ints, default=None, help="U-Net channels (default: quick profile)")
    ap.add_argument("--strides", type=_ints, default=None, help="U-Net strides (default: quick profile)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    import torch

    from msutils import synth
    from msutils.data.cohort import load_cohort
    from msutils.segmentation.lesions import instances
    from msutils.segmentation import saliency as S
    from msutils.studies import xai_refinement as X

    torch.set_num_threads(args.threads)
    cfg = X.XaiConfig()
    channels = args.channels or cfg.channels
    strides = args.strides or cfg.strides
    cohort = load_cohort(args.manifest or synth.default_cohort("quick"))
    scans = X.study_scans(cohort)
    sid = scans.index[0]
    scan = X.load_scan(cohort, sid)
    labels, n = instances(scan.truth, connectivity=cfg.connectivity, min_size=2)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = [int(i) + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] <= 40][: args.lesions]
    if not order:
        print(f"{sid}: no ground-truth lesion of 2-40 voxels")
        return 1
    net = X.build_unet(channels, strides, in_channels=scan.image.shape[0], seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    net.eval()
    kw = dict(lesion_ids=order, n_samples=args.samples, seed=args.seed)
    print(f"scan {sid}: volume {scan.image.shape[1:]}, U-Net channels {channels} strides {strides}, "
          f"{len(order)} lesions of {[int(sizes[i - 1]) for i in order]} voxels, N = {args.samples} noise samples, "
          f"{args.threads} threads")
    t0 = time.perf_counter()
    fast = S.instance_smoothgrad(net, scan.image, labels, **kw)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = S.smoothgrad_reference(net, scan.image, labels, **kw)
    t_loop = time.perf_counter() - t0
    worst = 0.0
    for lid in order:
        r = ref[lid]
        d = float(np.abs(fast[lid].full(r.shape) - r).max() / max(np.abs(r).max(), 1e-30))
        worst = max(worst, d)
        print(f"  lesion {lid}: {fast[lid].n_voxels} voxels, window "
              f"{'x'.join(str(w.stop - w.start) for w in fast[lid].window)}, max |fast - loop| / max |loop| = {d:.2e}")
    ratio = t_loop / t_fast
    print(f"loop {t_loop:.1f} s, fast {t_fast:.1f} s: speed ratio {ratio:.1f}x; maps equal to {worst:.1e} "
          f"(relative to each map's largest magnitude)")
    ok = worst <= 1e-5 and ratio >= 10
    print("PASS" if ok else "FAIL: need maps equal to 1e-5 and a ratio >= 10")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
