"""Statistics of the study book: Table 1, repeated-measures ANOVA, confidence intervals.

* :func:`table1` / :func:`format_table1` — cohort characteristics per group with
  the tests of seed 001 (Student t-test, Fisher exact test, Mood's median test).
* :func:`rm_anova_errors` — 1-way repeated-measures ANOVA of absolute errors
  across models with Greenhouse-Geisser correction and Bonferroni-corrected
  paired post hoc tests (seed 001, Table 3).
* :func:`exact_ci_proportion` (Clopper-Pearson), :func:`bootstrap_ci`
  (percentile bootstrap over units, e.g. patients), :func:`regression_metrics`,
  :func:`bootstrap_regression_metrics` (paired percentile intervals of r, r², the
  coefficient of determination and MAE for several predictors at once).
* :func:`adjusted_difference` — a two-level group difference adjusted for covariates
  (OLS / ANCOVA: ``outcome ~ group + covariates``), with its 95 % CI and p-value.
* :func:`youden_threshold`, :func:`diagnostic_utility` — a decision threshold at
  the maximum of Youden's J and the clinical-utility analysis of seed 000
  (sensitivity, specificity, PPV, NPV with exact CIs, likelihood ratios,
  post-test probabilities at given prevalences).
* :func:`friedman_posthoc` — Friedman test across methods over repeated blocks
  with post hoc Wilcoxon signed-rank tests, Holm-corrected (seed 000).
* :func:`format_p` — p-values as printed in the tables; :func:`format_ci` — an
  estimate with its interval, "83.3 (79.5-86.5)".
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from msutils.core.validation import check_int

__all__ = [
    "KINDS",
    "BootstrapCI",
    "RMAnovaResult",
    "REGRESSION_METRICS",
    "adjusted_difference",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_regression_metrics",
    "diagnostic_utility",
    "exact_ci_proportion",
    "friedman_posthoc",
    "format_ci",
    "format_p",
    "format_table1",
    "regression_metrics",
    "rm_anova_errors",
    "table1",
    "youden_threshold",
]

logger = logging.getLogger(__name__)

#: Variable kinds understood by :func:`table1`.
KINDS = ("continuous", "categorical", "ordinal")

_TABLE1_COLUMNS = [
    "variable", "kind", "level", "group", "n", "mean", "sd", "median", "q1", "q3",
    "count", "percent", "summary", "test", "statistic", "p_value", "note",
]


def format_p(p: float, digits: int = 3) -> str:
    """Format a p-value: ``"<0.001"`` below 10**-digits, else rounded; NaN -> ``""``."""
    if p is None or not np.isfinite(p):
        return ""
    if p < 10.0**-digits:
        return f"<{10.0**-digits:.{digits}f}"
    return f"{p:.{digits}f}"


def format_ci(value: float | None, low: float | None, high: float | None, *, scale: float = 100.0,
              decimals: int = 1) -> str:
    """An estimate with its confidence interval as the seed papers print it: ``"83.3 (79.5-86.5)"``.

    A negative bound (e.g. of a correlation) is separated by " to " instead of "-":
    ``"0.37 (-0.55 to 0.89)"``.

    Parameters
    ----------
    value, low, high : float or None
        Estimate and interval bounds (e.g. fractions).
    scale : float
        Multiplier before printing (100: fractions as percent; 1 for mm).
    decimals : int
        Decimals printed.

    Returns
    -------
    str
        ``"n/a"`` when the estimate is missing or not finite (e.g. a ratio with a zero
        denominator); a missing bound prints as ``"n/a"`` inside the parentheses.
    """
    def num(x: float | None) -> str:
        return "n/a" if x is None or not np.isfinite(x) else f"{scale * float(x):.{decimals}f}"

    if value is None or not np.isfinite(value):
        return "n/a"
    lo, hi = num(low), num(high)
    sep = " to " if lo.startswith("-") or hi.startswith("-") else "-"
    return f"{num(value)} ({lo}{sep}{hi})"


# --------------------------------------------------------------------------- Table 1


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    s = pd.to_numeric(df[col], errors="coerce")
    bad = s.isna() & df[col].notna()
    if bad.any():
        row = bad.idxmax()
        raise ValueError(
            f"column {col!r} must be numeric; got {df.loc[row, col]!r} in row {row!r}"
        )
    return s.astype(float)


def _fisher_rxc(table: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float, str, str]:
    """(statistic, p, test name, note) for an r x c table (not 2 x 2)."""
    from scipy import stats

    if "method" in inspect.signature(stats.fisher_exact).parameters:
        method = stats.MonteCarloMethod(n_resamples=n_resamples, rng=np.random.default_rng(seed))
        res = stats.fisher_exact(table, method=method)
        return (float(res.statistic), float(res.pvalue), "Fisher exact test",
                f"r x c table: Monte Carlo p from {n_resamples} random tables (seed {seed})")
    chi2, p, _, _ = stats.chi2_contingency(table)  # pragma: no cover - old scipy only
    return (float(chi2), float(p), "chi-square test",  # pragma: no cover
            "r x c Fisher exact test unavailable in this scipy; chi-square used")


def _test_continuous(groups: list[np.ndarray], equal_var: bool) -> tuple[str, float, float, str]:
    from scipy import stats

    if any(len(g) < 2 for g in groups):
        return ("", np.nan, np.nan, "a group has < 2 values: no test")
    if len(groups) == 2:
        res = stats.ttest_ind(groups[0], groups[1], equal_var=equal_var)
        name = "Student t-test" if equal_var else "Welch t-test"
        return (name, float(res.statistic), float(res.pvalue), "")
    if equal_var:
        res = stats.f_oneway(*groups)
        return ("one-way ANOVA", float(res.statistic), float(res.pvalue), "")
    import pingouin as pg

    long = pd.DataFrame(
        {"y": np.concatenate(groups), "g": np.repeat(np.arange(len(groups)), [len(g) for g in groups])}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = pg.welch_anova(data=long, dv="y", between="g")
    return ("Welch ANOVA", float(out["F"].iloc[0]), float(out["p_unc"].iloc[0]), "")


def table1(
    df: pd.DataFrame,
    by: str,
    variables: Mapping[str, str],
    *,
    order: Sequence[Any] | None = None,
    equal_var: bool = True,
    decimals: int = 1,
    fisher_resamples: int = 100_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Cohort characteristics per group, with between-group tests (tidy).

    Parameters
    ----------
    df : DataFrame
        One row per unit to describe (patients: take one session per subject).
    by : str
        Grouping column (e.g. ``"center"``).
    variables : mapping name -> kind
        ``kind`` is one of ``"continuous"`` (mean (SD); Student t-test for two
        groups -- seed 001 -- or Welch's with ``equal_var=False``; one-way ANOVA
        / Welch ANOVA for more groups), ``"ordinal"`` (median [Q1, Q3]; Mood's
        median test, :func:`scipy.stats.median_test` with its default
        ``ties="below"``) or ``"categorical"`` (count (%) per level; Fisher
        exact test: exact for 2 x 2 tables, seeded Monte Carlo for r x c).
        For one level of interest (seed 001: "secondary-progressive course")
        pass a derived boolean column.
    order : sequence, optional
        Group order; default sorted group values.
    equal_var : bool
        Student (True, default, as in seed 001) or Welch (False) tests.
    decimals : int
        Decimals in the ``summary`` strings.
    fisher_resamples, seed : int
        Monte Carlo size and seed of the r x c Fisher exact test.

    Returns
    -------
    DataFrame with one row per (variable, level, group) and columns
    ``variable, kind, level, group, n, mean, sd, median, q1, q3, count,
    percent, summary, test, statistic, p_value, note``. ``level`` is ``""``
    except for categorical variables; the test columns repeat on every row of
    a variable. A first block ``variable="n"`` gives the group sizes. Missing
    values are left out per variable (``n`` counts the non-missing ones);
    percentages are of the non-missing values.
    """
    from scipy import stats

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"'df' must be a pandas DataFrame; got {type(df).__name__}")
    if by not in df.columns:
        raise ValueError(f"'by' column {by!r} not in the table; it has {list(map(str, df.columns))}")
    if not isinstance(variables, Mapping) or not variables:
        raise TypeError("'variables' must be a non-empty mapping name -> kind")
    missing = [v for v in variables if v not in df.columns]
    if missing:
        raise ValueError(f"variable column(s) {missing} not in the table; it has {list(map(str, df.columns))}")
    for v, kind in variables.items():
        if kind not in KINDS:
            raise ValueError(f"kind of {v!r} must be one of {list(KINDS)}; got {kind!r}")
    if by in variables:
        raise ValueError(f"'by' column {by!r} cannot also be a variable")

    data = df[df[by].notna()]
    if len(data) < len(df):
        logger.warning("table1: %d row(s) with missing %r left out", len(df) - len(data), by)
    present = list(pd.unique(data[by]))
    if order is None:
        groups = sorted(present, key=str)
    else:
        groups = list(order)
        unknown = [g for g in groups if g not in present]
        if unknown:
            raise ValueError(f"'order' value(s) {unknown} not found in column {by!r}; values: {sorted(present, key=str)}")
        dropped = [g for g in present if g not in groups]
        if dropped:
            logger.warning("table1: group(s) %s not in 'order' are left out", dropped)
    parts = {g: data[data[by] == g] for g in groups}
    d = decimals
    rows: list[dict[str, Any]] = []

    for g in groups:
        rows.append({"variable": "n", "kind": "n", "level": "", "group": g,
                     "n": len(parts[g]), "summary": str(len(parts[g]))})

    for var, kind in variables.items():
        test = {"test": "", "statistic": np.nan, "p_value": np.nan, "note": ""}
        var_rows: list[dict[str, Any]] = []
        if kind in ("continuous", "ordinal"):
            vals = {g: _numeric(parts[g], var).dropna().to_numpy() for g in groups}
            for g, v in vals.items():
                r: dict[str, Any] = {"variable": var, "kind": kind, "level": "", "group": g, "n": len(v)}
                if kind == "continuous":
                    mean = float(np.mean(v)) if len(v) else np.nan
                    sd = float(np.std(v, ddof=1)) if len(v) > 1 else np.nan
                    r.update(mean=mean, sd=sd, summary=f"{mean:.{d}f} ({sd:.{d}f})")
                else:
                    if len(v):
                        q1, med, q3 = (float(x) for x in np.percentile(v, [25, 50, 75]))
                    else:
                        q1 = med = q3 = np.nan
                    r.update(median=med, q1=q1, q3=q3, summary=f"{med:.{d}f} [{q1:.{d}f}, {q3:.{d}f}]")
                var_rows.append(r)
            arrays = list(vals.values())
            if len(groups) < 2:
                test["note"] = "single group: no test"
            elif kind == "continuous":
                name, stat, p, note = _test_continuous(arrays, equal_var)
                test.update(test=name, statistic=stat, p_value=p, note=note)
            elif any(len(a) == 0 for a in arrays):
                test["note"] = "a group has no values: no test"
            else:
                try:
                    stat, p, _, _ = stats.median_test(*arrays)
                    test.update(test="Mood's median test", statistic=float(stat), p_value=float(p))
                except ValueError as exc:  # e.g. every value on one side of the grand median
                    test.update(test="Mood's median test", note=f"not computable: {exc}")
        else:
            col = data[var]
            if isinstance(col.dtype, pd.CategoricalDtype):
                levels = [lv for lv in col.cat.categories if (col == lv).any()]
            else:
                levels = sorted(pd.unique(col.dropna()), key=str)
            counts = np.array(
                [[int((parts[g][var] == lv).sum()) for g in groups] for lv in levels], dtype=np.int64
            ).reshape(len(levels), len(groups))
            for j, g in enumerate(groups):
                n_g = int(parts[g][var].notna().sum())
                for i, lv in enumerate(levels):
                    c = int(counts[i, j])
                    pct = 100.0 * c / n_g if n_g else np.nan
                    var_rows.append({"variable": var, "kind": kind, "level": str(lv), "group": g,
                                     "n": n_g, "count": c, "percent": pct,
                                     "summary": f"{c} ({pct:.{d}f}%)"})
            if len(groups) < 2:
                test["note"] = "single group: no test"
            elif len(levels) < 2:
                test["note"] = "single level: no test"
            elif counts.shape == (2, 2):
                res = stats.fisher_exact(counts)
                test.update(test="Fisher exact test", statistic=float(res.statistic),
                            p_value=float(res.pvalue), note="statistic: odds ratio")
            else:
                stat, p, name, note = _fisher_rxc(counts, fisher_resamples, seed)
                test.update(test=name, statistic=stat, p_value=p, note=note)
        for r in var_rows:
            r.update(test)
        rows += var_rows
    out = pd.DataFrame(rows).reindex(columns=_TABLE1_COLUMNS)
    out["level"] = out["level"].fillna("")
    for c in ("summary", "test", "note"):
        out[c] = out[c].fillna("")
    return out


