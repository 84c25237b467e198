"""Differential entropy of Gaussian mixtures by Monte Carlo integration, and binned entropies.

Source: Goldfeld et al., "Estimating Information Flow in Deep Neural Networks" (ICML 2019),
Sections 3.1-3.2 (h(p_S * phi_beta) of an empirical distribution convolved with N(0, beta^2 I),
by Monte Carlo integration) and Section 5.1 (H(Bin(T)) as a measure of clustering). Pure
functions on NumPy or CuPy arrays; sums in float64.
"""
from __future__ import annotations

import math

import numpy as np

from ..arrays import namespace_of, to_numpy
from ..errors import ConfigError, DataError

#: Elements of one chunk of the draws x centres matrix (about 1 MiB in float32: it stays in cache).
CHUNK_ELEMENTS = 1 << 18


def gaussian_entropy_isotropic(d: int, beta: float) -> float:
    """h(N(0, beta^2 I_d)) = (d/2) log(2 pi e beta^2), in nats (Goldfeld et al., footnote 3)."""
    return 0.5 * d * math.log(2 * math.pi * math.e * beta ** 2)


def _native(a):
    """The array's own module (numpy or cupy), for in-place ufuncs with ``out=``."""
    import array_api_compat

    if array_api_compat.is_cupy_array(a):
        import cupy

        return cupy
    return np


