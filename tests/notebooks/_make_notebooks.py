"""Regenerate the tiny runner test notebooks (python tests/notebooks/_make_notebooks.py)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def tagged(source: str, *tags: str) -> nbformat.NotebookNode:
    cell = new_code_cell(source)
    cell.metadata["tags"] = list(tags)
    return cell


def t_folds() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell("# t_folds\n\nTiny fold notebook for tests of `msutils.pipeline`."),
        tagged(
            'profile = "smoke"\n'
            "fold = None\n"
            "manifest = None\n"
            "seed = 0\n"
            "out_dir = None\n"
            'preset = "tiny"\n'
            "scale = 1\n"
            "fail_fold = None\n"
            "work_dir = None",
            "parameters",
        ),
        new_code_cell(
            "import logging\n"
            "import os\n"
            "import time\n"
            "from pathlib import Path\n"
            "\n"
            "from msutils.core.progress import Progress\n"
            "from msutils.pipeline import kernel\n"
            "from msutils.pipeline.profiles import profile_folds\n"
            "\n"
            'NOTEBOOK = "t_folds"\n'
            "kernel.configure_logging()\n"
            "params = kernel.notebook_params(globals(), NOTEBOOK)\n"
            "cache = kernel.fold_cache(NOTEBOOK, params)\n"
            "folds = profile_folds(NOTEBOOK, profile)"
        ),
        new_code_cell(
            "def compute_fold(f):\n"
            "    if work_dir is not None:  # test hooks: count runs, hold while a file exists\n"
            "        work = Path(work_dir)\n"
            '        with open(work / f"{f}.count", "a") as fh:\n'
            '            fh.write(f"{os.getpid()}\\n")\n'
            "        deadline = time.time() + 120\n"
            '        while (work / f"hold-{f}").exists() and time.time() < deadline:\n'
            "            time.sleep(0.1)\n"
            "    if f == fail_fold:\n"
            '        raise ValueError(f"boom in {f}")\n'
            '    logging.getLogger("msutils.t_folds").warning("computing fold %s", f)\n'
            '    with Progress(f"t_folds step {f}", total=2, unit="parts") as bar:\n'
            "        bar.update(2)\n"
            '    return {"fold": f, "value": (folds.index(f) + 1) * scale + seed}'
        ),
        tagged("if fold is not None:\n    result = cache.get_or_compute(fold, compute_fold)", "fold-end"),
        new_markdown_cell("## Aggregate"),
        new_code_cell(
            "results = cache.get_all(folds, compute_fold)\n"
            'total = sum(r["value"] for r in results.values())\n'
            'kernel.write_summary(out_dir, NOTEBOOK, {"total": total, "folds": list(results)})\n'
            "total"
        ),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    nbformat.write(t_folds(), HERE / "t_folds.ipynb")
