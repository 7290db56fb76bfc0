"""Seed 000, part 2: the ``real+gba`` augmentation scenario and the record of its image quality.

:func:`gba_images` has the call signature of the study's augmentation-scenario
registry (:mod:`msutils.studies.gan_augmentation`): ``fn(request) -> DataFrame``
with one row per synthetic image. Register it with the study's class-map
function and the profile's options bound::

    from functools import partial
    register_scenario("real+gba", partial(gba_images, class_map_fn=class_map, options=profile_gba_options))

What one call does (repetition ``r`` of a LOCO iteration)
--------------------------------------------------------
1. Inner fold ``k = r mod n_inner`` of the iteration's training subjects: its
   training subjects train a conditional GAN
   (:func:`msutils.models.gan.gba_scenario`; a subject-level monitor split of
   them early-stops it), its validation subjects never reach the GAN and
   give the SSIM / PSNR pairs. So the seed's "a distinct cGAN per fold" and
   "five synthetic folds" coincide: synthetic fold ``r`` comes from the cGAN of
   inner fold ``r`` and Table 1 is mean +/- SD over the inner folds.
2. Volumes are cropped to the bounding box of the training brains (plus
   ``margin_vox``, grown to a multiple of the GAN's total stride times
   ``grid_factor``); the GAN runs on that box, ``grid_factor`` times coarser.
3. ``n_per_class`` images per class are generated and pasted back into
   full-size volumes (zero outside the box). Each inherits its parent scan's
   affine, center (its ComBat batch), age and sex.
4. The iteration's ROI U-Net (``request.segmenter``) segments every generated
   image, as in the seed; Dice and Jaccard against the known label map (the
   deformed parent label map, exact by construction) are recorded per image
   and per ROI. ``labels_from="truth"`` uses the known map for radiomics
   instead (the seed had its segmentations corrected by experts).
5. Image quality of the fold (``DataFrame.attrs["gba"]`` and
   ``gba-r<r>-metrics.json`` in ``request.out_dir``): SSIM and PSNR of the
   validation pairs; FID and KID between the generated images and the real
   inner-training images on features of the U-Net's bottleneck
   (:func:`msutils.features.fidelity.network_features`; not comparable with
   Inception-based values); the non-copy check against the real
   inner-training images; the segmentation overlap; the GAN's training record.

Request attributes used: ``cohort`` (``array``, ``image``, ``roi_sets``),
``train`` (index scan id; ``subject_id``, ``group``, ``center``, ``age``,
``sex``), ``inner`` (list of ``{"train": subjects, "test": subjects}``),
``segmenter`` (``predict(volume) -> class map``, ``network()``; may be None),
``n_per_class``, ``repetition``, ``seed``, ``out_dir``, ``fit_log`` (may be None).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msutils.core.io import atomic_write_json
from msutils.core.serialize import to_jsonable
from msutils.core.validation import check_choice, check_int
from msutils.features import fidelity
from msutils.models import gan
from msutils.segmentation.metrics import dice, iou

__all__ = ["GbaOptions", "brain_box", "crop_box", "paste_box", "gba_images"]

logger = logging.getLogger(__name__)

_GROUPS = ("HC", "MS")  # class 0, class 1
_LABEL_SOURCES = ("segmentation", "truth")


@dataclass(frozen=True)
class GbaOptions:
    """Settings of :func:`gba_images` (profile parameters).

    Attributes
    ----------
    gan : GanConfig
        The cGAN's hyper-parameters.
    grid_factor : int
        The GAN grid is this many times coarser than the cohort grid.
    margin_vox : int
        Margin around the training brains' bounding box (cohort voxels).
    labels_from : {"segmentation", "truth"}
        Label map used for radiomics: the U-Net's segmentation (seed) or the
        known label map. Without a segmenter the known map is used.
    kid_subsets, kid_subset_size : int
        :func:`msutils.features.fidelity.kid` settings.
    device : {"auto", "cpu", "cuda"}
    num_threads : int or None
        torch CPU threads for the GAN.
    """

    gan: gan.GanConfig = field(default_factory=gan.GanConfig)
    grid_factor: int = 1
    margin_vox: int = 2
    labels_from: str = "segmentation"
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    device: str = "auto"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.gan, gan.GanConfig):
            raise TypeError(f"'gan' must be a GanConfig; got {type(self.gan).__name__}")
        check_int("grid_factor", self.grid_factor, 1)
        check_int("margin_vox", self.margin_vox, 0)
        check_choice("labels_from", self.labels_from, _LABEL_SOURCES)
        check_int("kid_subsets", self.kid_subsets, 1)
        check_int("kid_subset_size", self.kid_subset_size, 2)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_int("num_threads", self.num_threads, 1, optional=True)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> GbaOptions:
        """Options from a flat mapping: the fields above, every other key a :class:`GanConfig` field."""
        values = dict(values or {})
        own = {f.name for f in dataclasses.fields(cls)} - {"gan"}
        mine = {k: values.pop(k) for k in list(values) if k in own}
        return cls(gan=gan.GanConfig.from_mapping(values), **mine)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly dict (the inverse of :meth:`from_mapping`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "gan"}
        return {**self.gan.to_dict(), **out}


# --------------------------------------------------------------------------- boxes
def brain_box(masks: np.ndarray, *, multiple: int, margin: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Start and size of the box around the union of ``masks``, grown to a multiple of ``multiple``.

    Parameters
    ----------
    masks : ndarray of bool, shape (n, X, Y, Z)
    multiple : int
        Every box side is a multiple of this.
    margin : int
        Voxels added on each side of the bounding box first.

    Returns
    -------
    (start, size) : tuple of int, tuple of int
        The box is centred on the bounding box and may reach outside the
        volume (:func:`crop_box` pads with zeros there).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4 or not masks.any():
        raise ValueError(f"'masks' must be (n, X, Y, Z) with at least one brain voxel; got shape {masks.shape}")
    multiple = check_int("multiple", multiple, 1)
    margin = check_int("margin", margin, 0)
    union = masks.any(axis=0)
    starts, sizes = [], []
    for axis in range(3):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = int(hit[0]) - margin, int(hit[-1]) + 1 + margin
        size = int(math.ceil((hi - lo) / multiple) * multiple)
        starts.append(lo - (size - (hi - lo)) // 2)
        sizes.append(size)
    return tuple(starts), tuple(sizes)


def crop_box(volumes: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The box of ``(n, X, Y, Z)`` volumes, zero where it reaches outside them."""
    volumes = np.asarray(volumes)
    out = np.zeros((volumes.shape[0], *size), dtype=volumes.dtype)
    src, dst = _overlap(volumes.shape[1:], start, size)
    out[(slice(None), *dst)] = volumes[(slice(None), *src)]
    return out


