"""Information measures of single quantized units (Liu, Amjad & Geiger 2018).

All functions are vectorised over the units of a layer and work on NumPy or CuPy arrays
(the namespace is taken from the inputs). Probabilities are relative frequencies (eq. 2);
information is in **bits**; sums run in float64; 0 log 0 = 0.

Typical use::

    edges = threshold_edges(n_units, 0.5)             # or uniform_edges / quantile_edges
    counts = joint_counts(quantize(t, edges), y, n_bins=2, n_classes=10)   # [U, B, C]
    h = entropy(counts); i = mutual_information(counts)

Source: Liu, Amjad, Geiger, "Understanding Individual Neuron Importance Using Information
Theory" (arXiv 1804.06679), Section 3 eq. 2; Section 4 eqs. 3-5; Appendix B eqs. 13-17. JS
subset separation of one-bit codes at any number of classes: Breiman, Friedman, Olshen & Stone,
"Classification and Regression Trees" (1984), Section 4.2.2; Hastie, Tibshirani & Friedman,
"The Elements of Statistical Learning" (2nd ed. 2009), Section 9.2.4.
"""
from __future__ import annotations

import numpy as np

from ..arrays import namespace_of, to_numpy as to_host
from ..errors import ConfigError

#: Default one-bit thresholds by activation (Section 3: 0.5 for sigmoid, 0 for ReLU; 0 for
#: tanh and other zero-centred or rectifying activations).
DEFAULT_THRESHOLDS = {
    "sigmoid": 0.5, "hardsigmoid": 0.5, "relu": 0.0, "tanh": 0.0, "leakyrelu": 0.0, "gelu": 0.0,
    "elu": 0.0, "selu": 0.0, "celu": 0.0, "prelu": 0.0, "softsign": 0.0, "hardswish": 0.0,
    "mish": 0.0, "relu6": 0.0, "silu": 0.0, "gelu_tanh": 0.0, "thresholdedrelu": 0.0,
    "none": 0.0,
}
#: Classes :func:`js_subset_separation` keeps apart by default when codes have more than two
#: bins (the others pooled): 2^12 splits per unit, exact up to 13 classes.
JS_TOP = 12
#: Most classes it keeps apart: 2^20 splits per unit (about 40 ns each per bin).
MAX_JS_TOP = 20
#: float64 [U, B, S] arrays the search over S splits holds at once (the split counts and the
#: temporaries of the binary MI).
_JS_TABLES = 6


def default_threshold(activation: str) -> float:
    """One-bit threshold for ``activation`` (see :data:`DEFAULT_THRESHOLDS`).

    Raises
    ------
    ConfigError
        No documented default exists (e.g. softplus): pass a threshold explicitly.
    """
    try:
        return DEFAULT_THRESHOLDS[activation]
    except KeyError:
        raise ConfigError(f"no default one-bit threshold for activation {activation!r}; pass "
                          "a threshold (--threshold) or use a uniform or quantile quantizer (--quantizer)") from None


def _xp(*arrays):
    return namespace_of(*arrays)


def threshold_edges(n_units: int, threshold: float, like=None):
    """Inner bin edges [U, 1] of the one-bit quantizer: code 1 iff ``t > threshold``."""
    xp = _xp(like) if like is not None else _xp(np.empty(0))
    return xp.full((n_units, 1), float(threshold), dtype=xp.float64)


def uniform_edges(t_min, t_max, n_bins: int):
    """Inner edges [U, B-1] of B equal-width bins between per-unit ``t_min`` and ``t_max`` [U].

    Appendix C of the source paper ("quantizer resolution").
    """
    if n_bins < 2:
        raise ConfigError("a quantizer needs at least 2 bins")
    xp = _xp(t_min, t_max)
    t_min = xp.astype(t_min, xp.float64)
    t_max = xp.astype(t_max, xp.float64)
    k = xp.arange(1, n_bins, dtype=xp.float64) / n_bins
    return t_min[:, None] + (t_max - t_min)[:, None] * k[None, :]


def quantile_edges(t, n_bins: int):
    """Inner edges [U, B-1] at the per-unit quantiles k/B, k = 1..B-1, of ``t`` [N, U].

    With many tied values (e.g. ReLU zeros) several edges coincide and some bins stay empty.
    """
    if n_bins < 2:
        raise ConfigError("a quantizer needs at least 2 bins")
    xp = _xp(t)
    q = xp.arange(1, n_bins, dtype=xp.float64) / n_bins
    # array-api has no quantile; both NumPy and CuPy provide one with the same signature
    mod = __import__("cupy") if type(t).__module__.startswith("cupy") else np
    return mod.quantile(mod.asarray(t, dtype=mod.float64), mod.asarray(q), axis=0).T


