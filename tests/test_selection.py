"""Tests of msutils.features.selection: filters, LASSO, Weka CFS, ICC stability, perturbations."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.base import clone

from msutils.features import reliability as rel
from msutils.features import selection as sel


class RecordingLog:
    """Duck-typed FitLog: remembers every record(step, ids) call."""

    def __init__(self) -> None:
        self.records: list[tuple[str, list]] = []

    def record(self, step: str, subject_ids) -> None:
        self.records.append((step, list(subject_ids)))

    def steps(self) -> list[str]:
        return [s for s, _ in self.records]


def exact_corr_data(R: np.ndarray, n: int, seed: int = 0, scales=None, shifts=None) -> np.ndarray:
    """n x p data whose sample (Pearson) correlation matrix is exactly R."""
    rng = np.random.default_rng(seed)
    p = R.shape[0]
    A = rng.normal(size=(n, p))
    A -= A.mean(axis=0)
    Q, _ = np.linalg.qr(A)  # orthonormal, centred columns
    X = Q @ np.linalg.cholesky(R).T * np.sqrt(n)
    if scales is not None:
        X = X * np.asarray(scales)
    if shifts is not None:
        X = X + np.asarray(shifts)
    return X


# ----------------------------------------------------------------------------
# VarianceFilter
# ----------------------------------------------------------------------------
def _variance_frame() -> pd.DataFrame:
    n = 200
    rng = np.random.default_rng(1)
    rare = np.zeros(n)
    rare[7] = 1.0  # min-max variance (1/200)(199/200) = 0.004975 < 0.01
    return pd.DataFrame({
        "uniform": rng.uniform(0, 1, n),
        "constant": np.full(n, 3.2),
        "rare": rare,
        "big_offset": 1000 + rng.uniform(0, 0.1, n),  # tiny raw variance, full min-max range
    }, index=[f"s{i:03d}" for i in range(n)])


def test_variance_filter_minmax_drops_expected_columns_and_values():
    X = _variance_frame()
    vf = sel.VarianceFilter(threshold=0.01).fit(X)
    assert list(vf.get_feature_names_out()) == ["uniform", "big_offset"]
    assert vf.get_support().tolist() == [True, False, False, True]
    assert vf.get_support(indices=True).tolist() == [0, 3]
    scaled = (X - X.min()) / (X.max() - X.min())
    assert vf.variances_["rare"] == pytest.approx((1 / 200) * (199 / 200), rel=1e-12)
    assert vf.variances_["uniform"] == pytest.approx(scaled["uniform"].var(ddof=0), rel=1e-12)
    assert vf.variances_["constant"] == 0.0


def test_variance_filter_raw_scaling_differs():
    X = _variance_frame()
    vf = sel.VarianceFilter(threshold=0.01, scaling="none").fit(X)
    assert list(vf.get_feature_names_out()) == ["uniform"]
    assert vf.variances_["big_offset"] == pytest.approx(X["big_offset"].var(ddof=0), rel=1e-9)


def test_variance_filter_validation_messages():
    X = _variance_frame()
    with pytest.raises(ValueError, match=r"'scaling' must be one of \['minmax', 'none'\]; got 'z'"):
        sel.VarianceFilter(scaling="z").fit(X)
    bad = X.copy()
    bad.iloc[3, 0] = np.nan
    with pytest.raises(ValueError,
                       match=r"missing or infinite values in 1 column\(s\) \['uniform'\]"):
        sel.VarianceFilter().fit(bad)
    with pytest.raises(ValueError, match="non-numeric columns"):
        sel.VarianceFilter().fit(X.assign(sex="M"))
    vf = sel.VarianceFilter().fit(X)
    with pytest.raises(ValueError, match=r"missing \['rare'\]"):
        vf.transform(X.drop(columns="rare"))


def test_transform_keeps_fitted_state_and_fit_log_records_train_ids():
    X = _variance_frame()
    train, test = X.iloc[:150], X.iloc[150:] * 5.0
    log = RecordingLog()
    vf = sel.VarianceFilter(fit_log=log).fit(train)
    state = copy.deepcopy({k: v for k, v in vars(vf).items() if k != "fit_log"})
    out = vf.transform(test)
    assert list(out.index) == list(test.index)
    after = {k: v for k, v in vars(vf).items() if k != "fit_log"}
    assert state.keys() == after.keys()
    pd.testing.assert_series_equal(state["variances_"], after["variances_"])
    assert np.array_equal(state["support_"], after["support_"])
    assert log.records == [("selection.variance", list(train.index))]
    assert not set(log.records[0][1]) & set(test.index)
    # explicit subject ids (e.g. index = scan ids) are recorded instead of the index
    log2 = RecordingLog()
    subj = [f"sub{i // 2}" for i in range(len(train))]
    sel.VarianceFilter(fit_log=log2).fit(train, subject_ids=subj)
    assert log2.records == [("selection.variance", list(dict.fromkeys(subj)))]


def test_clone_shares_fit_log():
    log = RecordingLog()
    for est in (sel.VarianceFilter(fit_log=log), sel.CfsSelector(fit_log=log),
                sel.SelectionPipeline(fit_log=log)):
        cl = clone(est)
        assert cl.fit_log is log
        assert cl is not est


# ----------------------------------------------------------------------------
# CollinearityFilter
# ----------------------------------------------------------------------------
_R4 = np.array([
    [1.0, -0.9, 0.0, 0.5],   # a
    [-0.9, 1.0, 0.0, -0.1],  # b
    [0.0, 0.0, 1.0, 0.3],    # c
    [0.5, -0.1, 0.3, 1.0],   # d
])


def _collinear_frame() -> pd.DataFrame:
    return pd.DataFrame(exact_corr_data(_R4, 120, seed=3, scales=[1, 10, 100, 0.01]),
                        columns=list("abcd"))


def test_collinearity_drops_higher_mean_corr_member():
    X = _collinear_frame()
    cf = sel.CollinearityFilter(threshold=0.8).fit(X)
    # mean |r|: a 0.467, b 0.333, c 0.1, d 0.3 -> a (the more redundant) is dropped
    np.testing.assert_allclose(cf.mean_abs_corr_.to_numpy(),
                               (np.abs(_R4).sum(axis=1) - 1) / 3, atol=1e-12)
    assert list(cf.get_feature_names_out()) == ["b", "c", "d"]
    assert cf.dropped_[["feature", "correlated_with"]].values.tolist() == [["a", "b"]]
    assert cf.dropped_["r"].iloc[0] == pytest.approx(-0.9, abs=1e-12)


def test_collinearity_drop_later_and_chain():
    X = _collinear_frame()
    cf = sel.CollinearityFilter(threshold=0.8, drop="later").fit(X)
    assert list(cf.get_feature_names_out()) == ["a", "c", "d"]
    # chain x ~ y ~ z (0.85 each), r(x, z) = 0.7225: z is not dropped because of the dropped y
    c = 0.85
    R = np.array([[1, c, c * c], [c, 1, c], [c * c, c, 1]])
    Xc = pd.DataFrame(exact_corr_data(R, 80, seed=4), columns=["x", "y", "z"])
    cf2 = sel.CollinearityFilter(threshold=0.8, drop="later").fit(Xc)
    assert list(cf2.get_feature_names_out()) == ["x", "z"]


def _reference_collinearity(X: pd.DataFrame, thr: float, drop: str) -> list[str]:
    R = np.abs(np.corrcoef(X.to_numpy(), rowvar=False))
    p = R.shape[0]
    if drop == "later":
        order = list(range(p))
    else:
        mean = (R.sum(axis=1) - 1) / (p - 1)
        order = sorted(range(p), key=lambda j: (mean[j], j))
    kept: list[int] = []
    for j in order:
        if all(R[j, k] <= thr for k in kept):
            kept.append(j)
    return [X.columns[j] for j in sorted(kept)]


@pytest.mark.parametrize("drop", ["higher_mean_corr", "later"])
def test_collinearity_matches_reference_for_any_block_size(drop):
    rng = np.random.default_rng(5)
    base = rng.normal(size=(150, 6))
    cols = [base[:, i % 6] * rng.uniform(0.5, 2) + rng.normal(scale=rng.uniform(0.1, 1.2), size=150)
            for i in range(40)]
    X = pd.DataFrame(np.column_stack(cols), columns=[f"f{i:02d}" for i in range(40)])
    expected = _reference_collinearity(X, 0.8, drop)
    assert 6 <= len(expected) < 40
    for bs in (1, 7, 1024):
        cf = sel.CollinearityFilter(threshold=0.8, drop=drop, block_size=bs).fit(X)
        assert list(cf.get_feature_names_out()) == expected


# ----------------------------------------------------------------------------
# LassoSelector
# ----------------------------------------------------------------------------
def _lasso_data(n=160, p=12, seed=6):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)) * rng.uniform(0.1, 50, size=p),
                     columns=[f"x{i}" for i in range(p)], index=[f"s{i}" for i in range(n)])
    z = (X - X.mean()) / X.std(ddof=0)
    y = 3.0 + 1.2 * z["x0"] - 0.8 * z["x1"] + rng.normal(scale=0.7, size=n)
    return X, y


def test_lasso_selector_matches_lassocv_reference():
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    X, y = _lasso_data()
    ls = sel.LassoSelector(cv=10, seed=2).fit(X, y)
    Z = StandardScaler().fit_transform(X)
    folds = list(KFold(10, shuffle=True, random_state=2).split(Z))
    ref = LassoCV(alphas=100, cv=folds, max_iter=10000).fit(Z, y.to_numpy())
    assert ls.alpha_ == pytest.approx(ref.alpha_, rel=1e-12)
    np.testing.assert_allclose(ls.coef_.to_numpy(), ref.coef_, atol=1e-10)
    assert list(ls.get_feature_names_out()) == list(X.columns[ref.coef_ != 0])
    assert {"x0", "x1"} <= set(ls.get_feature_names_out())
    assert len(ls.get_feature_names_out()) < X.shape[1]


def test_lasso_selector_groups_repeated_subjects():
    X, y = _lasso_data(n=120)
    subj = [f"sub{i // 2}" for i in range(len(X))]
    ls = sel.LassoSelector(cv=5, seed=0).fit(X, y, subject_ids=subj)
    for tr, te in ls.estimator_.cv:
        assert not {subj[i] for i in tr} & {subj[i] for i in te}
    with pytest.raises(ValueError, match=r"'cv' = 10 needs at least 10 training subjects; got 4"):
        sel.LassoSelector(cv=10).fit(X.iloc[:8], y.iloc[:8], subject_ids=subj[:8])
    with pytest.raises(ValueError, match="'y' index does not match"):
        sel.LassoSelector().fit(X, y.set_axis(range(len(y))))


# ----------------------------------------------------------------------------
# CFS
# ----------------------------------------------------------------------------
R_CF4 = np.array([0.6, 0.5, 0.4, 0.1])
R_FF4 = np.array([
    [1.0, 0.7, 0.2, 0.1],
    [0.7, 1.0, 0.3, 0.05],
    [0.2, 0.3, 1.0, 0.4],
    [0.1, 0.05, 0.4, 1.0],
])


def hall_merit(r_cf, r_ff, subset):
    """Hall's CFS merit written out: k mean|r_cf| / sqrt(k + k(k-1) mean|r_ff|)."""
    s = list(subset)
    k = len(s)
    mean_cf = np.mean(np.abs(r_cf[s]))
    pairs = [abs(r_ff[i, j]) for i, j in itertools.combinations(s, 2)]
    mean_ff = np.mean(pairs) if pairs else 0.0
    return k * mean_cf / np.sqrt(k + k * (k - 1) * mean_ff)


