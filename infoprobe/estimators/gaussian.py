"""Gaussian-copula estimators: copula normalisation, Gaussian entropy, GC-MI with a class label.

The Gaussian copula (Ince et al. 2017, "A statistical framework for neuroimaging data
analysis based on mutual information estimated via a Gaussian copula", Human Brain Mapping
38:1541-1573, Sections 2.2-2.6) replaces each variable by the standard-normal quantile of its
empirical CDF and then uses closed-form Gaussian entropies. The result is a lower bound on
the mutual information that is robust to the marginal distributions.

Conventions: samples along axis 0, units along axis 1; information in **bits**; float64.

Ties (ReLU activations are exactly 0 for many samples) are handled deterministically:
``ties="average"`` (the default) gives tied values their average rank, so the result does
not depend on sample order. ``ties="ordinal"`` breaks ties by order of appearance (the
stable argsort of ``hoi`` and of gcmi's ``argsort(argsort(x))`` on a stable sort); use it
only to reproduce those packages.

Units that are constant on a class (a ReLU unit that is 0 on every sample of one class): with
average ranks every sample of that class has the same copula value, its class-conditional
variance is 0 and its Gaussian entropy -inf (or a large negative number from rounding), so
GC-MI with the label came out far above H(Y). For such units (and only those) a tie is read as
a continuous value quantised to one number: the samples of a tie block hold the block's ranks
r_lo..r_hi in an unknown order, and every variance and covariance is replaced by its
**expectation over random tie-breaking**. A tied sample then takes the mean of the block's
normal quantiles Phi^-1(r / (N + 1)), and each variance gains the spread the tie removed:
sum_b m_b s_b^2 [1 - (K_b - m_b) / ((K_b - 1) n)] for a group of n samples with m_b of the
K_b samples of block b (s_b^2 the block's quantile variance, denominator K_b; sampling without
replacement). A class entirely inside one block gets the block's quantile variance
(denominator K_b - 1), what a continuous class holding the same ranks would have; the pooled
variance becomes that of untied ranks; covariances with other units keep the block means
(independent tie-breaking adds nothing to them). The result is deterministic and order-free;
units with at least two distinct values in every class keep their average-rank copula.
``ties="ordinal"`` already breaks ties and is left as it is.

The ranking runs on the host with ``scipy.stats.rankdata``; CuPy inputs are copied to the
host and the result is returned in the input's namespace.
"""
from __future__ import annotations

import numpy as np
from scipy import special, stats

from ..arrays import namespace_of, to_numpy
from ..errors import ConfigError, DataError

TIES = ("average", "ordinal")
LN2 = float(np.log(2.0))
#: 1 / Phi^-1(3/4): the median absolute deviation of a standard normal variable is 1/this.
MAD_TO_SD = 1.482602218505602