def paste_box(boxes: np.ndarray, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Full ``(n, *shape)`` volumes, zero outside the box, holding ``boxes`` (the inverse of :func:`crop_box`)."""
    boxes = np.asarray(boxes)
    out = np.zeros((boxes.shape[0], *shape), dtype=boxes.dtype)
    src, dst = _overlap(shape, start, boxes.shape[1:])
    out[(slice(None), *src)] = boxes[(slice(None), *dst)]
    return out


def _overlap(shape: Sequence[int], start: Sequence[int], size: Sequence[int]) -> tuple[list[slice], list[slice]]:
    """Slices of the volume and of the box covering their common part."""
    vol, box = [], []
    for n, s, k in zip(shape, start, size):
        lo, hi = max(int(s), 0), min(int(s) + int(k), int(n))
        if hi <= lo:
            raise ValueError(f"box start {tuple(start)} size {tuple(size)} lies outside volumes of shape "
                             f"{tuple(shape)}")
        vol.append(slice(lo, hi))
        box.append(slice(lo - int(s), hi - int(s)))
    return vol, box


# --------------------------------------------------------------------------- the scenario
def _load(request: Any, scans: Sequence[str], class_map_fn: Callable[..., np.ndarray]) -> tuple[np.ndarray, ...]:
    cohort = request.cohort
    images = np.stack([cohort.array(s, "t1") for s in scans]).astype(np.float32)
    labels = np.stack([np.asarray(class_map_fn(cohort.array(s, "roi_labels", dtype=None), cohort.roi_sets))
                       for s in scans]).astype(np.int16)
    return images, labels


def _zscore_foreground(volume: np.ndarray) -> np.ndarray:
    fg = volume != 0
    if not fg.any():
        return volume.astype(np.float32)
    sd = float(volume[fg].std()) or 1.0
    return np.where(fg, (volume - float(volume[fg].mean())) / sd, 0.0).astype(np.float32)


def _unet_features(network: Any, volumes: np.ndarray, device: str) -> np.ndarray:
    """Bottleneck features of a MONAI U-Net for foreground-z-scored volumes padded to its total stride."""
    multiple = int(np.prod(getattr(network, "strides", (1,))))
    pads = [(0, 0)] + [(0, (-s) % multiple) for s in volumes.shape[1:]]
    batch = np.pad(np.stack([_zscore_foreground(v) for v in volumes]), pads)
    return fidelity.network_features(network, batch, batch_size=2, device=device)


def _overlap_table(seg: np.ndarray, truth: np.ndarray, values: Sequence[int]) -> pd.DataFrame:
    rows = []
    for i, (p, t) in enumerate(zip(seg, truth)):
        for v in values:
            rows.append({"image": i, "label": int(v), "dice": dice(p == v, t == v), "jaccard": iou(p == v, t == v)})
    return pd.DataFrame(rows)


def gba_images(
    request: Any,
    *,
    class_map_fn: Callable[[np.ndarray, Mapping[str, Sequence[int]]], np.ndarray],
    options: GbaOptions | Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """GAN-based augmentation for one repetition of a LOCO iteration (see the module docstring).

    Parameters
    ----------
    request : AugmentationRequest
        The registry's request (attributes listed in the module docstring).
    class_map_fn : callable
        ``class_map_fn(cohort label map, roi_sets) -> class map`` (the study's
        ten-ROI class map; class ``k`` is ROI ``k``).
    options : GbaOptions or mapping, optional

    Returns
    -------
    DataFrame
        Index ``scan_id`` (``gba-r<r>-<group>-<i>``); columns ``t1``,
        ``roi_labels`` (the label map radiomics uses), ``truth_labels``,
        ``group``, ``source_subject``, ``source_scan``, ``center``, ``age``,
        ``sex``, ``inner_fold``, ``seg_dice``, ``seg_jaccard`` (means over the
        ROIs; NaN without a segmenter). ``attrs["gba"]`` holds the fold's
        image-quality record (also written as JSON).
    """
    import nibabel as nib

    opts = options if isinstance(options, GbaOptions) else GbaOptions.from_mapping(options)
    rep = check_int("repetition", request.repetition, 0)
    inner = list(request.inner)
    if not inner:
        raise ValueError("the request has no inner folds to train the cGAN on")
    k = rep % len(inner)
    train_table = request.train
    tr_subj, va_subj = {str(s) for s in inner[k]["train"]}, {str(s) for s in inner[k]["test"]}
    subjects = train_table["subject_id"].astype(str)
    outside = sorted((tr_subj | va_subj) - set(subjects))
    if outside:
        raise ValueError(f"inner fold {k} names subjects outside the training rows: {outside[:5]}")
    tr_scans = [str(s) for s in train_table.index[subjects.isin(tr_subj)]]
    va_scans = [str(s) for s in train_table.index[subjects.isin(va_subj)]]
    if not tr_scans or not va_scans:
        raise ValueError(f"inner fold {k} needs training and validation scans; got {len(tr_scans)} and "
                         f"{len(va_scans)}")
    classes = {str(s): int(str(g) == "MS") for s, g in zip(train_table.index, train_table["group"])}
    t0 = time.perf_counter()
    tr_img, tr_lab = _load(request, tr_scans, class_map_fn)
    va_img, va_lab = _load(request, va_scans, class_map_fn)
    full_shape = tr_img.shape[1:]
    if va_img.shape[1:] != full_shape:
        raise ValueError(f"GBA needs every scan on one grid; training {full_shape}, validation {va_img.shape[1:]}")
    multiple = opts.grid_factor * int(np.prod(opts.gan.g_strides))
    start, size = brain_box(tr_img > 0, multiple=multiple, margin=opts.margin_vox)

    def image_set(img: np.ndarray, lab: np.ndarray, scans: list[str]) -> gan.ImageSet:
        return gan.ImageSet(crop_box(img, start, size), crop_box(lab, start, size),
                            np.array([classes[s] for s in scans]),
                            [str(train_table.at[s, "subject_id"]) for s in scans])

    train_set = image_set(tr_img, tr_lab, tr_scans)
    seed = int(np.random.SeedSequence([int(request.seed), 4711, rep]).generate_state(1)[0] & 0x7FFFFFFF)
    res = gan.gba_scenario(
        train_set, n_folds=1, n_per_class=int(request.n_per_class), seed=seed, config=opts.gan,
        validation=image_set(va_img, va_lab, va_scans), grid_factor=opts.grid_factor, log=request.fit_log,
        step=f"cgan-inner{k}", device=opts.device, num_threads=opts.num_threads,
    )
    fold = res.folds[0]
    images = paste_box(fold.images, start, full_shape)
    truth = paste_box(fold.label_maps.astype(np.int16), start, full_shape)
    t_seg = time.perf_counter()
    segmenter = request.segmenter
    if segmenter is not None:
        seg = np.stack([np.asarray(segmenter.predict(v)) for v in images]).astype(np.int16)
        overlap = _overlap_table(seg, truth, res.label_values)
        per_image = overlap.groupby("image")[["dice", "jaccard"]].mean()
    else:
        seg, overlap = None, pd.DataFrame(columns=["image", "label", "dice", "jaccard"])
        per_image = pd.DataFrame({"dice": np.nan, "jaccard": np.nan}, index=range(len(images)))
    t_seg = time.perf_counter() - t_seg
    used = truth if seg is None or opts.labels_from == "truth" else seg
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    counters = dict.fromkeys(_GROUPS, 0)
    for i, (cls, row) in enumerate(zip(fold.classes.tolist(), fold.parent_rows.tolist())):
        group = _GROUPS[cls]
        src = tr_scans[row]
        sid = f"gba-r{rep}-{group}-{counters[group]:03d}"
        counters[group] += 1
        affine = request.cohort.image(src, "t1").affine
        paths = {}
        for col, arr in (("t1", images[i]), ("roi_labels", used[i]), ("truth_labels", truth[i])):
            path = out_dir / f"{sid}_{col}.nii.gz"
            nib.save(nib.Nifti1Image(arr, affine), str(path))
            paths[col] = str(path)
        rows[sid] = {**paths, "group": group, "source_subject": str(train_table.at[src, "subject_id"]),
                     "source_scan": src, "center": str(train_table.at[src, "center"]),
                     "age": float(train_table.at[src, "age"]), "sex": float(train_table.at[src, "sex"]),
                     "inner_fold": k, "seg_dice": float(per_image.at[i, "dice"]),
                     "seg_jaccard": float(per_image.at[i, "jaccard"])}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "scan_id"
    metrics = _quality(res, images, tr_img, train_set.subjects, overlap, segmenter, opts)
    metrics.update(repetition=rep, inner_fold=k, seed=seed, box_start=list(start), box_size=list(size),
                   n_train_scans=len(tr_scans), n_validation_scans=len(va_scans), options=opts.to_dict(),
                   seconds={**res.seconds, "segment": round(t_seg, 3),
                            "total": round(time.perf_counter() - t0, 3)})
    atomic_write_json(out_dir / f"gba-r{rep}-metrics.json", to_jsonable(metrics))
    table.attrs["gba"] = metrics
    logger.info("GBA repetition %d (inner fold %d): %d images, SSIM %.3f, seg Dice %.3f", rep, k, len(table),
                metrics["ssim_mean"], metrics["seg_dice_mean"])
    return table


def _quality(res: gan.GbaResult, images: np.ndarray, real: np.ndarray, real_subjects: Sequence[str],
             overlap: pd.DataFrame, segmenter: Any, opts: GbaOptions) -> dict[str, Any]:
    """Table 1 quantities of one inner fold (see the module docstring)."""
    pairs = res.validation
    data_range = float(pairs.real.max())
    win = min(11, *pairs.real.shape[1:])
    ssim = fidelity.ssim_pairs(pairs.generated, pairs.real, data_range=data_range, win_size=win)
    psnr = fidelity.psnr_pairs(pairs.generated, pairs.real, data_range=data_range)
    nc = fidelity.nearest_neighbour_similarity(images, real, real_groups=list(real_subjects))
    out: dict[str, Any] = {
        "ssim": ssim.tolist(), "psnr": psnr.tolist(), "ssim_mean": float(ssim.mean()),
        "psnr_mean": float(psnr[np.isfinite(psnr)].mean()) if np.isfinite(psnr).any() else float("inf"),
        "ssim_pairs": "generator reconstruction of each inner-validation scan from its own label map and class "
                      "vs that scan's real T1 (brain box, data_range = largest real intensity)",
        "non_copy": nc.summary(), "gan": res.fit.summary(),
    }
    if segmenter is not None:
        net = segmenter.network()
        device = "cuda" if next(net.parameters()).is_cuda else "cpu"
        f_syn = _unet_features(net, images, device)
        f_real = _unet_features(net, real, device)
        kid = fidelity.kid(f_real, f_syn, n_subsets=opts.kid_subsets, subset_size=opts.kid_subset_size)
        out.update(fid=fidelity.fid(f_real, f_syn), kid_mean=kid.mean, kid_std=kid.std,
                   kid_subset_size=kid.subset_size,
                   feature_extractor="global-average-pooled bottleneck of the iteration's ROI U-Net; real = "
                                     "inner-training scans; not comparable with Inception-based FID/KID",
                   seg_dice_mean=float(overlap["dice"].mean()), seg_jaccard_mean=float(overlap["jaccard"].mean()),
                   seg_per_label={int(lab): {"dice_mean": float(g["dice"].mean()), "dice_sd": float(g["dice"].std()),
                                             "jaccard_mean": float(g["jaccard"].mean()),
                                             "jaccard_sd": float(g["jaccard"].std())}
                                  for lab, g in overlap.groupby("label")})
    else:
        out.update(fid=float("nan"), kid_mean=float("nan"), kid_std=float("nan"), seg_dice_mean=float("nan"),
                   seg_jaccard_mean=float("nan"))
    return out
