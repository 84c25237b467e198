"""Estimators of frivolous units: prunability crossings, PCA redundancy, correlations, gains,
and the least-squares refactoring of redundant units.

Source: Casper, Boix et al., "Frivolous Units: Wider Networks Are Not Really That Wide"
(AAAI 2021), Section 3 ("Prunable Units", "Redundant Units") and Section 4 ("Measuring
Prunability and Redundancy"). Pure functions on NumPy or CuPy arrays; statistics are
accumulated in float64.
"""
from __future__ import annotations

import numpy as np

from ..arrays import namespace_of, to_numpy
from ..errors import ConfigError, DataError
from ..limits import require_memory, rows_within


def prunable_fraction(fractions, unchanged, tolerance: float = 0.2) -> tuple[float, bool]:
    """Fraction of units that can be ablated at random with at most ``tolerance`` of the
    labels changing: where the ablation curve first crosses ``1 - tolerance``, by linear
    interpolation between the two fractions around the crossing (Casper et al., Section 4,
    "Prunability").

    Parameters
    ----------
    fractions : float [K]
        Ablated fractions of the units, ascending, starting at 0 (e.g. 0, 1/6, ..., 1).
    unchanged : float [K]
        Fraction of test predictions that do not change relative to the intact network at
        each ablated fraction (1 at fraction 0).
    tolerance : float in [0, 1)
        Tolerated fraction of changed labels (the paper's 0.2).

    Returns
    -------
    (fraction, crossed) : (float, bool)
        ``crossed`` is False when the curve never falls below ``1 - tolerance``; the
        fraction is then the largest ablated fraction (1.0 for a full curve): every unit
        can be ablated within the tolerance. The *first* crossing is used when a curve
        dips below the level and rises again. A curve that starts below the level (a
        non-deterministic model) gives 0.

    Raises
    ------
    ConfigError
        Shapes differ, fractions are not ascending, or the tolerance is outside [0, 1).
    """
    f = np.asarray(fractions, np.float64)
    u = np.asarray(unchanged, np.float64)
    if f.ndim != 1 or f.shape != u.shape or len(f) < 1:
        raise ConfigError(f"fractions {f.shape} and unchanged {u.shape} must be 1-d arrays of one length")
    if np.any(np.diff(f) < 0):
        raise ConfigError("fractions must be ascending")
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"tolerance must be in [0, 1), got {tolerance}")
    level = 1.0 - tolerance
    below = np.flatnonzero(u < level)
    if len(below) == 0:
        return float(f[-1]), False
    i = int(below[0])
    if i == 0:
        return 0.0, True
    f0, f1, u0, u1 = f[i - 1], f[i], u[i - 1], u[i]
    return float(f0 + (u0 - level) * (f1 - f0) / (u0 - u1)), True