def as_2d(x, name="x") -> np.ndarray:
    a = np.asarray(to_numpy(x), dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"{name} must be [samples] or [samples, units]; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return a


def label_codes(y, n: int) -> np.ndarray:
    y = np.asarray(to_numpy(y))
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"labels must be [samples] with {n} samples; got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError("labels must be integer class indices")
        y = y.astype(np.int64)
    return y


def copnorm(x, *, ties: str = "average"):
    """Copula-normalise each unit: empirical CDF -> standard-normal quantile.

    z_ij = Phi^-1(r_ij / (N + 1)), with r_ij the rank of x_ij among the N samples of unit j
    (Ince et al. 2017, Section 2.3).

    Parameters
    ----------
    x : array [N] or [N, U]
        Samples along axis 0 (NumPy or CuPy).
    ties : {"average", "ordinal"}
        ``average``: tied values share their average rank (deterministic, independent of
        sample order). ``ordinal``: ties broken by order of appearance (as ``hoi``).

    Returns
    -------
    array, same shape as ``x``, float64, in the namespace of ``x``. A constant unit maps to
    all zeros (see :func:`constant_units`).

    Raises
    ------
    ConfigError
        Unknown ``ties``.
    DataError
        Fewer than 2 samples, NaN or infinite values, or more than 2 dimensions.
    """
    if ties not in TIES:
        raise ConfigError(f"unknown tie handling {ties!r}; use one of {', '.join(TIES)}")
    xp = namespace_of(x)
    a = as_2d(x)
    if a.shape[0] < 2:
        raise DataError("copula normalisation needs at least 2 samples")
    r = stats.rankdata(a, method=ties, axis=0)
    z = special.ndtri(r / (a.shape[0] + 1.0))
    z = z.reshape(np.shape(x)) if np.ndim(x) == 1 else z
    return xp.asarray(z)


def constant_units(x) -> np.ndarray:
    """Boolean mask [U] of units that take a single value over all samples.

    Such units carry no information; their covariance row is zero, which would break a
    Cholesky factorisation, so O-information excludes and reports them.
    """
    a = as_2d(x)
    return a.max(axis=0) == a.min(axis=0)


def entropy_bias(dim, n_samples):
    """Analytic bias of the Gaussian entropy estimate from N samples, in **nats**.

    The term gcmi subtracts from the plug-in estimate of a d-variate Gaussian entropy:
    ``d * (ln 2 - ln(N - 1)) / 2 + sum_{i=1..d} psi((N - i) / 2) / 2`` (Ince et al. 2017,
    Section 2.4, after Goria et al. 2005 / Oyman et al.). Vectorised over ``dim`` and
    ``n_samples`` (broadcast); 0 for ``dim`` = 0.

    Raises
    ------
    DataError
        ``n_samples <= dim`` (the covariance is singular).
    """
    d = np.asarray(dim, dtype=np.int64)
    n = np.asarray(n_samples, dtype=np.float64)
    if np.any(n <= d):
        raise DataError(f"the Gaussian entropy of {int(np.max(d))} variables needs more samples "
                        f"than variables (got {int(np.min(n))})")
    d, n = np.broadcast_arrays(d, n)
    out = d * (LN2 - np.log(n - 1.0)) / 2.0
    psi = np.zeros(d.shape)
    for i in range(1, int(d.max(initial=0)) + 1):
        psi = psi + np.where(d >= i, special.psi((n - i) / 2.0), 0.0)
    return out + psi / 2.0


def gaussian_entropy(cov, n_samples=None, *, biascorrect: bool = True):
    """Differential entropy of a multivariate Gaussian from its covariance, in **bits**.

    H = 1/2 log det(2 pi e Sigma), minus :func:`entropy_bias` when ``biascorrect``
    (Ince et al. 2017, eq. 6 and Section 2.4; on by default, as in gcmi).

    Parameters
    ----------
    cov : array [..., d, d]
        Sample covariances (denominator N - 1), NumPy or CuPy.
    n_samples : int or array [...], optional
        Samples behind each covariance; required when ``biascorrect``.

    Returns
    -------
    array [...] of entropies in bits.

    Raises
    ------
    DataError
        A covariance is not positive definite, or ``n_samples`` is missing or too small.
    """
    xp = namespace_of(cov)
    c = xp.asarray(cov, dtype=xp.float64)
    d = c.shape[-1]
    try:
        chol = xp.linalg.cholesky(c)
    except Exception as exc:  # numpy LinAlgError / cupy returns NaN
        raise DataError("covariance is not positive definite (constant or collinear variables)") from exc
    diag = xp.stack([chol[..., i, i] for i in range(d)], axis=-1) if d else xp.ones(c.shape[:-2] + (0,))
    if bool(xp.any(~(diag > 0))):
        raise DataError("covariance is not positive definite (constant or collinear variables)")
    h = xp.sum(xp.log(diag), axis=-1) + 0.5 * d * (np.log(2 * np.pi) + 1.0)
    if biascorrect:
        if n_samples is None:
            raise DataError("biascorrect=True needs n_samples")
        h = h - xp.asarray(entropy_bias(d, n_samples))
    return h / LN2


def constant_within_classes(a: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    """Boolean [G, U]: unit j takes a single value on every sample of class g."""
    mask = np.zeros((n_groups, a.shape[1]), dtype=bool)
    for g in range(n_groups):
        ag = a[inv == g]
        mask[g] = ag.max(axis=0) == ag.min(axis=0)
    return mask


def untie(a: np.ndarray, inv: np.ndarray, n_groups: int):
    """Copula of some units in expectation over random tie-breaking (see the module docstring).

    Parameters
    ----------
    a : float array [N, K]
        Raw values of the units to treat.
    inv : int array [N]
        Class index in 0..G-1 of every sample.
    n_groups : int
        G.

    Returns
    -------
    z : float array [N, K]
        Every sample's copula value: the mean of the normal quantiles Phi^-1(r / (N + 1)) of its
        tie block (its own quantile when untied).
    extra_all : float array [K]
        Sum of squares the ties removed from the pooled sample, sum_b K_b s_b^2.
    extra : float array [G, K]
        The same for each class, sum_b m_gb s_b^2 [1 - (K_b - m_gb) / ((K_b - 1) n_g)], so that
        ``(sum of squares of z about the class mean + extra) / (n_g - 1)`` is the expected
        class variance.
    """
    n, k = a.shape
    q = special.ndtri(np.arange(1, n + 1) / (n + 1.0))
    n_g = np.bincount(inv, minlength=n_groups).astype(np.float64)
    z = np.empty((n, k))
    extra_all = np.zeros(k)
    extra = np.zeros((n_groups, k))
    for j in range(k):
        _, blk, size = np.unique(a[:, j], return_inverse=True, return_counts=True)
        blk = blk.reshape(-1)
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        mean = np.add.reduceat(q, start) / size
        s2 = np.add.reduceat((q - np.repeat(mean, size)) ** 2, start) / size
        z[:, j] = mean[blk]
        extra_all[j] = (size * s2).sum()
        m = np.bincount(blk * n_groups + inv, minlength=len(size) * n_groups).reshape(len(size), n_groups)
        tied = size > 1
        m, kb, s2 = m[tied], size[tied, None], s2[tied, None]
        extra[:, j] = (m * s2 * (1.0 - (kb - m) / ((kb - 1.0) * n_g))).sum(axis=0)
    return z, extra_all, extra


def label_entropy(y) -> float:
    """Plug-in entropy of discrete labels, in **bits**: H(Y) = -sum_y p(y) log2 p(y).

    The upper bound of the mutual information between any variable and the labels
    (Cover & Thomas 2006, eq. 2.45: I(X; Y) <= H(Y)).

    Parameters
    ----------
    y : int array [N]
        Class labels (NumPy or CuPy).

    Returns
    -------
    float (bits); 0 for a single class.

    Raises
    ------
    DataError
        ``y`` is not a non-empty one-dimensional array of integer values.
    """
    y = np.asarray(to_numpy(y))
    if y.ndim != 1 or not len(y):
        raise DataError(f"labels must be a non-empty [samples] array; got shape {y.shape}")
    _, counts = np.unique(label_codes(y, len(y)), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def class_index(y: np.ndarray, min_count: int):
    classes, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise DataError("mutual information with the label needs at least 2 classes")
    small = classes[counts < min_count]
    if len(small):
        raise DataError(f"class(es) {', '.join(map(str, small[:5]))} have fewer than {min_count} samples; "
                        "drop them or use more data")
    return classes, inv, counts


def _with_classes(x, y):
    """Validated activations [N, U], labels [N], classes, class index [N] and counts."""
    a = as_2d(x)
    y = label_codes(y, a.shape[0])
    return (a, y, *class_index(y, 2))


def gcmi_model_cd(x, y, *, biascorrect: bool = True, ties: str = "average"):
    """GC-MI between each unit and a discrete label, ANOVA / model-comparison form, in **bits**.

    I(X; Y) = H(X) - sum_y p(y) H(X | Y = y), every term a Gaussian entropy of the copula-
    normalised unit (one copula over all samples; class-conditional variances about the class
    means), each with its own bias correction (Ince et al. 2017, Section 2.6, eq. 12; gcmi's
    ``gcmi_model_cd`` / ``mi_model_gd``).

    A unit constant on some class would give that class zero variance and an entropy of -inf
    (with ``ties="average"``); for such a unit every variance is its expectation over random
    tie-breaking (module docstring): the constant class gets the quantile variance of its tie
    block, as a continuous class holding the same ranks would. The result is then clipped at
    the plug-in label entropy H(Y) (:func:`label_entropy`), the bound I(X; Y) <= H(Y) of any
    estimate (Cover & Thomas 2006, eq. 2.45). Units with at least two distinct values in every
    class are unchanged; on them the clip is a safeguard the copula estimate does not reach in
    practice (perfectly separated classes give 0.73 bits of the 1 bit of two balanced classes).
    A class with all but a few samples tied is not treated and can still come out high: with
    one sample of the class off the tie the estimate may reach the clip.

    Parameters
    ----------
    x : array [N] or [N, U]
    y : int array [N]
        Class labels; every class present needs at least 2 samples.
    biascorrect : bool
    ties : {"average", "ordinal"}
        See :func:`copnorm`.

    Returns
    -------
    NumPy array [U] (bits), at most H(Y). Constant units give 0.

    Raises
    ------
    DataError
        Shapes disagree, NaN values, fewer than 2 classes, a class with fewer than 2 samples.
    """
    a, y, classes, inv, counts = _with_classes(x, y)
    z = np.asarray(copnorm(a, ties=ties))
    n = a.shape[0]
    const = constant_units(a)
    fix = np.zeros(a.shape[1], dtype=bool)
    if ties == "average":
        fix = constant_within_classes(a, inv, len(classes)).any(axis=0) & ~const
    extra_all, extra = np.zeros(a.shape[1]), np.zeros((len(classes), a.shape[1]))
    if fix.any():
        z[:, fix], extra_all[fix], extra[:, fix] = untie(a[:, fix], inv, len(classes))
    var = z.var(axis=0, ddof=1) + extra_all / (n - 1)
    var = np.where(const, 1.0, var)
    h_unc = 0.5 * np.log(var)
    h_cond = np.zeros(a.shape[1])
    for g, c in enumerate(counts):
        vg = z[inv == g].var(axis=0, ddof=1) + extra[g] / (c - 1)
        vg = np.where(const, 1.0, vg)
        with np.errstate(divide="ignore"):
            hg = 0.5 * np.log(vg)
        if biascorrect:
            hg = hg - entropy_bias(1, c)
        h_cond += c / n * hg
    if biascorrect:
        h_unc = h_unc - entropy_bias(1, n)
    mi = np.minimum((h_unc - h_cond) / LN2, -(counts / n * np.log2(counts / n)).sum())
    return np.where(const, 0.0, mi)


def gcmi_mixture_cd(x, y, *, ties: str = "average"):
    """GC-MI between each unit and a discrete label from a Gaussian mixture, in **bits**.

    Each class is copula-normalised on its own, then rescaled to the class's median and
    median absolute deviation (a robust Gaussian fit), and
    I = H(mixture) - sum_y p(y) H(X | Y = y), where the mixture entropy is approximated by
    the unscented transform (2d sigma points per class) with a log-sum-exp over the
    **class** axis (Ince et al. 2017, Section 2.6; gcmi's ``gcmi_mixture_cd`` /
    ``mi_mixture_gd``). No bias correction, as in gcmi.

    Unlike ``frites`` 0.4.6 (whose log-sum-exp runs over all axes at once), the mixture
    likelihood here is summed over classes separately at every sigma point.

    A class on which the unit is constant is a point mass (an atom) of the mixture: the estimate
    is its limit as that class's scale goes to 0. The atom has no density at the other classes'
    sigma points, and at its own sigma points it outweighs every continuous class, so its term
    in H(mixture) - H(X | Y) becomes -p(y) log W, with W the total weight of the classes that
    are constant at the same value (p(y) itself when no other class shares it). With one atom
    class the estimate is then h(p(y)) + (1 - p(y)) I(X; Y | Y != y), the decomposition of the
    information over the indicator of the atom. The estimate never exceeds the plug-in
    H(Y) (:func:`label_entropy`): at every sigma point of class y the mixture density is at least
    p(y) times that class's own density.

    Parameters
    ----------
    x : array [N] or [N, U]
    y : int array [N]
        Class labels; every class needs at least 2 samples.
    ties : {"average", "ordinal"}
        Tie handling of the per-class copula (see :func:`copnorm`).

    Returns
    -------
    NumPy array [U] (bits), at most H(Y). NaN for a unit whose median absolute deviation is 0
    on a class that is not constant (more than half of the class at one value, e.g. a ReLU
    post-activation that is 0 on most but not all of a class): the robust fit has no scale
    there. Use pre-activations.

    Raises
    ------
    DataError
        Shapes disagree, NaN values, fewer than 2 classes, a class with fewer than 2 samples.
    """
    a, y, classes, inv, counts = _with_classes(x, y)
    n, u = a.shape
    w = counts / n
    g_n = len(classes)
    means = np.empty((g_n, u))
    sds = np.empty((g_n, u))
    atom = constant_within_classes(a, inv, g_n)                                     # [G, U] point masses
    flat = np.zeros((g_n, u), dtype=bool)                                   # zero MAD, not constant
    for g in range(g_n):
        xm = a[inv == g]
        med = np.median(xm, axis=0)
        mad = np.median(np.abs(xm - med), axis=0)
        cx = np.asarray(copnorm(xm, ties=ties)) * (MAD_TO_SD * mad) + med
        means[g] = np.where(atom[g], med, cx.mean(axis=0))
        sds[g] = cx.std(axis=0, ddof=1)
        flat[g] = (mad == 0) & ~atom[g]
    bad = flat.any(axis=0)
    sds = np.where(atom | flat, 1.0, sds)
    # class-conditional entropies (nats), then unscented sigma points m_g +- sd_g (d = 1)
    h_cond = np.log(sds) + 0.5 * (np.log(2 * np.pi) + 1.0)                  # [G, U]
    points = means[:, None, :] + np.array([1.0, -1.0])[None, :, None] * sds[:, None, :]   # [G, 2, U]
    z = (points[:, :, None, :] - means[None, None, :, :]) / sds[None, None, :, :]       # [G, 2, H, U]
    log_lik = -0.5 * z ** 2 - np.log(sds)[None, None] - 0.5 * np.log(2 * np.pi)
    log_lik = np.where(atom[None, None], -np.inf, log_lik)                  # atoms: no density
    log_mix = special.logsumexp(log_lik, axis=2, b=w[None, None, :, None])             # over classes H
    term = -log_mix.mean(axis=1) - h_cond                                   # [G, U] nats
    if atom.any():
        same = (means[:, None, :] == means[None, :, :]) & atom[:, None, :] & atom[None, :, :]
        shared = (same * w[None, :, None]).sum(axis=1)                      # weight of the atom's value
        term = np.where(atom, -np.log(np.where(atom, shared, 1.0)), term)
    mi = (w[:, None] * term).sum(axis=0) / LN2
    mi = np.minimum(mi, -(w * np.log2(w)).sum())                          # rounding only
    return np.where(bad, np.nan, mi)
