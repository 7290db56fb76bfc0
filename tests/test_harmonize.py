"""ComBat (msutils.data.harmonize): neuroCombat equality, the new-site step, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from msutils.data.harmonize import ComBat, eb_parametric
from msutils.data.leakage import FitLog


def _simulate(n_per_batch: dict[str, int], n_features: int = 40, seed: int = 0,
              shifts: dict[str, np.ndarray] | None = None, scales: dict[str, np.ndarray] | None = None):
    """x = alpha + 0.03 age + 0.4 sex + shift_b + scale_b * sigma * e (integer ages: float32-exact)."""
    rng = np.random.default_rng(seed)
    alpha = rng.normal(10, 2, n_features)
    sigma = rng.uniform(0.5, 2.0, n_features)
    rows, batch, cov = [], [], []
    for b, n in n_per_batch.items():
        shift = shifts[b] if shifts else rng.normal(0, 1, n_features)
        scale = scales[b] if scales else rng.uniform(0.6, 1.6, n_features)
        age = rng.integers(20, 70, n).astype(float)
        sex = rng.integers(0, 2, n).astype(float)
        e = rng.normal(size=(n, n_features))
        rows.append(alpha + 0.03 * age[:, None] * sigma + 0.4 * sex[:, None] * sigma + shift * sigma
                    + scale * sigma * e)
        batch += [b] * n
        cov.append(np.c_[age, sex])
    idx = [f"s{i:03d}" for i in range(sum(n_per_batch.values()))]
    X = pd.DataFrame(np.vstack(rows), index=idx, columns=[f"f{j}" for j in range(n_features)])
    C = pd.DataFrame(np.vstack(cov), index=idx, columns=["age", "sex"])
    return X, np.array(batch), C, alpha, sigma


def test_fit_equals_neurocombat():
    from neuroCombat import neuroCombat

    X, batch, C, _, _ = _simulate({"A": 30, "B": 22, "C": 15})
    model = ComBat(covariates=("age", "sex")).fit(X, batch, C)
    ours = model.transform(X, batch, C)
    covars = pd.DataFrame({"batch": batch, "age": C["age"].to_numpy(),
                           "sex": np.where(C["sex"] == 1, "M", "F")})
    ref = neuroCombat(X.to_numpy().T.copy(), covars, "batch", categorical_cols=["sex"], continuous_cols=["age"])
    np.testing.assert_allclose(ours.to_numpy(), ref["data"].T, rtol=0, atol=1e-8)
    est = ref["estimates"]
    for i, b in enumerate(["A", "B", "C"]):
        np.testing.assert_allclose(model.sites_[b].gamma_star, est["gamma.star"][i], rtol=0, atol=1e-10)
        np.testing.assert_allclose(model.sites_[b].delta_star, est["delta.star"][i], rtol=0, atol=1e-10)
        assert model.sites_[b].priors["gamma_bar"] == pytest.approx(est["gamma_bar"][i], abs=1e-12)
    np.testing.assert_allclose(model.pooled_var_, est["var.pooled"].ravel(), rtol=1e-10)


def test_fit_without_eb_equals_neurocombat():
    from neuroCombat import neuroCombat

    X, batch, C, _, _ = _simulate({"A": 12, "B": 9}, n_features=8, seed=3)
    ours = ComBat(covariates=("age",), eb=False).fit_transform(X, batch, C)
    covars = pd.DataFrame({"batch": batch, "age": C["age"].to_numpy()})
    ref = neuroCombat(X.to_numpy().T.copy(), covars, "batch", continuous_cols=["age"], eb=False)
    np.testing.assert_allclose(ours.to_numpy(), ref["data"].T, rtol=0, atol=1e-8)


def test_new_site_step_on_a_seen_batch_returns_its_fit():
    X, batch, C, _, _ = _simulate({"A": 25, "B": 20}, seed=1)
    model = ComBat().fit(X, batch, C)
    rows = batch == "B"
    est = model.site_estimates(X[rows], C[rows], name="B-again")
    assert not est.seen
    np.testing.assert_allclose(est.gamma_star, model.sites_["B"].gamma_star, rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.delta_star, model.sites_["B"].delta_star, rtol=0, atol=1e-12)
    # transform of B's rows labelled as an unseen center = transform as B
    relabelled = model.transform(X[rows], np.full(rows.sum(), "Z"), C[rows])
    assert list(model.new_sites_) == ["Z"]
    np.testing.assert_allclose(relabelled, model.transform(X[rows], batch[rows], C[rows]), rtol=0, atol=1e-10)
    assert model.new_sites_ == {}


def test_new_site_recovers_known_shift_and_scale():
    p = 300
    rng = np.random.default_rng(7)
    shift_c = rng.normal(0.0, 0.8, p)
    scale_c = rng.uniform(0.7, 1.5, p)
    # training shifts cancel (sample-weighted), training scales 1: the grand mean is alpha, sigma the pooled SD
    shifts = {"A": np.full(p, 0.5), "B": np.full(p, -0.5), "C": shift_c}
    scales = {"A": np.ones(p), "B": np.ones(p), "C": scale_c}
    X, batch, C, alpha, sigma = _simulate({"A": 400, "B": 400, "C": 400}, n_features=p, seed=7,
                                          shifts=shifts, scales=scales)
    train = batch != "C"
    log = FitLog()
    model = ComBat(fit_log=log).fit(X[train], batch[train], C[train])
    out = model.transform(X[~train], batch[~train], C[~train])
    est = model.new_sites_["C"]
    pooled_sd = np.sqrt(model.pooled_var_)
    # location in feature units and scale of the SD, against the truth
    err_shift = (est.shift(pooled_sd) - shift_c * sigma) / sigma
    assert np.abs(err_shift).max() < 0.25 and abs(err_shift.mean()) < 0.02
    assert np.corrcoef(est.gamma_star, shift_c)[0, 1] > 0.98
    assert np.corrcoef(est.scale(), scale_c)[0, 1] > 0.95
    assert np.abs(est.scale() - scale_c).mean() < 0.05
    # harmonized C looks like the training data: per-feature mean ~ alpha + covariate effects, SD ~ sigma
    resid = out - (alpha + 0.03 * C.loc[~train, ["age"]].to_numpy() * sigma + 0.4 * C.loc[~train, ["sex"]].to_numpy() * sigma)
    assert np.abs(resid.mean(axis=0) / sigma).max() < 0.25
    assert np.abs(resid.std(axis=0) / sigma - 1).mean() < 0.05
    # without the new-site step the shift would remain: raw C is far off
    assert np.abs((X[~train] - out).mean(axis=0) / sigma).mean() > 0.4
    assert log.steps == ["combat", "combat.new_site"]
    assert log.seen("combat") == frozenset(X.index[train])
    assert log.seen("combat.new_site") == frozenset(X.index[~train])


def test_eb_parametric_hand_case():
    z = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 2.5]])
    g_hat, d_hat, g_star, d_star, pri = eb_parametric(z)
    np.testing.assert_allclose(g_hat, [1.0, 2.0, 2.25])
    np.testing.assert_allclose(d_hat, [2.0, 2.0, 0.125])
    assert pri["gamma_bar"] == pytest.approx(1.75)
    assert pri["tau2"] == pytest.approx(np.var([1.0, 2.0, 2.25], ddof=1))
    m, s2 = np.mean(d_hat), np.var(d_hat, ddof=1)
    assert pri["a"] == pytest.approx((2 * s2 + m**2) / s2)
    # the fixed point: g* = (t2 n g_hat + d* g_bar) / (t2 n + d*), d* = (sum2/2 + b) / (n/2 + a - 1)
    n, t2 = 2, pri["tau2"]
    np.testing.assert_allclose(g_star, (t2 * n * g_hat + d_star * pri["gamma_bar"]) / (t2 * n + d_star), rtol=2e-4)
    sum2 = ((z - g_star) ** 2).sum(axis=0)
    np.testing.assert_allclose(d_star, (0.5 * sum2 + pri["b"]) / (n / 2 + pri["a"] - 1), rtol=2e-4)


def test_constant_feature_passes_through():
    X, batch, C, _, _ = _simulate({"A": 10, "B": 10}, n_features=5, seed=2)
    X["const"] = 3.0
    out = ComBat().fit_transform(X, batch, C)
    assert (out["const"] == 3.0).all()


@pytest.mark.parametrize("name", ["group", "Diagnosis", "label"])
def test_diagnosis_covariate_rejected(name):
    X, batch, C, _, _ = _simulate({"A": 10, "B": 10}, n_features=5)
    C[name] = 1.0
    with pytest.raises(ValueError, match=r"'covariates' must not include the diagnosis or another outcome; "
                                         rf"got \['{name}'\]"):
        ComBat(covariates=("age", name)).fit(X, batch, C)


def test_bad_inputs():
    X, batch, C, _, _ = _simulate({"A": 10, "B": 10}, n_features=5)
    with pytest.raises(ValueError, match=r"every batch needs >= 2 scans; got \['C \(1\)'\]"):
        ComBat().fit(X.iloc[:11], np.r_[batch[:10], ["C"]], C.iloc[:11])
    with pytest.raises(ValueError, match=r"'covariates' lacks the columns \['sex'\]"):
        ComBat().fit(X, batch, C[["age"]])
    with pytest.raises(ValueError, match="rank deficient"):
        ComBat(covariates=("age",)).fit(X, batch, C.assign(age=1.0))
    Xn = X.copy()
    Xn.iloc[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"'X' has missing or infinite values in 1 column\(s\) \['f1'\] \(rows \['s000'\]\)"):
        ComBat().fit(Xn, batch, C)
    model = ComBat().fit(X, batch, C)
    with pytest.raises(ValueError, match=r"batch 'Z' needs >= 2 scans"):
        model.transform(X.iloc[:1], ["Z"], C.iloc[:1])
    with pytest.raises(ValueError, match=r"'X' must have the fitted feature columns in order"):
        model.transform(X[X.columns[::-1]], batch, C)


def test_broken_features_at_a_new_site_do_not_flatten_the_others():
    p = 60
    X, batch, C, alpha, sigma = _simulate({"A": 40, "B": 40, "C": 30}, n_features=p, seed=11)
    train = batch != "C"
    Xc = X[~train].copy()
    Xc.iloc[:, :3] = Xc.iloc[:, :3] * 1e6  # three features broken at the new site (variance x 1e12)
    model = ComBat().fit(X[train], batch[train], C[train])
    out = model.transform(Xc, batch[~train], C[~train])
    est = model.new_sites_["C"]
    assert est.priors["n_outliers"] >= 3
    assert est.priors["b"] < 10  # the inverse-gamma prior is not blown up by the broken features
    # harmonized data should follow the training fit: grand mean + covariate effects, pooled SD
    truth = model.grand_mean_.to_numpy() + C.loc[~train, ["age", "sex"]].to_numpy() @ model.beta_.to_numpy()

    def errors(h):  # healthy features: median |mean error| and median SD ratio, in units of sigma
        resid = (h - truth).iloc[:, 3:]
        return float(np.median(np.abs(resid.mean() / sigma[3:]))), float((h.iloc[:, 3:].std() / sigma[3:]).median())

    loc_err, sd_ratio = errors(out)
    assert loc_err < 0.3 and 0.8 < sd_ratio < 1.3
    naive = ComBat(outlier_mads=None).fit(X[train], batch[train], C[train])
    loc_naive, sd_naive = errors(naive.transform(Xc, batch[~train], C[~train]))
    assert naive.new_sites_["C"].priors["gamma_bar"] > 1e4  # the priors are dominated by three features
    assert loc_naive > 3 * loc_err or sd_naive < 0.6
