"""Reading source notebooks: JSON, cell sources and tags, the ``parameters`` cell.

One place for what the runner, the fold cache and the notebook kernel need to know
about a notebook file (``.ipynb``): which cell holds the parameters and their
literal defaults, which cell ends a fold run (``fold-end``), and where the source
notebook of a running kernel lives.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "FOLD_END_TAG",
    "PARAMETER_TAGS",
    "load_notebook",
    "cell_source",
    "cell_tags",
    "parameters_cell_index",
    "read_parameters",
    "source_notebook",
]

#: Tag of the last code cell a fold run needs; the runner stops fold runs after it.
FOLD_END_TAG = "fold-end"
#: Tags of parameter cells (papermill adds ``injected-parameters``).
PARAMETER_TAGS: tuple[str, ...] = ("parameters", "injected-parameters")


def load_notebook(notebook: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    """The parsed JSON of a notebook file (a mapping is returned as it is).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not valid JSON.
    """
    if isinstance(notebook, Mapping):
        return notebook
    path = Path(notebook)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"notebook {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"notebook {path} is not valid JSON: {exc}") from None


def cell_source(cell: Mapping[str, Any]) -> str:
    """A cell's source as one string (nbformat stores a string or a list of lines)."""
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def cell_tags(cell: Mapping[str, Any]) -> list[str]:
    """A cell's tags (empty list if none)."""
    return list(cell.get("metadata", {}).get("tags", []) or [])


def parameters_cell_index(cells: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Index of the one cell tagged ``parameters``; ValueError naming ``path`` otherwise."""
    idx = [i for i, c in enumerate(cells) if "parameters" in cell_tags(c)]
    if not idx:
        raise ValueError(f"notebook {path} has no cell tagged 'parameters'")
    if len(idx) > 1:
        raise ValueError(f"notebook {path} has {len(idx)} cells tagged 'parameters' (cells {idx}); tag exactly one")
    return idx[0]


def source_notebook(notebook: str, notebook_path: str | os.PathLike | None = None) -> Path:
    """Locate the source ``.ipynb`` of ``notebook``.

    Parameters
    ----------
    notebook : str
        Notebook name without extension.
    notebook_path : str or path-like, optional
        Explicit path; wins when given.

    Returns
    -------
    Path
        ``notebook_path``; else ``./<notebook>.ipynb`` if it exists (papermill runs the
        kernel in the notebooks folder, and so does JupyterLab); else
        ``msutils.core.paths.notebooks_dir() / "<notebook>.ipynb"``.
    """
    if notebook_path is not None:
        return Path(notebook_path)
    here = Path.cwd() / f"{notebook}.ipynb"
    if here.is_file():
        return here
    from msutils.core.paths import notebooks_dir

    return notebooks_dir() / f"{notebook}.ipynb"


def read_parameters(notebook_path: str | os.PathLike) -> dict[str, Any]:
    """Names and default values of a notebook's ``parameters`` cell.

    Parameters
    ----------
    notebook_path : str or path-like
        The ``.ipynb`` file.

    Returns
    -------
    dict
        ``{name: default}`` in cell order, for every top-level ``name = literal``
        (annotated assignments too). IPython magics and other statements are ignored.

    Raises
    ------
    ValueError
        No or several ``parameters`` cells, a syntax error, or a non-literal default.
    """
    path = Path(notebook_path)
    cells = load_notebook(path).get("cells", [])
    idx = parameters_cell_index(cells, path)
    lines = cell_source(cells[idx]).splitlines()
    src = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
    try:
        tree = ast.parse(src)
    except SyntaxError as exc:
        raise ValueError(f"parameters cell (cell {idx}) of {path} has a syntax error: {exc}") from None
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError):
            raise ValueError(
                f"parameter {name!r} in the parameters cell of {path} must be a literal "
                f"(number, string, None, list, dict); got {ast.get_source_segment(src, value)!r}"
            ) from None
    return out

