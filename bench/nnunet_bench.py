"""Benchmark: nnU-Net 2D inference through msutils.nnunet.predict vs nnUNetPredictor directly.

Makes its own synthetic FLAIR-like slices (ellipse "brain", bright round
"lesions", noise), exports them, plans a shrunken 2D network (a quick-profile
like model), trains fold 0 for a few epochs (or reuses the model already in
``--workspace``), then times, in one run, on the same test slices:

- ``direct``: ``predictor.predict_single_npy_array`` slice by slice on an
  ``nnUNetPredictor`` built once (what a user of nnU-Net's Python API writes);
- ``msutils``: ``msutils.nnunet.predict(..., predictor=predictor)`` (same
  loaded weights, msutils' loop: one preprocessor for all slices);
- ``msutils+load``: ``msutils.nnunet.predict`` end to end, loading the
  checkpoint itself.

It prints slices/s for each, the msutils / direct time ratio (overhead; < 1
means msutils is faster), whether both give identical masks, and the training
speed (s per iteration, from nnU-Net's epoch times, first epoch excluded).

Usage::

    python bench/nnunet_bench.py --size 128
    python bench/nnunet_bench.py --size 64 --workspace /tmp/nnbench64
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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from msutils import nnunet as N

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
    t0 = time.perf_counter()
    log = N.train(ws, dataset_id, 0, num_epochs=args.epochs, iterations_per_epoch=args.iters,
                  val_iterations=max(1, args.iters // 5), device=args.device, seed=args.seed)
    t_train = time.perf_counter() - t0

    import json

    cfg = json.loads((ws.model_folder(dataset_id) / "plans.json").read_text())["configurations"]["2d"]
    arch = cfg["architecture"]["arch_kwargs"]
    print(f"slices {args.size}x{args.size}; patch {cfg['patch_size']}, batch {cfg['batch_size']}, "
          f"features {arch['features_per_stage']}, device {args.device}")
    print(f"export+plan+preprocess: {t_prep:.1f} s; train call: {t_train:.1f} s "
          f"({len(log)} epochs x {args.iters} iterations)")
    steady = log["epoch_time_s"].iloc[1:] if len(log) > 1 else log["epoch_time_s"]
    val_iters = max(1, args.iters // 5)
    print(f"training: {steady.mean() / (args.iters + val_iters):.3f} s/iteration "
          f"(epoch time / (train + val iterations), first epoch excluded); "
          f"first epoch {log['epoch_time_s'].iloc[0]:.1f} s")

    test_images, _ = synthetic_slices(args.n_test, args.size, args.seed + 1000)
    mirroring = not args.no_mirroring

    t0 = time.perf_counter()
    predictor = N.load_predictor(ws, dataset_id, 0, device=args.device, use_mirroring=mirroring)
    t_load = time.perf_counter() - t0

    spacing = [999.0 * max(cfg["spacing"]), *cfg["spacing"]]
    # warm-up (first forward pass allocates)
    predictor.predict_single_npy_array(test_images[0][None, None], {"spacing": spacing})

    t0 = time.perf_counter()
    direct = np.stack([predictor.predict_single_npy_array(img[None, None], {"spacing": list(spacing)})[0]
                       for img in test_images])
    t_direct = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours = N.predict(ws, dataset_id, test_images, predictor=predictor)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours_load = N.predict(ws, dataset_id, test_images, folds=0, device=args.device, use_mirroring=mirroring)
    t_ours_load = time.perf_counter() - t0

    n = len(test_images)
    print(f"inference on {n} slices (mirroring {'on' if mirroring else 'off'}); loading the weights: {t_load:.2f} s")
    print(f"  direct nnUNetPredictor.predict_single_npy_array : {n / t_direct:8.2f} slices/s")
    print(f"  msutils.nnunet.predict (given predictor)        : {n / t_ours:8.2f} slices/s")
    print(f"  msutils.nnunet.predict (loads weights itself)   : {n / t_ours_load:8.2f} slices/s")
    print(f"overhead ratio msutils / direct: {t_ours / t_direct:.3f} (given predictor), "
          f"{t_ours_load / t_direct:.3f} (incl. loading)")
    print(f"identical masks: {bool(np.array_equal(direct, ours) and np.array_equal(ours, ours_load))}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
