"""Radiomic features of the synthetic cohort survive notebook 02's ICC re-processing (small sample).

Notebook 02 re-processes training subjects (every ROI boundary moved by about
1 mm, outwards in some patches and inwards in others; fresh noise:
:func:`msutils.studies.edss_regression.retest_radiomics`) and keeps features with
ICC(A,1) >= 0.90. The generator's between-subject variability (tissue contrast,
regional intensity, fine and deep-GM texture, noise level) must let the deep-GM
features through. With the generator of version 2 (one template, tiny
between-subject texture) 5 % of the first-order and none of the texture features
of the deep-GM nuclei survived at 2 mm; the data page lists the retention per
feature class at 1 and 2 mm (``bench/synth_icc_retention.py``).
"""

from __future__ import annotations

import pandas as pd
import pytest

from msutils import synth
from msutils.data.cohort import load_cohort
from msutils.features.reliability import icc_stability
from msutils.studies import edss_regression as es

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("synth")]


def _icc(cohort, boundary):
    config = es.StudyConfig(n_gm_parcels=2, icc_subjects=12, disconnection=False, n_jobs=2, seed=1,
                            icc_boundary=boundary)
    data = es.load_study_data(cohort, config, progress=False)
    scans = es.icc_subset(cohort, data, data.subjects.index, config)
    retest = es.retest_radiomics(cohort, data, scans, config, progress=False)
    subs = list(scans)
    return data, subs, icc_stability(data.radiomics.loc[subs], retest.loc[subs], threshold=0.9).icc


def test_deep_gm_features_survive_the_icc_filter(tmp_path):
    params = synth.PRESETS["edss-quick"].replace(
        name="icc-test", size_factor=1.0, min_per_cell=0, counts={"site1": {"MS": 10}, "site2": {"MS": 2}},
        second_visit_fraction=0.0)
    cohort = load_cohort(synth.generate(params, tmp_path / "cohort", seed=1, n_jobs=2, progress=False))
    data, subs, icc = _icc(cohort, "patch")
    parts = icc.index.to_series().str.split("__", expand=True)
    deep = parts[0].isin(data.deep_gm_rois)
    kept = icc >= 0.9
    first = parts[1] == "firstorder"
    # 2 mm, 12 subjects (measured: 0.71 and 0.47; with the half-size nuclei of earlier versions 0.46 and 0.26,
    # and with their whole-ROI step 0.34 and 0.14)
    assert kept[deep & first].mean() >= 0.60, kept[deep & first].mean()
    assert kept[deep & ~first].mean() >= 0.38, kept[deep & ~first].mean()
    # the location features (mean, median, RMS) are stable in every ROI
    loc = parts[2].isin(["Mean", "Median", "RootMeanSquared"])
    assert icc[loc].median() >= 0.9
    # the deep-GM features that track the true texture amplitude (the EDSS driver) are among the stable ones
    amp = data.subjects.loc[subs, "gt_texture_amplitude"].astype(float)
    rho = data.radiomics.loc[subs, icc.index[deep]].apply(lambda c: c.corr(amp, method="spearman"))
    effect = pd.Series(icc[deep])[rho.abs() >= 0.5]
    # (measured: 623 features, median ICC 0.91)
    assert len(effect) >= 20 and effect.median() >= 0.85, (len(effect), effect.median())
    # energy follows the ROI volume: a re-segmentation that moves boundaries both ways keeps it (measured
    # median 0.89 in deep GM), moving the whole boundary one way (a 20-45 % volume change) does not (0.35)
    energy = deep & parts[2].isin(["Energy", "TotalEnergy"])
    assert icc[energy].median() >= 0.8, icc[energy].median()
    _, _, whole = _icc(cohort, "random")
    assert whole[energy].median() < 0.6, whole[energy].median()