def quantize(t, edges):
    """Bin codes of activations.

    Parameters
    ----------
    t : float array [N, U]
    edges : float array [U, B-1]
        Inner edges per unit, non-decreasing.

    Returns
    -------
    int64 array [N, U]
        Code of each value = number of its unit's inner edges strictly below it (0..B-1).
    """
    xp = _xp(t, edges)
    codes = xp.zeros(t.shape, dtype=xp.int64)
    for k in range(edges.shape[1]):
        codes = codes + xp.astype(t > edges[:, k][None, :], xp.int64)
    return codes


def _bincount(idx, minlength):
    if type(idx).__module__.startswith("cupy"):
        import cupy

        return cupy.bincount(idx, minlength=minlength)
    return np.bincount(np.asarray(idx), minlength=minlength)


def joint_counts(codes, labels, n_bins: int, n_classes: int):
    """Joint frequency table of quantized unit outputs and class labels (eq. 2, unnormalised).

    Parameters
    ----------
    codes : int array [N, U]
        From :func:`quantize`, values in 0..n_bins-1.
    labels : int array [N]
        Class indices 0..n_classes-1.

    Returns
    -------
    float64 array [U, B, C]
        ``counts[u, b, c]`` = number of samples with unit u in bin b and label c. Tables from
        disjoint row blocks add up, so large stores are processed in chunks.
    """
    xp = _xp(codes, labels)
    n, u = codes.shape
    idx = (xp.arange(u, dtype=xp.int64)[None, :] * (n_bins * n_classes)
           + codes * n_classes + xp.astype(labels, xp.int64)[:, None])
    flat = _bincount(xp.reshape(idx, (-1,)), minlength=u * n_bins * n_classes)
    return xp.astype(xp.reshape(flat, (u, n_bins, n_classes)), xp.float64)


def _plogp_ratio(p, q, xp):
    """Sum over the last axes of p * log2(p / q) with 0 log 0 = 0 (same shapes)."""
    safe_p = xp.where(p > 0, p, 1.0)
    safe_q = xp.where(q > 0, q, 1.0)
    return xp.where(p > 0, p * (xp.log2(safe_p) - xp.log2(safe_q)), 0.0)


def entropy(counts):
    """H(T) in bits per unit (eq. 3) from a joint table ``counts`` [U, B, C] (or [U, B]).

    Returns float64 [U].
    """
    xp = _xp(counts)
    pt = xp.sum(counts, axis=2) if counts.ndim == 3 else counts
    pt = pt / xp.sum(pt, axis=1, keepdims=True)
    return -xp.sum(_plogp_ratio(pt, xp.ones_like(pt), xp), axis=1)


def mutual_information(counts):
    """I(T;Y) = H(T) - H(T|Y) in bits per unit (eq. 4) from ``counts`` [U, B, C].

    Returns float64 [U].
    """
    xp = _xp(counts)
    n = xp.sum(counts, axis=(1, 2), keepdims=True)
    p = counts / n
    pt = xp.sum(p, axis=2, keepdims=True)
    py = xp.sum(p, axis=1, keepdims=True)
    return xp.sum(_plogp_ratio(p, pt * py, xp), axis=(1, 2))


def specific_information(counts):
    """Specific information D_KL(P_{T|Y=y} || P_T) in bits, per unit and class (Section 4.3).

    Returns float64 [U, C]; NaN for classes absent from the data.
    """
    xp = _xp(counts)
    ny = xp.sum(counts, axis=1, keepdims=True)  # [U, 1, C]
    pt = xp.sum(counts, axis=2, keepdims=True) / xp.sum(counts, axis=(1, 2), keepdims=True)
    p_t_given_y = counts / xp.where(ny > 0, ny, 1.0)
    d = xp.sum(_plogp_ratio(p_t_given_y, xp.broadcast_to(pt, counts.shape), xp), axis=1)
    return xp.where(ny[:, 0, :] > 0, d, xp.nan)


def kl_selectivity(counts):
    """KL selectivity max_y D_KL(P_{T|Y=y} || P_T) in bits (eq. 5), and the maximising class.

    Returns
    -------
    value : float64 [U]
    argmax_class : int64 [U]
    """
    xp = _xp(counts)
    s = specific_information(counts)
    s = xp.where(xp.isnan(s), -xp.inf, s)
    return xp.max(s, axis=1), xp.argmax(s, axis=1)


def _xlog2x(x, xp):
    """x log2 x elementwise, 0 at x = 0."""
    return x * xp.log2(xp.where(x > 0, x, 1.0))