def format_table1(t1: pd.DataFrame, *, p_digits: int = 3) -> pd.DataFrame:
    """Paper-style wide Table 1 from :func:`table1` output.

    Rows ``"age, mean (SD)"``, ``"edss, median [IQR]"``, ``"sex = F, n (%)"``;
    one column per group headed ``"<group> (n=N)"``, then ``"P value"``
    (:func:`format_p`) and ``"test"``.
    """
    sizes = t1[t1["variable"] == "n"].set_index("group")["n"]
    body = t1[t1["variable"] != "n"].copy()
    label = {"continuous": "mean (SD)", "ordinal": "median [IQR]", "categorical": "n (%)"}

    def row_label(r: pd.Series) -> str:
        head = f"{r['variable']} = {r['level']}" if r["kind"] == "categorical" else str(r["variable"])
        return f"{head}, {label[r['kind']]}"

    body["row"] = body.apply(row_label, axis=1)
    rows = list(dict.fromkeys(body["row"]))
    groups = list(sizes.index)
    wide = body.pivot(index="row", columns="group", values="summary").reindex(index=rows, columns=groups)
    wide.columns = [f"{g} (n={int(sizes[g])})" for g in groups]
    first = body.drop_duplicates("row").set_index("row")
    wide["P value"] = first["p_value"].map(lambda p: format_p(p, p_digits))
    wide["test"] = first["test"]
    wide.index.name = None
    return wide


