"""Faster, equivalent versions of pyradiomics' slowest texture computations.

Used only by :mod:`msutils.features.radiomics`' extraction engine; pyradiomics itself
is left untouched (no global registry is patched), so a plain
``RadiomicsFeatureExtractor`` in the same process still runs the original code.

What changes (pyradiomics 3.x), with identical mathematics:

- Binning: every feature class bins the same (image, mask) with the same settings
  in its constructor; within one ``computeFeatures`` call the first class bins and
  the others reuse a copy of its result (pyradiomics' ``getBinEdges`` alone scans
  the ROI's voxels with Python's ``min`` / ``max``).

GLCM (``glcm.py``):

- ``_calculateCoefficients``: the sum and difference distributions ``p_{x+y}`` and
  ``p_{x-y}`` are grouped sums over the GLCM computed with one sort and
  ``np.add.reduceat`` instead of one boolean mask per value of ``k`` (2 Ng - 1 + Ng
  full passes over the matrix).
- Cluster prominence, shade and tendency: ``sum_ij (i + j - mu_x - mu_y)^n p(i, j)``
  is ``sum_k (k - mu_x - mu_y)^n p_{x+y}(k)``, a sum over 2 Ng - 1 values instead of
  Ng^2 per angle.
- MCC: ``Q = (P / (p_x p_y + eps)) P^T`` as one matrix product per angle instead of
  Ng broadcast passes over an (Ng, Ng) array; the eigenvalues are computed as before.

Results agree with pyradiomics to floating-point summation order
(``tests/test_texture_fast.py``; ``bench/radiomics_bench.py`` compares all features).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

__all__ = ["fast_extractor", "fast_feature_classes", "grouped_sum"]


def grouped_sum(values: np.ndarray, keys: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum ``values`` over axis 1 within groups of equal ``keys``.

    Parameters
    ----------
    values : ndarray, shape (a, n, b)
    keys : ndarray of int, shape (n,)
        Group of each position of axis 1, in ``0 .. n_groups - 1``.
    n_groups : int

    Returns
    -------
    ndarray, shape (a, n_groups, b)
        Groups without any position are 0.
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    present, starts = np.unique(sorted_keys, return_index=True)
    out = np.zeros((values.shape[0], n_groups, values.shape[2]), dtype=values.dtype)
    if len(order):
        out[:, present, :] = np.add.reduceat(values[:, order, :], starts, axis=1)
    return out


_CLASSES: dict[str, Any] = {}
_EXTRACTOR_CLASS: Any = None
_BINNED: list[dict[str, Any]] = []  # the binning shared within the current computeFeatures call


class _SharedBinning:
    """Mixin for pyradiomics feature classes: reuse the binning of the current call.

    Outside :func:`_sharing_binning` it bins as pyradiomics does.
    """

    coefficients: dict[str, Any]

    def _applyBinning(self, matrix: np.ndarray) -> np.ndarray:  # noqa: N802 - pyradiomics API
        if not _BINNED:
            return super()._applyBinning(matrix)  # type: ignore[misc]
        shared = _BINNED[-1]
        if "matrix" not in shared:
            shared["matrix"] = super()._applyBinning(matrix)  # type: ignore[misc]
            shared["grayLevels"] = self.coefficients["grayLevels"]
            shared["Ng"] = self.coefficients["Ng"]
        self.coefficients["grayLevels"] = shared["grayLevels"].copy()
        self.coefficients["Ng"] = shared["Ng"]
        return shared["matrix"].copy()


@contextlib.contextmanager
def _sharing_binning() -> Iterator[None]:
    """Feature classes created inside share one binning (same image, mask and settings)."""
    _BINNED.append({})
    try:
        yield
    finally:
        _BINNED.pop()


def fast_feature_classes() -> dict[str, Any]:
    """pyradiomics' feature classes, with ``glcm`` replaced by the faster subclass."""
    if not _CLASSES:
        from radiomics import getFeatureClasses
        from radiomics.glcm import RadiomicsGLCM

        class FastRadiomicsGLCM(RadiomicsGLCM):
            """``RadiomicsGLCM`` with vectorised coefficients, cluster features and MCC."""

            __module__ = RadiomicsGLCM.__module__  # pyradiomics' logger name, as the original

            def _calculateCoefficients(self) -> None:  # noqa: N802 - pyradiomics API
                # Mirrors RadiomicsGLCM._calculateCoefficients of pyradiomics 3.x.
                ng = self.coefficients["Ng"]
                eps = np.spacing(1)
                levels = self.coefficients["grayLevels"].astype("float")
                i, j = np.meshgrid(levels, levels, indexing="ij", sparse=True)
                k_sum = np.arange(2, (ng * 2) + 1, dtype="float")
                k_diff = np.arange(0, ng, dtype="float")
                p = self.P_glcm
                px = p.sum(2, keepdims=True)
                py = p.sum(1, keepdims=True)
                ux = np.sum(i[None, :, :, None] * p, (1, 2), keepdims=True)
                uy = np.sum(j[None, :, :, None] * p, (1, 2), keepdims=True)
                flat = p.reshape(p.shape[0], -1, p.shape[3])
                sums = (i + j).ravel().astype(int) - 2
                diffs = np.abs(i - j).ravel().astype(int)
                self.coefficients.update({
                    "eps": eps, "i": i, "j": j, "kValuesSum": k_sum, "kValuesDiff": k_diff,
                    "px": px, "py": py, "ux": ux, "uy": uy,
                    "pxAddy": grouped_sum(flat, sums, len(k_sum)),
                    "pxSuby": grouped_sum(flat, diffs, len(k_diff)),
                    "HXY": (-1) * np.sum((p * np.log2(p + eps)), (1, 2)),
                })

            def _cluster(self, power: int) -> Any:
                centre = (self.coefficients["ux"] + self.coefficients["uy"])[:, 0, :, :]  # (Nv, 1, angles)
                k = self.coefficients["kValuesSum"][None, :, None]
                return np.nanmean(np.sum(self.coefficients["pxAddy"] * (k - centre) ** power, 1), 1)

            def getClusterProminenceFeatureValue(self) -> Any:  # noqa: N802 - pyradiomics API
                return self._cluster(4)

            def getClusterShadeFeatureValue(self) -> Any:  # noqa: N802 - pyradiomics API
                return self._cluster(3)

            def getClusterTendencyFeatureValue(self) -> Any:  # noqa: N802 - pyradiomics API
                return self._cluster(2)

            def getMCCFeatureValue(self) -> Any:  # noqa: N802 - pyradiomics API
                px = self.coefficients["px"]  # (Nv, Ng, 1, angles)
                py = self.coefficients["py"]  # (Nv, 1, Ng, angles)
                eps = self.coefficients["eps"]
                p = self.P_glcm.transpose((0, 3, 1, 2))  # (Nv, angles, i, k)
                weighted = p / (px.transpose((0, 3, 1, 2)) * py.transpose((0, 3, 1, 2)) + eps)
                q = weighted @ p.transpose((0, 1, 3, 2))  # Q(i, j) = sum_k p(i,k) p(j,k) / (px(i) py(k) + eps)
                eigen = np.linalg.eigvals(q)
                eigen.sort()
                if eigen.shape[2] < 2:
                    return 1  # flat region, as pyradiomics
                return np.nanmean(np.sqrt(eigen[:, :, -2]), 1).real

        originals = dict(getFeatureClasses(), glcm=FastRadiomicsGLCM)
        for name, cls in originals.items():
            _CLASSES[name] = cls if name.startswith("shape") else type(
                cls.__name__, (_SharedBinning, cls), {"__module__": cls.__module__, "__doc__": cls.__doc__})
    return _CLASSES


