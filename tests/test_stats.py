"""Tests of msutils.stats against hand computations and reference implementations."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from msutils import stats as ms


# --------------------------------------------------------------------------- Table 1


@pytest.fixture()
def tiny() -> pd.DataFrame:
    return pd.DataFrame({
        "center": ["A"] * 3 + ["B"] * 4,
        "age": [30, 40, 50, 35, 45, 55, 65],
        "sex": ["F", "F", "M", "F", "M", "M", "M"],
        "course": ["RR", "RR", "SP", "RR", "SP", "PP", "PP"],
        "edss": [1.0, 2.0, 2.5, 3.0, 4.0, 6.0, 6.5],
    })


VARS = {"age": "continuous", "sex": "categorical", "course": "categorical", "edss": "ordinal"}


def _row(t1, variable, group, level=""):
    r = t1[(t1["variable"] == variable) & (t1["group"] == group) & (t1["level"] == level)]
    assert len(r) == 1
    return r.iloc[0]


def test_table1_continuous_student_t_by_hand(tiny):
    t1 = ms.table1(tiny, "center", VARS)
    a, b = _row(t1, "age", "A"), _row(t1, "age", "B")
    assert (a["n"], a["mean"], a["sd"], a["summary"]) == (3, 40.0, 10.0, "40.0 (10.0)")
    assert b["mean"] == 50.0 and b["sd"] == pytest.approx(np.sqrt(500 / 3))
    pooled = (2 * 100 + 3 * 500 / 3) / 5                      # = 140
    t = -10 / np.sqrt(pooled * (1 / 3 + 1 / 4))
    assert a["test"] == "Student t-test"
    assert a["statistic"] == pytest.approx(t)
    assert a["p_value"] == pytest.approx(2 * st.t.sf(abs(t), 5))
    assert b["p_value"] == a["p_value"]


def test_table1_welch_option_by_hand(tiny):
    t1 = ms.table1(tiny, "center", {"age": "continuous"}, equal_var=False)
    r = _row(t1, "age", "A")
    v1, v2 = 100 / 3, (500 / 3) / 4
    t = -10 / np.sqrt(v1 + v2)
    dof = (v1 + v2) ** 2 / (v1**2 / 2 + v2**2 / 3)
    assert r["test"] == "Welch t-test"
    assert r["p_value"] == pytest.approx(2 * st.t.sf(abs(t), dof))


def test_table1_fisher_exact_2x2_known_value(tiny):
    t1 = ms.table1(tiny, "center", VARS)
    f_a = _row(t1, "sex", "A", "F")
    assert (f_a["count"], f_a["n"], f_a["summary"]) == (2, 3, "2 (66.7%)")
    assert f_a["percent"] == pytest.approx(200 / 3)
    # [[2, 1], [1, 3]]: hypergeometric probabilities 4/35, 18/35, 12/35, 1/35 for x = 0..3;
    # two-sided p = P(prob <= 12/35) = 17/35; odds ratio 6
    assert f_a["test"] == "Fisher exact test"
    assert f_a["p_value"] == pytest.approx(17 / 35)
    assert f_a["statistic"] == pytest.approx(6.0)


def test_fisher_exact_lady_tasting_tea():
    df = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4, "x": list("yyyn") + list("ynnn")})
    t1 = ms.table1(df, "g", {"x": "categorical"})
    assert t1[t1["variable"] == "x"]["p_value"].iloc[0] == pytest.approx(34 / 70)


def _exact_rxc_p(table: np.ndarray) -> float:
    """Fisher-Freeman-Halton exact p of an r x 2 table by full enumeration."""
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    total = comb(int(table.sum()), int(cols[0]))

    def prob(first_col):
        return np.prod([comb(int(r), int(a)) for r, a in zip(rows, first_col)]) / total

    p_obs = prob(table[:, 0])
    p = 0.0
    for first in itertools.product(*[range(int(r) + 1) for r in rows]):
        if sum(first) == cols[0]:
            q = prob(first)
            if q <= p_obs * (1 + 1e-9):
                p += q
    return p


def test_table1_fisher_rxc_monte_carlo_matches_exact_enumeration(tiny):
    t1 = ms.table1(tiny, "center", VARS, seed=3)
    r = _row(t1, "course", "A", "PP")
    exact = _exact_rxc_p(np.array([[0, 2], [2, 1], [1, 1]]))
    assert r["test"] == "Fisher exact test"
    assert "Monte Carlo" in r["note"]
    assert abs(r["p_value"] - exact) < 0.01                # MC SE ~ 0.0015 at 1e5 tables
    again = ms.table1(tiny, "center", VARS, seed=3)
    assert _row(again, "course", "A", "PP")["p_value"] == r["p_value"]   # seeded


def test_table1_ordinal_median_test_by_hand(tiny):
    t1 = ms.table1(tiny, "center", VARS)
    a = _row(t1, "edss", "A")
    assert (a["median"], a["q1"], a["q3"]) == (2.0, 1.5, 2.25)
    assert a["summary"] == "2.0 [1.5, 2.2]"
    # grand median 3.0; "above" = > 3.0 -> A: 0 above / 3 not, B: 3 above / 1 not
    obs = np.array([[0, 3], [3, 1]], dtype=float)
    exp = obs.sum(1, keepdims=True) * obs.sum(0, keepdims=True) / obs.sum()
    chi2 = (((np.abs(obs - exp) - 0.5) ** 2) / exp).sum()   # Yates-corrected
    assert a["test"] == "Mood's median test"
    assert a["statistic"] == pytest.approx(chi2)
    assert a["p_value"] == pytest.approx(st.chi2.sf(chi2, 1))


def test_table1_group_sizes_missing_values_and_three_groups():
    df = pd.DataFrame({
        "site": ["s1"] * 4 + ["s2"] * 3 + ["s3"] * 3,
        "dd": [1.0, 2.0, np.nan, 3.0, 5.0, 6.0, 7.0, 2.0, 2.0, 5.0],
    })
    t1 = ms.table1(df, "site", {"dd": "continuous"})
    sizes = t1[t1["variable"] == "n"].set_index("group")["n"].to_dict()
    assert sizes == {"s1": 4, "s2": 3, "s3": 3}
    assert _row(t1, "dd", "s1")["n"] == 3                     # NaN left out
    g = [np.array([1.0, 2, 3]), np.array([5.0, 6, 7]), np.array([2.0, 2, 5])]
    grand = np.concatenate(g).mean()
    ssb = sum(len(x) * (x.mean() - grand) ** 2 for x in g)
    ssw = sum(((x - x.mean()) ** 2).sum() for x in g)
    F = (ssb / 2) / (ssw / 6)
    r = _row(t1, "dd", "s2")
    assert r["test"] == "one-way ANOVA"
    assert r["statistic"] == pytest.approx(F)
    assert r["p_value"] == pytest.approx(st.f.sf(F, 2, 6))


def test_format_table1_wide_layout(tiny):
    wide = ms.format_table1(ms.table1(tiny, "center", VARS))
    assert list(wide.columns) == ["A (n=3)", "B (n=4)", "P value", "test"]
    assert list(wide.index) == [
        "age, mean (SD)", "sex = F, n (%)", "sex = M, n (%)", "course = PP, n (%)",
        "course = RR, n (%)", "course = SP, n (%)", "edss, median [IQR]",
    ]
    assert wide.loc["age, mean (SD)", "B (n=4)"] == "50.0 (12.9)"
    assert wide.loc["sex = F, n (%)", "P value"] == "0.486"


def test_table1_validation_messages(tiny):
    with pytest.raises(ValueError, match=r"variable column\(s\) \['tiv'\] not in the table"):
        ms.table1(tiny, "center", {"tiv": "continuous"})
    with pytest.raises(ValueError, match=r"kind of 'age' must be one of \['continuous', 'categorical', 'ordinal'\]; got 'numeric'"):
        ms.table1(tiny, "center", {"age": "numeric"})
    with pytest.raises(ValueError, match="column 'sex' must be numeric; got 'F' in row 0"):
        ms.table1(tiny, "center", {"sex": "continuous"})
    with pytest.raises(ValueError, match="'by' column 'site' not in the table"):
        ms.table1(tiny, "site", VARS)


def test_format_p():
    assert ms.format_p(0.0004) == "<0.001"
    assert ms.format_p(0.0093) == "0.009"
    assert ms.format_p(float("nan")) == ""


# --------------------------------------------------------------------------- RM ANOVA


@pytest.fixture()
def errors() -> pd.DataFrame:
    """Absolute errors of 14 subjects x 4 models with non-spherical covariance."""
    rng = np.random.default_rng(42)
    base = rng.gamma(2, 0.5, size=(14, 1))
    cov = np.array([[1, .8, .2, 0], [.8, 1, .3, .1], [.2, .3, 1, .6], [0, .1, .6, 1]]) * 0.2
    e = np.abs(base + rng.multivariate_normal([0, 0.1, 0.4, 0.15], cov, size=14))
    return pd.DataFrame(e, columns=["ridge", "gp", "svm", "rf"],
                        index=pd.Index([f"p{i:02d}" for i in range(14)], name="subject"))


def _gg_epsilon(e: np.ndarray) -> float:
    k = e.shape[1]
    basis = np.linalg.qr(np.vstack([np.ones(k), np.eye(k)[:-1]]).T)[0][:, 1:].T   # orthonormal contrasts
    m = basis @ np.cov(e, rowvar=False) @ basis.T
    return float(np.trace(m) ** 2 / ((k - 1) * np.trace(m @ m)))


def test_rm_anova_matches_statsmodels_and_hand_gg_epsilon(errors):
    from statsmodels.stats.anova import AnovaRM

    res = ms.rm_anova_errors(errors)
    a = res.anova.iloc[0]
    long = errors.reset_index().melt(id_vars="subject", var_name="model", value_name="abs_error")
    ref = AnovaRM(long, "abs_error", "subject", within=["model"]).fit().anova_table.iloc[0]
    assert a["F"] == pytest.approx(ref["F Value"])
    assert (a["df1"], a["df2"]) == (3.0, 39.0)
    assert a["p_unc"] == pytest.approx(ref["Pr > F"])
    eps = _gg_epsilon(errors.to_numpy())
    assert a["eps"] == pytest.approx(eps, rel=1e-6)
    assert (a["df1_gg"], a["df2_gg"]) == pytest.approx((3 * eps, 39 * eps), rel=1e-6)
    assert res.p_gg == pytest.approx(st.f.sf(ref["F Value"], 3 * eps, 39 * eps), rel=1e-6)
    assert res.p_gg > a["p_unc"]
    # partial eta squared by hand
    e = errors.to_numpy()
    g = e.mean()
    ss_model = 14 * ((e.mean(0) - g) ** 2).sum()
    ss_subj = 4 * ((e.mean(1) - g) ** 2).sum()
    ss_err = ((e - g) ** 2).sum() - ss_model - ss_subj
    assert a["np2"] == pytest.approx(ss_model / (ss_model + ss_err))
    assert (a["n_subjects"], a["n_models"]) == (14, 4)


def test_rm_anova_bonferroni_posthoc_by_hand(errors):
    res = ms.rm_anova_errors(errors)
    ph = res.posthoc
    assert list(zip(ph["a"], ph["b"])) == [
        ("ridge", "gp"), ("ridge", "svm"), ("ridge", "rf"), ("gp", "svm"), ("gp", "rf"), ("svm", "rf")]
    for _, r in ph.iterrows():
        ref = st.ttest_rel(errors[r["a"]], errors[r["b"]])
        assert r["t"] == pytest.approx(ref.statistic)
        assert r["p_unc"] == pytest.approx(ref.pvalue)
        assert r["p_bonf"] == pytest.approx(min(1.0, 6 * ref.pvalue))
        assert r["mean_a"] == pytest.approx(errors[r["a"]].mean())
    pv = res.pvalues()
    assert list(pv)[0] == "anova (GG)" and pv["ridge vs svm"] == pytest.approx(ph["p_bonf"].iloc[1])


def test_rm_anova_long_input_missing_values_and_summary(errors):
    wide_res = ms.rm_anova_errors(errors)
    long = errors.reset_index().melt(id_vars="subject", var_name="model", value_name="abs_error")
    long_res = ms.rm_anova_errors(long)
    pd.testing.assert_frame_equal(wide_res.anova, long_res.anova)
    pd.testing.assert_frame_equal(wide_res.posthoc, long_res.posthoc)
    holed = errors.copy()
    holed.iloc[0, 2] = np.nan
    dropped = ms.rm_anova_errors(holed)
    assert dropped.anova["n_subjects"].iloc[0] == 13
    assert dropped.F == pytest.approx(ms.rm_anova_errors(errors.iloc[1:]).F)
    a = wide_res.anova.iloc[0]
    assert wide_res.summary() == (
        f"F({a['df1_gg']:.2f}, {a['df2_gg']:.2f}) = {a['F']:.2f}, p = {a['p_gg']:.3f}; "
        f"partial eta^2 = {a['np2']:.2f}; df corrected with Greenhouse-Geisser "
        f"epsilon = {a['eps']:.2f} (14 subjects, 4 models)"
    )
    dup = pd.concat([long, long.iloc[[0]]])
    with pytest.raises(ValueError, match="more than one 'abs_error' value for subject='p00', model='ridge'"):
        ms.rm_anova_errors(dup)


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 10, 0.0, 0.3085),       # textbook Clopper-Pearson values
    (10, 10, 0.6915, 1.0),
    (5, 10, 0.1871, 0.8129),
    (1, 20, 0.0013, 0.2487),
])
def test_exact_ci_proportion_textbook(k, n, low, high):
    lo, hi = ms.exact_ci_proportion(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_exact_ci_proportion_beta_quantiles_and_validation():
    lo, hi = ms.exact_ci_proportion(7, 23, alpha=0.1)
    assert lo == pytest.approx(st.beta.ppf(0.05, 7, 17))
    assert hi == pytest.approx(st.beta.ppf(0.95, 8, 16))
    with pytest.raises(ValueError, match="need 0 <= k <= n and n >= 1; got k=11, n=10"):
        ms.exact_ci_proportion(11, 10)


def test_bootstrap_ci_seeded_and_close_to_normal_theory():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 2, size=200)
    a = ms.bootstrap_ci(x, n_boot=2000, seed=1)
    assert a == ms.bootstrap_ci(x, n_boot=2000, seed=1)
    assert a != ms.bootstrap_ci(x, n_boot=2000, seed=2)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert a.estimate == pytest.approx(x.mean())
    assert (a.high - a.low) / 2 == pytest.approx(half, rel=0.15)
    assert a.low < x.mean() < a.high and (a.n_valid, a.n_units) == (2000, 200)


def test_bootstrap_ci_resamples_whole_units():
    rng = np.random.default_rng(1)
    v = rng.normal(size=30)
    single = ms.bootstrap_ci(v, n_boot=500, seed=4)
    # every patient contributes two identical slices: resampling patients gives
    # exactly the per-patient bootstrap (same draws, same means)
    slices = pd.DataFrame({"patient": np.repeat(np.arange(30), 2), "dice": np.repeat(v, 2)})
    clustered = ms.bootstrap_ci(slices, lambda d: d["dice"].mean(), units=slices["patient"],
                                n_boot=500, seed=4)
    assert (clustered.low, clustered.high) == pytest.approx((single.low, single.high))
    assert clustered.n_units == 30
    # treating the 60 slices as independent understates the uncertainty
    naive = ms.bootstrap_ci(slices["dice"].to_numpy(), n_boot=500, seed=4)
    assert (naive.high - naive.low) < 0.85 * (clustered.high - clustered.low)


def test_bootstrap_ci_drops_nan_resamples():
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    sens = ms.bootstrap_ci(y, lambda s: s.mean() if s.sum() else np.nan, n_boot=300, seed=0)
    assert 0 < sens.n_valid < 300
    with pytest.raises(ValueError, match="'units' has 3 entries but 'data' has 8 rows"):
        ms.bootstrap_ci(y, units=[1, 2, 3])


def test_regression_metrics_by_hand():
    t = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    p = np.array([1.5, 1.5, 3.5, 3.0, 5.0])
    m = ms.regression_metrics(t, p)
    r = np.corrcoef(t, p)[0, 1]
    assert m["r"] == pytest.approx(r)
    assert m["pearson_r2"] == pytest.approx(r**2)
    assert m["r2_score"] == pytest.approx(1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    assert m["mae"] == pytest.approx(np.abs(t - p).mean())
    assert m["n"] == 5 and 0 < m["r_pvalue"] < 1
    assert set(m) == {"n", "r", "r_pvalue", "pearson_r2", "r2_score", "mae"}
    with pytest.raises(ValueError, match=r"non-finite value\(s\) at position\(s\) \[2\]"):
        ms.regression_metrics(t, [1, 2, np.nan, 4, 5])
    with pytest.raises(ValueError, match=r"need >= 2 pairs; got 1"):
        ms.regression_metrics([1.0], [2.0])


def test_format_ci():
    assert ms.format_ci(0.8333, 0.795, 0.865) == "83.3 (79.5-86.5)"
    assert ms.format_ci(28.31, 23.5, 33.14, scale=1) == "28.3 (23.5-33.1)"
    assert ms.format_ci(0.5, None, np.nan, decimals=0) == "50 (n/a-n/a)"
    assert ms.format_ci(None, 0.1, 0.2) == ms.format_ci(np.nan, 0.1, 0.2) == "n/a"
    assert ms.format_ci(0.37, -0.554, 0.89, scale=1, decimals=2) == "0.37 (-0.55 to 0.89)"
    assert ms.format_ci(-0.5, -0.9, -0.1, scale=1) == "-0.5 (-0.9 to -0.1)"


def test_regression_metrics_bias_and_constant_prediction():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    s = ms.regression_metrics(y, y + 2.0)   # perfectly correlated but biased (another site)
    assert s["r"] == pytest.approx(1.0) and s["pearson_r2"] == pytest.approx(1.0)
    assert s["r2_score"] == pytest.approx(1 - 16 / 5) and s["mae"] == 2.0
    c = ms.regression_metrics(y, np.full(4, 2.5))
    assert np.isnan(c["r"]) and np.isnan(c["pearson_r2"]) and c["mae"] == 1.0
    two = ms.regression_metrics([1.0, 2.0], [1.5, 2.5])
    assert two["r"] == pytest.approx(1.0) and np.isnan(two["r_pvalue"])


def test_table1_welch_anova_three_groups_by_hand():
    df = pd.DataFrame({"site": ["a"] * 4 + ["b"] * 5 + ["c"] * 3,
                       "age": [30, 32, 35, 31, 40, 50, 45, 60, 38, 33, 34, 36]})
    t1 = ms.table1(df, "site", {"age": "continuous"}, equal_var=False)
    g = [df.loc[df["site"] == s, "age"].to_numpy(float) for s in "abc"]
    n = np.array([len(x) for x in g])
    m = np.array([x.mean() for x in g])
    w = n / np.array([x.var(ddof=1) for x in g])
    mw = (w * m).sum() / w.sum()
    lam = ((1 - w / w.sum()) ** 2 / (n - 1)).sum()
    F = ((w * (m - mw) ** 2).sum() / 2) / (1 + 2 * (3 - 2) / (3**2 - 1) * lam)
    df2 = (3**2 - 1) / (3 * lam)
    r = _row(t1, "age", "a")
    assert r["test"] == "Welch ANOVA"
    assert r["statistic"] == pytest.approx(F)
    assert r["p_value"] == pytest.approx(st.f.sf(F, 2, df2))


def test_table1_single_level_and_single_group_give_no_test():
    df = pd.DataFrame({"site": ["a", "a", "b", "b"], "sex": ["F"] * 4, "age": [1.0, 2, 3, 4]})
    t1 = ms.table1(df, "site", {"sex": "categorical"})
    r = _row(t1, "sex", "b", "F")
    assert np.isnan(r["p_value"]) and r["note"] == "single level: no test"
    one = ms.table1(df, "site", {"age": "continuous"}, order=["a"])
    assert np.isnan(_row(one, "age", "a")["p_value"])
    assert _row(one, "age", "a")["note"] == "single group: no test"


# --------------------------------------------------------------------------- paired regression bootstrap
def test_bootstrap_regression_metrics_equals_a_loop_over_the_same_resamples():
    rng = np.random.default_rng(3)
    y = rng.normal(3, 1.5, 35)
    preds = pd.DataFrame({"good": y + rng.normal(0, 0.5, 35), "biased": y * 0.5 + 2 + rng.normal(0, 0.8, 35)})
    out = ms.bootstrap_regression_metrics(y, preds, n_boot=300, seed=7).set_index(["predictor", "metric"])
    idx = ms.bootstrap_indices(35, 300, seed=7)
    assert idx.shape == (300, 35) and (ms.bootstrap_indices(35, 300, seed=7) == idx).all()
    for name in preds:
        p = preds[name].to_numpy()
        loop = pd.DataFrame([ms.regression_metrics(y[i], p[i]) for i in idx])
        full = ms.regression_metrics(y, p)
        for metric in ms.REGRESSION_METRICS:
            row = out.loc[(name, metric)]
            lo, hi = np.quantile(loop[metric], [0.025, 0.975])
            assert row["estimate"] == pytest.approx(full[metric], rel=1e-12)
            assert (row["low"], row["high"]) == pytest.approx((lo, hi), rel=1e-9)
            assert row["low"] <= row["estimate"] <= row["high"] and row["n_valid"] == 300
    # the biased predictor: r2_score below r², a wider MAE interval than the good one
    assert out.loc[("biased", "r2_score"), "estimate"] < out.loc[("biased", "pearson_r2"), "estimate"]
    assert out.loc[("good", "mae"), "high"] < out.loc[("biased", "mae"), "low"]


def test_bootstrap_regression_metrics_coverage_of_r_near_fisher_z():
    """With normal data the percentile interval of r is close to the Fisher-z interval."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = 0.6 * x + 0.8 * rng.normal(size=400)
    row = ms.bootstrap_regression_metrics(y, x, n_boot=2000).set_index("metric").loc["r"]
    z, se = np.arctanh(row["estimate"]), 1 / np.sqrt(400 - 3)
    assert row["low"] == pytest.approx(np.tanh(z - 1.96 * se), abs=0.02)
    assert row["high"] == pytest.approx(np.tanh(z + 1.96 * se), abs=0.02)


