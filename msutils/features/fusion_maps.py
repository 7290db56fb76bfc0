"""Concentration-rate (CR) and Rényi-entropy (RE) maps of 2D slices (seed 002, Eqs. 1-3).

Both maps are computed for every pixel of a 2D slice from a square scanning
window ``W_s(i, j)`` of side ``2s + 1`` centred on the pixel.

Concentration rate, Eqs. 1-2
    ``N = (2s + 1)^2``; with the window's grey values sorted ascending,
    ``X_(1) <= ... <= X_(N)``::

        CR(i, j) = sum_{k = N - num - m + 1}^{N - m} X_(k)

    i.e. the sum of the ``num`` values just below the ``m`` highest ones
    (the ``m`` highest are left out as outliers). The paper: ``s = 2``
    (``N = 25``), ``num = 15``, ``m = 5``: order statistics 6..20. CR is
    computed on the grey values as given (the normalised intensities), not on
    the quantised levels.

Rényi entropy, Eq. 3
    The grey values are quantised to ``levels`` (256) grey levels
    (:func:`quantize`). For each pixel the grey-level co-occurrence matrices
    (GLCM) of its window for distances 1 and 2 and the four directions 0, 45,
    90 and 135 degrees are summed (eight matrices) and normalised to
    probabilities ``f_kl``; then ``H_alpha = log(sum_kl f_kl^alpha) / (1 - alpha)``
    with ``alpha = 7`` and ``s = 5`` (an 11 x 11 window). A pair counts when
    both of its pixels lie inside the window.

Choices the paper leaves open (all parameters of :class:`FusionMapParams`)
    - ``log_base``: base of the logarithm in Eq. 3; default 2 (bits).
    - ``symmetric``: whether each GLCM counts a pair in both orders
      (``P + P^T``, Haralick's definition, also pyradiomics'); default True.
      The non-symmetric variant (scikit-image's default) is available.
    - ``diagonal``: what "distance d at 45 / 135 degrees" means.
      ``"chessboard"`` (default, Haralick): the offsets ``(d, d)`` and
      ``(d, -d)`` (rows, columns). ``"rounded"``: scikit-image's
      ``graycomatrix`` convention ``(round(d sin t), round(d cos t))``, for which
      distance 2 at 45 degrees is the offset ``(1, 1)``, the same as distance 1.
    - Quantisation (``levels``, ``value_range``): equal-width bins over
      ``value_range`` (default ``(0, 1)``, the range of the min-max normalised
      intensities): ``level = floor((v - lo) / (hi - lo) * levels)``, clipped to
      ``0 .. levels - 1`` (so ``v = hi`` is the top level).
    - Border handling (``pad_mode``): windows that reach past the slice see
      the slice padded by ``numpy.pad`` with this mode; default ``"constant"``
      (zeros, i.e. background, which is what surrounds a skull-stripped brain).
      A slice smaller than the window is padded the same way, never rejected.

The seed's authors' public code for their earlier (focal cortical dysplasia)
paper uses other definitions (3D windows, other ``num`` / ``m``, an entropy of
the grey values without a GLCM); this module implements the equations of the
seed paper.

Implementation
    CR: a strided window view of the padded slice and ``numpy.partition`` of
    each window's values (no per-pixel Python loop). RE: a compiled numba
    kernel that, per pixel, counts the window's pair codes
    ``code = L * a + b`` (``min / max`` ordered for the symmetric GLCM) in a
    reused count table and sums ``count^alpha`` over the distinct codes from a
    precomputed power table, so ``sum f^alpha = sum c^alpha / T^alpha`` with
    ``T`` the number of pairs is exact up to float rounding.
    :func:`concentration_rate_reference` and :func:`renyi_entropy_reference`
    are the straightforward per-window loops (``numpy.sort``;
    ``skimage.feature.graycomatrix``) the tests and ``bench/fusion_maps_bench.py``
    compare against.

Volumes and cache
    :func:`volume_fusion_maps` maps every slice of a 3D volume along one axis;
    it computes each slice only on the bounding box of its non-zero pixels plus
    a margin of ``s + 1`` pixels, which gives exactly the values of the full
    slice (outside it every window is all zeros: CR = 0, RE = 0).
    :func:`cached_volume_maps` stores the result per scan under a key made of
    the volume's content, the parameters and :data:`FUSION_MAPS_VERSION`
    (like :func:`msutils.radiomics.extract`'s cache), written atomically and
    computed once when several processes ask at the same time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msutils.core.io import atomic_path, file_lock
from msutils.core.validation import check_choice, check_int

__all__ = [
    "FUSION_MAPS_VERSION",
    "PAD_MODES",
    "DIAGONALS",
    "MAP_NAMES",
    "FusionMapParams",
    "quantize",
    "glcm_offsets",
    "concentration_rate",
    "renyi_entropy",
    "fusion_maps",
    "volume_fusion_maps",
    "maps_cache_key",
    "cached_volume_maps",
    "concentration_rate_reference",
    "renyi_entropy_reference",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the same inputs would give different maps (part of the cache key).
FUSION_MAPS_VERSION = "1"
#: Border handling: ``numpy.pad`` modes accepted by ``pad_mode``.
PAD_MODES: tuple[str, ...] = ("constant", "edge", "reflect", "symmetric")
#: Conventions for the diagonal GLCM offsets (see the module docstring).
DIAGONALS: tuple[str, ...] = ("chessboard", "rounded")
#: Names of the two maps, in the order :func:`fusion_maps` returns them.
MAP_NAMES: tuple[str, ...] = ("cr", "re")


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------
def _check_cr(s: Any, num: Any, m: Any) -> tuple[int, int, int]:
    s = check_int("s", s, 1)
    num = check_int("num", num, 1)
    m = check_int("m", m, 0)
    n = (2 * s + 1) ** 2
    if num + m > n:
        raise ValueError(f"'num' + 'm' must be <= N = (2s + 1)^2 = {n}; got num={num}, m={m}")
    return s, num, m


def _check_alpha(alpha: Any) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"'alpha' must be a number > 0 and != 1; got {alpha!r}") from None
    if not math.isfinite(a) or a <= 0 or a == 1:
        raise ValueError(f"'alpha' must be a number > 0 and != 1; got {alpha!r}")
    return a


def _check_log_base(base: Any) -> float:
    try:
        b = float(base)
    except (TypeError, ValueError):
        raise ValueError(f"'log_base' must be a number > 0 and != 1; got {base!r}") from None
    if not math.isfinite(b) or b <= 0 or b == 1:
        raise ValueError(f"'log_base' must be a number > 0 and != 1; got {base!r}")
    return b


def _check_value_range(value_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"'value_range' must be two numbers (low, high); got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"'value_range' must satisfy low < high (finite); got {value_range!r}")
    return lo, hi


@dataclass(frozen=True)
class FusionMapParams:
    """Every setting of the two maps (defaults: the seed's values and the documented choices).

    Attributes
    ----------
    cr_s : int
        CR window half-size ``s`` (window ``2s + 1``); paper 2.
    cr_num : int
        CR ``num``: how many order statistics are summed; paper 15.
    cr_m : int
        CR ``m``: how many of the highest values are left out; paper 5.
    re_s : int
        RE window half-size; paper 5.
    alpha : float
        Rényi order (> 0, != 1); paper 7.
    distances : tuple of int
        GLCM pixel distances; paper (1, 2).
    angles : tuple of int
        GLCM directions in degrees, among 0, 45, 90, 135; paper all four.
    levels : int
        Grey levels of the quantisation (GLCM size ``levels^2``); paper 256.
    value_range : tuple of float
        Intensity range mapped onto the levels (see :func:`quantize`).
    symmetric : bool
        Symmetric GLCMs (``P + P^T``).
    diagonal : {"chessboard", "rounded"}
        Offset convention of the 45 / 135 degree directions.
    log_base : float
        Base of the logarithm of Eq. 3 (2: bits).
    pad_mode : {"constant", "edge", "reflect", "symmetric"}
        Border handling (``numpy.pad`` mode; ``"constant"`` pads with 0).
    """

    cr_s: int = 2
    cr_num: int = 15
    cr_m: int = 5
    re_s: int = 5
    alpha: float = 7.0
    distances: tuple[int, ...] = (1, 2)
    angles: tuple[int, ...] = (0, 45, 90, 135)
    levels: int = 256
    value_range: tuple[float, float] = (0.0, 1.0)
    symmetric: bool = True
    diagonal: str = "chessboard"
    log_base: float = 2.0
    pad_mode: str = "constant"

    def __post_init__(self) -> None:
        _check_cr(self.cr_s, self.cr_num, self.cr_m)
        check_int("re_s", self.re_s, 1)
        object.__setattr__(self, "alpha", _check_alpha(self.alpha))
        object.__setattr__(self, "log_base", _check_log_base(self.log_base))
        check_int("levels", self.levels, 2)
        object.__setattr__(self, "value_range", _check_value_range(self.value_range))
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise ValueError(f"'symmetric' must be True or False; got {self.symmetric!r}")
        check_choice("diagonal", self.diagonal, DIAGONALS)
        check_choice("pad_mode", self.pad_mode, PAD_MODES)
        offsets = glcm_offsets(self.distances, self.angles, self.diagonal)  # validates both
        if max(max(abs(dr), abs(dc)) for dr, dc in offsets) > 2 * self.re_s:
            raise ValueError(f"every GLCM offset must fit in the RE window (2 * re_s = {2 * self.re_s} pixels); "
                             f"got distances {list(self.distances)}")
        object.__setattr__(self, "distances", tuple(int(d) for d in self.distances))
        object.__setattr__(self, "angles", tuple(int(a) for a in self.angles))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every setting."""
        out = asdict(self)
        out["distances"] = list(self.distances)
        out["angles"] = list(self.angles)
        out["value_range"] = list(self.value_range)
        out["symmetric"] = bool(self.symmetric)
        return out

    @property
    def margin(self) -> int:
        """Largest window half-size of the two maps."""
        return max(self.cr_s, self.re_s)


# --------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------
def _as_slice(image: Any, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"'{name}' must be a 2D array; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"'{name}' is empty (shape {arr.shape})")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"'{name}' must hold numbers; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"'{name}' contains NaN or infinite values")
    return arr


def quantize(image: Any, levels: int = 256, value_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """Equal-width quantisation of grey values to ``0 .. levels - 1``.

    ``level = floor((v - lo) / (hi - lo) * levels)``, clipped to
    ``[0, levels - 1]``: ``levels`` bins of equal width over ``value_range``;
    values below / above the range go to the bottom / top level.

    Parameters
    ----------
    image : array-like
        Grey values (any shape), finite.
    levels : int
        Number of grey levels (>= 2).
    value_range : tuple of float
        ``(lo, hi)`` mapped onto the levels (default (0, 1): min-max normalised
        intensities).

    Returns
    -------
    numpy.ndarray
        int32 levels, same shape.
    """
    levels = check_int("levels", levels, 2)
    lo, hi = _check_value_range(value_range)
    arr = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("'image' contains NaN or infinite values")
    q = np.floor((arr - lo) / (hi - lo) * levels)
    return np.clip(q, 0, levels - 1).astype(np.int32)


def glcm_offsets(
    distances: Sequence[int] = (1, 2),
    angles: Sequence[int] = (0, 45, 90, 135),
    diagonal: str = "chessboard",
) -> list[tuple[int, int]]:
    """(row, column) offsets of the GLCM pairs, one per (distance, angle).

    Directions follow scikit-image's ``graycomatrix``: 0 degrees is
    ``(0, d)``, 90 degrees ``(d, 0)``; the diagonals are ``(d, d)`` (45) and
    ``(d, -d)`` (135) with ``diagonal="chessboard"``, or
    ``(round(d sin t), round(d cos t))`` with ``diagonal="rounded"`` (what
    ``graycomatrix(distances=[d], angles=[t])`` uses).

    Parameters
    ----------
    distances : sequence of int
        Positive pixel distances, no repeats.
    angles : sequence of int
        Degrees among 0, 45, 90, 135, no repeats.
    diagonal : {"chessboard", "rounded"}

    Returns
    -------
    list of (int, int)
        Ordered distance by distance, then angle by angle.
    """
    check_choice("diagonal", diagonal, DIAGONALS)
    dist = [check_int("distances", d, 1) for d in np.atleast_1d(np.asarray(distances, dtype=object))]
    if not dist or len(set(dist)) != len(dist):
        raise ValueError(f"'distances' must be distinct positive integers; got {list(distances)!r}")
    ang = list(np.atleast_1d(np.asarray(angles, dtype=object)))
    if not ang or len(set(ang)) != len(ang) or any(a not in (0, 45, 90, 135) for a in ang):
        raise ValueError(f"'angles' must be distinct values among [0, 45, 90, 135] (degrees); got {list(angles)!r}")
    out = []
    for d in dist:
        for a in ang:
            if a in (0, 90) or diagonal == "chessboard":
                dr = {0: 0, 45: d, 90: d, 135: d}[int(a)]
                dc = {0: d, 45: d, 90: 0, 135: -d}[int(a)]
            else:
                t = np.deg2rad(float(a))
                dr, dc = int(round(math.sin(t) * d)), int(round(math.cos(t) * d))
            out.append((dr, dc))
    return out


def _windows(padded: np.ndarray, size: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(padded, (size, size))


# --------------------------------------------------------------------------------------
# concentration rate
# --------------------------------------------------------------------------------------
def concentration_rate(
    image: Any,
    *,
    s: int = 2,
    num: int = 15,
    m: int = 5,
    pad_mode: str = "constant",
    chunk_rows: int = 256,
) -> np.ndarray:
    """Concentration-rate map of a 2D slice (Eqs. 1-2), vectorised.

    Parameters
    ----------
    image : array-like
        2D grey values (e.g. the min-max normalised FLAIR slice).
    s : int
        Window half-size: the window is ``(2s + 1) x (2s + 1)``, ``N = (2s + 1)^2``.
    num : int
        Number of order statistics summed.
    m : int
        Number of highest values left out.
    pad_mode : {"constant", "edge", "reflect", "symmetric"}
        Border handling (``numpy.pad``; ``"constant"`` = zeros).
    chunk_rows : int
        Rows processed at once (bounds the memory to ``chunk_rows x W x N`` values).

    Returns
    -------
    numpy.ndarray
        float64 map, same shape as ``image``:
        ``sum(sorted(window)[N - num - m : N - m])``.
    """
    img = _as_slice(image).astype(np.float64)
    s, num, m = _check_cr(s, num, m)
    check_choice("pad_mode", pad_mode, PAD_MODES)
    chunk_rows = check_int("chunk_rows", chunk_rows, 1)
    size = 2 * s + 1
    n = size * size
    lo, hi = n - num - m, n - m - 1  # 0-based ascending positions of X_(N-num-m+1) .. X_(N-m)
    padded = np.pad(img, s, mode=pad_mode)
    win = _windows(padded, size)
    out = np.empty(img.shape, dtype=np.float64)
    kth = [lo, hi] if lo != hi else [lo]
    for r0 in range(0, img.shape[0], chunk_rows):
        block = win[r0:r0 + chunk_rows].reshape(-1, img.shape[1], n)
        part = np.partition(block, kth, axis=-1)
        out[r0:r0 + chunk_rows] = part[..., lo:hi + 1].sum(axis=-1)
    return out


def concentration_rate_reference(
    image: Any, *, s: int = 2, num: int = 15, m: int = 5, pad_mode: str = "constant"
) -> np.ndarray:
    """Per-window reference of :func:`concentration_rate`: ``numpy.sort`` of each window in a loop.

    Slow; for tests and ``bench/fusion_maps_bench.py``.
    """
    img = _as_slice(image).astype(np.float64)
    s, num, m = _check_cr(s, num, m)
    check_choice("pad_mode", pad_mode, PAD_MODES)
    size = 2 * s + 1
    n = size * size
    padded = np.pad(img, s, mode=pad_mode)
    out = np.empty(img.shape, dtype=np.float64)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            x = np.sort(padded[i:i + size, j:j + size].ravel())
            # X_(k), k = N - num - m + 1 .. N - m (1-based ascending order statistics)
            out[i, j] = x[n - num - m:n - m].sum()
    return out


# --------------------------------------------------------------------------------------
# Rényi entropy
# --------------------------------------------------------------------------------------
_KERNEL: Any = None


def _renyi_kernel() -> Any:
    """Compile (once per process; cached on disk by numba) the per-pixel GLCM kernel."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import numba

    @numba.njit(cache=True, nogil=True)
    def kernel(padded, out, offsets, size, n_levels, symmetric, powtab, log_total, alpha, log_base):
        rows, cols = out.shape
        n_off = offsets.shape[0]
        max_pairs = 0
        for k in range(n_off):
            max_pairs += (size - abs(offsets[k, 0])) * (size - abs(offsets[k, 1]))
        counts = np.zeros(n_levels * n_levels, dtype=np.int32)
        touched = np.empty(max_pairs, dtype=np.int64)
        for i in range(rows):
            for j in range(cols):
                n_t = 0
                for k in range(n_off):
                    dr = offsets[k, 0]
                    dc = offsets[k, 1]
                    r_lo = i + max(0, -dr)
                    r_hi = i + size - max(0, dr)
                    c_lo = j + max(0, -dc)
                    c_hi = j + size - max(0, dc)
                    for r in range(r_lo, r_hi):
                        for c in range(c_lo, c_hi):
                            a = padded[r, c]
                            b = padded[r + dr, c + dc]
                            if symmetric and a > b:
                                a, b = b, a
                            code = a * n_levels + b
                            if counts[code] == 0:
                                touched[n_t] = code
                                n_t += 1
                            counts[code] += 1
                total = 0.0
                for t in range(n_t):
                    code = touched[t]
                    cnt = counts[code]
                    counts[code] = 0
                    if symmetric:
                        if code // n_levels == code % n_levels:
                            total += powtab[2 * cnt]  # diagonal of P + P^T: 2 c_ii
                        else:
                            total += 2.0 * powtab[cnt]  # (i, j) and (j, i) both hold c_ij + c_ji
                    else:
                        total += powtab[cnt]
                out[i, j] = (np.log(total) - alpha * log_total) / (1.0 - alpha) / np.log(log_base)
        return out

    _KERNEL = kernel
    return kernel


def _check_levels_image(levels_img: Any, levels: int) -> np.ndarray:
    arr = _as_slice(levels_img, "levels_img")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"'levels_img' must be an integer array of grey levels (see quantize); got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= levels:
        raise ValueError(f"'levels_img' values must be in [0, {levels - 1}]; got [{lo}, {hi}]")
    return arr


def renyi_entropy(
    levels_img: Any,
    *,
    s: int = 5,
    alpha: float = 7.0,
    distances: Sequence[int] = (1, 2),
    angles: Sequence[int] = (0, 45, 90, 135),
    levels: int = 256,
    symmetric: bool = True,
    diagonal: str = "chessboard",
    log_base: float = 2.0,
    pad_mode: str = "constant",
) -> np.ndarray:
    """Rényi-entropy map of a quantised 2D slice (Eq. 3), compiled per-pixel GLCM counts.

    Parameters
    ----------
    levels_img : array-like of int
        2D grey levels in ``0 .. levels - 1`` (:func:`quantize`).
    s : int
        Window half-size (window ``2s + 1``).
    alpha : float
        Rényi order (> 0, != 1).
    distances, angles, diagonal
        GLCM offsets (:func:`glcm_offsets`); their matrices are summed.
    levels : int
        GLCM size (``levels x levels``).
    symmetric : bool
        Symmetric GLCMs (``P + P^T``).
    log_base : float
        Base of the logarithm (2: bits).
    pad_mode : {"constant", "edge", "reflect", "symmetric"}
        Border handling of the level image.

    Returns
    -------
    numpy.ndarray
        float64 map, same shape: ``log_b(sum_kl f_kl^alpha) / (1 - alpha)`` with
        ``f`` the window's summed GLCM normalised to probabilities.
    """
    levels = check_int("levels", levels, 2)
    lv = _check_levels_image(levels_img, levels)
    s = check_int("s", s, 1)
    alpha = _check_alpha(alpha)
    log_base = _check_log_base(log_base)
    check_choice("pad_mode", pad_mode, PAD_MODES)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise ValueError(f"'symmetric' must be True or False; got {symmetric!r}")
    offsets = np.asarray(glcm_offsets(distances, angles, diagonal), dtype=np.int64)
    size = 2 * s + 1
    if np.abs(offsets).max() > size - 1:
        raise ValueError(f"every GLCM offset must fit in the window (2s = {size - 1} pixels); "
                         f"got distances {list(distances)}")
    n_pairs = int(sum((size - abs(dr)) * (size - abs(dc)) for dr, dc in offsets))
    total = 2 * n_pairs if symmetric else n_pairs
    powtab = np.arange(total + 1, dtype=np.float64) ** alpha
    padded = np.ascontiguousarray(np.pad(lv.astype(np.int64), s, mode=pad_mode))
    out = np.empty(lv.shape, dtype=np.float64)
    kernel = _renyi_kernel()
    return kernel(padded, out, offsets, size, levels, bool(symmetric), powtab, math.log(total), alpha, log_base)


def renyi_entropy_reference(
    levels_img: Any,
    *,
    s: int = 5,
    alpha: float = 7.0,
    distances: Sequence[int] = (1, 2),
    angles: Sequence[int] = (0, 45, 90, 135),
    levels: int = 256,
    symmetric: bool = True,
    diagonal: str = "chessboard",
    log_base: float = 2.0,
    pad_mode: str = "constant",
) -> np.ndarray:
    """Per-window reference of :func:`renyi_entropy` with ``skimage.feature.graycomatrix``.

    For each pixel: ``graycomatrix`` of its window for every (distance, angle)
    (chessboard diagonals via the distances ``d * sqrt(2)``, which
    ``graycomatrix`` rounds to the offset ``(d, d)``), the matrices summed,
    normalised, ``log(sum p^alpha) / (1 - alpha)``. Slow; for tests and the bench.
    """
    from skimage.feature import graycomatrix

    levels = check_int("levels", levels, 2)
    lv = _check_levels_image(levels_img, levels)
    s = check_int("s", s, 1)
    alpha = _check_alpha(alpha)
    log_base = _check_log_base(log_base)
    check_choice("pad_mode", pad_mode, PAD_MODES)
    offsets = glcm_offsets(distances, angles, diagonal)  # validates
    dist = [int(d) for d in np.atleast_1d(distances)]
    ang = [int(a) for a in np.atleast_1d(angles)]
    calls: list[tuple[list[float], list[float]]] = []
    axial = [np.deg2rad(a) for a in ang if a in (0, 90)]
    diag = [np.deg2rad(a) for a in ang if a in (45, 135)]
    if axial:
        calls.append(([float(d) for d in dist], axial))
    if diag:
        scale = math.sqrt(2.0) if diagonal == "chessboard" else 1.0
        calls.append(([d * scale for d in dist], diag))
    size = 2 * s + 1
    if max(max(abs(dr), abs(dc)) for dr, dc in offsets) > size - 1:
        raise ValueError(f"every GLCM offset must fit in the window (2s = {size - 1} pixels)")
    dtype = np.uint8 if levels <= 256 else np.uint16
    padded = np.pad(lv, s, mode=pad_mode).astype(dtype)
    out = np.empty(lv.shape, dtype=np.float64)
    for i in range(lv.shape[0]):
        for j in range(lv.shape[1]):
            win = padded[i:i + size, j:j + size]
            glcm = sum(graycomatrix(win, d, a, levels=levels, symmetric=bool(symmetric)).sum(axis=(2, 3),
                                                                                                dtype=np.float64)
                       for d, a in calls)
            p = glcm / glcm.sum()
            out[i, j] = math.log(float(np.sum(p[p > 0] ** alpha))) / (1.0 - alpha) / math.log(log_base)
    return out


# --------------------------------------------------------------------------------------
# both maps: slice, volume, cache
# --------------------------------------------------------------------------------------
def _check_params(params: FusionMapParams | None) -> FusionMapParams:
    if params is None:
        return FusionMapParams()
    if not isinstance(params, FusionMapParams):
        raise TypeError(f"'params' must be a FusionMapParams; got {type(params).__name__}")
    return params


def fusion_maps(image: Any, params: FusionMapParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CR and RE maps of one 2D slice of normalised grey values.

    Parameters
    ----------
    image : array-like
        2D grey values (min-max normalised FLAIR: the range ``params.value_range``).
    params : FusionMapParams, optional
        Default: the seed's settings.

    Returns
    -------
    cr, re : numpy.ndarray
        float64 maps, same shape as ``image``. CR uses the grey values, RE their
        :func:`quantize` levels.
    """
    p = _check_params(params)
    img = _as_slice(image)
    cr = concentration_rate(img, s=p.cr_s, num=p.cr_num, m=p.cr_m, pad_mode=p.pad_mode)
    re = renyi_entropy(quantize(img, p.levels, p.value_range), s=p.re_s, alpha=p.alpha, distances=p.distances,
                       angles=p.angles, levels=p.levels, symmetric=p.symmetric, diagonal=p.diagonal,
                       log_base=p.log_base, pad_mode=p.pad_mode)
    return cr, re


def _foreground_box(img: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    nz = np.nonzero(img)
    if nz[0].size == 0:
        return None
    r0 = max(int(nz[0].min()) - margin, 0)
    r1 = min(int(nz[0].max()) + margin + 1, img.shape[0])
    c0 = max(int(nz[1].min()) - margin, 0)
    c1 = min(int(nz[1].max()) + margin + 1, img.shape[1])
    return slice(r0, r1), slice(c0, c1)


def _check_slices(slices: Sequence[int] | None, n: int) -> list[int]:
    if slices is None:
        return list(range(n))
    try:
        out = sorted({int(k) for k in slices})
    except (TypeError, ValueError):
        raise ValueError(f"'slices' must be slice indices (integers); got {slices!r}") from None
    bad = [k for k in out if not 0 <= k < n]
    if bad:
        raise ValueError(f"'slices' must be in [0, {n - 1}]; got {bad[:5]}")
    return out


def volume_fusion_maps(
    volume: Any,
    params: FusionMapParams | None = None,
    *,
    axis: int = 2,
    slices: Sequence[int] | None = None,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """CR and RE maps of the 2D slices of a 3D volume along ``axis``.

    Each slice is computed on the bounding box of its non-zero values plus a
    margin of ``s + 1`` pixels, which gives exactly the full-slice values
    (every window outside it holds only zeros: CR = 0, RE = 0); an all-zero
    slice gives zero maps.

    Parameters
    ----------
    volume : array-like
        3D normalised grey values (zero outside the brain after skull stripping).
    params : FusionMapParams, optional
    axis : int
        Slicing axis (2 = axial for RAS+ arrays).
    slices : sequence of int, optional
        Only these slice indices (the others are NaN); default every slice.
    dtype : numpy dtype
        Output float dtype (float32 keeps a 1 mm volume's maps at about 30 MB each).

    Returns
    -------
    cr, re : numpy.ndarray
        Same shape as ``volume``.
    """
    p = _check_params(params)
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"'volume' must be a 3D array; got shape {vol.shape}")
    if vol.size == 0:
        raise ValueError(f"'volume' is empty (shape {vol.shape})")
    if axis not in (0, 1, 2):
        raise ValueError(f"'axis' must be one of [0, 1, 2]; got {axis!r}")
    if np.issubdtype(vol.dtype, np.floating) and not np.all(np.isfinite(vol)):
        raise ValueError("'volume' contains NaN or infinite values")
    wanted = _check_slices(slices, vol.shape[axis])
    fill = 0.0 if slices is None else np.nan
    cr_vol = np.full(vol.shape, fill, dtype=dtype)
    re_vol = np.full(vol.shape, fill, dtype=dtype)
    for k in wanted:
        sl = np.take(vol, k, axis=axis)
        index: list[Any] = [slice(None)] * 3
        index[axis] = k
        cr_vol[tuple(index)] = 0.0
        re_vol[tuple(index)] = 0.0
        box = _foreground_box(sl, p.margin + 1)
        if box is None:
            continue
        cr, re = fusion_maps(sl[box], p)
        inplane = [a for a in range(3) if a != axis]
        index[inplane[0]], index[inplane[1]] = box
        cr_vol[tuple(index)] = cr
        re_vol[tuple(index)] = re
    return cr_vol, re_vol


def maps_cache_key(volume: Any, params: FusionMapParams | None = None, *, axis: int = 2,
                   slices: Sequence[int] | None = None) -> str:
    """sha256 (hex) of what a scan's maps depend on.

    The volume's content (bytes as float32, shape), the parameters, the axis,
    the slice indices, :data:`FUSION_MAPS_VERSION` and the numba version of
    the compiled kernel.
    """
    import numba

    p = _check_params(params)
    vol = np.ascontiguousarray(np.asarray(volume, dtype=np.float32))
    if vol.ndim != 3 or axis not in (0, 1, 2):
        raise ValueError(f"'volume' must be a 3D array and 'axis' one of [0, 1, 2]; got shape {vol.shape}, "
                         f"axis {axis!r}")
    wanted = None if slices is None else _check_slices(slices, vol.shape[axis])
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": FUSION_MAPS_VERSION, "numba": numba.__version__, "params": p.to_dict(),
                              "axis": int(axis), "shape": list(vol.shape), "slices": wanted},
                             sort_keys=True).encode())
    digest.update(vol.tobytes())
    return digest.hexdigest()


def cached_volume_maps(
    volume: Any,
    params: FusionMapParams | None = None,
    *,
    axis: int = 2,
    slices: Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    label: str = "scan",
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`volume_fusion_maps` through a per-scan cache.

    Parameters
    ----------
    volume : array-like
        3D normalised grey values.
    params : FusionMapParams, optional
    axis : int
    slices : sequence of int, optional
        Only these slices (part of the key); default every slice.
    cache_dir : str or path-like, optional
        Cache folder; None computes without caching. Entries are
        ``<cache_dir>/<label>-<key24>.npz`` (float32 ``cr`` and ``re``), written
        atomically; concurrent callers with the same key compute once (file lock).
    label : str
        Readable prefix of the file name (e.g. the scan id); not part of the key.

    Returns
    -------
    cr, re : numpy.ndarray
        float32, same shape as ``volume``.
    """
    p = _check_params(params)
    if cache_dir is None:
        return volume_fusion_maps(volume, p, axis=axis, slices=slices)
    key = maps_cache_key(volume, p, axis=axis, slices=slices)
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(label)) or "scan"
    path = Path(cache_dir).expanduser() / f"{safe}-{key[:24]}.npz"
    with file_lock(Path(cache_dir).expanduser() / ".locks" / f"{key[:24]}.lock"):
        hit = _read_maps(path, key)
        if hit is not None:
            logger.debug("fusion maps of %s: cached (%s)", label, path.name)
            return hit
        cr, re = volume_fusion_maps(volume, p, axis=axis, slices=slices)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, cr=cr, re=re, key=np.array(key))
        logger.debug("fusion maps of %s: computed (%s)", label, path.name)
        return cr, re


def _read_maps(path: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as data:
            if str(data["key"]) != key:
                return None
            return data["cr"], data["re"]
    except (OSError, KeyError, ValueError):
        return None