def fast_extractor() -> Any:
    """A ``RadiomicsFeatureExtractor`` whose ``computeFeatures`` uses :func:`fast_feature_classes`.

    Configure it as any extractor (``settings``, ``enabledImagetypes``,
    ``enabledFeatures``); shape features are still computed by ``execute``.
    """
    global _EXTRACTOR_CLASS
    if _EXTRACTOR_CLASS is not None:
        return _EXTRACTOR_CLASS()
    import collections

    from radiomics import featureextractor

    class FastFeatureExtractor(featureextractor.RadiomicsFeatureExtractor):
        """Mirrors ``RadiomicsFeatureExtractor.computeFeatures`` of pyradiomics 3.x."""

        def computeFeatures(self, image: Any, mask: Any, imageTypeName: str, **kwargs: Any) -> Any:  # noqa: N802
            classes = fast_feature_classes()
            out: collections.OrderedDict[str, Any] = collections.OrderedDict()
            with _sharing_binning():
                for name, features in self.enabledFeatures.items():
                    if name.startswith("shape") or name not in classes:
                        continue
                    fc = classes[name](image, mask, **kwargs)
                    for feature in features or ():
                        fc.enableFeatureByName(feature)
                    for feature, value in fc.execute().items():
                        out[f"{imageTypeName}_{name}_{feature}"] = value
            return out

    _EXTRACTOR_CLASS = FastFeatureExtractor
    return FastFeatureExtractor()