def mixture_entropy(centres, beta: float, *, n_mc: int = 100_000, seed: int = 0, dtype=None,
                    chunk_elements: int = CHUNK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Entropy h(p_hat_S * phi_beta) of equal-weight Gaussian mixtures with centres S and
    covariance beta^2 I, by Monte Carlo integration (Goldfeld et al., Section 3.2).

    With G drawn from the mixture (a random centre plus N(0, beta^2 I) noise), h = -E[log
    p(G)] is estimated by the mean over ``n_mc`` draws, with
    log p(G) = logsumexp_j(-|G - s_j|^2 / (2 beta^2)) - log n - (d/2) log(2 pi beta^2).
    The exponents come from one matrix product, [G, 1] @ [S^T / beta^2; -|S|^2 / (2 beta^2)],
    since -|G - s_j|^2 / (2 beta^2) = (G.s_j - |s_j|^2 / 2) / beta^2 - |G|^2 / (2 beta^2), the last
    term constant per draw and added after the log-sum-exp. Centres are centred first
    (entropy is translation invariant; it keeps the cancellation small), and the distance
    matrix is processed in chunks that stay in cache.

    Parameters
    ----------
    centres : float [n, d] or [B, n, d]
        One mixture, or B mixtures of n centres each (NumPy or CuPy; computed there).
    beta : float
        Noise standard deviation, > 0.
    n_mc : int
        Monte Carlo draws per mixture.
    seed : int
        Seeds the draws (NumPy generator; draws are moved to the centres' device).
    dtype : numpy float32 or float64, optional
        Precision of the exponents. Default: float32 (several times faster exp) when its
        rounding error on an exponent, about 2^-24 max|s|^2 / beta^2, is below 1e-3 nats, else
        float64. Sums over draws are float64.
    chunk_elements : int
        Elements of one chunk of the draws x centres matrix.

    Returns
    -------
    (h, se) : float64, ndarray [B] (or scalars for one mixture), in nats
        The estimate and its Monte Carlo standard error, std(log p(G)) / sqrt(n_mc).

    Raises
    ------
    ConfigError
        beta <= 0 or n_mc < 2.
    DataError
        Centres with NaN/inf or of the wrong rank.
    """
    if not beta > 0:
        raise ConfigError(f"beta must be positive, got {beta}")
    if n_mc < 2:
        raise ConfigError("n_mc must be at least 2")
    xp = namespace_of(centres)
    nat = _native(centres)
    single = centres.ndim == 2
    c = centres[None] if single else centres
    if c.ndim != 3:
        raise DataError(f"centres must be [n, d] or [B, n, d], got shape {tuple(centres.shape)}")
    c = xp.astype(c, xp.float64)
    if not bool(xp.all(xp.isfinite(c))):
        raise DataError("mixture centres contain NaN or infinity")
    b, n, d = c.shape
    c = c - xp.mean(c, axis=1, keepdims=True)
    if dtype is None:
        big = float(xp.max(xp.sum(c * c, axis=2))) if n else 0.0
        dtype = np.float32 if 2.0 ** -24 * big / beta ** 2 < 1e-3 else np.float64
    dt = getattr(nat, np.dtype(dtype).name)
    inv = 1.0 / beta ** 2
    # one product gives the exponents up to a per-draw constant: [G, 1] @ [S^T / beta^2; -|S|^2 / (2 beta^2)]
    cn = -xp.sum(c * c, axis=2) * (0.5 * inv)                      # [B, n]
    ct = xp.astype(xp.concat([xp.permute_dims(c, (0, 2, 1)) * inv, cn[:, None, :]], axis=1), dt)   # [B, d+1, n]
    c = xp.astype(c, dt)
    const = -math.log(n) - 0.5 * d * math.log(2 * math.pi * beta ** 2)
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_elements // max(1, n))                  # draws x mixtures per chunk
    per_b = max(1, min(n_mc, rows))
    bs = max(1, rows // per_b)
    s1 = np.zeros(b)
    s2 = np.zeros(b)
    for b0 in range(0, b, bs):
        b1 = min(b, b0 + bs)
        for m0 in range(0, n_mc, per_b):
            m = min(per_b, n_mc - m0)
            idx = xp.asarray(rng.integers(0, n, (b1 - b0, m)))
            eps = xp.asarray((rng.standard_normal((b1 - b0, m, d)) * beta).astype(dtype))
            g = xp.take_along_axis(c[b0:b1], idx[:, :, None], axis=1) + eps      # [b, m, d]
            a = xp.concat([g, xp.ones((b1 - b0, m, 1), dtype=dt)], axis=2) @ ct[b0:b1]   # [b, m, n]
            top = xp.max(a, axis=2, keepdims=True)
            a -= top
            nat.exp(a, out=a)
            logp = (xp.astype(top[:, :, 0], xp.float64) + xp.log(xp.astype(xp.sum(a, axis=2), xp.float64))
                    - 0.5 * inv * xp.sum(xp.astype(g, xp.float64) ** 2, axis=2) + const)
            s1[b0:b1] += to_numpy(xp.sum(logp, axis=1))
            s2[b0:b1] += to_numpy(xp.sum(logp * logp, axis=1))
    mean = s1 / n_mc
    var = np.maximum(s2 / n_mc - mean ** 2, 0.0) * n_mc / (n_mc - 1)
    h, se = -mean, np.sqrt(var / n_mc)
    return (float(h[0]), float(se[0])) if single else (h, se)


def binned_entropy(t, bin_size: float, *, per_unit: bool = False) -> np.ndarray | float:
    """Discrete entropy H(Bin(T)) in bits of representations binned into cubes of side
    ``bin_size`` (Goldfeld et al., Section 5.1): bin index floor(t / bin_size) per unit.

    Parameters
    ----------
    t : float [N, d]
        One representation per sample (NumPy or CuPy).
    bin_size : float
        Side of the bins, > 0.
    per_unit : bool
        False: the entropy of the joint bin of the whole layer (a float). True: one entropy
        per unit (float64 [d]).

    Raises
    ------
    ConfigError
        bin_size <= 0.
    DataError
        NaN/inf, or t not 2-d.
    """
    if not bin_size > 0:
        raise ConfigError(f"bin size must be positive, got {bin_size}")
    t = to_numpy(t)
    if t.ndim != 2:
        raise DataError(f"representations must be [N, d], got shape {t.shape}")
    if not np.isfinite(t).all():
        raise DataError("representations contain NaN or infinity")
    codes = np.floor(t.astype(np.float64) / bin_size).astype(np.int64)

    def h(k):
        _, counts = np.unique(k, axis=0, return_counts=True)
        p = counts / counts.sum()
        return float(-(p * np.log2(p)).sum())

    if per_unit:
        return np.array([h(codes[:, j]) for j in range(codes.shape[1])])
    return h(codes)