class Moments:
    """Streaming first and second moments of activation rows, in float64 (NumPy or CuPy).

    ``update(x)`` with x of shape [n, U] adds rows; ``covariance()`` is the [U, U]
    population covariance (divided by n, as PCA's explained-variance ratios need).

    Memory: the U x U sums (8 U^2 bytes) and, while a block is added, its rows in float64 a
    slice at a time (slices within 1/16 of the memory budget, :func:`infoprobe.limits.rows_within`).
    On the CPU the sums grow in place (BLAS ``dsyrk``: no U x U temporary per block);
    ``covariance(release=True)`` turns them into the covariance in place.
    """

    def __init__(self):
        self.n = 0
        self.s1 = None
        self.s2 = None
        self.shift = None

    def update(self, x) -> None:
        """Add the rows of ``x`` [n, U] (any float type; accumulated in float64).

        Raises
        ------
        DataError
            ``x`` is not 2-d, or holds NaN or infinity.
        BudgetError
            One row in float64 takes more than 1/16 of the memory budget.
        """
        xp = namespace_of(x)
        if x.ndim != 2:
            raise DataError(f"activation rows must be [n, units], got shape {tuple(x.shape)}")
        if self.s2 is None and self.n:
            raise DataError("the moments were released by covariance(release=True) and take no more rows")
        step = rows_within(16 * x.shape[1], x.shape[0], share=1 / 16, what="one row of activations in float64")
        for s in range(0, x.shape[0], step):
            d = xp.astype(x[s:s + step], xp.float64)
            if not bool(xp.all(xp.isfinite(d))):
                raise DataError("activations contain NaN or infinity")
            if self.s2 is None:
                self._start(xp, xp.mean(d, axis=0))
            d -= self.shift                # shifted sums keep the covariance accurate for large means
            self.s1 += xp.sum(d, axis=0)
            if self._blas:
                from scipy.linalg.blas import dsyrk   # the upper triangle of s2 += d.T @ d, in place

                dsyrk(1.0, d.T, beta=1.0, c=self.s2, trans=0, lower=0, overwrite_c=1)
            else:
                self.s2 += d.T @ d
            self.n += d.shape[0]

    def _start(self, xp, shift) -> None:
        u = shift.shape[0]
        self._blas = xp.__name__.endswith("numpy")
        self.shift = shift
        self.s1 = xp.zeros_like(shift)
        self.s2 = np.zeros((u, u), np.float64, order="F") if self._blas else xp.zeros((u, u), dtype=xp.float64)

    @property
    def mean(self):
        """float64 [U]."""
        return self.shift + self.s1 / self.n

    def covariance(self, *, release: bool = False):
        """float64 [U, U] population covariance.

        Parameters
        ----------
        release : bool
            Compute it in the memory of the sums (no second U x U array); the moments can
            then take no more rows.

        Raises
        ------
        DataError
            No rows were added, or the sums were released.
        """
        if not self.n:
            raise DataError("no activation rows to compute a covariance from")
        if self.s2 is None:
            raise DataError("the moments were released by covariance(release=True)")
        if release:
            cov, self.s2 = self.s2, None
        else:
            require_memory(self.s2.nbytes, f"a copy of the {self.s2.shape[0]:,} x {self.s2.shape[0]:,} covariance sums")
            cov = self.s2.copy()
        if self._blas:
            _symmetrise(cov)
        cov /= self.n
        m = self.s1 / self.n
        step = rows_within(8 * cov.shape[1], cov.shape[0], share=1 / 16, what="one row of the covariance")
        for s in range(0, cov.shape[0], step):
            cov[s:s + step] -= m[s:s + step, None] * m[None, :]
        return cov


def _symmetrise(a) -> None:
    """Copy the upper triangle of the square ``a`` onto its lower one, in place, a block of
    rows at a time."""
    u = a.shape[0]
    step = rows_within(8 * u, u, share=1 / 16, what="one row of the covariance")
    for s in range(0, u, step):
        e = min(s + step, u)
        a[e:, s:e] = a[s:e, e:].T
        blk = a[s:e, s:e]
        low = np.tril_indices(e - s, -1)
        blk[low] = blk.T[low]


def pca_spectrum(cov, *, overwrite: bool = False) -> np.ndarray:
    """Variances of the principal components (eigenvalues of the covariance), descending.

    Parameters
    ----------
    cov : float [U, U]
        Symmetric covariance matrix (NumPy or CuPy; the eigenvalues are computed on its
        device, without eigenvectors: LAPACK ``dsyevr`` through ``scipy.linalg.eigvalsh``
        on the CPU).
    overwrite : bool
        Let LAPACK work in ``cov``'s memory (a float64 NumPy ``cov`` is destroyed; no U x U
        copy is made). Otherwise a copy of 8 U^2 bytes is checked against the memory budget.

    Returns
    -------
    float64 ndarray [U]
        Clipped at 0 (round-off can make tiny eigenvalues negative); NumPy.

    Raises
    ------
    BudgetError
        The copy exceeds the memory budget.
    """
    xp = namespace_of(cov)
    if xp.__name__.endswith("numpy"):
        import scipy.linalg

        a = np.asarray(cov)
        if not overwrite or a.dtype != np.float64 or not (a.flags.c_contiguous or a.flags.f_contiguous):
            require_memory(8 * a.size, f"the eigenvalues of a {a.shape[0]:,} x {a.shape[0]:,} covariance (a copy)")
            a = np.array(a, np.float64, order="F")
        # LAPACK works in a Fortran-ordered array; a symmetric C-ordered one is its own transpose
        w = scipy.linalg.eigvalsh(a if a.flags.f_contiguous else a.T, overwrite_a=True, check_finite=False)
    else:
        w = xp.linalg.eigvalsh(xp.astype(cov, xp.float64))
    return np.clip(to_numpy(w)[::-1], 0.0, None)


