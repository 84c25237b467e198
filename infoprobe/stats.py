"""Permutation p values, their combination over a network, and multiple-comparison control
(Hod et al., "Importance and Coherence", Section 3.1.2 and Appendices A.4, A.7).

A *percentile p value* compares one statistic of a true sub-cluster with the same statistic
of n random sub-clusters: with n randoms it takes one of the n + 1 values 1/(n+1), ..., 1.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as _st

from .errors import ConfigError

SIDES = ("left", "right")
ADJUSTMENTS = {"bh": "fdr_bh", "holm": "holm"}


def percentile_p(true: float, null, side: str = "left") -> float:
    """Percentile p value of ``true`` among ``null`` draws, counting the true value itself.

    ``left``: p = (#{null <= true} + 1) / (n + 1), small when ``true`` is lower than the
    randoms (e.g. an accuracy change more negative than every random lesion's); ``right``:
    p = (#{null >= true} + 1) / (n + 1). Ties count against significance (conservative,
    Phipson & Smyth 2010), so p >= 1/(n+1) always.

    Parameters
    ----------
    true : float
    null : float array [n]
        Statistic of the random draws; NaN draws are left out (n counts the others;
        infinities compare as usual).
    side : {"left", "right"}

    Returns
    -------
    float
        NaN when ``true`` is NaN or every draw is NaN.

    Raises
    ------
    ConfigError
        Unknown ``side``.
    """
    if side not in SIDES:
        raise ConfigError(f"unknown side {side!r}; use left or right")
    null = np.asarray(null, np.float64).ravel()
    null = null[~np.isnan(null)]
    if np.isnan(true) or len(null) == 0:
        return float("nan")
    hits = np.count_nonzero(null <= true) if side == "left" else np.count_nonzero(null >= true)
    return (hits + 1) / (len(null) + 1)


def _finite(pvalues) -> np.ndarray:
    p = np.asarray(pvalues, np.float64).ravel()
    p = p[np.isfinite(p)]
    if len(p) == 0:
        raise ConfigError("no finite p values to combine")
    if (p <= 0).any() or (p > 1).any():
        raise ConfigError("p values must lie in (0, 1]")
    return p


def fisher_combined(pvalues, n_random: int) -> float:
    """Fisher's combined p value of percentile p values (Appendix A.4).

    Each p value is first shifted by -1/(2(n+1)), which centres the discrete null
    distribution (uniform on {1/(n+1), ..., 1}) at 1/2 (the paper subtracts 0.05 with 9
    random sub-clusters); then -2 sum log p is referred to chi-squared with 2m degrees of
    freedom, right-sided, by ``scipy.stats.combine_pvalues(method="fisher")``. Conservative.

    Parameters
    ----------
    pvalues : float array [m]
        Percentile p values (NaN entries are left out).
    n_random : int
        Random draws behind each p value.

    Returns
    -------
    float

    Raises
    ------
    ConfigError
        No finite p value, a p value outside (0, 1], or ``n_random < 1``.
    """
    if n_random < 1:
        raise ConfigError("n_random must be at least 1")
    p = _finite(pvalues) - 1.0 / (2 * (n_random + 1))
    return float(_st.combine_pvalues(p, method="fisher").pvalue)


def chi2_ranks(pvalues, n_random: int) -> float:
    """Chi-squared categorical test of the histogram of percentile p values (Appendix A.4).

    The p values fall on the n + 1 values k/(n+1); their counts are compared with the uniform
    expectation m/(n+1) by Pearson's chi-squared with n degrees of freedom, right-sided
    (``scipy.stats.chisquare``). It detects any non-uniformity (low, high or U-shaped p values).

    Parameters
    ----------
    pvalues : float array [m]
        Percentile p values (NaN entries are left out).
    n_random : int

    Returns
    -------
    float

    Raises
    ------
    ConfigError
        As :func:`fisher_combined`, or a p value that is not a multiple of 1/(n+1).
    """
    if n_random < 1:
        raise ConfigError("n_random must be at least 1")
    p = _finite(pvalues)
    ranks = p * (n_random + 1)
    k = np.rint(ranks).astype(np.int64)
    if not np.allclose(ranks, k, atol=1e-6):
        raise ConfigError(f"p values are not percentiles among {n_random} random draws")
    counts = np.bincount(k - 1, minlength=n_random + 1)
    return float(_st.chisquare(counts).pvalue)


def adjust(pvalues, method: str = "bh", alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Multiple-comparison control over a table of p values (Appendix A.7), by
    ``statsmodels.stats.multitest.multipletests``.

    Parameters
    ----------
    pvalues : float array [m]
        NaN entries stay NaN and are not counted among the m tests.
    method : {"bh", "holm"}
        Benjamini-Hochberg (false discovery rate) or Holm-Bonferroni (family-wise error rate).
    alpha : float
        The rate controlled.

    Returns
    -------
    reject : bool array [m]
    adjusted : float array [m]
        Adjusted p values.

    Raises
    ------
    ConfigError
        Unknown ``method``.
    """
    from statsmodels.stats.multitest import multipletests

    if method not in ADJUSTMENTS:
        raise ConfigError(f"unknown adjustment {method!r}; use {' or '.join(ADJUSTMENTS)}")
    p = np.asarray(pvalues, np.float64).ravel()
    ok = np.isfinite(p)
    reject = np.zeros(len(p), bool)
    adjusted = np.full(len(p), np.nan)
    if ok.any():
        r, a, _, _ = multipletests(p[ok], alpha=alpha, method=ADJUSTMENTS[method])
        reject[ok], adjusted[ok] = r, a
    return reject, adjusted


# --- paired comparison of two classifiers on the same samples (the CI gate) -------------------

def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact test of two classifiers run on the same samples (McNemar 1947; exact
    form: the conditional binomial test of Mosteller 1952).

    Only the discordant pairs carry information: under the null hypothesis that both models
    are equally accurate, ``b`` (samples the reference gets right and the candidate wrong) is
    Binomial(b + c, 1/2) given b + c. Two-sided p = min(1, 2 P[X <= min(b, c)]), by
    ``scipy.stats.binomtest``.

    Parameters
    ----------
    b, c : int
        Discordant counts: reference right and candidate wrong, and the other way round.

    Returns
    -------
    float
        The p value; 1 when there is no discordant pair.

    Raises
    ------
    ConfigError
        A negative count.
    """
    if b < 0 or c < 0:
        raise ConfigError("discordant counts are non-negative")
    if b + c == 0:
        return 1.0
    return float(min(1.0, _st.binomtest(int(b), int(b + c), 0.5).pvalue))


def drop_interval(b: int, c: int, n: int, confidence: float = 0.95, *, side: str = "two-sided") -> tuple[float, float]:
    """Confidence interval of the paired accuracy drop (b - c) / n: Bonett and Price's adjusted
    Wald interval for the difference of paired proportions (Bonett & Price 2012, "Adjusted Wald
    confidence interval for a difference of binomial proportions based on paired data",
    J. Educ. Behav. Stat. 37:479, eq. 6).

    With p12 = (b + 1) / (n + 2) and p21 = (c + 1) / (n + 2), the interval is
    p12 - p21 +- z sqrt((p12 + p21 - (p12 - p21)^2) / (n + 2)), clipped to [-1, 1]. Adding
    one to each discordant count keeps the interval honest when few or no pairs are
    discordant (a plain Wald or bootstrap interval collapses to [0, 0] there); its coverage is
    close to nominal down to small n (Fagerland, Lydersen & Laake 2014, Stat. Med. 33:2850,
    who recommend it).

    Parameters
    ----------
    b, c : int
        Discordant counts (:func:`mcnemar_exact`).
    n : int
        Samples compared.
    confidence : float
        In (0, 1).
    side : {"two-sided", "upper"}
        ``upper``: the one-sided bound at ``confidence``, returned as (-1, upper).

    Returns
    -------
    (low, high) : float, in accuracy units (fraction of samples)

    Raises
    ------
    ConfigError
        Counts inconsistent with n, ``confidence`` outside (0, 1) or unknown ``side``.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    if side not in ("two-sided", "upper"):
        raise ConfigError(f"unknown side {side!r}; use two-sided or upper")
    if n < 1 or b < 0 or c < 0 or b + c > n:
        raise ConfigError(f"discordant counts {b} and {c} do not fit {n} samples")
    p12, p21 = (b + 1) / (n + 2), (c + 1) / (n + 2)
    d = p12 - p21
    se = np.sqrt((p12 + p21 - d * d) / (n + 2))
    if side == "upper":
        return -1.0, float(min(1.0, d + _st.norm.ppf(confidence) * se))
    z = _st.norm.ppf((1 + confidence) / 2)
    return float(max(-1.0, d - z * se)), float(min(1.0, d + z * se))


def proportion_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a proportion k / n (e.g. the
    fraction of predicted labels that changed), by ``scipy.stats.binomtest(...).proportion_ci``.

    Raises
    ------
    ConfigError
        ``n < 1``, ``k`` outside [0, n] or ``confidence`` outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    if n < 1 or not 0 <= k <= n:
        raise ConfigError(f"{k} of {n} is not a proportion")
    return float(_st.binomtest(int(k), int(n), alternative="less").proportion_ci(confidence, "exact").high)


def detectable_drop(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy drop that McNemar's test at level ``alpha`` (two-sided) detects with
    probability ``power`` on ``n`` paired samples (Connor 1987, Biometrics 43:207, eq. 3,
    solved for the difference).

    Connor's sample size for a difference delta = p_b - p_c with discordance p_d = p_b + p_c is
    n = [z_(1-alpha/2) sqrt(p_d) + z_power sqrt(p_d - delta^2)]^2 / delta^2. A drop of delta
    implies p_d >= delta, so p_d is taken as max(``discordance``, delta): with no discordant
    pair observed the answer is about (z_(1-alpha/2) + z_power)^2 / n, the drop a data set
    of n samples could detect at all. Solved by bisection.

    Parameters
    ----------
    n : int
        Samples.
    discordance : float
        Expected fraction of discordant pairs (the observed (b + c) / n).
    alpha, power : float
        In (0, 1).

    Returns
    -------
    float
        The drop in accuracy units; 1.0 when no drop is detectable (tiny n).

    Raises
    ------
    ConfigError
        ``n < 1`` or ``alpha``, ``power`` or ``discordance`` out of range.
    """
    if n < 1 or not 0 < alpha < 1 or not 0 < power < 1 or not 0 <= discordance <= 1:
        raise ConfigError("detectable_drop needs n >= 1, alpha and power in (0, 1), discordance in [0, 1]")
    za, zb = _st.norm.ppf(1 - alpha / 2), _st.norm.ppf(power)

    def excess(d):  # increasing in d: positive once n samples suffice for drop d
        pd = max(discordance, d)
        return np.sqrt(n) * d - za * np.sqrt(pd) - zb * np.sqrt(max(pd - d * d, 0.0))

    if excess(1.0) < 0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if excess(mid) >= 0 else (mid, hi)
    return hi


def samples_needed(drop: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Paired samples McNemar's test needs to detect ``drop`` (Connor 1987, eq. 3, with the
    discordance raised to at least ``drop`` as in :func:`detectable_drop`, whose inverse this is).

    Raises
    ------
    ConfigError
        ``drop`` outside (0, 1] or ``alpha``, ``power``, ``discordance`` out of range.
    """
    if not 0 < drop <= 1 or not 0 < alpha < 1 or not 0 < power < 1 or not 0 <= discordance <= 1:
        raise ConfigError("samples_needed needs drop in (0, 1], alpha and power in (0, 1), discordance in [0, 1]")
    za, zb = _st.norm.ppf(1 - alpha / 2), _st.norm.ppf(power)
    pd = max(discordance, drop)
    return int(np.ceil((za * np.sqrt(pd) + zb * np.sqrt(max(pd - drop * drop, 0.0))) ** 2 / drop ** 2))


def across_replicates(rows, by=(), values=None, confidence: float = 0.95) -> list:
    """Statistics of numeric columns across replicate networks (the papers average their
    figures over networks: Liu et al. over networks, Hod et al. over 5 replicates).

    Parameters
    ----------
    rows : list of dict
        One row per replicate and group.
    by : sequence of str
        Columns that identify a group (e.g. layer, fraction); groups keep first-seen order.
    values : sequence of str, optional
        Columns to summarise (default: every column that is numeric in all rows and not in
        ``by``). Missing or non-finite values are left out of their group's count.
    confidence : float
        Level of the interval of the mean.

    Returns
    -------
    list of dict
        One row per group and value column: the ``by`` columns, ``measure`` (the column),
        ``n``, ``mean``, ``std`` (sample standard deviation, ddof 1), ``median``, ``min``,
        ``max``, and ``ci_low``/``ci_high``: mean -+ t_((1+confidence)/2, n-1) std / sqrt(n)
        (Student t, ``scipy.stats.t``); std and the interval are None for n < 2.

    Raises
    ------
    ConfigError
        ``confidence`` outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    by = tuple(by)

    def numeric(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

    if values is None:
        values = [k for k in (rows[0] if rows else {}) if k not in by and all(numeric(r.get(k)) for r in rows)]
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    out = []
    for key, members in groups.items():
        for col in values:
            v = np.array([float(r[col]) for r in members if numeric(r.get(col))])
            v = v[np.isfinite(v)]
            row = dict(zip(by, key), measure=col, n=len(v))
            if len(v) == 0:
                row.update(mean=None, std=None, median=None, min=None, max=None, ci_low=None, ci_high=None)
            else:
                m = float(v.mean())
                sd = float(v.std(ddof=1)) if len(v) > 1 else None
                half = float(_st.t.ppf((1 + confidence) / 2, len(v) - 1) * sd / np.sqrt(len(v))) if sd is not None \
                    else None
                row.update(mean=m, std=sd, median=float(np.median(v)), min=float(v.min()), max=float(v.max()),
                           ci_low=None if half is None else m - half, ci_high=None if half is None else m + half)
            out.append(row)
    return out