def test_cfs_merit_hand_numbers():
    assert sel.cfs_merit(R_CF4, R_FF4, [0]) == pytest.approx(0.6, abs=1e-15)
    assert sel.cfs_merit(R_CF4, R_FF4, [0, 1]) == pytest.approx(1.1 / np.sqrt(2 + 2 * 0.7),
                                                                 rel=1e-14)
    assert sel.cfs_merit(R_CF4, R_FF4, [0, 2]) == pytest.approx(1.0 / np.sqrt(2.4), rel=1e-14)
    assert sel.cfs_merit(R_CF4, R_FF4, [0, 1, 2]) == pytest.approx(1.5 / np.sqrt(3 + 6 * 0.4),
                                                                   rel=1e-14)
    mean_ff = (0.7 + 0.2 + 0.1 + 0.3 + 0.05 + 0.4) / 6
    assert sel.cfs_merit(R_CF4, R_FF4, [0, 1, 2, 3]) == pytest.approx(
        1.6 / np.sqrt(4 + 12 * mean_ff), rel=1e-14)
    assert sel.cfs_merit(R_CF4, R_FF4, []) == 0.0
    # signs are ignored (|r|), as in Weka
    assert sel.cfs_merit(-R_CF4, -R_FF4, [0, 1, 2]) == pytest.approx(1.5 / np.sqrt(5.4), rel=1e-14)
    # best-first on this table: {0, 2} (0.6455) beats {0} (0.6) and {0, 2, 3}
    subset, merit, _ = sel.best_first_search(R_CF4, R_FF4)
    best = max(itertools.chain.from_iterable(
        itertools.combinations(range(4), k) for k in range(1, 5)),
        key=lambda s: hall_merit(R_CF4, R_FF4, s))
    assert subset == list(best) == [0, 2]
    assert merit == pytest.approx(1.0 / np.sqrt(2.4), rel=1e-12)