# --------------------------------------------------------------------------- RM ANOVA


@dataclass(frozen=True)
class RMAnovaResult:
    """Result of :func:`rm_anova_errors`.

    Attributes
    ----------
    anova : DataFrame
        One row: ``F, df1, df2, p_unc, eps`` (Greenhouse-Geisser epsilon),
        ``df1_gg, df2_gg`` (= eps * df), ``p_gg``, ``np2`` (partial eta
        squared), ``sphericity, W_spher, p_spher`` (Mauchly), ``n_subjects,
        n_models``.
    posthoc : DataFrame
        Paired t-tests for every model pair, in input model order (``a``
        before ``b``): ``a, b, mean_a, mean_b, t, dof, p_unc, p_bonf``
        (Bonferroni: p_unc x number of pairs, capped at 1), ``hedges``
        (t and hedges are positive when ``a`` has the larger mean error).
    """

    anova: pd.DataFrame
    posthoc: pd.DataFrame

    @property
    def F(self) -> float:
        return float(self.anova["F"].iloc[0])

    @property
    def p_gg(self) -> float:
        return float(self.anova["p_gg"].iloc[0])

    @property
    def eps(self) -> float:
        return float(self.anova["eps"].iloc[0])

    def pvalues(self) -> dict[str, float]:
        """``{"anova (GG)": p, "A vs B": Bonferroni p, ...}``."""
        out = {"anova (GG)": self.p_gg}
        for _, r in self.posthoc.iterrows():
            out[f"{r['a']} vs {r['b']}"] = float(r["p_bonf"])
        return out

    def summary(self) -> str:
        """Seed-001 style line, e.g. ``F(1.82, 180.39) = 7.94, p = 0.001, ...``."""
        a = self.anova.iloc[0]
        p = format_p(a["p_gg"])
        p_txt = f"p {p}" if p.startswith("<") else f"p = {p}"
        return (
            f"F({a['df1_gg']:.2f}, {a['df2_gg']:.2f}) = {a['F']:.2f}, {p_txt}; "
            f"partial eta^2 = {a['np2']:.2f}; df corrected with Greenhouse-Geisser "
            f"epsilon = {a['eps']:.2f} ({int(a['n_subjects'])} subjects, {int(a['n_models'])} models)"
        )


