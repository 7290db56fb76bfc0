"""The synthetic multi-center MS cohort generator (MNI152-based, known ground truth).

``from msutils import synth`` gives the generator's public API
(:func:`generate`, :func:`default_cohort`, :func:`get_params`, presets, ...);
:mod:`msutils.synth.anatomy` builds the template atlas it draws from.
"""

from msutils.synth.generator import (
    EDSS_DRIVERS,
    GT_COLUMNS,
    PRESETS,
    REQUIRED_COLUMNS,
    CenterEffects,
    SynthParams,
    cell_counts,
    default_cohort,
    edss_from_latent,
    edss_reference,
    generate,
    get_params,
    params_hash,
    simulate_clinical,
)

__all__ = [
    "CenterEffects",
    "SynthParams",
    "PRESETS",
    "EDSS_DRIVERS",
    "REQUIRED_COLUMNS",
    "GT_COLUMNS",
    "get_params",
    "params_hash",
    "cell_counts",
    "simulate_clinical",
    "edss_reference",
    "edss_from_latent",
    "generate",
    "default_cohort",
]
