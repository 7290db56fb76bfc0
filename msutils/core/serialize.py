"""Plain-Python copies of nested numpy / pandas values, for JSON and YAML writers."""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

__all__ = ["to_builtin", "to_jsonable", "round_floats"]


def _convert(obj: Any, *, json_safe: bool) -> Any:
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, str) else _convert(k, json_safe=json_safe)): _convert(v, json_safe=json_safe)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_convert(v, json_safe=json_safe) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, pandas Series / Index
        return _convert(obj.tolist(), json_safe=json_safe)
    if isinstance(obj, float):
        return obj if (math.isfinite(obj) or not json_safe) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return _convert(obj.item(), json_safe=json_safe)
    return str(obj) if json_safe else obj


def to_builtin(obj: Any) -> Any:
    """Copy of ``obj`` with numpy scalars/arrays, tuples and sets turned into Python builtins.

    Mappings keep their keys (numpy keys become builtins), sequences become lists,
    paths become strings; NaN and infinities stay floats. What ``yaml.safe_dump``
    needs.
    """
    return _convert(obj, json_safe=False)


def to_jsonable(obj: Any) -> Any:
    """Like :func:`to_builtin`, and strictly JSON: NaN / inf become ``None``, unknown objects ``str``."""
    return _convert(obj, json_safe=True)


def round_floats(obj: Any, significant: int = 12) -> Any:
    """Copy of nested builtins with every float rounded to ``significant`` significant digits.

    Derived values written to sidecars (means, SDs, correlations) can differ in the
    last bits between CPUs (SIMD summation order); rounding them to 12 significant
    digits makes the files identical across machines in all but rare boundary cases.
    """
    if isinstance(obj, Mapping):
        return {k: round_floats(v, significant) for k, v in obj.items()}
    if isinstance(obj, list):
        return [round_floats(v, significant) for v in obj]
    if isinstance(obj, float) and math.isfinite(obj) and obj != 0.0:
        return float(f"{obj:.{significant}g}")
    return obj
