"""The synthetic multi-center MS cohort generator (MNI152-based, known ground truth).

``from msutils import synth`` gives the generator's public API
(:func:`generate`, :func:`default_cohort`, :func:`get_params`, presets, ...).
The model is split by concern into :mod:`~msutils.synth.params` (parameters,
presets), :mod:`~msutils.synth.anatomy` (template atlas),
:mod:`~msutils.synth.clinical` (clinical / EDSS model),
:mod:`~msutils.synth.lesions` and :mod:`~msutils.synth.lookalikes` (MS lesions,
FLAIR look-alikes), :mod:`~msutils.synth.tissue` (subject anatomy and texture),
:mod:`~msutils.synth.centers` (scanner, protocol, rater per center),
:mod:`~msutils.synth.raters` (rater-like masks), :mod:`~msutils.synth.render`
(one subject's images) and :mod:`~msutils.synth.generator` (cohort, manifest,
calibration record).
"""

from msutils.synth.centers import CenterEffects, RaterEffects
from msutils.synth.clinical import edss_from_latent, edss_reference, simulate_clinical
from msutils.synth.generator import (
    GT_COLUMNS,
    REQUIRED_COLUMNS,
    TRUTH_MASKS,
    calibration,
    default_cohort,
    design_subjects,
    generate,
)
from msutils.synth.params import (
    EDSS_DRIVERS,
    GENERATOR_VERSION,
    LESION_KINDS,
    LOOKALIKE_KINDS,
    PRESETS,
    SynthParams,
    cell_counts,
    get_params,
    params_hash,
)

__all__ = [
    "CenterEffects",
    "RaterEffects",
    "SynthParams",
    "PRESETS",
    "GENERATOR_VERSION",
    "EDSS_DRIVERS",
    "LESION_KINDS",
    "LOOKALIKE_KINDS",
    "REQUIRED_COLUMNS",
    "GT_COLUMNS",
    "TRUTH_MASKS",
    "get_params",
    "params_hash",
    "cell_counts",
    "simulate_clinical",
    "edss_reference",
    "edss_from_latent",
    "design_subjects",
    "calibration",
    "generate",
    "default_cohort",
]
