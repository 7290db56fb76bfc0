"""Run profiles: which papermill parameters and folds each notebook gets.

A profiles file is YAML shaped ``{notebook: {profile: {parameters: {...}, folds: [...]}}}``.
The packaged ``msutils/pipeline/profiles.yaml`` defines ``smoke``, ``quick`` and ``paper`` for
every notebook; ``$MSUTILS_PROFILES`` (or an explicit ``path``) points at another file.
The file is validated as a whole on load and every problem is reported at once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "RESERVED_PARAMETERS",
    "Profile",
    "ProfileError",
    "profiles_path",
    "load_profiles",
    "get_profile",
    "notebook_names",
    "profile_folds",
]

#: Parameters the runner sets itself; a profile may not define them.
RESERVED_PARAMETERS: tuple[str, ...] = ("profile", "fold", "out_dir")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROFILE_KEYS = ("folds", "parameters")


class ProfileError(ValueError):
    """A profiles file is malformed; ``problems`` lists every problem found."""

    def __init__(self, path: str | os.PathLike, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid profiles file {self.path}:\n{lines}")


@dataclass(frozen=True)
class Profile:
    """The papermill parameters and folds of one notebook under one profile.

    Attributes
    ----------
    notebook : str
        Notebook name without extension, e.g. ``"02_edss_regression"``.
    name : str
        Profile name, e.g. ``"quick"``.
    parameters : dict
        Notebook parameters set by the profile (never ``profile``/``fold``/``out_dir``).
    folds : tuple of str
        Fold names the runner fans out over; empty for a notebook without folds.
    """

    notebook: str
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    folds: tuple[str, ...] = ()


def profiles_path() -> Path:
    """The profiles file in use: ``$MSUTILS_PROFILES`` or the packaged ``profiles.yaml``."""
    env = os.environ.get("MSUTILS_PROFILES")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent / "profiles.yaml"


def _check_value(value: Any) -> bool:
    """True if ``value`` is a plain YAML/JSON value papermill can inject."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_check_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _check_value(v) for k, v in value.items())
    return False


def _validate(raw: Any) -> tuple[dict[str, dict[str, Profile]], list[str]]:
    """Turn the parsed YAML into profiles, collecting every problem."""
    problems: list[str] = []
    out: dict[str, dict[str, Profile]] = {}
    if not isinstance(raw, dict) or not raw:
        return out, ["top level must be a non-empty mapping {notebook: {profile: {...}}}"]
    for nb, profiles in raw.items():
        if not isinstance(nb, str) or not _NAME_RE.match(nb):
            problems.append(f"notebook name {nb!r} must be a file stem made of letters, digits, '_', '-', '.'")
            continue
        if not isinstance(profiles, dict) or not profiles:
            problems.append(f"{nb}: must be a non-empty mapping {{profile: {{parameters, folds}}}}")
            continue
        out[nb] = {}
        for pname, body in profiles.items():
            where = f"{nb}.{pname}"
            if not isinstance(pname, str) or not _NAME_RE.match(pname):
                problems.append(f"{nb}: profile name {pname!r} must be made of letters, digits, '_', '-', '.'")
                continue
            if not isinstance(body, dict):
                problems.append(f"{where}: must be a mapping with keys {list(_PROFILE_KEYS)}")
                continue
            unknown = sorted(set(body) - set(_PROFILE_KEYS))
            if unknown:
                problems.append(f"{where}: unknown keys {unknown}; allowed keys are {list(_PROFILE_KEYS)}")
            params = body.get("parameters") or {}
            folds = body.get("folds") if body.get("folds") is not None else []
            ok = True
            if not isinstance(params, dict):
                problems.append(f"{where}.parameters: must be a mapping; got {type(params).__name__}")
                ok = False
            else:
                for key, value in params.items():
                    if not isinstance(key, str) or not _IDENT_RE.match(key):
                        problems.append(f"{where}.parameters: {key!r} is not a valid Python identifier")
                        ok = False
                    elif key in RESERVED_PARAMETERS:
                        problems.append(
                            f"{where}.parameters: {key!r} is set by the runner and may not appear in a "
                            f"profile (reserved: {list(RESERVED_PARAMETERS)})"
                        )
                        ok = False
                    elif not _check_value(value):
                        problems.append(
                            f"{where}.parameters.{key}: must be a plain value (null, bool, number, "
                            f"string, list, mapping); got {type(value).__name__}"
                        )
                        ok = False
            if not isinstance(folds, list):
                problems.append(f"{where}.folds: must be a list of fold names; got {type(folds).__name__}")
                ok = False
            else:
                for f in folds:
                    if not isinstance(f, str) or not _NAME_RE.match(f):
                        problems.append(
                            f"{where}.folds: fold {f!r} must be a string of letters, digits, '_', '-', '.'"
                        )
                        ok = False
                dupes = sorted({f for f in folds if isinstance(f, str) and folds.count(f) > 1})
                if dupes:
                    problems.append(f"{where}.folds: duplicate folds {dupes}")
                    ok = False
            if ok:
                out[nb][pname] = Profile(notebook=nb, name=pname, parameters=dict(params), folds=tuple(folds))
    return out, problems


def load_profiles(path: str | os.PathLike | None = None) -> dict[str, dict[str, Profile]]:
    """Load and validate a profiles file.

    Parameters
    ----------
    path : str or path-like, optional
        Profiles YAML; default :func:`profiles_path`.

    Returns
    -------
    dict
        ``{notebook: {profile: Profile}}`` in file order (the order the book runs them).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ProfileError
        Listing every problem of a malformed file.
    """
    path = Path(path).expanduser() if path is not None else profiles_path()
    if not path.is_file():
        raise FileNotFoundError(f"profiles file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(path, [f"not valid YAML: {exc}"]) from None
    profiles, problems = _validate(raw)
    if problems:
        raise ProfileError(path, problems)
    return profiles


def notebook_names(path: str | os.PathLike | None = None) -> list[str]:
    """Notebook names in profiles-file order (the order ``build_book`` runs them)."""
    return list(load_profiles(path))


def get_profile(notebook: str, profile: str, *, path: str | os.PathLike | None = None) -> Profile:
    """The :class:`Profile` of ``notebook`` named ``profile``.

    Raises
    ------
    ValueError
        If the notebook or the profile is not defined, naming the valid choices.
    """
    all_profiles = load_profiles(path)
    if notebook not in all_profiles:
        src = Path(path) if path is not None else profiles_path()
        raise ValueError(
            f"notebook {notebook!r} is not defined in {src}; choose one of {sorted(all_profiles)}"
        )
    by_name: Mapping[str, Profile] = all_profiles[notebook]
    if profile not in by_name:
        raise ValueError(
            f"profile {profile!r} is not defined for notebook {notebook!r}; choose one of {sorted(by_name)}"
        )
    return by_name[profile]


def profile_folds(notebook: str, profile: str, *, path: str | os.PathLike | None = None) -> list[str]:
    """Fold names of ``notebook`` under ``profile`` (what an aggregate run loads)."""
    return list(get_profile(notebook, profile, path=path).folds)