def components_needed(spectrum, tolerance: float = 0.05) -> int:
    """Number of principal components needed to leave at most ``tolerance`` of the total
    variance unexplained: the number of *non-redundant* units (Casper et al., Section 4,
    "Redundancy"; tolerance 0.05 as in the paper).

    Parameters
    ----------
    spectrum : float [U]
        Component variances, descending (:func:`pca_spectrum`).
    tolerance : float in [0, 1)

    Returns
    -------
    int
        0 when the total variance is 0 (every unit constant).

    Raises
    ------
    ConfigError
        Tolerance outside [0, 1).
    """
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"tolerance must be in [0, 1), got {tolerance}")
    s = np.asarray(spectrum, np.float64)
    total = s.sum()
    if total <= 0:
        return 0
    # unexplained variance after k components, k = 0..U
    tail = np.concatenate([np.cumsum(s[::-1])[::-1], [0.0]]) / total
    tail[np.abs(tail) < 1e-12] = 0.0
    return int(np.flatnonzero(tail <= tolerance)[0])


def abs_correlations(cov) -> np.ndarray:
    """Absolute Pearson correlations |r_ij|, i < j, of the units of one layer (Casper et
    al., Fig. 2c-d), from their covariance, computed a block of rows at a time.

    Parameters
    ----------
    cov : float [U, U]
        NumPy or CuPy (copied to the host a block of rows at a time).

    Returns
    -------
    float64 ndarray [P]
        One value per pair of non-constant units (constant units have no correlation and
        are left out), pairs in row-major order of the upper triangle (as
        ``numpy.triu_indices``); NumPy. P = L (L - 1) / 2 for L live units.

    Raises
    ------
    BudgetError
        The P values (8 P bytes) exceed the memory budget.
    """
    d = diagonal(cov)
    live = np.flatnonzero(d > 1e-12 * max(1.0, d.max(initial=0.0)))
    n_live = len(live)
    pairs = n_live * (n_live - 1) // 2
    require_memory(8 * pairs, f"the {pairs:,} unit-to-unit correlations of {n_live:,} units")
    out = np.empty(pairs, np.float64)
    sd = np.sqrt(d[live])
    every = n_live == cov.shape[0]
    step = rows_within(16 * max(1, n_live), n_live, share=1 / 16, what="one row of the covariance")
    pos = 0
    for s in range(0, n_live, step):
        rows = slice(s, s + step) if every else live[s:s + step]
        blk = to_numpy(cov[rows])
        blk = blk[:, live] if not every else np.array(blk, np.float64)
        np.abs(blk, out=blk)
        blk /= sd[s:s + step, None]
        blk /= sd[None, :]
        np.clip(blk, 0.0, 1.0, out=blk)
        for i in range(blk.shape[0]):
            row = blk[i, s + i + 1:]
            out[pos:pos + len(row)] = row
            pos += len(row)
    return out


def diagonal(cov) -> np.ndarray:
    """The diagonal (the units' variances) of a [U, U] covariance: a float64 NumPy [U] copy,
    kept when ``cov`` is overwritten."""
    return np.array(to_numpy(cov.diagonal()), np.float64)