def _binary_mi(in_a, total):
    """I(T; 1[Y in A]) in bits from counts ``in_a`` [U, B, S] of samples in A and ``total`` [U, B, 1].

    From counts x: I = (sum g(x_{t,a}) - sum g(x_t) - sum g(x_a) + g(n)) / n with g(x) = x log2 x,
    which needs four [U, B, S] temporaries; rounding below 0 is clipped to 0.
    """
    xp = _xp(in_a, total)
    n = xp.sum(total, axis=(1, 2))[:, None]                       # [U, 1]
    n_a = xp.sum(in_a, axis=1)                                    # [U, S]
    s = xp.sum(_xlog2x(in_a, xp), axis=1)
    s = s + xp.sum(_xlog2x(total - in_a, xp), axis=1)
    s = s - _xlog2x(n_a, xp) - _xlog2x(n - n_a, xp) - xp.sum(_xlog2x(total, xp), axis=(1, 2))[:, None] + _xlog2x(n, xp)
    return xp.maximum(s / xp.where(n > 0, n, 1.0), 0.0)


def labeled_mutual_information(counts):
    """Labeled MI max_y I(T; 1[Y=y]) in bits (eq. 16), and the maximising class.

    Returns
    -------
    value : float64 [U]
    argmax_class : int64 [U]
    """
    xp = _xp(counts)
    total = xp.sum(counts, axis=2, keepdims=True)
    mi = _binary_mi(counts, total)  # [U, C]
    return xp.max(mi, axis=1), xp.argmax(mi, axis=1)


def subset_masks(n_classes: int, start: int = 1, stop: int | None = None):
    """Class subsets A as 0/1 rows, one per unordered pair {A, complement}.

    Subsets are the non-empty subsets of classes 1..C-1 (class 0 always in the complement),
    numbered by bitmask ``m`` (bit c-1 set iff class c is in A), for ``start <= m < stop``.

    Returns float64 NumPy array [C, S].
    """
    stop = (1 << (n_classes - 1)) if stop is None else stop
    m = np.arange(start, stop, dtype=np.int64)
    bits = (m[None, :] >> np.arange(n_classes - 1)[:, None]) & 1
    return np.vstack([np.zeros((1, len(m))), bits]).astype(np.float64)


def _check_top(top) -> None:
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= top <= MAX_JS_TOP:
        raise ConfigError(f"JS subset separation keeps 1 to {MAX_JS_TOP} classes apart (2^k class splits per "
                          f"unit); got {top!r}")


def js_groups(class_counts, top: int = JS_TOP) -> np.ndarray:
    """Groups of classes that the split search of :func:`js_subset_separation` keeps together.

    Up to ``top + 1`` classes every class is its own group (group c = class c). With more, the
    ``top`` most frequent classes (ties: the lower index first) are groups 1..top in class
    order, and every other class is in group 0, which stays on one side of every split.

    Parameters
    ----------
    class_counts : int or float array [C]
        Samples of each class.
    top : int
        Classes kept apart, 1..:data:`MAX_JS_TOP`.

    Returns
    -------
    int64 NumPy array [C]
        The group of each class, 0..G-1 with G = min(C, top + 1).

    Raises
    ------
    ConfigError
        ``top`` outside 1..:data:`MAX_JS_TOP`.
    """
    _check_top(top)
    n = np.asarray(class_counts, np.float64).reshape(-1)
    if len(n) <= top + 1:
        return np.arange(len(n), dtype=np.int64)
    kept = np.sort(np.argsort(-n, kind="stable")[:top])
    groups = np.zeros(len(n), np.int64)
    groups[kept] = np.arange(1, top + 1)
    return groups


def _sides(in_a, xp):
    """The side of each split with fewer classes (on a tie, the side without class 0), bool [U, C]."""
    size = xp.sum(xp.astype(in_a, xp.int64), axis=1, keepdims=True)
    c = in_a.shape[1]
    flip = (2 * size > c) | ((2 * size == c) & in_a[:, :1])
    return in_a ^ flip


def _ordered_splits(counts, xp):
    """Exact max_A I(T; 1[Y in A]) for two bins: the best split is one of the C-1 splits of
    the classes sorted by P(T=1 | Y=y) (Breiman, Friedman, Olshen & Stone 1984, Section 4.2.2)."""
    u, _, c = counts.shape
    n_y = xp.sum(counts, axis=1)                                   # [U, C]
    ratio = counts[:, 1, :] / xp.where(n_y > 0, n_y, 1.0)
    order = xp.argsort(ratio, axis=1, stable=True)
    ranked = xp.take_along_axis(counts, xp.broadcast_to(order[:, None, :], counts.shape), axis=2)
    in_a = xp.cumulative_sum(ranked, axis=2)[:, :, :c - 1]         # A = the first 1..C-1 classes
    mi = _binary_mi(in_a, xp.sum(counts, axis=2, keepdims=True))   # [U, C-1]
    best, k = xp.max(mi, axis=1), xp.argmax(mi, axis=1)
    rank = xp.argsort(order, axis=1)                               # position of each class in the order
    return best, rank <= k[:, None]


