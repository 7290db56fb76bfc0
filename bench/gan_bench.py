"""Benchmark: the conditional 3D GAN (GBA) on a deep-GM box of a cohort, timing and fidelity in one run.

Takes the first session of every subject of the training centers of one
leave-one-center-out iteration (default: hold out center B), crops a cubic
box (``--box`` voxels) around the deep grey matter (or, with ``--box 0``, the
whole-brain box of :func:`msutils.models.gan.brain_box`, as the study does),
maps the ROI label map to
the ten seed-000 ROIs (1..8 deep-GM nuclei, 9 whole WM, 10 whole GM = every
cortical parcel), splits off an inner validation split (``--val-fraction`` of
the subjects per class) and runs :func:`msutils.models.gan.gba_scenario` on
the rest. It prints

- training speed: epochs run, best epoch, seconds per epoch (wall clock and
  CPU time of this process, which depends much less on other jobs);
- SSIM / PSNR of the validation pairs (generator reconstruction of a
  validation subject from its own label map vs its real T1; the GAN never saw
  them), with ``data_range`` = the largest real validation intensity;
- the non-copy check against the real training images (cosine similarity,
  Mann-Whitney U, alternative "less");
- the class signal of the generated images beside the real ones: mean and SD
  of the T1 intensity inside the deep-GM nuclei and their volume, per class.

Default data: the quick synthetic cohort (``msutils.synth.default_cohort("quick")``,
generated on first use). Usage::

    python bench/gan_bench.py [--manifest PATH] [--heldout B] [--box 32] [--epochs 20]
    python bench/gan_bench.py --box 0 --grid-factor 2 --epochs 5
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

DEEP_GM_LABELS = tuple(range(1, 9))
WM_LABEL, GM_LABEL = 9, 10
PARCEL_OFFSET = 100


def _ten_rois(label_map: np.ndarray) -> np.ndarray:
    out = np.where(np.isin(label_map, DEEP_GM_LABELS + (WM_LABEL,)), label_map, 0)
    out[label_map > PARCEL_OFFSET] = GM_LABEL
    return out.astype(np.int16)


def _box(label_maps: list[np.ndarray], size: int) -> tuple[slice, ...]:
    deep = np.zeros(label_maps[0].shape, bool)
    for lab in label_maps:
        deep |= np.isin(lab, DEEP_GM_LABELS)
    idx = np.argwhere(deep)
    centre = (idx.min(0) + idx.max(0)) // 2
    out = []
    for c, n in zip(centre, deep.shape):
        start = int(np.clip(c - size // 2, 0, max(n - size, 0)))
        out.append(slice(start, start + size))
    return tuple(out)


def _load(manifest: Path | None, heldout: str, size: int, multiple: int):
    from msutils.data.cohort import load_cohort

    if manifest is None:
        from msutils import synth

        print("default data: quick synthetic cohort (generated on first use, may take minutes)", flush=True)
        manifest = synth.default_cohort("quick")
    cohort = load_cohort(manifest)
    table = cohort.table
    first = table[~table.duplicated("subject_id")]
    train = first[first["center"].astype(str) != heldout]
    if len(train) == len(first):
        raise SystemExit(f"--heldout {heldout!r} is not a center of the cohort: {cohort.centers}")
    labels = [np.rint(cohort.array(s, "roi_labels")).astype(np.int32) for s in train.index]
    images = np.stack([cohort.array(s, "t1") for s in train.index])
    masks = np.stack([cohort.array(s, "brain_mask") > 0 for s in train.index])
    rois = np.stack([_ten_rois(lab) for lab in labels])
    classes = (train["group"].astype(str) == "MS").to_numpy().astype(np.int64)
    subjects = train["subject_id"].astype(str).tolist()
    if size:
        box = _box(labels, size)
        crop = (slice(None), *box)
        return images[crop], rois[crop], masks[crop], classes, subjects, box
    from msutils.models.gan import brain_box, crop_box

    start, shape = brain_box(masks, multiple=multiple, margin=2)
    box = tuple(slice(a, a + n) for a, n in zip(start, shape))
    return (crop_box(images, start, shape), crop_box(rois, start, shape), crop_box(masks, start, shape), classes,
            subjects, box)


def _class_signal(images: np.ndarray, rois: np.ndarray, classes: np.ndarray) -> dict[int, tuple[float, float, float]]:
    out = {}
    for c in (0, 1):
        sel = classes == c
        deep = np.isin(rois[sel], DEEP_GM_LABELS)
        means = [img[m].mean() for img, m in zip(images[sel], deep)]
        sds = [img[m].std() / img[m].mean() for img, m in zip(images[sel], deep)]
        out[c] = (float(np.mean(means)), float(np.mean(sds)), float(deep.sum((1, 2, 3)).mean()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path, default=None, help="cohort manifest CSV (default: quick synthetic)")
    ap.add_argument("--heldout", default="B", help="held-out center (default: B)")
    ap.add_argument("--box", type=int, default=32,
                    help="cubic box side in voxels around the deep GM; 0 = whole-brain box (default: 32)")
    ap.add_argument("--grid-factor", type=int, default=1, help="GAN grid coarsening factor (default: 1)")
    ap.add_argument("--epochs", type=int, default=20, help="maximum epochs (default: 20)")
    ap.add_argument("--patience", type=int, default=10, help="early-stopping patience (default: 10)")
    ap.add_argument("--channels", default="8,16,32,64", help="generator channels per level (default: 8,16,32,64)")
    ap.add_argument("--d-channels", type=int, default=8, help="discriminator first-layer channels (default: 8)")
    ap.add_argument("--n-per-class", type=int, default=20, help="generated images per class (default: 20)")
    ap.add_argument("--train-deform", type=float, default=None, help="GanConfig.train_deform (default: its default)")
    ap.add_argument("--generation-deform", type=float, default=None,
                    help="GanConfig.generation_deform (default: its default)")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="inner validation fraction (default: 0.2)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("msutils.models.gan").setLevel(logging.DEBUG)  # one line per epoch: progress

    from msutils.features import fidelity as Fd
    from msutils.models import gan as G

    channels = tuple(int(c) for c in args.channels.split(","))
    images, rois, masks, classes, subjects, box = _load(args.manifest, args.heldout, args.box,
                                                        args.grid_factor * 2 ** (len(channels) - 1))
    tr, va = G.monitor_split(subjects, classes, args.val_fraction, seed=args.seed + 1000)
    print(f"{len(subjects)} training-center subjects ({int(classes.sum())} MS); box {[(b.start, b.stop) for b in box]} "
          f"(GAN grid {[(b.stop - b.start) // args.grid_factor for b in box]}); inner train {len(tr)}, "
          f"validation {len(va)}", flush=True)

    def subset(rows: np.ndarray) -> G.ImageSet:
        return G.ImageSet(images[rows], rois[rows], classes[rows], [subjects[i] for i in rows], masks[rows])

    deform = {k: v for k, v in (("train_deform", args.train_deform), ("generation_deform", args.generation_deform))
              if v is not None}
    cfg = G.GanConfig(max_epochs=args.epochs, patience=args.patience, g_channels=channels,
                      g_strides=(2,) * (len(channels) - 1), g_res_units=1, d_channels=args.d_channels, d_layers=3,
                      **deform)
    print(f"deformation strength: training {cfg.train_deform}, generation {cfg.generation_deform}")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = G.gba_scenario(subset(tr), n_folds=1, n_per_class=args.n_per_class, seed=args.seed, config=cfg,
                         validation=subset(va), grid_factor=args.grid_factor, device="cpu",
                         num_threads=args.threads)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    h = res.fit.history
    print(f"training: {len(h)} epoch(s), best {res.fit.best_epoch}, early stop {res.fit.stopped_early}; "
          f"{h['seconds'].mean():.2f} s/epoch wall; whole scenario {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({args.threads} thread(s))")
    print(f"losses first -> last epoch: g_l1 {h['g_l1'].iloc[0]:.4f} -> {h['g_l1'].iloc[-1]:.4f}, "
          f"monitor_l1 {h['monitor_l1'].iloc[0]:.4f} -> {h['monitor_l1'].min():.4f} (best), "
          f"d_loss {h['d_loss'].iloc[0]:.3f} -> {h['d_loss'].iloc[-1]:.3f}")
    pairs = res.validation
    rng = float(pairs.real.max())
    ssim = Fd.ssim_pairs(pairs.generated, pairs.real, data_range=rng, win_size=min(11, *pairs.real.shape[1:]))
    psnr = Fd.psnr_pairs(pairs.generated, pairs.real, data_range=rng)
    print(f"validation pairs (n={len(ssim)}): SSIM {ssim.mean():.3f} +/- {ssim.std(ddof=1):.3f}, "
          f"PSNR {psnr.mean():.2f} +/- {psnr.std(ddof=1):.2f} dB")
    fold = res.folds[0]
    real_tr = images[tr] * masks[tr]
    for centred in (False, True):
        nc = Fd.nearest_neighbour_similarity(fold.images, real_tr, real_groups=[subjects[i] for i in tr],
                                             center=centred)
        s = nc.summary()
        own = int((nc.synthetic_nn_index == fold.parent_rows).sum())  # rows of real_tr are rows of the train set
        print(f"non-copy ({'Pearson' if centred else 'cosine'}): synthetic->real NN {s['synthetic_mean']:.4f}, "
              f"real->real NN {s['real_mean']:.4f}, Mann-Whitney p(less) = {s['pvalue']:.2g}; nearest real "
              f"image is the parent for {own}/{len(fold)}")
    real_sig = _class_signal(real_tr, rois[tr], classes[tr])
    syn_sig = _class_signal(fold.images, fold.label_maps, fold.classes)
    for name, sig in (("real", real_sig), ("generated", syn_sig)):
        print(f"{name:>9}: deep-GM mean T1 HC {sig[0][0]:.1f} / MS {sig[1][0]:.1f}; within-ROI CV HC "
              f"{sig[0][1]:.3f} / MS {sig[1][1]:.3f}; deep-GM voxels HC {sig[0][2]:.0f} / MS {sig[1][2]:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
