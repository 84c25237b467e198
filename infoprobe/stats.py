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