def _wide_errors(errors: pd.DataFrame, subject: str, within: str, dv: str) -> pd.DataFrame:
    if not isinstance(errors, pd.DataFrame):
        raise TypeError(f"'abs_errors' must be a pandas DataFrame; got {type(errors).__name__}")
    if {subject, within, dv} <= set(errors.columns):
        dup = errors.duplicated([subject, within])
        if dup.any():
            r = errors.loc[dup].iloc[0]
            raise ValueError(f"more than one {dv!r} value for {subject}={r[subject]!r}, {within}={r[within]!r}")
        wide = errors.pivot(index=subject, columns=within, values=dv)
        wide = wide[list(pd.unique(errors[within]))]  # first-appearance model order
    else:
        wide = errors.copy()
        if not wide.index.is_unique:
            raise ValueError("wide 'abs_errors' must have one row per subject (unique index)")
    wide = wide.apply(pd.to_numeric, errors="raise").astype(float)
    incomplete = wide.isna().any(axis=1)
    if incomplete.any():
        logger.warning("rm_anova_errors: %d subject(s) with missing errors left out", int(incomplete.sum()))
        wide = wide[~incomplete]
    if wide.shape[1] < 2:
        raise ValueError(f"need >= 2 models (columns); got {list(wide.columns)}")
    if wide.shape[0] < 3:
        raise ValueError(f"need >= 3 subjects with errors for every model; got {wide.shape[0]}")
    return wide


def rm_anova_errors(
    abs_errors: pd.DataFrame,
    *,
    subject: str = "subject",
    within: str = "model",
    dv: str = "abs_error",
) -> RMAnovaResult:
    """1-way repeated-measures ANOVA of absolute errors across models (seed 001).

    Parameters
    ----------
    abs_errors : DataFrame
        Long (columns ``subject``, ``within``, ``dv``) or wide (one row per
        subject, one column per model). Subjects lacking a value for any model
        are left out (logged).
    subject, within, dv : str
        Column names of the long format.

    Returns
    -------
    RMAnovaResult
        ANOVA with Greenhouse-Geisser correction (:func:`pingouin.rm_anova`,
        ``correction=True``) and Bonferroni-corrected paired t-tests
        (:func:`pingouin.pairwise_tests`, ``padjust="bonf"``).
    """
    import pingouin as pg

    wide = _wide_errors(abs_errors, subject, within, dv)
    wide.index.name, wide.columns.name = "subject", "model"
    long = wide.reset_index().melt(id_vars="subject", var_name="model", value_name="abs_error")
    long["model"] = long["model"].astype(str)
    with warnings.catch_warnings():
        # pingouin 0.7 calls pandas APIs deprecated in pandas 3.1 (inplace=...)
        warnings.simplefilter("ignore", DeprecationWarning)
        aov = pg.rm_anova(data=long, dv="abs_error", within="model", subject="subject",
                          correction=True, detailed=True, effsize="np2")
        ph = pg.pairwise_tests(data=long, dv="abs_error", within="model", subject="subject",
                               padjust="bonf")
    a = aov.iloc[0]
    k, n = wide.shape[1], wide.shape[0]
    df1, df2 = float(a["DF"]), float(aov["DF"].iloc[1])
    eps = float(a["eps"]) if "eps" in aov.columns and pd.notna(a.get("eps")) else 1.0
    p_unc = float(a["p_unc"])
    p_gg = float(a["p_GG_corr"]) if "p_GG_corr" in aov.columns and pd.notna(a.get("p_GG_corr")) else p_unc
    anova = pd.DataFrame([{
        "source": "model", "F": float(a["F"]), "df1": df1, "df2": df2, "p_unc": p_unc,
        "eps": eps, "df1_gg": eps * df1, "df2_gg": eps * df2, "p_gg": p_gg, "np2": float(a["np2"]),
        "sphericity": a.get("sphericity", True), "W_spher": float(a.get("W_spher", np.nan)),
        "p_spher": float(a.get("p_spher", np.nan)), "n_subjects": n, "n_models": k,
    }])
    means = wide.mean()
    means.index = means.index.astype(str)
    posthoc = pd.DataFrame({
        "a": ph["A"].astype(str), "b": ph["B"].astype(str),
        "mean_a": ph["A"].astype(str).map(means).to_numpy(), "mean_b": ph["B"].astype(str).map(means).to_numpy(),
        "t": ph["T"].astype(float), "dof": ph["dof"].astype(float),
        "p_unc": ph["p_unc"].astype(float), "p_bonf": ph["p_corr"].astype(float),
        "hedges": ph["hedges"].astype(float),
    })
    # pingouin orders pairs alphabetically; report them in the input column order
    pos = {m: i for i, m in enumerate(map(str, wide.columns))}
    flip = posthoc["a"].map(pos) > posthoc["b"].map(pos)
    posthoc.loc[flip, ["a", "b"]] = posthoc.loc[flip, ["b", "a"]].to_numpy()
    posthoc.loc[flip, ["mean_a", "mean_b"]] = posthoc.loc[flip, ["mean_b", "mean_a"]].to_numpy()
    posthoc.loc[flip, ["t", "hedges"]] *= -1
    posthoc = posthoc.assign(_a=posthoc["a"].map(pos), _b=posthoc["b"].map(pos))
    posthoc = posthoc.sort_values(["_a", "_b"]).drop(columns=["_a", "_b"]).reset_index(drop=True)
    return RMAnovaResult(anova=anova, posthoc=posthoc)


