"""Benchmark: nnU-Net 2D inference through msutils.segmentation.nnunet.predict vs nnUNetPredictor directly.

Makes its own synthetic FLAIR-like slices (ellipse "brain", bright round
"lesions", noise), exports them, plans a shrunken 2D network (a quick-profile
like model), trains fold 0 for a few epochs (or reuses the model already in
``--workspace``), then times, in one run, on the same test slices:

- ``direct``: ``predictor.predict_single_npy_array`` slice by slice on an
  ``nnUNetPredictor`` built once (what a user of nnU-Net's Python API writes);
- ``msutils``: ``msutils.segmentation.nnunet.predict(..., predictor=predictor)`` (same
  loaded weights, msutils' loop: one preprocessor for all slices);
- ``msutils+load``: ``msutils.segmentation.nnunet.predict`` end to end, loading the
  checkpoint itself.

It prints slices/s for each, the msutils / direct time ratio (overhead; < 1
means msutils is faster), whether both give identical masks, and the training
speed (s per iteration). Times are given as wall clock and as CPU time of
this process (``time.process_time``, all threads): on a shared machine the
wall clock depends on the other jobs, the CPU time much less.

``--threads 1 2`` also times ``predict`` (given predictor) at each torch
CPU thread count, interleaved, and prints each count's time relative to the
first: the small 2D networks of the CPU profiles spend their time in many
tiny operations, where extra threads add synchronisation (and, on a busy
machine, spinning) rather than speed.

Usage::

    python bench/nnunet_bench.py --size 128
    python bench/nnunet_bench.py --size 64 --workspace /tmp/nnbench64
    python bench/nnunet_bench.py --size 96 --threads 1 2
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_slices(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` FLAIR-like slices in [0, 1] with 1-3 round lesions each, and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        ry, rx = rng.uniform(0.36, 0.44), rng.uniform(0.30, 0.38)
        brain = ((yy - 0.5) / ry) ** 2 + ((xx - 0.5) / rx) ** 2 < 1
        img = (0.35 + 0.05 * np.sin(8 * xx) + rng.normal(0, 0.03, (size, size))) * brain
        lesion = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 4)):
            cy, cx = 0.5 + rng.uniform(-0.2, 0.2), 0.5 + rng.uniform(-0.2, 0.2)
            r = rng.uniform(0.03, 0.07)
            lesion |= ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & brain
        images[i] = np.clip(np.where(lesion, 0.8 + rng.normal(0, 0.03, (size, size)), img), 0, 1)
        masks[i] = lesion
    return images, masks


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call ``fn``; return (result, wall seconds, CPU seconds of this process, all threads)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=None, help="reuse / keep the nnU-Net workspace here")
    parser.add_argument("--size", type=int, default=128, help="slice size (pixels)")
    parser.add_argument("--n-train", type=int, default=40, help="training slices (20 subjects x 2)")
    parser.add_argument("--n-test", type=int, default=24, help="test slices to time")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="training iterations per epoch")
    parser.add_argument("--base-features", type=int, default=16)
    parser.add_argument("--n-stages", type=int, default=None, help="default: as planned")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-mirroring", action="store_true", help="disable test-time mirroring")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="also time predict at these torch CPU thread counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from msutils.segmentation import nnunet as N

    tmp = None
    if args.workspace is None:
        tmp = tempfile.TemporaryDirectory(prefix="nnunet_bench_")
        root = Path(tmp.name)
    else:
        root = args.workspace
    ws = N.NnUNetWorkspace(root)
    dataset_id = 990

    images, masks = synthetic_slices(args.n_train, args.size, args.seed)
    cases, subjects = [], {}
    for i, (img, m) in enumerate(zip(images, masks)):
        cid = N.make_case_id(f"sub-{i // 2:03d}_ses-01", i % 2)
        cases.append((cid, img, m))
        subjects[cid] = f"sub-{i // 2:03d}"
    subj = sorted(set(subjects.values()))
    folds = [subj[k::5] for k in range(5)]

    t0 = time.perf_counter()
    ds_name = f"Dataset{dataset_id:03d}_Bench{args.size}"
    if not (ws.preprocessed / ds_name / "nnUNetPlans.json").is_file():
        N.export_dataset(ws, dataset_id, f"Bench{args.size}", cases)
        N.write_splits(ws, dataset_id, N.splits_from_subject_folds(subjects, folds), case_subjects=subjects)
        N.plan_and_preprocess(ws, dataset_id, base_features=args.base_features, n_stages=args.n_stages,
                              batch_size=args.batch_size, num_processes=2, verify=False)
    t_prep = time.perf_counter() - t0
    ckpt = ws.results / ds_name / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    mtime_before = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
    log, t_train, c_train = _timed(
        N.train, ws, dataset_id, 0, num_epochs=args.epochs, iterations_per_epoch=args.iters,
        val_iterations=max(1, args.iters // 5), device=args.device, seed=args.seed,
    )

    import json

    import torch

    cfg = json.loads((ws.model_folder(dataset_id) / "plans.json").read_text())["configurations"]["2d"]
    arch = cfg["architecture"]["arch_kwargs"]
    threads = torch.get_num_threads()
    print(f"slices {args.size}x{args.size}; patch {cfg['patch_size']}, batch {cfg['batch_size']}, "
          f"features {arch['features_per_stage']}, device {args.device}, torch threads {threads}")
    print(f"export+plan+preprocess: {t_prep:.1f} s wall")
    n_it = len(log) * (args.iters + max(1, args.iters // 5))
    if ckpt.stat().st_mtime_ns != mtime_before:  # else train() reused the stored model
        print(f"training ({len(log)} epochs x {args.iters} + {max(1, args.iters // 5)} val iterations): "
              f"{t_train / n_it:.3f} s/iteration wall, {c_train / n_it:.3f} CPU-s/iteration "
              f"(~{c_train / n_it / threads:.3f} s/iteration on {threads} idle cores); "
              f"epoch times {[round(t, 1) for t in log['epoch_time_s']]} s")
    else:
        print("training: model reused from the workspace")

    test_images, _ = synthetic_slices(args.n_test, args.size, args.seed + 1000)
    mirroring = not args.no_mirroring
    predictor, t_load, _ = _timed(N.load_predictor, ws, dataset_id, 0, device=args.device, use_mirroring=mirroring)
    spacing = [999.0 * max(cfg["spacing"]), *cfg["spacing"]]
    predictor.predict_single_npy_array(test_images[0][None, None], {"spacing": list(spacing)})  # warm-up

    def direct_loop() -> np.ndarray:
        return np.stack([predictor.predict_single_npy_array(img[None, None], {"spacing": list(spacing)})[0]
                         for img in test_images])

    # interleaved repeats, best (minimum) time per method: robust to other jobs on a shared machine
    best: dict[str, list[float]] = {"direct": [np.inf, np.inf], "ours": [np.inf, np.inf], "load": [np.inf, np.inf]}
    for _ in range(args.repeats):
        direct, t, c = _timed(direct_loop)
        best["direct"] = [min(best["direct"][0], t), min(best["direct"][1], c)]
        ours, t, c = _timed(N.predict, ws, dataset_id, test_images, predictor=predictor)
        best["ours"] = [min(best["ours"][0], t), min(best["ours"][1], c)]
        ours_load, t, c = _timed(
            N.predict, ws, dataset_id, test_images, folds=0, device=args.device, use_mirroring=mirroring
        )
        best["load"] = [min(best["load"][0], t), min(best["load"][1], c)]
    (t_direct, c_direct), (t_ours, c_ours), (t_load2, c_load2) = best["direct"], best["ours"], best["load"]

    n = len(test_images)
    print(f"inference on {n} slices (mirroring {'on' if mirroring else 'off'}), best of {args.repeats} interleaved "
          f"rounds; load_predictor: {t_load:.2f} s (first call, incl. imports)")
    rows = [
        ("direct nnUNetPredictor.predict_single_npy_array", t_direct, c_direct),
        ("msutils.segmentation.nnunet.predict (given predictor)", t_ours, c_ours),
        ("msutils.segmentation.nnunet.predict (loads weights itself)", t_load2, c_load2),
    ]
    for label, wall, cpu in rows:
        print(f"  {label:<48}: {n / wall:7.2f} slices/s wall, {n / cpu:7.2f} slices per CPU-s")
    print(f"overhead ratio msutils / direct: wall {t_ours / t_direct:.3f}, CPU {c_ours / c_direct:.3f} "
          f"(given predictor); wall {t_load2 / t_direct:.3f}, CPU {c_load2 / c_direct:.3f} (incl. loading)")
    print(f"identical masks: {bool(np.array_equal(direct, ours) and np.array_equal(ours, ours_load))}")
    if args.threads:
        per: dict[int, list[float]] = {k: [np.inf, np.inf] for k in args.threads}
        for _ in range(args.repeats):
            for k in args.threads:
                torch.set_num_threads(k)
                _, t, c = _timed(N.predict, ws, dataset_id, test_images, predictor=predictor)
                per[k] = [min(per[k][0], t), min(per[k][1], c)]
        torch.set_num_threads(threads)
        first = args.threads[0]
        for k, (wall, cpu) in per.items():
            print(f"  predict with {k} torch thread(s): {wall:.2f} s wall, {cpu:.2f} CPU-s; wall ratio to "
                  f"{first} thread(s): {wall / per[first][0]:.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
