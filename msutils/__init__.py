"""msutils: the thin library behind the MS study book notebooks.

Subpackages follow the data flow, lower layers first; a module imports only
from its own layer or below (``tests/test_layout.py`` enforces it)::

    core/          atomic I/O, paths, environment, parameter checks (validation),
                   the one process pool (parallel), progress lines and the log format,
                   serialisation, the library fingerprint cache keys use, mask overlap (the one Dice)
    stats          statistics shared by every study (Table 1 tests, ANOVA, CIs)
    data/          cohort manifests and their validation, the MSLUB sample,
                   splits, the leakage audit (FitLog)
    synth/         the synthetic multi-center MS cohort generator
    features/      radiomics engine, feature selection, reliability (ICC), volumes
    segmentation/  nnU-Net bridge, FLAIR slices, overlap metrics, lesion instances,
                   slice-level classification
    models/        regression models (and classifiers)
    studies/       one module per reproduced paper (edss_regression, flair_nnunet, ...) and
                   the papers' published numbers as data (paper_<seed>.yaml, paper_numbers.load)
    pipeline/      notebook kernel helpers, fold cache, profiles, fan-out runner,
                   book build, report helpers
    cli            the ``msutils`` command

Import the module you need, e.g. ``from msutils.data.cohort import load_cohort``;
nothing heavy is imported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