# --------------------------------------------------------------------------- intervals


def exact_ci_proportion(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) confidence interval of ``k / n``.

    Uses :meth:`scipy.stats.binomtest(...).proportion_ci(method="exact")`.
    Returns ``(low, high)``; e.g. 0/10 -> (0, 0.3085) at 95 %.
    """
    from scipy import stats

    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"'{name}' must be an integer; got {v!r}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1; got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"'alpha' must be in (0, 1); got {alpha!r}")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="exact")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap interval: ``estimate`` on all data, ``low``/``high``."""

    estimate: float
    low: float
    high: float
    alpha: float
    n_boot: int
    n_valid: int
    n_units: int


def _take(data: Any, idx: np.ndarray) -> Any:
    if isinstance(data, (pd.DataFrame, pd.Series)):
        return data.iloc[idx]
    return data[idx]


def bootstrap_ci(
    data: Any,
    statistic: Callable[[Any], float] | None = None,
    *,
    units: Sequence[Any] | np.ndarray | pd.Series | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap confidence interval, resampling whole units.

    Parameters
    ----------
    data : 1-D array-like, 2-D array or DataFrame
        Observations, one per row (per-patient values, per-slice rows, ...).
    statistic : callable, optional
        ``statistic(subset) -> float`` where ``subset`` has the type of
        ``data`` (ndarray or DataFrame rows). Default: mean of a 1-D ``data``.
    units : array-like, optional
        Unit id of each row (e.g. patient id of each slice). Units are drawn
        with replacement and *all* rows of a drawn unit enter the resample
        (cluster bootstrap), so rows of one patient never count as
        independent. Default: every row is its own unit.
    n_boot : int
        Number of resamples.
    alpha : float
        Two-sided level: the interval is the ``alpha/2`` and ``1 - alpha/2``
        percentiles of the bootstrap statistics.
    seed : int
        Seed of :func:`numpy.random.default_rng`; same seed, same interval.

    Returns
    -------
    BootstrapCI
        Resamples whose statistic is NaN (e.g. a sensitivity without
        positives) are dropped; ``n_valid`` says how many remain.
    """
    if isinstance(data, pd.Series):
        data = data.to_numpy()
    if not isinstance(data, pd.DataFrame):
        data = np.asarray(data)
    n_rows = len(data)
    if n_rows == 0:
        raise ValueError("'data' is empty")
    if statistic is None:
        if isinstance(data, pd.DataFrame) or data.ndim != 1:
            raise ValueError("'statistic' is required unless 'data' is 1-D")
        statistic = np.mean
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"'n_boot' must be a positive integer; got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"'alpha' must be in (0, 1); got {alpha!r}")
    if units is None:
        groups = [np.array([i]) for i in range(n_rows)]
    else:
        u = np.asarray(units)
        if len(u) != n_rows:
            raise ValueError(f"'units' has {len(u)} entries but 'data' has {n_rows} rows")
        codes, _ = pd.factorize(u)
        if (codes < 0).any():
            raise ValueError("'units' has missing values")
        order = np.argsort(codes, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    rng = np.random.default_rng(seed)
    n_units = len(groups)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        draw = rng.integers(0, n_units, n_units)
        idx = np.concatenate([groups[i] for i in draw])
        boots[b] = float(statistic(_take(data, idx)))
    valid = boots[np.isfinite(boots)]
    if len(valid) < n_boot:
        logger.warning("bootstrap_ci: %d of %d resamples gave a non-finite statistic", n_boot - len(valid), n_boot)
    lo, hi = (np.quantile(valid, [alpha / 2, 1 - alpha / 2]) if len(valid) else (np.nan, np.nan))
    return BootstrapCI(estimate=float(statistic(data)), low=float(lo), high=float(hi), alpha=alpha,
                       n_boot=int(n_boot), n_valid=int(len(valid)), n_units=n_units)


# --------------------------------------------------------------------------- regression


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Agreement of predictions with observed values (seed 001, Table 3): the one regression scorer.

    Two different "R2" are in use and both are returned, under names that say which:

    - ``pearson_r2``: the squared Pearson correlation, the "R2" of seed 001's Table 3
      (there R2 = r**2 in every cell, e.g. r 0.797 -> 0.635); blind to bias and scale;
    - ``r2_score``: the coefficient of determination (:func:`sklearn.metrics.r2_score`),
      lower than ``pearson_r2`` when predictions are biased (e.g. at another site) and
      negative when they are worse than the mean.

    Parameters
    ----------
    y_true, y_pred : array-like
        Observed and predicted values, same length (>= 2), finite.

    Returns
    -------
    dict
        ``n``, ``r`` (Pearson correlation), ``r_pvalue`` (its two-sided p-value, NaN
        for fewer than 3 pairs), ``pearson_r2``, ``r2_score`` and ``mae`` (mean absolute
        error). ``r``, ``r_pvalue`` and ``pearson_r2`` are NaN when either input is constant.
    """
    from scipy import stats
    from sklearn.metrics import mean_absolute_error, r2_score

    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"'y_true' has {t.size} values but 'y_pred' has {p.size}")
    bad = np.flatnonzero(~(np.isfinite(t) & np.isfinite(p)))
    if bad.size:
        raise ValueError(f"non-finite value(s) at position(s) {bad[:10].tolist()}")
    if t.size < 2:
        raise ValueError(f"need >= 2 pairs; got {t.size}")
    r = pr = float("nan")
    if np.ptp(t) == 0 or np.ptp(p) == 0:
        logger.debug("regression_metrics: constant input, Pearson r undefined")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.pearsonr(t, p)
        r = float(res.statistic)
        pr = float(res.pvalue) if t.size >= 3 else float("nan")
    return {"n": int(t.size), "r": r, "r_pvalue": pr, "pearson_r2": r * r, "r2_score": float(r2_score(t, p)),
            "mae": float(mean_absolute_error(t, p))}