def gain(widths, counts) -> float:
    """Average growth factor of a count when the width doubles (Casper et al., Section 5,
    the gain g).

    For consecutive widths w1 < w2 with counts c1, c2 > 0 the growth per doubling is
    (c2 / c1) ** (1 / log2(w2 / w1)); g is the geometric mean of these over the pairs
    (for the widths 1/4, 1/2, 1, 2, 4 and positive counts: (c_4 / c_1/4) ** (1/4)).
    g > 2 means the count grows faster than the width.

    Parameters
    ----------
    widths : float [M]
        Width factors, distinct (any order).
    counts : float [M]
        Unit counts (or any counts normalised by one constant).

    Returns
    -------
    float
        NaN when no consecutive pair has two positive counts.

    Raises
    ------
    ConfigError
        Shapes differ or widths repeat or are not positive.
    """
    w = np.asarray(widths, np.float64)
    c = np.asarray(counts, np.float64)
    if w.shape != c.shape or w.ndim != 1:
        raise ConfigError("widths and counts must be 1-d arrays of one length")
    if np.any(w <= 0) or len(np.unique(w)) != len(w):
        raise ConfigError("widths must be positive and distinct")
    order = np.argsort(w)
    w, c = w[order], c[order]
    logs, weights = [], []
    for i in range(len(w) - 1):
        if c[i] > 0 and c[i + 1] > 0:
            doublings = np.log2(w[i + 1] / w[i])
            logs.append(np.log2(c[i + 1] / c[i]))
            weights.append(doublings)
    if not logs:
        return float("nan")
    return float(2.0 ** (np.sum(logs) / np.sum(weights)))


def independent_units(x, k: int) -> np.ndarray:
    """The ``k`` units chosen first by QR with column pivoting on the centred activations:
    a maximal linearly independent set when ``k`` is the rank (Casper et al., Section 3,
    "Redundant Units" and the appendix on removing them).

    Parameters
    ----------
    x : float [N, U]
        Activations (NumPy; rows are samples).
    k : int
        How many units to keep, 0 <= k <= U.

    Returns
    -------
    int64 ndarray [k]
        Kept units, ascending.
    """
    import scipy.linalg

    x = np.asarray(x, np.float64)
    if not 0 <= k <= x.shape[1]:
        raise ConfigError(f"cannot keep {k} of {x.shape[1]} units")
    if k == 0:
        return np.zeros(0, np.int64)
    xc = x - x.mean(axis=0)
    _, _, piv = scipy.linalg.qr(xc, mode="economic", pivoting=True)
    return np.sort(piv[:k]).astype(np.int64)


def refactor(x, kept) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares affine replacement of every unit outside ``kept`` by the kept units:
    t_j ~= sum_k a_jk t_k + c_j (Casper et al., appendix on removing redundant units; the
    form of a pruning plan's terms, DESIGN.md).

    Parameters
    ----------
    x : float [N, U]
        Activations (NumPy).
    kept : int [K]
        Kept units, ascending.

    Returns
    -------
    removed : int64 [R]
        The other units, ascending (R = U - K).
    coef : float64 [R, K]
        a_jk, the minimum-norm least-squares solution on centred activations.
    constant : float64 [R]
        c_j = mean(t_j) - sum_k a_jk mean(t_k): the mean goes into the next layer's bias.
    """
    import scipy.linalg

    x = np.asarray(x, np.float64)
    kept = np.asarray(kept, np.int64)
    removed = np.setdiff1d(np.arange(x.shape[1]), kept)
    mu = x.mean(axis=0)
    xc = x - mu
    if len(kept) == 0:
        return removed, np.zeros((len(removed), 0)), mu[removed]
    a = scipy.linalg.lstsq(xc[:, kept], xc[:, removed], lapack_driver="gelsd")[0]   # [K, R]
    coef = a.T
    return removed, coef, mu[removed] - coef @ mu[kept]