def _cfs_problem(p=7, seed=18):
    """Features + target (last) with an exactly known correlation matrix."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(p + 1, p + 3))
    C = A @ A.T
    d = np.sqrt(np.diag(C))
    R = C / np.outer(d, d)
    data = exact_corr_data(R, 90, seed=seed, scales=rng.uniform(0.5, 20, p + 1),
                           shifts=rng.uniform(-5, 5, p + 1))
    X = pd.DataFrame(data[:, :p], columns=[f"f{i}" for i in range(p)])
    y = pd.Series(data[:, p])
    return X, y, R


def test_cfs_selector_merit_equals_hand_formula_on_data():
    X, y, R = _cfs_problem()
    p = X.shape[1]
    cfs = sel.CfsSelector(locally_predictive=False).fit(X, y)
    np.testing.assert_allclose(cfs.r_cf_.to_numpy(), np.abs(R[:p, p]), atol=1e-12)
    np.testing.assert_allclose(cfs.r_ff_.to_numpy(), np.abs(R[:p, :p]), atol=1e-12)
    for subset in ([0], [1, 4], [0, 2, 5], [0, 1, 2, 3, 4, 5, 6]):
        names = [f"f{i}" for i in subset]
        expected = hall_merit(R[:p, p], R[:p, :p], subset)
        assert cfs.merit(names) == pytest.approx(expected, rel=1e-10)
        assert cfs.merit(subset) == pytest.approx(expected, rel=1e-10)


def test_cfs_best_first_finds_exhaustive_optimum():
    X, y, R = _cfs_problem()
    p = X.shape[1]
    all_subsets = [s for k in range(1, p + 1) for s in itertools.combinations(range(p), k)]
    best = max(all_subsets, key=lambda s: hall_merit(R[:p, p], R[:p, :p], s))
    bf = sel.CfsSelector(locally_predictive=False).fit(X, y)
    ex = sel.CfsSelector(search="exhaustive", locally_predictive=False).fit(X, y)
    assert best == (0, 3, 5, 6)
    assert list(bf.get_feature_names_out()) == [f"f{i}" for i in best]
    assert list(ex.get_feature_names_out()) == [f"f{i}" for i in best]
    assert bf.merit_ == pytest.approx(hall_merit(R[:p, p], R[:p, :p], best), rel=1e-10)
    assert ex.n_evaluated_ == 2**p - 1
    assert bf.n_evaluated_ < 2**p - 1


def test_best_first_backtracking_needs_stale_limit():
    # a problem where greedy hill climbing (-N 1) stops at {f1} but -N 5 finds {f0, f1, f5}
    rng = np.random.default_rng(34)
    p = 6
    A = rng.normal(size=(p + 1, p + 1))
    C = A @ A.T
    d = np.sqrt(np.diag(C))
    R = C / np.outer(d, d)
    r_cf, r_ff = np.abs(R[:p, p]), np.abs(R[:p, :p])
    greedy, g_merit, _ = sel.best_first_search(r_cf, r_ff, max_stale=1)
    full, f_merit, _ = sel.best_first_search(r_cf, r_ff, max_stale=5)
    optimum = max((s for k in range(1, p + 1) for s in itertools.combinations(range(p), k)),
                  key=lambda s: hall_merit(r_cf, r_ff, s))
    assert greedy == [1]
    assert full == list(optimum) == [0, 1, 5]
    assert g_merit < f_merit - 1e-3


def test_open_list_follows_weka_linkedlist2():
    ol: list = []
    for i, m in enumerate([0.5, 0.7, 0.5, 0.6, 0.4, 0.8, 0.55]):
        sel._add_to_open_list(ol, frozenset([i]), m, max_size=3)
    # 0.4 rejected (list full, not better than last); 0.8 evicts; ties go after
    assert [(sorted(s)[0], m) for s, m in ol] == [(5, 0.8), (1, 0.7), (3, 0.6)]
    ol2: list = []
    for i, m in enumerate([0.5, 0.5, 0.5]):
        sel._add_to_open_list(ol2, frozenset([i]), m, max_size=5)
    assert [sorted(s)[0] for s, _ in ol2] == [0, 1, 2]


def test_locally_predictive_hand_example():
    r_cf = np.array([0.6, 0.5, 0.45, 0.3])
    r_ff = np.array([
        [1.0, 0.7, 0.2, 0.35],
        [0.7, 1.0, 0.1, 0.0],
        [0.2, 0.1, 1.0, 0.1],
        [0.35, 0.0, 0.1, 1.0],
    ])
    # f1: r with f0 0.7 > 0.5 -> no; f2: 0.2 <= 0.45 -> yes; f3: r with f0 0.35 > 0.3 -> no
    assert sel.locally_predictive(r_cf, r_ff, [0]) == [0, 2]
    assert sel.locally_predictive(r_cf, r_ff, [0], threshold=0.3) == [0]


def test_cfs_weka_std_weighting_and_constant_feature():
    X, y, R = _cfs_problem(p=5, seed=2)
    sd = X.std(ddof=0).to_numpy()
    cfs = sel.CfsSelector(weighting="weka_std", locally_predictive=False).fit(X, y)
    s = [0, 2, 3]
    w, rc, rf = sd[s], np.abs(R[s, 5]), np.abs(R[np.ix_(s, s)])
    expected = (w @ rc) / np.sqrt(w @ rf @ w)
    assert cfs.merit([f"f{i}" for i in s]) == pytest.approx(expected, rel=1e-10)
    # standardised inputs: Weka's weighting equals Hall's unit weights
    Z = (X - X.mean()) / X.std(ddof=0)
    a = sel.CfsSelector(weighting="weka_std").fit(Z, y)
    b = sel.CfsSelector(weighting="equal").fit(Z, y)
    assert list(a.get_feature_names_out()) == list(b.get_feature_names_out())
    assert a.merit_ == pytest.approx(b.merit_, rel=1e-12)
    # a constant feature: |r| with the class 0, with every other feature 1 (Weka num_num)
    Xc = X.assign(const=1.0)
    c = sel.CfsSelector().fit(Xc, y)
    assert c.r_cf_["const"] == 0.0
    assert (c.r_ff_.loc["const"].drop("const") == 1.0).all()
    assert "const" not in c.get_feature_names_out()


def test_cfs_locally_predictive_default_adds_features():
    X, y, R = _cfs_problem()
    p = X.shape[1]
    with_lp = sel.CfsSelector().fit(X, y)
    without = sel.CfsSelector(locally_predictive=False).fit(X, y)
    search = [int(c[1:]) for c in without.get_feature_names_out()]
    expected = sel.locally_predictive(np.abs(R[:p, p]), np.abs(R[:p, :p]), search)
    assert [int(c[1:]) for c in with_lp.get_feature_names_out()] == expected == [0, 3, 4, 5, 6]
    assert with_lp.added_locally_predictive_ == ["f4"]
    assert with_lp.search_subset_ == list(without.get_feature_names_out())


# ----------------------------------------------------------------------------
# ICC
# ----------------------------------------------------------------------------
def hand_icc(table: np.ndarray) -> dict[str, float]:
    """ICC(3,1) and ICC(2,1) from the two-way ANOVA written out (n subjects x k raters)."""
    n, k = table.shape
    gm = table.mean()
    ssr = k * ((table.mean(axis=1) - gm) ** 2).sum()
    ssc = n * ((table.mean(axis=0) - gm) ** 2).sum()
    sse = ((table - gm) ** 2).sum() - ssr - ssc
    msr, msc, mse = ssr / (n - 1), ssc / (k - 1), sse / ((n - 1) * (k - 1))
    return {"ICC(C,1)": (msr - mse) / (msr + (k - 1) * mse),
            "ICC(A,1)": (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pingouin's pandas deprecations
def test_icc_matches_hand_formula_and_pingouin():
    import pingouin as pg

    subjects = ["a", "b", "c", "d", "e"]
    t1 = pd.DataFrame({"f": [9.0, 6.0, 8.0, 7.0, 10.0], "g": [2.0, 1.0, 4.0, 3.0, 5.0]},
                      index=subjects)
    t2 = pd.DataFrame({"f": [8.0, 7.0, 8.5, 5.0, 9.0], "g": [3.5, 1.5, 4.5, 3.5, 6.0]},
                      index=subjects)
    long = pd.DataFrame({"t": subjects * 2, "r": [1] * 5 + [2] * 5,
                         "y": list(t1["f"]) + list(t2["f"])})
    ref = pg.intraclass_corr(long, targets="t", raters="r", ratings="y").set_index("Type")
    hand = hand_icc(np.column_stack([t1["f"], t2["f"]]))
    # by hand: SSR = 17, SSC = 0.625, SSE = 3 -> MSR = 4.25, MSC = 0.625, MSE = 0.75
    # ICC(3,1) = (4.25 - 0.75) / (4.25 + 0.75) = 0.7
    # ICC(2,1) = 3.5 / (4.25 + 0.75 + 2 (0.625 - 0.75) / 5) = 3.5 / 4.95
    assert hand["ICC(C,1)"] == pytest.approx(0.7, rel=1e-12)
    assert hand["ICC(A,1)"] == pytest.approx(3.5 / 4.95, rel=1e-12)
    assert ref.loc["ICC(C,1)", "ICC"] == pytest.approx(hand["ICC(C,1)"], rel=1e-12)
    for icc_type, alias in (("ICC(C,1)", "ICC3"), ("ICC(A,1)", "ICC2")):
        for engine in ("numpy", "pingouin"):
            for name in (icc_type, alias):
                res = rel.icc_stability(t1, t2, threshold=0.5, icc_type=name, engine=engine)
                assert res.icc_type == icc_type
                assert res.icc["f"] == pytest.approx(hand[icc_type], rel=1e-10)
                assert res.icc["f"] == pytest.approx(ref.loc[icc_type, "ICC"], rel=1e-10)
                g_hand = hand_icc(np.column_stack([t1["g"], t2["g"]]))[icc_type]
                assert res.icc["g"] == pytest.approx(g_hand, rel=1e-10)
    # all six forms of the vectorised table agree with pingouin
    tab = rel.icc_table(np.stack([t1.to_numpy(), t2.to_numpy()], axis=1))
    for icc_type in rel.ICC_TYPES:
        assert tab[icc_type][0] == pytest.approx(ref.loc[icc_type, "ICC"], rel=1e-10)


def test_icc_stability_keep_list_and_forms():
    rng = np.random.default_rng(8)
    n = 30
    subj = [f"sub-{i:02d}" for i in range(n)]
    base = rng.normal(size=n)
    test = pd.DataFrame({"stable": base, "noisy": rng.normal(size=n),
                         "shifted": base, "const": 1.0}, index=subj)
    retest = pd.DataFrame({"stable": base + rng.normal(scale=0.05, size=n),
                           "noisy": rng.normal(size=n), "shifted": base + 1.5,
                           "const": 1.0}, index=subj).loc[subj[::-1]]  # row order differs
    log = RecordingLog()
    r3 = rel.icc_stability(test, retest, subj[:20], icc_type="ICC(C,1)", fit_log=log)
    r2 = rel.icc_stability(test, retest, subj[:20])  # default ICC(A,1)
    assert r3.keep == ["stable", "shifted"]          # consistency ignores the offset
    assert r2.keep == ["stable"]                     # absolute agreement does not
    assert np.isnan(r2.icc["const"]) and "const" in r2.drop
    shifted = np.column_stack([test.loc[subj[:20], "shifted"], retest.loc[subj[:20], "shifted"]])
    assert r2.icc["shifted"] == pytest.approx(hand_icc(shifted)["ICC(A,1)"], rel=1e-12)
    assert r2.icc["shifted"] < 0.9
    assert r3.icc["shifted"] == pytest.approx(1.0, abs=1e-12)
    assert log.records == [("selection.icc_stability", subj[:20])]
    assert r2.to_frame()["kept"].tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match=r"'icc_type' must be one of \['ICC\(1,1\)', .*'ICC3k'\]; "
                                         r"got 'ICC4'"):
        rel.icc_stability(test, retest, icc_type="ICC4")
    with pytest.raises(ValueError, match=r"subjects missing from 'retest': \['sub-29'\]"):
        rel.icc_stability(test, retest.drop(index="sub-29"))


# ----------------------------------------------------------------------------
# perturbations
# ----------------------------------------------------------------------------
def test_perturbed_mask_binary_matches_scipy():
    mask = np.zeros((9, 9, 9), dtype=bool)
    mask[2:7, 2:7, 2:7] = True
    before = mask.copy()
    eroded = rel.perturbed_mask(mask, mode="erode")
    dilated = rel.perturbed_mask(mask, mode="dilate")
    assert eroded.dtype == bool and eroded.sum() == 27            # 3^3
    assert dilated.sum() == 125 + 6 * 25                          # faces only (6-connectivity)
    cross = ndimage.generate_binary_structure(3, 1)
    assert np.array_equal(eroded, ndimage.binary_erosion(mask, cross))
    assert np.array_equal(dilated, ndimage.binary_dilation(mask, cross))
    assert np.array_equal(mask, before)
    picks = [rel.perturbed_mask(mask, np.random.default_rng(s)).sum() for s in range(6)]
    assert set(picks) == {27, 275}
    assert rel.perturbed_mask(mask, 3).sum() == rel.perturbed_mask(mask, 3).sum()


def test_perturbed_mask_labels():
    lab = np.zeros((6, 8, 3), dtype=np.int16)
    lab[1:5, 1:4, :] = 3
    lab[1:5, 4:7, :] = 101
    er = rel.perturbed_mask(lab, mode="erode")
    assert er.dtype == np.int16
    # every voxel touches the z border (3 slices) except the middle slice's interior
    assert set(np.unique(er)) == {0, 3, 101}
    assert np.array_equal(np.argwhere(er == 3), [[2, 2, 1], [3, 2, 1]])
    assert np.array_equal(np.argwhere(er == 101), [[2, 5, 1], [3, 5, 1]])
    di = rel.perturbed_mask(lab, mode="dilate")
    assert np.array_equal(di[lab > 0], lab[lab > 0])             # labels never overwritten
    assert di[0, 2, 0] == 3 and di[0, 5, 0] == 101 and di[1, 7, 0] == 101
    assert di[0, 0, 0] == 0                                       # diagonal neighbour only
    with pytest.raises(ValueError, match="boolean or integer"):
        rel.perturbed_mask(lab.astype(float))


def test_perturbed_image_noise_level_and_reproducibility():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 20, size=(40, 40, 40)).astype(np.float32)
    img[:5] = 0
    before = img.copy()
    a = rel.perturbed_image(img, 1, noise_sd_fraction=0.1)
    b = rel.perturbed_image(img, np.random.default_rng(1), noise_sd_fraction=0.1)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert np.array_equal(img, before)
    expected_sd = 0.1 * img[img != 0].std()
    assert (a - img).std() == pytest.approx(expected_sd, rel=0.02)
    assert np.array_equal(rel.perturbed_image(img, 1, noise_sd_fraction=0.0), img)


# ----------------------------------------------------------------------------
# SelectionPipeline
# ----------------------------------------------------------------------------
def _pipeline_data(n=220, seed=9):
    rng = np.random.default_rng(seed)
    idx = [f"sub-{i:03d}" for i in range(n)]
    age = rng.uniform(20, 65, n)
    r1, r2 = rng.normal(size=n), rng.normal(size=n)
    X = pd.DataFrame({
        "age": age,
        "roi__glcm__A": r1 * 30 + 500,
        "roi__glcm__A_dup": r1 * 30 + 500 + rng.normal(scale=3, size=n),  # r ~ 0.995
        "roi__fo__B": r2,
        "roi__fo__unstable": r2 * 0.9 + rng.normal(scale=0.3, size=n),
        "roi__fo__rare": (np.arange(n) == 5).astype(float),
        "roi__fo__const": 7.0,
        **{f"roi__noise__{i}": rng.normal(size=n) for i in range(8)},
    }, index=idx)
    y = pd.Series(0.05 * age + 0.8 * r1 - 0.6 * r2 + rng.normal(scale=0.5, size=n), index=idx)
    return X, y


def test_selection_pipeline_stages_table_and_fit_log():
    X, y = _pipeline_data()
    radiomic = [c for c in X.columns if c.startswith("roi__")]
    stable = [c for c in radiomic if c != "roi__fo__unstable"]
    train, test = X.index[:170], X.index[170:]
    log = RecordingLog()
    sp = sel.SelectionPipeline(stable_features=stable, stability_scope=radiomic, seed=0,
                               fit_log=log).fit(X.loc[train], y.loc[train])
    sv = sp.survivors_
    assert list(sv) == ["input", "stability", "variance", "collinearity", "lasso", "cfs"]
    assert "roi__fo__unstable" not in sv["stability"] and "age" in sv["stability"]
    assert set(sv["stability"]) - set(sv["variance"]) == {"roi__fo__rare", "roi__fo__const"}
    # of the collinear pair, the one more correlated with the rest goes
    mac = sp.steps_["collinearity"].mean_abs_corr_
    pair = ["roi__glcm__A", "roi__glcm__A_dup"]
    loser, winner = sorted(pair, key=lambda c: -mac[c])
    assert set(sv["variance"]) - set(sv["collinearity"]) == {loser}
    assert {"age", winner, "roi__fo__B"} <= set(sv["cfs"])
    assert list(sp.get_feature_names_out()) == sv["cfs"]
    table = sp.summary()
    assert table["n_out"].tolist() == [len(v) for v in sv.values()]
    assert table.loc["variance", "n_removed"] == 2
    assert table.loc["collinearity", "n_removed"] == 1
    assert log.steps() == ["selection.variance", "selection.collinearity", "selection.lasso",
                           "selection.cfs"]
    for _, ids in log.records:
        assert ids == list(train) and not set(ids) & set(test)
    before = copy.deepcopy(sp.survivors_)
    out = sp.transform(X.loc[test])
    assert list(out.columns) == sv["cfs"] and list(out.index) == list(test)
    assert sp.survivors_ == before and len(log.records) == 4


def test_selection_pipeline_without_stability_and_errors():
    X, y = _pipeline_data(n=120)
    sp = sel.SelectionPipeline(lasso_cv=5).fit(X, y)
    assert "roi__fo__unstable" in sp.survivors_["stability"]
    with pytest.raises(ValueError, match="'y' is required"):
        sel.SelectionPipeline().fit(X)
    with pytest.raises(ValueError, match=r"'y' has missing values at rows \['sub-003'\]"):
        sel.SelectionPipeline().fit(X, y.where(y.index != "sub-003"))