#: Metrics of :func:`bootstrap_regression_metrics`, keys of :func:`regression_metrics`.
REGRESSION_METRICS: tuple[str, ...] = ("r", "pearson_r2", "r2_score", "mae")


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Row indices of ``n_boot`` bootstrap resamples of ``n`` rows: an ``(n_boot, n)`` int array.

    Row ``b`` is resample ``b``; the same seed gives the same matrix.
    """
    n = check_int("n", n, 1)
    n_boot = check_int("n_boot", n_boot, 1)
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _metrics_rows(t: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of every row of ``t`` / ``p`` (resamples x observations), NaN where undefined."""
    dt = t - t.mean(axis=1, keepdims=True)
    dp = p - p.mean(axis=1, keepdims=True)
    ss_t = (dt * dt).sum(axis=1)
    ss_p = (dp * dp).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((ss_t > 0) & (ss_p > 0), (dt * dp).sum(axis=1) / np.sqrt(ss_t * ss_p), np.nan)
        r2 = np.where(ss_t > 0, 1.0 - ((t - p) ** 2).sum(axis=1) / ss_t, np.nan)
    return {"r": r, "pearson_r2": r * r, "r2_score": r2, "mae": np.abs(t - p).mean(axis=1)}


def bootstrap_regression_metrics(
    y_true: Any,
    y_pred: Any,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Percentile bootstrap intervals of r, r², the coefficient of determination and MAE.

    Observations (e.g. the patients of a test set) are resampled with replacement;
    every predictor (column of ``y_pred``) is scored on the *same* resamples
    (:func:`bootstrap_indices`), so the intervals of several models are paired.
    A resample where a metric is undefined (constant observed or predicted values)
    is left out of that metric's interval (``n_valid``).

    Parameters
    ----------
    y_true : 1-D array-like
        Observed values.
    y_pred : 1-D array-like, Series or DataFrame
        Predictions, one column per predictor (a 1-D input is named ``"prediction"``,
        a Series by its name).
    n_boot : int
        Number of resamples.
    alpha : float
        Two-sided level: the ``alpha/2`` and ``1 - alpha/2`` percentiles.
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per predictor and metric (:data:`REGRESSION_METRICS`): columns
        ``predictor, metric, estimate`` (:func:`regression_metrics` on all
        observations), ``low, high, n_valid``.
    """
    t = np.asarray(y_true, dtype=float).ravel()
    if isinstance(y_pred, pd.DataFrame):
        preds = {str(c): y_pred[c].to_numpy(dtype=float) for c in y_pred.columns}
    elif isinstance(y_pred, pd.Series):
        preds = {str(y_pred.name if y_pred.name is not None else "prediction"): y_pred.to_numpy(dtype=float)}
    else:
        preds = {"prediction": np.asarray(y_pred, dtype=float).ravel()}
    if not 0 < alpha < 1:
        raise ValueError(f"'alpha' must be in (0, 1); got {alpha!r}")
    for name, p in preds.items():
        if p.shape != t.shape:
            raise ValueError(f"'y_pred' column {name!r} has {p.size} values but 'y_true' has {t.size}")
    idx = bootstrap_indices(t.size, n_boot, seed)
    rows = []
    for name, p in preds.items():
        est = regression_metrics(t, p)
        boots = _metrics_rows(t[idx], p[idx])
        for metric in REGRESSION_METRICS:
            b = boots[metric][np.isfinite(boots[metric])]
            lo, hi = (np.quantile(b, [alpha / 2, 1 - alpha / 2]) if b.size else (np.nan, np.nan))
            rows.append({"predictor": name, "metric": metric, "estimate": float(est[metric]), "low": float(lo),
                         "high": float(hi), "n_valid": int(b.size)})
    return pd.DataFrame(rows, columns=["predictor", "metric", "estimate", "low", "high", "n_valid"])


def adjusted_difference(
    df: pd.DataFrame,
    outcome: str,
    group: str,
    covariates: Sequence[str] = (),
    *,
    levels: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Difference of ``outcome`` between two groups adjusted for covariates (OLS, ANCOVA).

    Fits ``outcome ~ 1 + [group == levels[1]] + covariates`` by ordinary least
    squares (:class:`statsmodels.regression.linear_model.OLS`) on the rows with
    every value present. Numeric covariates enter as they are; a non-numeric one
    (e.g. sex ``F`` / ``M``) as indicators of its levels after the first (sorted).

    Parameters
    ----------
    df : DataFrame
    outcome : str
        Numeric column.
    group : str
        Column with the two compared levels (rows of other levels are left out).
    covariates : sequence of str
    levels : sequence of two str, optional
        ``(reference, compared)``; default the two sorted levels of ``group``.
    alpha : float
        Level of the confidence interval.

    Returns
    -------
    dict
        ``levels``, ``n`` (per level, rows used), ``difference`` (adjusted mean of
        the compared level minus the reference), ``ci_low``, ``ci_high``, ``se``,
        ``t``, ``p``, ``df_resid``, ``covariates``.
    """
    import statsmodels.api as sm

    need = [outcome, group, *covariates]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"'df' lacks columns {missing}")
    d = df[need].dropna()
    g = d[group].astype(str)
    if levels is None:
        levels = sorted(g.unique())
        if len(levels) != 2:
            raise ValueError(f"'{group}' must have exactly 2 levels; got {levels}")
    levels = [str(v) for v in levels]
    if len(levels) != 2 or levels[0] == levels[1]:
        raise ValueError(f"'levels' must name two different levels; got {levels}")
    d, g = d[g.isin(levels)], g[g.isin(levels)]
    counts = {lv: int((g == lv).sum()) for lv in levels}
    if min(counts.values()) == 0:
        raise ValueError(f"'{group}' has no row of level(s) {[lv for lv, n in counts.items() if n == 0]}")
    X = pd.DataFrame({"group": (g == levels[1]).astype(float)}, index=d.index)
    for c in covariates:
        col = d[c]
        if pd.api.types.is_numeric_dtype(col):
            X[c] = col.astype(float)
        else:
            for lv in sorted(col.astype(str).unique())[1:]:
                X[f"{c}_{lv}"] = (col.astype(str) == lv).astype(float)
    y = pd.to_numeric(d[outcome], errors="raise").astype(float)
    fit = sm.OLS(y, sm.add_constant(X, has_constant="add")).fit()
    lo, hi = fit.conf_int(alpha=alpha).loc["group"]
    return {"levels": levels, "n": counts, "difference": float(fit.params["group"]), "ci_low": float(lo),
            "ci_high": float(hi), "se": float(fit.bse["group"]), "t": float(fit.tvalues["group"]),
            "p": float(fit.pvalues["group"]), "df_resid": float(fit.df_resid), "covariates": list(covariates)}


