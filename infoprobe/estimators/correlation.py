"""Rank correlations and sign alignment for correlation-based visualisations of units (Hod et
al. 2021, Section 3.1.1 and Algorithm 2)."""
from __future__ import annotations

import numpy as np


def spearman_columns(m: np.ndarray) -> np.ndarray:
    """Columns of m [N, A] as centred ranks of unit norm (zeros for constant columns), so
    that the product of two such matrices is the Spearman correlation."""
    from scipy.stats import rankdata

    r = rankdata(m, axis=0).astype(np.float64)
    r -= r.mean(axis=0)
    sd = np.sqrt((r ** 2).sum(axis=0))
    sd[sd == 0] = np.inf
    return r / sd


def align_signs(v: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Sign alignment of unit visualisations (Hod et al., Algorithm 2, after Watanabe 2019).

    For ``iterations`` passes, each row i is flipped when the sum of cosines between it and
    the other rows is negative.

    Parameters
    ----------
    v : float array [K, P]
        One visualisation per unit.

    Returns
    -------
    float array [K, P]
    """
    v = np.array(v, np.float64)
    norm = np.linalg.norm(v, axis=1)
    norm[norm == 0] = 1.0
    cos = (v / norm[:, None]) @ (v / norm[:, None]).T
    np.fill_diagonal(cos, 0.0)
    sign = np.ones(len(v))
    for _ in range(iterations):
        changed = False
        for i in range(len(v)):
            if sign[i] * (cos[i] @ sign) < 0:  # sum of cosines with the other (signed) rows
                sign[i] = -sign[i]
                changed = True
        if not changed:
            break
    return v * sign[:, None]