def _all_splits(counts, block, xp):
    """Exact max_A I(T; 1[Y in A]) over all 2^(C-1) - 1 splits, ``block`` splits at a time."""
    u, b, c = counts.shape
    total = xp.sum(counts, axis=2, keepdims=True)
    best = xp.full(u, -xp.inf, dtype=xp.float64)
    arg = xp.zeros(u, dtype=xp.int64)
    n_sub = 1 << (c - 1)
    for start in range(1, n_sub, block):
        stop = min(start + block, n_sub)
        mi = _binary_mi(xp.matmul(counts, xp.asarray(subset_masks(c, start, stop))), total)   # [U, S]
        m = xp.max(mi, axis=1)
        better = m > best
        arg = xp.where(better, xp.argmax(mi, axis=1) + start, arg)
        best = xp.where(better, m, best)
    bits = xp.asarray(np.arange(c - 1, dtype=np.int64))
    in_a = xp.concat([xp.zeros((u, 1), dtype=xp.bool), ((arg[:, None] >> bits[None, :]) & 1) == 1], axis=1)
    return best, in_a


def js_subset_separation(counts, *, top: int = JS_TOP, block: int | None = None):
    """Jensen-Shannon subset separation in bits (eq. 14) and the best class subset.

    max over non-empty proper class subsets A of D_JS,P(A)(P_{T|Y in A} || P_{T|Y not in A})
    = max_A I(T; 1[Y in A]) (Lemma 3, eq. 14b), searched as follows:

    - two bins (a one-bit quantizer): **exact at any number of classes**, over the C-1 splits
      of the classes sorted by P(T=1 | Y=y), among which the best split lies for any concave
      impurity, entropy included (Breiman, Friedman, Olshen & Stone, *Classification and
      Regression Trees*, 1984, Section 4.2.2; Hastie, Tibshirani & Friedman, *The Elements
      of Statistical Learning*, 2009, Section 9.2.4); O(U C log C).
    - more bins: over all 2^(G-1) - 1 splits of the groups of :func:`js_groups`, ``block``
      splits at a time. Exact up to ``top + 1`` classes; with more, the ``top`` most frequent
      classes are kept apart and the others pooled on one side, which gives a lower bound (a
      maximum over fewer subsets) that is still >= the labeled MI of every kept class.

    Parameters
    ----------
    counts : float array [U, B, C]
        From :func:`joint_counts`.
    top : int
        Classes kept apart with more than two bins (1..:data:`MAX_JS_TOP`).
    block : int, optional
        Splits evaluated at once; default: as many as fit in 1/8 of the memory budget
        (:func:`infoprobe.limits.max_memory`), memory O(U B block).

    Returns
    -------
    value : float64 [U]
    in_subset : bool [U, C]
        The maximising A: of a split and its complement, the side with fewer classes (on a
        tie, the side without class 0).

    Raises
    ------
    ConfigError
        ``top`` outside 1..:data:`MAX_JS_TOP`.
    BudgetError
        One split of every unit does not fit in 1/8 of the memory budget.
    """
    from ..limits import rows_within

    xp = _xp(counts)
    u, b, c = counts.shape
    _check_top(top)
    if c < 2 or u == 0:
        return xp.zeros(u, dtype=xp.float64), xp.zeros((u, c), dtype=xp.bool)
    if b == 2:
        best, in_a = _ordered_splits(counts, xp)
        return best, _sides(in_a, xp)
    groups = js_groups(np.asarray(to_host(xp.sum(counts[0], axis=0))), top)
    g = int(groups.max()) + 1
    onehot = np.zeros((c, g))
    onehot[np.arange(c), groups] = 1.0
    pooled = counts if g == c else xp.matmul(counts, xp.asarray(onehot))
    if block is None:
        block = rows_within(u * b * 8 * _JS_TABLES, 1 << (g - 1), share=1 / 8,
                            what=f"one class split of {u:,} units x {b} bins")
    best, in_group = _all_splits(pooled, int(block), xp)
    return best, _sides(xp.take(in_group, xp.asarray(groups), axis=1), xp)


def subset_classes(in_subset) -> list:
    """Class indices in a subset given as one row of :func:`js_subset_separation`'s ``in_subset``."""
    return np.flatnonzero(np.asarray(to_host(in_subset))).tolist()