# --------------------------------------------------------------------------- diagnostic utility


def _binary_inputs(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(score, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"'y_true' has {y.size} values but 'score' has {s.size}")
    if not np.isin(y, [0, 1]).all():
        raise ValueError(f"'y_true' must hold 0/1 labels; got {sorted(set(y.tolist()))[:5]}")
    if not np.isfinite(s).all():
        raise ValueError("'score' has non-finite values")
    return y.astype(int), s


def youden_threshold(y_true: Any, score: Any) -> tuple[float, float]:
    """Decision threshold at the maximum of Youden's J = sensitivity + specificity - 1.

    A case is called positive when ``score >= threshold``. Candidate thresholds are
    the observed scores (:func:`sklearn.metrics.roc_curve`); among ties in J the
    highest threshold wins.

    Returns
    -------
    (threshold, J)
    """
    from sklearn.metrics import roc_curve

    y, s = _binary_inputs(y_true, score)
    if y.min() == y.max():
        raise ValueError("'y_true' needs both classes to choose a threshold")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    finite = np.isfinite(thr)
    best = int(np.flatnonzero(finite)[np.argmax(j[finite])])
    return float(thr[best]), float(j[best])


def diagnostic_utility(
    y_true: Any,
    score: Any,
    threshold: float,
    *,
    prevalences: Sequence[float] = (0.1, 0.3, 0.5),
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Clinical utility at a fixed threshold (seed 000).

    Parameters
    ----------
    y_true : array-like of 0/1
        1 = disease (MS).
    score : array-like of float
        Predicted probability of disease; positive when ``score >= threshold``.
    threshold : float
        Chosen beforehand (e.g. :func:`youden_threshold` on validation folds).
    prevalences : sequence of float in (0, 1)
        Pre-test probabilities for the post-test projection.
    alpha : float
        1 - confidence level of the Clopper-Pearson intervals.

    Returns
    -------
    dict
        ``tp, fp, tn, fn, n``; ``sensitivity, specificity, ppv, npv`` each with
        ``_ci_low`` / ``_ci_high`` (NaN when undefined); ``youden_j``,
        ``error_rate``, ``lr_pos`` = sens / (1 - spec) (inf when spec = 1),
        ``lr_neg`` = (1 - sens) / spec; ``post_test``: ``{prevalence: {"positive",
        "negative"}}`` from pre-test odds x LR.
    """
    y, s = _binary_inputs(y_true, score)
    if not np.isfinite(threshold):
        raise ValueError(f"'threshold' must be finite; got {threshold!r}")
    for p in prevalences:
        if not 0 < p < 1:
            raise ValueError(f"'prevalences' must be in (0, 1); got {p!r}")
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    out: dict[str, Any] = {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": int(y.size)}
    for name, (k, n) in {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
                         "ppv": (tp, tp + fp), "npv": (tn, tn + fn)}.items():
        out[name] = k / n if n else float("nan")
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (exact_ci_proportion(k, n, alpha) if n
                                                         else (float("nan"), float("nan")))
    sens, spec = out["sensitivity"], out["specificity"]
    out["youden_j"] = sens + spec - 1
    out["error_rate"] = (fp + fn) / y.size
    with np.errstate(divide="ignore", invalid="ignore"):
        out["lr_pos"] = float(np.divide(sens, 1 - spec)) if np.isfinite(sens) and np.isfinite(spec) else float("nan")
        out["lr_neg"] = float(np.divide(1 - sens, spec)) if np.isfinite(sens) and np.isfinite(spec) else float("nan")
    post: dict[float, dict[str, float]] = {}
    for p in prevalences:
        odds = p / (1 - p)
        pos, neg = odds * out["lr_pos"], odds * out["lr_neg"]
        post[float(p)] = {"positive": 1.0 if np.isinf(pos) else pos / (1 + pos),
                          "negative": neg / (1 + neg) if np.isfinite(neg) else float("nan")}
    out["post_test"] = post
    return out


# --------------------------------------------------------------------------- Friedman + Wilcoxon-Holm


def friedman_posthoc(scores: pd.DataFrame, *, alpha: float = 0.05) -> dict[str, Any]:
    """Friedman test across methods (columns) over blocks (rows), then Wilcoxon-Holm.

    Seed 000 compares classifiers by their F1 over the repetitions of a scenario:
    rows = repetitions (blocks), columns = classifiers. When the Friedman p is
    below ``alpha``, every pair of columns gets a two-sided Wilcoxon signed-rank
    test (exact for small samples; with 5 pairs the smallest possible p is
    0.0625), Holm-corrected (:func:`pingouin.pairwise_tests`).

    Returns
    -------
    dict
        ``friedman``: ``{"Q", "ddof", "p", "n_blocks", "n_methods"}``;
        ``posthoc``: DataFrame (``A``, ``B``, ``W``, ``p_unc``, ``p_holm``) or None
        when the Friedman test is not significant (or undefined).
    """
    import pingouin as pg

    if not isinstance(scores, pd.DataFrame):
        raise TypeError(f"'scores' must be a DataFrame (rows = blocks, columns = methods); got {type(scores).__name__}")
    if scores.shape[0] < 2 or scores.shape[1] < 2:
        raise ValueError(f"'scores' needs >= 2 blocks and >= 2 methods; got shape {scores.shape}")
    if not np.isfinite(scores.to_numpy(dtype=float)).all():
        raise ValueError("'scores' has missing values")
    wide = scores.reset_index(drop=True)  # blocks may carry a MultiIndex (e.g. LOCO iteration x repetition)
    wide.columns = [str(c) for c in wide.columns]
    long = wide.rename_axis("block").reset_index().melt(id_vars="block", var_name="method", value_name="score")
    long["method"] = long["method"].astype(str)
    values = scores.to_numpy(dtype=float)
    if np.all(values == values[:, :1]):  # every block ties all methods: Friedman undefined
        fr = {"Q": 0.0, "ddof": scores.shape[1] - 1, "p": 1.0}
    else:
        res = pg.friedman(data=long, dv="score", within="method", subject="block")
        fr = {"Q": float(res["Q"].iloc[0]), "ddof": int(res["ddof1"].iloc[0]), "p": float(res["p_unc"].iloc[0])}
    fr.update(n_blocks=int(scores.shape[0]), n_methods=int(scores.shape[1]))
    posthoc = None
    if np.isfinite(fr["p"]) and fr["p"] < alpha:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pw = pg.pairwise_tests(data=long, dv="score", within="method", subject="block", parametric=False,
                                   padjust="holm")
        posthoc = pw.rename(columns={"W_val": "W", "p_corr": "p_holm"})[["A", "B", "W", "p_unc", "p_holm"]]
    return {"friedman": fr, "posthoc": posthoc}
