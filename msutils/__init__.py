"""msutils: the thin library behind the MS study book notebooks.

Each submodule covers one concern (cohort manifests, synthetic data, splits,
radiomics, runner, ...). Import the submodule you need, e.g.
``from msutils import cohort``; nothing heavy is imported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
