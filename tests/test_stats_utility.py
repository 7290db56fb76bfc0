"""Youden threshold, clinical utility and Friedman + Wilcoxon-Holm (msutils.stats)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss

from msutils.stats import diagnostic_utility, friedman_posthoc, youden_threshold


def test_youden_threshold_hand_case():
    y = [0, 0, 0, 1, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.3, 0.9]
    thr, j = youden_threshold(y, s)
    # at 0.8: sens 2/3, spec 1 -> J 0.667; at 0.3: sens 1, spec 1/3 -> 0.333; at 0.35 sens 2/3 spec 2/3
    assert thr == pytest.approx(0.8)
    assert j == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="'y_true' needs both classes"):
        youden_threshold([1, 1], [0.2, 0.3])


def test_diagnostic_utility_numbers():
    # 20 MS, 30 HC; threshold 0.5: TP 16, FN 4, TN 27, FP 3
    y = np.r_[np.ones(20), np.zeros(30)].astype(int)
    s = np.r_[np.full(16, 0.9), np.full(4, 0.2), np.full(27, 0.1), np.full(3, 0.7)]
    u = diagnostic_utility(y, s, 0.5)
    assert (u["tp"], u["fn"], u["tn"], u["fp"]) == (16, 4, 27, 3)
    assert u["sensitivity"] == pytest.approx(0.8)
    assert u["specificity"] == pytest.approx(0.9)
    assert u["ppv"] == pytest.approx(16 / 19)
    assert u["npv"] == pytest.approx(27 / 31)
    ci = ss.binomtest(16, 20).proportion_ci(method="exact")
    assert (u["sensitivity_ci_low"], u["sensitivity_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert u["lr_pos"] == pytest.approx(0.8 / 0.1)
    assert u["lr_neg"] == pytest.approx(0.2 / 0.9)
    assert u["youden_j"] == pytest.approx(0.7)
    assert u["error_rate"] == pytest.approx(7 / 50)
    # 30 % pre-test: odds 3/7 x 8 = 24/7 -> 24/31; negative: 3/7 x 2/9 = 2/21 -> 2/23
    assert u["post_test"][0.3]["positive"] == pytest.approx(24 / 31)
    assert u["post_test"][0.3]["negative"] == pytest.approx(2 / 23)
    assert u["post_test"][0.5]["positive"] == pytest.approx(8 / 9)


def test_diagnostic_utility_perfect_specificity_and_errors():
    u = diagnostic_utility([1, 1, 0, 0], [0.9, 0.1, 0.2, 0.3], 0.5)
    assert u["lr_pos"] == np.inf and u["post_test"][0.1]["positive"] == 1.0
    with pytest.raises(ValueError, match=r"'prevalences' must be in \(0, 1\); got 1.0"):
        diagnostic_utility([1, 0], [0.9, 0.1], 0.5, prevalences=(1.0,))
    with pytest.raises(ValueError, match="'y_true' must hold 0/1 labels"):
        diagnostic_utility([2, 0], [0.9, 0.1], 0.5)


def test_friedman_posthoc_against_scipy():
    rng = np.random.default_rng(1)
    base = rng.normal(0.8, 0.02, 8)
    scores = pd.DataFrame({"svm": base, "rf": base + 0.05 + rng.normal(0, 0.005, 8),
                           "resnet": base + 0.1 + rng.normal(0, 0.005, 8)})
    out = friedman_posthoc(scores)
    ref = ss.friedmanchisquare(*[scores[c] for c in scores])
    assert out["friedman"]["Q"] == pytest.approx(ref.statistic)
    assert out["friedman"]["p"] == pytest.approx(ref.pvalue)
    ph = out["posthoc"].set_index(["A", "B"])
    pairs = [("resnet", "rf"), ("resnet", "svm"), ("rf", "svm")]
    raw = {}
    for a, b in pairs:
        key = (a, b) if (a, b) in ph.index else (b, a)
        raw[key] = ss.wilcoxon(scores[key[0]], scores[key[1]]).pvalue
        assert ph.loc[key, "p_unc"] == pytest.approx(raw[key])
    # Holm: sorted p x (m, m-1, ...), cumulative max, capped at 1
    keys = sorted(raw, key=raw.get)
    holm = np.minimum(1, np.maximum.accumulate([raw[k] * (3 - i) for i, k in enumerate(keys)]))
    for k, h in zip(keys, holm):
        assert ph.loc[k, "p_holm"] == pytest.approx(h)


def test_friedman_not_significant_has_no_posthoc():
    scores = pd.DataFrame({"a": [0.9, 0.8, 0.85, 0.7, 0.9], "b": [0.85, 0.82, 0.84, 0.75, 0.88]})
    out = friedman_posthoc(scores)
    # rank sums 8 and 7 over 5 blocks: Q = 12 / (5 * 2 * 3) * (64 + 49) - 3 * 5 * 3 = 0.2
    assert out["friedman"]["Q"] == pytest.approx(0.2)
    assert out["friedman"]["p"] == pytest.approx(ss.chi2.sf(0.2, 1))
    assert out["posthoc"] is None
    tied = friedman_posthoc(pd.DataFrame({"a": [1.0, 1.0], "b": [1.0, 1.0]}))
    assert tied["friedman"]["p"] == 1.0


def test_friedman_blocks_with_a_multiindex():
    idx = pd.MultiIndex.from_product([["B", "C"], range(3)], names=["loco", "repetition"])
    scores = pd.DataFrame({"svm": [0.7, 0.72, 0.71, 0.8, 0.81, 0.79], "rf": [0.75, 0.77, 0.74, 0.85, 0.86, 0.84],
                           "resnet": [0.9, 0.91, 0.92, 0.95, 0.96, 0.94]}, index=idx)
    out = friedman_posthoc(scores)
    ref = ss.friedmanchisquare(scores["svm"], scores["rf"], scores["resnet"])
    assert out["friedman"]["n_blocks"] == 6 and out["friedman"]["Q"] == pytest.approx(ref.statistic)
    assert out["posthoc"] is not None and len(out["posthoc"]) == 3
