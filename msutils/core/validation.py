"""Up-front parameter checks shared by every layer, with messages that name the parameter.

Each check raises ``ValueError`` (or ``TypeError`` for a wrong kind of object)
with a message of the form ``"'name' must be ...; got value"`` and returns the
validated value, so callers can write ``n = check_int("n_jobs", n_jobs, 1)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "check_choice",
    "check_int",
    "check_fraction",
    "check_frame",
    "check_target",
    "as_mask",
    "ratio",
]


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``; ValueError listing the choices otherwise."""
    if value not in allowed:
        raise ValueError(f"'{name}' must be one of {list(allowed)}; got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    """``value`` as ``int`` if it is an integer (not a bool) ``>= minimum``.

    With ``optional=True`` None is accepted (and returned).
    """
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}{' or None' if optional else ''}; got {value!r}")
    return int(value)


def check_fraction(name: str, value: Any) -> float:
    """``value`` as ``float`` if it lies in [0, 1] (a probability or threshold)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{name}' must be in [0, 1]; got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"'{name}' must be in [0, 1]; got {value!r}")
    return v


def check_frame(X: Any, name: str = "X", *, min_rows: int = 1) -> pd.DataFrame:
    """``X`` if it is a numeric, finite DataFrame with unique columns and enough rows.

    The error names the offending columns and rows (the first five of each).
    """
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"'{name}' must be a pandas DataFrame; got {type(X).__name__}")
    if X.columns.has_duplicates:
        dup = X.columns[X.columns.duplicated()].unique().tolist()
        raise ValueError(f"'{name}' has duplicated columns: {dup[:5]}")
    if len(X) < min_rows:
        raise ValueError(f"'{name}' needs at least {min_rows} rows; got {len(X)}")
    non_numeric = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    if non_numeric:
        raise ValueError(
            f"'{name}' has non-numeric columns {non_numeric[:5]}"
            f"{' ...' if len(non_numeric) > 5 else ''}; encode them first"
        )
    values = X.to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        cols = X.columns[bad.any(axis=0)].tolist()
        rows = X.index[bad.any(axis=1)].tolist()
        raise ValueError(
            f"'{name}' has missing or infinite values in {len(cols)} column(s) "
            f"{cols[:5]}{' ...' if len(cols) > 5 else ''} "
            f"(rows {rows[:5]}{' ...' if len(rows) > 5 else ''}); impute or drop them first"
        )
    return X


def check_target(y: Any, X: pd.DataFrame, name: str = "y") -> np.ndarray:
    """``y`` as a finite float vector aligned with the rows of ``X``.

    A Series with the same index values in another order is re-aligned; any other
    mismatch is an error.
    """
    if y is None:
        raise ValueError(f"'{name}' is required (one target value per row of 'X')")
    if isinstance(y, pd.Series):
        if not y.index.equals(X.index):
            if set(y.index) == set(X.index) and not y.index.has_duplicates:
                y = y.reindex(X.index)
            else:
                raise ValueError(f"'{name}' index does not match the rows of 'X'")
    arr = np.asarray(y, dtype=float).reshape(-1)
    if arr.shape[0] != len(X):
        raise ValueError(f"'{name}' has {arr.shape[0]} values but 'X' has {len(X)} rows")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"'{name}' has missing values at rows {X.index[bad].tolist()[:5]}")
    return arr


def as_mask(name: str, arr: Any, ndims: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """A boolean view of a binary mask (bool, integer, or float 0/1), validated.

    Parameters
    ----------
    name : str
        Parameter name for the error message.
    arr : array-like
        The mask.
    ndims : tuple of int
        Accepted numbers of dimensions.
    """
    a = np.asarray(arr)
    if a.ndim not in ndims:
        raise ValueError(f"'{name}' must be a {' or '.join(f'{d}D' for d in ndims)} array; got shape {a.shape}")
    if a.dtype == bool:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"'{name}' must be a bool, integer or float mask; got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isin(a, (0.0, 1.0))
        if bad.any():
            raise ValueError(
                f"'{name}' must be a binary mask (values 0/1); got values such as {a[bad].flat[0].item()!r}"
            )
    return a != 0


def ratio(num: float, den: float, empty: float) -> float:
    """``num / den``, or ``empty`` when the denominator is zero (e.g. Dice of two empty masks)."""
    return float(num) / float(den) if den else float(empty)