def test_bootstrap_regression_metrics_drops_undefined_resamples_and_validates():
    y = np.array([1.0, 1.0, 1.0, 2.0])
    out = ms.bootstrap_regression_metrics(y, pd.Series([1.0, 1.5, 1.0, 2.5], name="m"), n_boot=200, seed=1)
    r = out.set_index("metric").loc["r"]
    assert out["predictor"].unique().tolist() == ["m"]
    assert 0 < r["n_valid"] < 200  # resamples without the 2.0 have constant y: r undefined
    assert out.set_index("metric").loc["mae", "n_valid"] == 200
    with pytest.raises(ValueError, match="'y_pred' column 'prediction' has 3 values but 'y_true' has 4"):
        ms.bootstrap_regression_metrics(y, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="'n_boot' must be an integer >= 1; got 0"):
        ms.bootstrap_regression_metrics(y, y, n_boot=0)
    with pytest.raises(ValueError, match=r"'alpha' must be in \(0, 1\); got 1.5"):
        ms.bootstrap_regression_metrics(y, y, alpha=1.5)


# --------------------------------------------------------------------------- adjusted group difference
def test_adjusted_difference_matches_ols_by_hand():
    rng = np.random.default_rng(4)
    n = 60
    df = pd.DataFrame({"course": rng.choice(["RR", "SP"], n, p=[0.7, 0.3]), "age": rng.normal(40, 10, n),
                       "sex": rng.choice(["F", "M"], n), "dd": rng.gamma(2, 4, n), "other": "x"})
    df["edss"] = 2.0 * (df["course"] == "SP") + 0.03 * df["age"] + 0.05 * df["dd"] + rng.normal(0, 1, n)
    df.loc[3, "age"] = np.nan  # dropped
    d = df.dropna(subset=["age"])
    X = np.column_stack([np.ones(len(d)), d["course"] == "SP", d["age"], d["sex"] == "M", d["dd"]]).astype(float)
    beta, *_ = np.linalg.lstsq(X, d["edss"].to_numpy(), rcond=None)
    resid = d["edss"].to_numpy() - X @ beta
    dof = len(d) - X.shape[1]
    se = np.sqrt(resid @ resid / dof * np.linalg.inv(X.T @ X)[1, 1])
    got = ms.adjusted_difference(df, "edss", "course", ["age", "sex", "dd"])
    assert got["levels"] == ["RR", "SP"]
    assert got["n"] == {"RR": int((d["course"] == "RR").sum()), "SP": int((d["course"] == "SP").sum())}
    assert got["difference"] == pytest.approx(beta[1], rel=1e-9)
    assert got["se"] == pytest.approx(se, rel=1e-9)
    assert got["p"] == pytest.approx(2 * st.t.sf(abs(beta[1] / se), dof), rel=1e-9)
    q = st.t.ppf(0.975, dof)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((beta[1] - q * se, beta[1] + q * se), rel=1e-9)
    # reversed levels flip the sign; a third level is left out when levels are given
    rev = ms.adjusted_difference(df, "edss", "course", ["age", "sex", "dd"], levels=["SP", "RR"])
    assert rev["difference"] == pytest.approx(-beta[1], rel=1e-9)
    three = df.assign(course=np.where(np.arange(n) < 5, "PP", df["course"]))
    with pytest.raises(ValueError, match=r"'course' must have exactly 2 levels; got \['PP', 'RR', 'SP'\]"):
        ms.adjusted_difference(three, "edss", "course")
    assert ms.adjusted_difference(three, "edss", "course", levels=["RR", "SP"])["n"]["RR"] < got["n"]["RR"] + 5
    with pytest.raises(ValueError, match=r"'df' lacks columns \['duration'\]"):
        ms.adjusted_difference(df, "edss", "course", ["duration"])
