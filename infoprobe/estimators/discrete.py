"""Information measures of single quantized units (Liu, Amjad & Geiger 2018).

All functions are vectorised over the units of a layer and work on NumPy or CuPy arrays
(the namespace is taken from the inputs). Probabilities are relative frequencies (eq. 2);
information is in **bits**; sums run in float64; 0 log 0 = 0.

Typical use::

    edges = threshold_edges(n_units, 0.5)             # or uniform_edges / quantile_edges
    counts = joint_counts(quantize(t, edges), y, n_bins=2, n_classes=10)   # [U, B, C]
    h = entropy(counts); i = mutual_information(counts)

Source: Liu, Amjad, Geiger, "Understanding Individual Neuron Importance Using Information
Theory" (arXiv 1804.06679), Section 3 eq. 2; Section 4 eqs. 3-5; Appendix B eqs. 13-17.
"""
from __future__ import annotations

import numpy as np

from ..arrays import namespace_of
from ..errors import ConfigError

#: Default one-bit thresholds by activation (Section 3: 0.5 for sigmoid, 0 for ReLU; 0 for
#: tanh and other zero-centred or rectifying activations).
DEFAULT_THRESHOLDS = {
    "sigmoid": 0.5, "hardsigmoid": 0.5, "relu": 0.0, "tanh": 0.0, "leakyrelu": 0.0, "gelu": 0.0,
    "elu": 0.0, "selu": 0.0, "celu": 0.0, "prelu": 0.0, "softsign": 0.0, "hardswish": 0.0,
    "mish": 0.0, "relu6": 0.0, "silu": 0.0, "gelu_tanh": 0.0, "thresholdedrelu": 0.0,
    "none": 0.0,
}
MAX_JS_CLASSES = 20


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


def _binary_mi(in_a, total):
    """I(T; 1[Y in A]) from counts ``in_a`` [U, B, S] of samples in A and ``total`` [U, B, 1]."""
    xp = _xp(in_a, total)
    two = xp.stack([in_a, total - in_a], axis=-1)  # [U, B, S, 2]
    n = xp.sum(two, axis=(1, 3), keepdims=True)
    p = two / n
    pt = xp.sum(p, axis=3, keepdims=True)
    pa = xp.sum(p, axis=1, keepdims=True)
    return xp.sum(_plogp_ratio(p, pt * pa, xp), axis=(1, 3))  # [U, S]


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


def js_subset_separation(counts, *, block: int = 4096):
    """Jensen-Shannon subset separation in bits (eq. 14), exact, and the best subset.

    max over non-empty proper class subsets A of D_JS,P(A)(P_{T|Y in A} || P_{T|Y not in A})
    = max_A I(T; 1[Y in A]) (Lemma 3, eq. 14b). All 2^(C-1) - 1 distinct splits are
    enumerated in blocks of ``block`` subsets, so memory is O(U * B * block).

    Returns
    -------
    value : float64 [U]
    subset_mask : int64 [U]
        Bitmask of the maximising A over classes 1..C-1 (bit c-1 for class c).

    Raises
    ------
    ConfigError
        More than 20 classes (2^19 subsets is the largest exact search offered).
    """
    xp = _xp(counts)
    n_classes = counts.shape[2]
    if n_classes > MAX_JS_CLASSES:
        raise ConfigError(f"JS subset separation enumerates 2^(C-1) class subsets; {n_classes} classes "
                          f"is over the limit of {MAX_JS_CLASSES}; leave it out (js=False, --no-js)")
    if n_classes < 2:
        z = xp.zeros(counts.shape[0], dtype=xp.float64)
        return z, xp.zeros(counts.shape[0], dtype=xp.int64)
    total = xp.sum(counts, axis=2, keepdims=True)
    best = xp.full(counts.shape[0], -xp.inf, dtype=xp.float64)
    arg = xp.zeros(counts.shape[0], dtype=xp.int64)
    n_sub = 1 << (n_classes - 1)
    for start in range(1, n_sub, block):
        stop = min(start + block, n_sub)
        masks = xp.asarray(subset_masks(n_classes, start, stop))
        in_a = xp.matmul(counts, masks)  # [U, B, S]
        mi = _binary_mi(in_a, total)
        m = xp.max(mi, axis=1)
        better = m > best
        arg = xp.where(better, xp.argmax(mi, axis=1) + start, arg)
        best = xp.where(better, m, best)
    return best, arg


def subset_classes(mask: int) -> list:
    """Classes in the subset numbered ``mask`` by :func:`subset_masks`."""
    return [c + 1 for c in range(63) if (int(mask) >> c) & 1]
