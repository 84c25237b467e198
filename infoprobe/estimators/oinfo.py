"""O-information of multiplets of units under the Gaussian copula, batched and searched.

O-information (Rosas et al. 2019; eq. 1 of the O-information multi-neuron importance paper):

    Omega(Z) = (n - 2) H(Z) + sum_j [H(Z_j) - H(Z \\ Z_j)]

Omega > 0: redundancy-dominated; Omega < 0: synergy-dominated. With Gaussian entropies,
H = 1/2 log det(2 pi e Sigma), and with L = log det Sigma_Z, P = Sigma_Z^-1, every
log det Sigma_{Z\\j} = L + log P_jj, so (constants cancel)

    Omega = -L + 1/2 sum_j log Sigma_jj - 1/2 sum_j log P_jj          (nats)

One factorisation per multiplet gives both L and diag(P). The engine keeps, for a batch of
multiplets (multiplet axis last, so every arithmetic step is a vector operation over the
batch), the inverse Cholesky factor M = L_chol^-1. Adding a variable j with covariance
column s to a multiplet is one step of a Cholesky factorisation:

    l = M s,  delta = Sigma_jj - |l|^2,  u = M^T l (= P s),
    log det' = log det + log delta,  diag(P') = [diag(P) + u^2 / delta, 1 / delta]

(the Schur complement of the new variable), so a multiplet of size k costs O(k^2) given its
parent. Exhaustive search extends every multiplet of size k - 1 by every larger unit index
(colexicographic order, indices built in bulk), greedy search extends the best multiplet by
every remaining unit; a batch of arbitrary multiplets is factorised column by column.

The class label as a member of the multiplet (the paper computes Omega(x_1..x_k, y)):

``labels="ordinal"``
    The label is copula-normalised like a unit (ties broken by order of appearance) and
    enters the covariance as one more variable. This is what ``hoi`` does.
``labels="exact"`` (default)
    Mixed discrete/continuous entropies: H(X_S, Y) = H(Y) + sum_y p(y) H(X_S | y) with
    class-conditional Gaussian covariances (as gcmi's model-based GC-MI). H(Y) cancels, so

    Omega(X, Y) = (k-1) H(X|Y) + sum_i H(X_i) - sum_i H(X_{-i}|Y) - H(X)
                = -1/2 L_0 + 1/2 sum_i log Sigma_ii - 1/2 sum_y p(y) [L_y + sum_i log P_y,ii]

    It does not depend on how label ties are broken.

    A unit constant on one class (a ReLU unit that is 0 on every sample of the class) has a
    zero row in that class's covariance: with average ranks the factorisation then ran on
    rounding residue (Omega off by several hundredths of a bit, or NaN). Such units are
    copula-normalised in expectation over random tie-breaking, as in
    :func:`~infoprobe.estimators.gaussian.gcmi_model_cd` (see
    :mod:`infoprobe.estimators.gaussian`): tied samples take their tie block's mean normal
    quantile, each variance gains the spread the tie removed, and the unit's covariances with
    the other units within the class where it is constant are exactly 0. In that class the
    unit is independent of the rest, its log variance cancels from Omega, and Omega is the
    limit of the class-wise constant unit; the units are listed in
    ``CopulaModel.class_constant``.
``labels="none"``
    Omega of the units alone.

Every entropy can carry the analytic bias correction of Ince et al. (2017), with its own
sample count (N for unconditional terms, N_y for class-conditional ones).

All results are in **bits**, accumulated in float64, on NumPy or CuPy.
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import comb
from typing import Any

import h5py
import numpy as np

from ..arrays import namespace, to_numpy
from ..errors import BudgetError, ConfigError, DataError
from ..limits import human, max_memory, rows_within
from .gaussian import (
    LN2, as_2d, class_index, constant_within_classes, label_codes, untie, constant_units, copnorm, entropy_bias,
)

LABELS = ("exact", "ordinal", "none")
#: A new variable whose conditional variance given the multiplet falls below this fraction of
#: its variance makes the multiplet degenerate (collinear units); its Omega is NaN.
DEGENERATE = 1e-12
#: Bytes of engine state per batch (the chunk size follows from it and the multiplet size).
CHUNK_BYTES = 8 * 2 ** 20
#: Searches smaller than this many multiplet-covariances run in one thread (threads cost more).
THREAD_WORK = 300_000


@dataclass(frozen=True)
class CopulaModel:
    """Covariances of copula-normalised units (and the label) of one layer.

    Built by :func:`copula_model`. Attributes: ``cov`` [G, V, V] on the chosen device (group
    0 unconditional; with ``labels="exact"`` groups 1..C are the class-conditional
    covariances); ``weights`` [G] (p(y) for the classes, 1 for group 0); ``counts`` [G]
    samples behind each covariance; ``units`` [n] the original index of each candidate
    variable (constant units excluded); ``constant`` the original indices of the excluded
    constant units; ``n_inputs`` the number of units in the input; ``class_constant`` the
    original indices of the units constant on at least one class (``labels="exact"``,
    ``ties="average"``), copula-normalised in expectation over random tie-breaking (module
    docstring).
    """
    cov: Any
    weights: np.ndarray
    counts: np.ndarray
    labels: str
    units: np.ndarray
    constant: np.ndarray
    n_inputs: int
    biascorrect: bool = True
    device: str = "cpu"
    class_constant: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    _bias: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        xp = namespace(self.device)
        object.__setattr__(self, "xp", xp)
        object.__setattr__(self, "flat_cov", xp.reshape(self.cov, (self.cov.shape[0], -1)))

    def __getstate__(self) -> dict:
        """Pickled (for a Dask worker) without its array namespace, rebuilt on arrival."""
        return {k: v for k, v in self.__dict__.items() if k not in ("xp", "flat_cov")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def n_units(self) -> int:
        """Candidate units (constant units excluded)."""
        return len(self.units)

    @property
    def fixed(self) -> tuple:
        """Variables in every multiplet: the label's index for ``ordinal``."""
        return (self.n_units,) if self.labels == "ordinal" else ()

    def variables(self, multiplets) -> np.ndarray:
        """Map original unit indices [B, k] to candidate-variable indices.

        Raises
        ------
        ConfigError
            Not a 2-D integer array, repeated units in a multiplet, an index out of range,
            or a constant (excluded) unit.
        """
        m = np.asarray(multiplets)
        if m.ndim != 2 or not np.issubdtype(m.dtype, np.integer):
            raise ConfigError(f"multiplets must be a 2-D integer array [B, k]; got {m.dtype} {m.shape}")
        if m.size and (m.min() < 0 or m.max() >= self.n_inputs):
            raise ConfigError(f"unit indices must lie in [0, {self.n_inputs})")
        s = np.sort(m, axis=1)
        if m.shape[1] > 1 and (s[:, 1:] == s[:, :-1]).any():
            raise ConfigError("a multiplet repeats a unit")
        lookup = np.full(self.n_inputs, -1, np.int64)
        lookup[self.units] = np.arange(self.n_units)
        v = lookup[m]
        if (v < 0).any():
            bad = sorted(set(m[v < 0].tolist()))[:5]
            raise ConfigError(f"unit(s) {bad} are constant over the samples and were excluded")
        return v

    def bias(self, k: int) -> float:
        """Bias correction of Omega for multiplets of k units, in nats (0 if disabled).

        Raises
        ------
        DataError
            Too few samples (overall or in a class) for multiplets of this size.
        """
        if not self.biascorrect:
            return 0.0
        if k not in self._bias:
            n, w = self.counts, self.weights
            if self.labels == "exact":
                b = lambda d, c: float(entropy_bias(d, c))  # noqa: E731
                cond = lambda d: sum(w[g] * b(d, n[g]) for g in range(1, len(n)))  # noqa: E731
                val = (k - 1) * cond(k) + k * b(1, n[0]) - k * cond(k - 1) - b(k, n[0])
            else:
                v = k + len(self.fixed)
                val = float((v - 2) * entropy_bias(v, n[0]) + v * entropy_bias(1, n[0])
                            - v * entropy_bias(v - 1, n[0]))
            self._bias[k] = val
        return self._bias[k]


def copula_model(x, y=None, *, labels: str = "exact", ties: str = "average",
                 biascorrect: bool = True, device: str = "cpu") -> CopulaModel:
    """Copula-normalise a layer's activations and compute the covariances O-information needs.

    Memory stays within the budget (:mod:`infoprobe.limits`) whatever N: the copula values
    are computed a block of units at a time (a unit's ranks need all its samples, so one unit's
    N samples must fit in a quarter of the budget), and the covariances are summed a block of
    samples at a time (at most a quarter of the budget) into G sums of U x U products that must
    fit in what the budget leaves (:func:`model_memory`; both are checked before anything is
    read or allocated: :func:`require_model_memory`); copula values larger than a quarter of the budget are kept in a
    scratch file in the temporary folder (``TMPDIR``; N x U x 8 bytes, reserved before the
    first is computed; :func:`infoprobe.scratch.scratch_matrix`), removed at the end however
    the call ends. The result equals the one-block computation to rounding (about 1e-15 relative).

    Parameters
    ----------
    x : array [N, U], h5py.Dataset [N, U] or :class:`~infoprobe.scratch.ScratchMatrix`
        Activations (pre-activations recommended: post-ReLU values tie at 0); a dataset or
        scratch matrix is read a block of units at a time.
    y : int array [N], optional
        Class labels; required unless ``labels="none"``.
    labels : {"exact", "ordinal", "none"}
        How the label joins every multiplet (see the module docstring).
    ties : {"average", "ordinal"}
        Tie handling of the units' copula (:func:`~infoprobe.estimators.gaussian.copnorm`).
        With ``"average"`` and ``labels="exact"``, units constant on some class are
        copula-normalised in expectation over random tie-breaking (module docstring).
    biascorrect : bool
        Ince et al.'s analytic bias correction of every entropy (default on, as gcmi).
    device : {"cpu", "cuda"}
        Where the covariances live and the search runs.

    Returns
    -------
    CopulaModel
        Covariances of the copula values (denominators N - 1 and N_y - 1); units constant on a
        class are listed in ``class_constant``.

    Raises
    ------
    ConfigError
        Unknown ``labels`` or ``ties``; labels missing.
    DataError
        NaN values, shapes that disagree, fewer than 3 non-constant units, a class with
        fewer than 2 samples.
    DeviceError
        ``device="cuda"`` without CuPy or a GPU.
    BudgetError
        One unit's samples do not fit in a quarter of the memory budget, or the covariance
        sums in what it leaves (raised before anything is allocated).
    ScratchError
        The temporary folder cannot hold the spilled copula values (full, a file-size limit or
        quota, not writable), or ``x`` (a scratch matrix) cannot be read back.
    """
    if labels not in LABELS:
        raise ConfigError(f"unknown label encoding {labels!r}; use one of {', '.join(LABELS)}")
    xp = namespace(device)
    if not _blockwise(x):   # an HDF5 dataset or a scratch file is read a block of units at a time
        x = as_2d(x)
    n, n_in = (int(d) for d in x.shape)
    if labels != "none" and y is None:
        raise ConfigError(f"labels={labels!r} needs class labels; use labels='none' for unlabelled data")
    if labels == "exact":
        classes, inv, cnt = class_index(label_codes(y, n), 2)
        n_g = len(classes)
    else:
        inv, n_g = np.zeros(n, np.int64), 0
        if y is not None:
            label_codes(y, n)
    require_model_memory(n, n_in, groups=n_g + 1, fixed=int(labels == "ordinal"),
                         what=f"the O-information model of {n_in:,} units")
    # pass 1, over blocks of columns: each unit's copula values (ranks need every sample of a unit)
    cols = rows_within(n * 8 * COPULA_COPIES, n_in, share=0.25, what=f"one unit's {n:,} samples (copula)")
    const = np.zeros(n_in, bool)
    flat_parts, extra_all, extra, sums = [], [], [], []   # sums: per class, of each unit's copula values
    with _Sink(n, n_in) as sink:
        for j0 in range(0, n_in, cols):
            a = as_2d(x[:, j0:j0 + cols])
            c = constant_units(a)
            const[j0:j0 + a.shape[1]] = c
            a = a[:, ~c]
            if not a.shape[1]:
                continue
            z = np.asarray(copnorm(a, ties=ties))
            z -= z.mean(axis=0)
            flat = np.zeros((n_g, a.shape[1]), dtype=bool)
            e_all, e = np.zeros(a.shape[1]), np.zeros((n_g, a.shape[1]))
            if labels == "exact" and ties == "average":
                flat = constant_within_classes(a, inv, n_g)
                fix = flat.any(axis=0)
                if fix.any():
                    zf, e_all[fix], e[:, fix] = untie(a[:, fix], inv, n_g)
                    z[:, fix] = zf - zf.mean(axis=0)
            flat_parts.append(flat)
            extra_all.append(e_all)
            extra.append(e)
            sums.append(np.stack([z[inv == g].sum(axis=0) for g in range(n_g)]) if n_g else None)
            sink.append(z)
        keep = np.flatnonzero(~const)
        if len(keep) < 3 - (labels != "none"):
            raise DataError(f"O-information needs at least {3 - (labels != 'none')} non-constant units; "
                            f"{len(keep)} of {n_in} vary")
        flat = np.concatenate(flat_parts, axis=1)
        extra_all = np.concatenate(extra_all)
        extra = np.concatenate(extra, axis=1)
        class_constant = keep[flat.any(axis=0)] if labels == "exact" else np.empty(0, np.int64)
        zy = None
        if labels == "ordinal":
            zy = np.asarray(copnorm(label_codes(y, n).astype(np.float64), ties="ordinal"))
            zy = zy - zy.mean()
        # pass 2, over blocks of rows: the covariances (class-conditional ones about each class's
        # mean), summed in place: [0] over every sample, [1 + g] over class g
        k = len(keep) + (zy is not None)
        acc = np.zeros((n_g + 1, k, k))
        mean_g = np.concatenate(sums, axis=1) / cnt[:, None] if n_g else None
        for r0, zb in sink.rows():
            if zy is not None:
                zb = np.column_stack([zb, zy[r0:r0 + len(zb)]])
            acc[0] += zb.T @ zb
            ib = inv[r0:r0 + len(zb)]
            for g in range(n_g):
                zg = zb[ib == g] - mean_g[g]
                zg[:, flat[g]] = 0.0                      # constant on the class: no covariance
                acc[1 + g] += zg.T @ zg
    weights, counts = np.ones(1), np.array([n])
    acc[0] /= n - 1
    if labels == "exact":
        d = np.arange(k)
        acc[0][d, d] += extra_all / (n - 1)
        for g in range(n_g):
            acc[1 + g][d, d] += extra[g]
            acc[1 + g] /= cnt[g] - 1
        weights = np.concatenate([[1.0], cnt / n])
        counts = np.concatenate([[n], cnt])
    return CopulaModel(cov=xp.asarray(acc), weights=weights, counts=counts, labels=labels,
                       units=keep, constant=np.flatnonzero(const), n_inputs=n_in,
                       biascorrect=biascorrect, device=device, class_constant=class_constant)


def model_memory(n_samples: int, n_units: int, *, groups: int = 1, fixed: int = 0) -> dict:
    """Bytes :func:`copula_model` allocates for N samples of U units in G covariance groups
    (1 + the classes with ``labels="exact"``, else 1), with ``fixed`` more variables (1: the
    label with ``"ordinal"``), under the current memory budget.

    Returns
    -------
    dict
        ``unit``: copula-normalising one unit, N x 8 x :data:`COPULA_COPIES` (must fit in a
        quarter of the budget); ``values``: the copula values N x U x 8, held in memory when
        they fit in a quarter of the budget, else spilled to the temporary folder (then 0);
        ``block``: the block of samples the covariances are summed over, a quarter of the
        budget at most; ``covariances``: the G sums of products and the product of the block
        being added, (G + 1) x (U + fixed)^2 x 8. :func:`require_model_memory` checks that
        ``values + block + covariances`` (and what the caller holds) fit in the budget.
    """
    limit, n, u = max_memory(), int(n_samples), int(n_units)
    values = n * u * 8
    return {"unit": n * 8 * COPULA_COPIES, "values": values if values <= limit // 4 else 0, "block": limit // 4,
            "covariances": (int(groups) + 1) * (u + int(fixed)) ** 2 * 8}


def require_model_memory(n_samples: int, n_units: int, *, groups: int = 1, fixed: int = 0, held: int = 0,
                         what: str = "the O-information model", fewer_samples: str = "or use fewer samples",
                         fewer_units: str = "or use fewer units") -> None:
    """Refuse, before anything is read or allocated, a :func:`copula_model` that would not fit
    in the memory budget (:func:`model_memory`): one unit's copula over a quarter of it, or
    covariance sums over what the budget leaves beside a block of samples, the copula values
    held in memory and ``held``.

    Parameters
    ----------
    n_samples, n_units, groups, fixed : int
        As :func:`model_memory`.
    held : int
        Bytes the caller holds meanwhile (e.g. the activations copula_model reads).
    what : str
        The model, for the message.
    fewer_samples, fewer_units : str
        How to shrink it, ending the message (e.g. the options of a command).

    Raises
    ------
    BudgetError
        One line naming the part that does not fit, its size, the budget and how to raise it
        (``--max-memory``) or shrink the model.
    """
    limit, need = max_memory(), model_memory(n_samples, n_units, groups=groups, fixed=fixed)
    raise_it = "raise it with --max-memory (INFOPROBE_MAX_MEMORY, budgets(memory=))"
    if need["unit"] > limit // 4:
        raise BudgetError(f"{what}: one unit's {int(n_samples):,} samples take {human(need['unit'])} to "
                          f"copula-normalise, more than a quarter of the memory budget of {human(limit)}; "
                          f"{raise_it} {fewer_samples}")
    room = limit - need["block"] - need["values"] - int(held)
    if need["covariances"] > room:
        raise BudgetError(f"{what}: the {int(groups)} covariance sums of {int(n_units) + int(fixed):,} variables "
                          f"take {human(need['covariances'])}, more than the {human(max(room, 0))} that the memory "
                          f"budget of {human(limit)} leaves beside the values and a block of samples; {raise_it} "
                          f"{fewer_units}")


def _blockwise(x) -> bool:
    """Whether ``x`` is read a block of units at a time (an h5py dataset, a scratch matrix)."""
    from ..scratch import ScratchMatrix

    return isinstance(x, (h5py.Dataset, ScratchMatrix))


#: Float64 copies of a block of units that copula normalisation holds at once (the values,
#: ranks, quantiles, tie handling).
COPULA_COPIES = 6


class _Sink:
    """The copula values [N, K] of :func:`copula_model`, filled block of columns by block of
    columns and read back by blocks of rows: in memory when they fit in a quarter of the
    memory budget, otherwise in a scratch file of the temporary folder (``TMPDIR``,
    :func:`infoprobe.scratch.scratch_matrix`), removed on exit however the block ends.

    Raises
    ------
    ScratchError
        (On entering, appending or reading) the temporary folder cannot hold the values.
    """

    def __init__(self, n: int, n_cols: int):
        self.n, self.n_cols, self.parts, self.k = n, n_cols, [], 0
        self.on_disk = n * n_cols * 8 > max_memory() // 4
        self._scratch = self._m = None

    def __enter__(self):
        if self.on_disk:
            from ..scratch import scratch_matrix

            self._scratch = scratch_matrix(self.n, self.n_cols, by="columns",
                                           what=f"the {self.n:,} x {self.n_cols:,} copula values")
            self._m = self._scratch.__enter__()
        return self

    def __exit__(self, *exc):
        if self._scratch is not None:
            scratch, self._scratch, self._m = self._scratch, None, None
            return scratch.__exit__(*exc)
        return False

    def append(self, z: np.ndarray) -> None:
        if self._m is None:
            self.parts.append(z)
        else:
            self._m.append_columns(z)
        self.k += z.shape[1]

    def rows(self):
        """Yield ``(start, float64 [r, K])`` over the samples, blocks of rows whose three copies
        fit in a quarter of the memory budget."""
        step = rows_within(self.k * 8 * 3, self.n, share=0.25, what=f"one sample's {self.k:,} copula values")
        if self._m is not None:
            yield from self._m.rows(step)
            return
        for r0 in range(0, self.n, step):
            parts = [p[r0:r0 + step] for p in self.parts]
            yield r0, np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------------------------
# engine: batches of multiplets, multiplet axis last

@dataclass
class _Batch:
    vars: Any      # [m, B] variable indices (fixed variables first)
    M: Any         # [G, m, m, B] inverse Cholesky factors
    logdet: Any    # [G, B]
    dp: Any        # [G, m, B] diagonal of the inverse covariance
    slogvar: Any   # [B] sum of log variances (group 0)

    @property
    def size(self) -> int:
        return int(self.vars.shape[1])


def _root(model: CopulaModel) -> _Batch:
    xp, g = model.xp, model.cov.shape[0]
    b = _Batch(vars=xp.zeros((0, 1), dtype=xp.int64), M=xp.zeros((g, 0, 0, 1)), logdet=xp.zeros((g, 1)),
               dp=xp.zeros((g, 0, 1)), slogvar=xp.zeros(1))
    for v in model.fixed:
        b = _extend(model, b, xp.zeros(1, dtype=xp.int64), xp.full(1, v, dtype=xp.int64))
    return b


def _take(b: _Batch, rows) -> _Batch:
    return _Batch(*(x[..., rows] for x in (b.vars, b.M, b.logdet, b.dp, b.slogvar)))


def _extend(model: CopulaModel, b: _Batch, rows, cols, *, full: bool = True):
    """Children b[rows] + variable cols[i] (one Cholesky step each, see module docstring).

    ``rows`` is a slice (a view, no copy) or an index array. ``full=False`` returns only what
    Omega needs: (vars, logdet [G,B], sum log diag P [G,B], slogvar [B]), without building
    the children's factors.
    """
    xp, flat = model.xp, model.flat_cov
    v = model.cov.shape[-1]
    if isinstance(rows, slice):
        M, vars_, dp, logdet, slogvar = b.M[..., rows], b.vars[:, rows], b.dp[..., rows], \
            b.logdet[:, rows], b.slogvar[rows]
    else:
        M, vars_, dp = xp.take(b.M, rows, axis=-1), xp.take(b.vars, rows, axis=-1), xp.take(b.dp, rows, axis=-1)
        logdet, slogvar = xp.take(b.logdet, rows, axis=-1), xp.take(b.slogvar, rows)
    g, m, nb = flat.shape[0], vars_.shape[0], vars_.shape[1]
    s = xp.take(flat, vars_ * v + cols, axis=1)                   # [G, m, B] covariance column
    cjj = xp.take(flat, cols * (v + 1), axis=1)                   # [G, B]
    if cjj.ndim == 1:                                             # scalar column
        cjj = xp.broadcast_to(cjj[:, None], (g, nb))
    ljj = xp.einsum("gabk,gbk->gak", M, s)
    delta = cjj - xp.einsum("gak,gak->gk", ljj, ljj)
    delta = xp.where(delta > DEGENERATE * cjj, delta, xp.nan)
    u = xp.einsum("gabk,gak->gbk", M, ljj)                        # P s
    new_logdet = logdet + xp.log(delta)
    new_slogvar = slogvar + xp.log(cjj[0])
    dp_old = dp + u * u / delta[:, None, :]
    new_vars = xp.concatenate([vars_, xp.broadcast_to(cols, (1, nb))], axis=0)
    if not full:
        if m <= 16:  # one log of a product instead of m + 1 logs
            slogdp = xp.log(xp.prod(dp_old, axis=1) / delta)
        else:
            slogdp = xp.sum(xp.log(dp_old), axis=1) - xp.log(delta)
        return new_vars, new_logdet, slogdp, new_slogvar
    sd = xp.sqrt(delta)
    M2 = xp.zeros((g, m + 1, m + 1, nb))
    M2[:, :m, :m] = M
    M2[:, m, :m] = -u / sd[:, None, :]
    M2[:, m, m] = 1.0 / sd
    dp2 = xp.concatenate([dp_old, (1.0 / delta)[:, None, :]], axis=1)
    return _Batch(new_vars, M2, new_logdet, dp2, new_slogvar)


def _omega(model: CopulaModel, logdet, slogdp, slogvar, k: int):
    """Omega in bits for a batch of multiplets of k units (see the module docstring)."""
    xp = model.xp
    if model.labels == "exact":
        w = xp.asarray(model.weights[1:])[:, None]
        val = -0.5 * logdet[0] + 0.5 * slogvar - 0.5 * xp.sum(w * (logdet[1:] + slogdp[1:]), axis=0)
    else:
        val = -logdet[0] + 0.5 * slogvar - 0.5 * slogdp[0]
    return (val - model.bias(k)) / LN2


def _slogdp(b: _Batch, xp):
    return xp.sum(xp.log(b.dp), axis=1)


def _chunk(model: CopulaModel, k: int, chunk: int | None) -> int:
    if chunk:
        return int(chunk)
    v = k + len(model.fixed) + 1
    return max(1024, CHUNK_BYTES // (8 * model.cov.shape[0] * (v * v + 3 * v)))


def o_information(model: CopulaModel, multiplets, *, chunk: int | None = None) -> np.ndarray:
    """O-information of a batch of multiplets of one size, in **bits**.

    Parameters
    ----------
    model : CopulaModel
        From :func:`copula_model` (fixes the label encoding and the bias correction).
    multiplets : int array [B, k]
        Original unit indices, k >= 2 with a label (Omega of k units and the label) or k >= 3
        without.
    chunk : int, optional
        Multiplets per batch (default: from a memory budget; memory scales with
        chunk * k^2, never with the number of units).

    Returns
    -------
    NumPy array [B] (bits); NaN for degenerate (collinear) multiplets.

    Raises
    ------
    ConfigError
        Bad indices or sizes (see :meth:`CopulaModel.variables`).
    DataError
        Too few samples for the bias correction.
    """
    v = model.variables(multiplets)
    k = v.shape[1]
    if k + len(model.fixed) + (model.labels == "exact") < 3:
        raise ConfigError(f"O-information needs at least 3 variables; multiplets of {k} units are too small")
    xp = model.xp
    out = np.empty(len(v))
    step = _chunk(model, k, chunk)
    root = _root(model)
    for lo in range(0, len(v), step):
        cols = xp.asarray(v[lo:lo + step].T)
        nb = cols.shape[1]
        b = _take(root, xp.zeros(nb, dtype=xp.int64))
        for i in range(k - 1):
            b = _extend(model, b, slice(None), cols[i])
        _, logdet, slogdp, slogvar = _extend(model, b, slice(None), cols[k - 1], full=False)
        out[lo:lo + nb] = to_numpy(_omega(model, logdet, slogdp, slogvar, k))
    return out


# --------------------------------------------------------------------------------------------
# search

@dataclass
class _Best:
    """The ``keep`` lowest and highest Omega seen for one multiplet size."""
    keep: int
    low: tuple = (np.empty(0), np.empty((0, 0), np.int64))
    high: tuple = (np.empty(0), np.empty((0, 0), np.int64))
    count: int = 0
    degenerate: int = 0

    def add(self, omega: np.ndarray, idx: np.ndarray):
        self.count += len(omega)
        ok = ~np.isnan(omega)
        self.degenerate += int((~ok).sum())
        omega, idx = omega[ok], idx[ok]
        for attr, sign in (("low", 1.0), ("high", -1.0)):
            vals, sets = getattr(self, attr)
            vals = np.concatenate([vals, omega])
            sets = np.concatenate([sets.reshape(-1, idx.shape[1]), idx])
            if len(vals) > self.keep:
                part = np.argpartition(sign * vals, self.keep - 1)[:self.keep]
                vals, sets = vals[part], sets[part]
            order = np.lexsort((*sets.T[::-1], sign * vals))  # ties: smaller unit indices first
            setattr(self, attr, (vals[order], sets[order]))

    def merge(self, other: "_Best"):
        for vals, sets in (other.low, other.high):
            if len(vals):
                self.add(vals, sets)
        self.count += other.count - len(other.low[0]) - len(other.high[0])
        self.degenerate += other.degenerate


def n_multiplets(n_units: int, sizes) -> int:
    """Number of multiplets of the given sizes drawn from ``n_units`` units."""
    return sum(comb(n_units, k) for k in sizes)


def _check_total(n: int, exhaustive_up_to: int, max_multiplets: float) -> int:
    """Multiplets of an exhaustive search (sizes 1..exhaustive_up_to); refuse absurd ones."""
    total = n_multiplets(n, range(1, exhaustive_up_to + 1))
    if total > max_multiplets:
        raise ConfigError(f"an exhaustive search of {n} units up to size {exhaustive_up_to} evaluates "
                          f"{total:.3g} multiplets; lower exhaustive_up_to (greedy search goes on from there)")
    return total


def _starts(model: CopulaModel, b: _Batch, k: int, n: int) -> np.ndarray:
    """Child offsets of ``b`` (multiplets of k units, colexicographic): children
    ``start[j] .. start[j + 1] - 1`` extend parents ``0 .. start[j + 1] - start[j] - 1`` by unit j
    (every parent whose last unit is below j)."""
    xp = model.xp
    last = b.vars[-1] if k else xp.full(b.vars.shape[1], -1, dtype=xp.int64)
    cnt = to_numpy(xp.searchsorted(last, xp.arange(n), side="left"))
    return np.concatenate([[0], np.cumsum(cnt)])


def _grow(model: CopulaModel, b: _Batch, start: np.ndarray, lo: int, hi: int, leaf: bool, scored: bool):
    """Children ``lo .. hi - 1`` of ``b`` (offsets from :func:`_starts`): (their batch, or None
    on the last exhaustive level; their variables [m, B]; Omega in bits [B], or None if not
    ``scored``)."""
    xp = model.xp
    c = np.arange(lo, hi)
    j = np.searchsorted(start, c, side="right") - 1
    rows, cols = xp.asarray(c - start[j]), xp.asarray(j)
    k = int(b.vars.shape[0]) - len(model.fixed) + 1
    child = None
    if leaf:
        vars_, logdet, slogdp, slogvar = _extend(model, b, rows, cols, full=False)
    else:
        child = _extend(model, b, rows, cols)
        vars_, logdet, slogvar = child.vars, child.logdet, child.slogvar
        slogdp = _slogdp(child, xp) if scored else None
    om = to_numpy(_omega(model, logdet, slogdp, slogvar, k)) if scored else None
    return child, vars_, om


def _greedy_step(model: CopulaModel, b: _Batch, cands: np.ndarray, k: int):
    """The one multiplet of ``b`` extended by each candidate unit: (children, Omega in bits)."""
    xp = model.xp
    child = _extend(model, b, xp.zeros(len(cands), dtype=xp.int64), xp.asarray(cands))
    return child, to_numpy(_omega(model, child.logdet, _slogdp(child, xp), child.slogvar, k))


def _threads(model: CopulaModel, threads: int | None) -> int:
    if model.device != "cpu":
        return 1
    return max(1, int(threads if threads is not None else (os.cpu_count() or 1)))


#: Seconds per multiplet of the search in one thread, ``(a, b, c)`` of ``a + G (b + c v^2)``
#: for a multiplet of v variables over G covariance groups (:class:`CostModel`), on the last
#: exhaustive level (``LEAF_COST``: Omega only) and on the levels below it and in greedy steps
#: (``INNER_COST``: each multiplet's factor built too). Measured by benchmarks/oinfo_cost.py in
#: CPU seconds of one thread (so that other work on the machine barely moves them): 40 units,
#: 2,000 samples, every label encoding, 1 to 11 groups, multiplets of 2 to 7 units, on an x86-64
#: machine of 2 cores shared with other work. The model is within 0.83x..1.41x of each measured
#: level and 0.86x..1.46x of four whole searches. Run that script to measure them again.
LEAF_COST = (5.71e-8, 1.73e-9, 3.55e-9)
INNER_COST = (5.39e-8, 8.45e-9, 5.54e-9)
#: Seconds of overhead of one greedy step (the same benchmark).
STEP_COST = 5.5e-5


@dataclass(frozen=True)
class CostModel:
    """Seconds of a multiplet search computed from counts alone, for :func:`search_cost` and
    :func:`plan_search`: nothing is timed, so the same inputs give the same plan on any machine
    under any load.

    A multiplet of v variables (its units, plus the label with ``labels="ordinal"``) over G
    covariance groups (1, or 1 + the number of classes with ``labels="exact"``) costs
    ``a + G (b + c v^2)`` seconds, with ``(a, b, c) = leaf`` on the last exhaustive level (only
    Omega is computed) and ``inner`` on the levels below it and in the greedy steps (each
    multiplet's factor is built too); each greedy step adds ``step`` seconds. The exhaustive
    levels are shared by ``threads`` when the search is large enough to be threaded
    (:data:`THREAD_WORK`). The defaults, :data:`LEAF_COST`, :data:`INNER_COST` and
    :data:`STEP_COST`, were measured by ``benchmarks/oinfo_cost.py`` (CPU time of one
    thread); on another machine, or under load, the search takes proportionally more or less
    time, but the plan is the same. A search on CUDA is planned with the same figures.

    :meth:`flat` is a fixed speed instead (``rate`` multiplets per second whatever the size
    and label encoding: for planning by hand and for tests), and :meth:`for_search` fits a
    cost model to a search's label encoding, classes and threads.

    Parameters
    ----------
    leaf, inner : tuple of 3 floats
        ``(a, b, c)`` in seconds (>= 0, not all 0).
    step : float
        Seconds per greedy step (>= 0).
    groups : int
        Covariance groups G (>= 1).
    fixed : int
        Variables in every multiplet besides its units (1: the label with ``"ordinal"``).
    threads : int
        Threads sharing the exhaustive levels (>= 1).

    Raises
    ------
    ConfigError
        Negative or all-zero constants, fewer than one group or thread.
    """
    leaf: tuple = LEAF_COST
    inner: tuple = INNER_COST
    step: float = STEP_COST
    groups: int = 1
    fixed: int = 0
    threads: int = 1

    def __post_init__(self):
        for name in ("leaf", "inner"):
            v = tuple(float(c) for c in getattr(self, name))
            if len(v) != 3 or not all(c >= 0 for c in v) or not any(c > 0 for c in v):
                raise ConfigError(f"a cost model's {name} needs 3 non-negative seconds, not all 0; got {v!r}")
            object.__setattr__(self, name, v)
        if not self.step >= 0 or int(self.groups) < 1 or int(self.threads) < 1 or int(self.fixed) < 0:
            raise ConfigError(f"a cost model needs step >= 0, groups >= 1, threads >= 1 and fixed >= 0; got "
                              f"{self.step!r}, {self.groups!r}, {self.threads!r}, {self.fixed!r}")

    @classmethod
    def flat(cls, rate: float, *, step: float = 0.0) -> "CostModel":
        """``rate`` multiplets per second (> 0) at every size, label encoding and thread count,
        and ``step`` seconds per greedy step.

        Raises
        ------
        ConfigError
            A rate that is not positive or a negative step.
        """
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) or not rate > 0 or not step >= 0:
            raise ConfigError(f"a throughput needs rate > 0 and step >= 0; got {rate!r}, {step!r}")
        return cls((1.0 / float(rate), 0.0, 0.0), (1.0 / float(rate), 0.0, 0.0), float(step))

    def for_search(self, *, labels: str, classes: int = 0, threads: int | None = None) -> "CostModel":
        """This cost model for a search of labels ``labels`` (:data:`LABELS`) over ``classes``
        classes, in ``threads`` threads (None: 1, so that the plan does not depend on the
        machine's cores)."""
        return dataclasses.replace(self, groups=1 + int(classes) if labels == "exact" else 1,
                                   fixed=1 if labels == "ordinal" else 0, threads=int(threads or 1))

    def seconds(self, k: int, *, leaf: bool = True) -> float:
        """Seconds per multiplet of k units in one thread: ``a + G (b + c v^2)``, v = k + ``fixed``."""
        a, b, c = self.leaf if leaf else self.inner
        v = int(k) + int(self.fixed)
        return a + self.groups * (b + c * v * v)

    def rate(self, k: int, *, leaf: bool = True) -> float:
        """Multiplets of k units per second in one thread (:meth:`seconds` inverted)."""
        return 1.0 / self.seconds(k, leaf=leaf)

    def greedy_step(self, k: int, candidates: int) -> float:
        """Seconds of one greedy step: a multiplet of k - 1 units extended by each candidate."""
        return self.step + int(candidates) * self.seconds(k, leaf=False)

    def to_dict(self) -> dict:
        """The constants and the search they apply to, as JSON values (written with a plan)."""
        return {"model": "seconds per multiplet = a + G (b + c v^2)", "leaf": list(self.leaf),
                "inner": list(self.inner), "greedy_step_s": self.step, "groups": int(self.groups),
                "fixed": int(self.fixed), "threads": int(self.threads),
                "source": "benchmarks/oinfo_cost.py" if (self.leaf, self.inner, self.step) ==
                (LEAF_COST, INNER_COST, STEP_COST) else "given"}


def _as_cost(value) -> CostModel:
    """A :class:`CostModel`, from itself or from multiplets per second (:meth:`CostModel.flat`)."""
    return value if isinstance(value, CostModel) else CostModel.flat(value)


@dataclass(frozen=True)
class SearchCost:
    """Size, work and estimated time of one :func:`search_multiplets` call.

    ``exhaustive``: multiplets enumerated (every size 1..``exhaustive_up_to``, as counted by
    ``progress``); ``greedy``: multiplets evaluated by the greedy steps (both directions);
    ``seconds``: the estimate from a :class:`CostModel`. From :func:`plan_search`: ``reason``
    why the exhaustive size stops there (``"asked"``, ``"max_size"``: every size up to the
    largest multiplet fits, ``"budget"``: the next size would exceed the layer's share of the
    budget, ``"multiplets"``: the next size would exceed ``max_multiplets``), ``share`` (seconds of
    the budget the layer could use, every network together) and ``next_seconds`` (the estimate
    of the next size, one network, when the budget stopped the layer).
    """
    n_units: int
    max_size: int
    min_size: int
    exhaustive_up_to: int
    exhaustive: int
    greedy: int
    seconds: float
    reason: str = "asked"
    share: float | None = None
    next_seconds: float | None = None

    @property
    def multiplets(self) -> int:
        return self.exhaustive + self.greedy


def search_cost(n_units: int, exhaustive_up_to: int, *, throughput, max_size: int = 10,
                min_size: int = 2) -> SearchCost:
    """Multiplets and estimated seconds of a search of ``n_units`` units.

    Parameters
    ----------
    n_units : int
        Candidate units of the layer.
    exhaustive_up_to, max_size, min_size : int
        As in :func:`search_multiplets` (capped at the number of units).
    throughput : CostModel or float
        The cost model (:meth:`CostModel.for_search`), or multiplets per second
        (:meth:`CostModel.flat`).

    Returns
    -------
    SearchCost
        Seconds = sum over exhaustive sizes k = 2..e of C(n, k) x :meth:`CostModel.seconds`
        (``leaf`` for k = e), divided by the threads when the search is threaded
        (C(n, 1) + .. + C(n, e) times G at least :data:`THREAD_WORK`, as
        :func:`search_multiplets` decides), plus two greedy steps (synergy and redundancy) per
        size k beyond, each of n - k + 1 candidates (:meth:`CostModel.greedy_step`).

    Raises
    ------
    ConfigError
        A throughput that is not a cost model or a positive number.
    """
    cm = _as_cost(throughput)
    n = int(n_units)
    max_size = min(int(max_size), n)
    e = min(int(exhaustive_up_to), max_size)
    exhaustive = n_multiplets(n, range(1, e + 1))
    threads = cm.threads if exhaustive * cm.groups >= THREAD_WORK else 1
    seconds = sum(comb(n, k) * cm.seconds(k, leaf=k == e) for k in range(2, e + 1)) / threads
    ks = range(e + 1, max_size + 1)
    seconds += 2 * sum(cm.greedy_step(k, n - k + 1) for k in ks)
    greedy = 2 * sum(n - k + 1 for k in ks)
    return SearchCost(n, max_size, int(min_size), e, exhaustive, greedy, float(seconds))


def plan_search(widths: dict, *, throughput, budget: float = 60.0, max_size: int = 10,
                exhaustive_up_to="auto", min_size: int = 2, networks: int = 1,
                max_multiplets: float = 10 ** 10) -> dict:
    """Exhaustive size of each layer's search: the largest that fits a time budget, or the one asked.

    With ``exhaustive_up_to="auto"`` the budget is shared out over the layers: each gets an
    equal share, and the largest exhaustive size whose estimated time (:func:`search_cost`,
    from the cost model: no timing) fits it (the smallest size if none does); a layer
    searched exhaustively up to ``max_size`` within its share leaves the rest to the others
    (shares are recomputed until no layer has time left over). Layers of equal width get equal
    sizes, and the same arguments always give the same sizes.

    Parameters
    ----------
    widths : dict of str -> int
        Units per layer.
    throughput : CostModel or float
        The cost model (:meth:`CostModel.for_search`), or multiplets per second.
    budget : float
        Seconds for every search together (all layers, all networks).
    max_size, min_size, max_multiplets
        As in :func:`search_multiplets`.
    exhaustive_up_to : "auto" or int
        An int is taken as asked (capped at ``max_size`` and the layer's width).
    networks : int
        Searches per layer (one per network).

    Returns
    -------
    dict of layer -> SearchCost (for one network, with ``reason``, ``share`` and
    ``next_seconds``), in the order of ``widths``.

    Raises
    ------
    ConfigError
        A budget that is not positive, an exhaustive size that is not ``"auto"`` or at least
        ``min_size``, an exhaustive search of more than ``max_multiplets``, a bad throughput.
    """
    if not budget > 0:
        raise ConfigError(f"the budget must be a positive number of seconds, not {budget!r}")
    cm = _as_cost(throughput)
    caps = {name: min(int(max_size), int(w)) for name, w in widths.items()}
    costs = {}

    def cost(name, e):
        if (name, e) not in costs:
            costs[(name, e)] = search_cost(widths[name], e, throughput=cm, max_size=max_size, min_size=min_size)
        return costs[(name, e)]

    if exhaustive_up_to != "auto":
        if isinstance(exhaustive_up_to, bool) or not isinstance(exhaustive_up_to, (int, np.integer)):
            raise ConfigError(f"exhaustive_up_to must be 'auto' or a number of units, not {exhaustive_up_to!r}")
        if exhaustive_up_to < min_size:
            raise ConfigError(f"exhaustive_up_to must be at least {min_size}: greedy search starts from the "
                              "best exhaustive multiplet")
        for name, cap in caps.items():
            _check_total(int(widths[name]), min(int(exhaustive_up_to), cap), max_multiplets)
        return {name: cost(name, min(int(exhaustive_up_to), cap)) for name, cap in caps.items()}

    def fit(name, share):
        """(size, why it stops there) within ``share`` seconds."""
        best = min(min_size, caps[name])
        for e in range(best + 1, caps[name] + 1):
            if n_multiplets(int(widths[name]), range(1, e + 1)) > max_multiplets:
                return best, "multiplets"
            if networks * cost(name, e).seconds > share:
                return best, "budget"
            best = e
        return best, "max_size"

    chosen, pending, left = {}, dict(caps), float(budget)
    while pending:
        share = max(left, 0.0) / len(pending)
        fits = {name: (*fit(name, share), share) for name in pending}
        full = [name for name in pending if fits[name][1] == "max_size"]
        if not full or len(full) == len(pending):
            chosen.update(fits)
            break
        for name in full:
            chosen[name] = fits[name]
            left -= networks * cost(name, fits[name][0]).seconds
            del pending[name]
    out = {}
    for name in widths:
        e, reason, share = chosen[name]
        nxt = cost(name, e + 1).seconds if reason == "budget" else None
        out[name] = dataclasses.replace(cost(name, e), reason=reason, share=share, next_seconds=nxt)
    return out


def search_multiplets(model: CopulaModel, *, max_size: int = 10, exhaustive_up_to: int = 6,
                      min_size: int | None = None, keep: int = 1, chunk: int | None = None,
                      max_multiplets: int = 10 ** 10, threads: int | None = None,
                      progress=None) -> list:
    """Best synergistic (lowest Omega) and redundant (highest Omega) multiplets per size.

    Exhaustive over every multiplet of ``min_size .. exhaustive_up_to`` units, then greedy
    (the paper, Section 4.1): the best multiplet of size k - 1 is extended by the one unit
    that lowers (synergy) or raises (redundancy) Omega most, separately per direction, up to
    ``max_size``. Children are built from their parent's factor (one Cholesky step, O(k^2)),
    never from scratch. The work grows as C(n, exhaustive_up_to): :func:`plan_search` picks
    the size that fits a time budget, and :func:`search_cost` estimates the time of a size.

    Parameters
    ----------
    model : CopulaModel
    max_size : int
        Largest multiplet (units, the label not counted); capped at the number of units.
    exhaustive_up_to : int
        Largest size searched exhaustively (default 6, as in the paper).
    min_size : int, optional
        Smallest size reported (default: 2 with a label, 3 without; smaller sets have
        Omega = 0).
    keep : int
        Multiplets kept per size and direction.
    chunk : int, optional
        Multiplets per batch (default from a memory budget).
    max_multiplets : int
        Refuse exhaustive searches larger than this (they would take hours).
    threads : int, optional
        CPU threads, each searching the subtrees of some smallest units (default: all
        cores; 1 on CUDA and for searches too small to gain from threads).
    progress : callable(int), optional
        Called with the number of multiplets just evaluated.

    Returns
    -------
    list of dict, one per size k and direction ("synergy", "redundancy"): ``size``,
    ``direction``, ``method`` ("exhaustive"/"greedy"), ``omega`` (bits), ``units`` (original
    unit indices), ``evaluated``, ``degenerate``; with ``keep > 1`` also ``runners_up``.

    Raises
    ------
    ConfigError
        Inconsistent sizes, or an exhaustive search over more than ``max_multiplets``.
    """
    n = model.n_units
    lo_default = 3 - (model.labels != "none")
    min_size = lo_default if min_size is None else int(min_size)
    max_size = min(int(max_size), n)
    exhaustive_up_to = min(int(exhaustive_up_to), max_size)
    if min_size < lo_default:
        raise ConfigError(f"the smallest multiplet with labels={model.labels!r} has {lo_default} units")
    if max_size < min_size:
        raise ConfigError(f"max_size ({max_size}) is below the smallest multiplet size ({min_size}); "
                          f"the layer has {n} non-constant units")
    if exhaustive_up_to < min_size:
        raise ConfigError(f"exhaustive_up_to must be at least {min_size}: greedy search starts from the "
                          "best exhaustive multiplet")
    total = _check_total(n, exhaustive_up_to, max_multiplets)
    xp = model.xp

    # single units, then one subtree per group of smallest units, balanced over threads (or
    # over the tasks of a Dask cluster: infoprobe.parallel)
    if progress:
        progress(n)
    from ..parallel import current, map_tasks

    threads = _threads(model, threads)
    if exhaustive_up_to == 1 or total * model.cov.shape[0] < THREAD_WORK:
        threads = 1
    eng = current() if model.device == "cpu" and exhaustive_up_to > 1 else None
    parts = 4 * eng.capacity() if eng is not None and total * model.cov.shape[0] >= DASK_WORK else threads
    work = [sum(comb(n - 1 - a, k - 1) for k in range(2, exhaustive_up_to + 1)) for a in range(n)]
    groups, load = [[] for _ in range(parts)], [0] * parts
    for a in sorted(range(n), key=lambda a: -work[a]):
        i = load.index(min(load))
        groups[i].append(a)
        load[i] += work[a]
    groups = [sorted(g) for g in groups if g] or [[]]
    args = (exhaustive_up_to, min_size, keep, chunk)
    if parts > threads:
        bests = map_tasks(_search_group, [((model, g, *args), {}) for g in groups], desc="partitions",
                          on_result=(lambda i, b: progress(sum(x.count for x in b.values()))) if progress else None)
    elif threads == 1:
        bests = [_search_group(model, g, *args, progress=progress) for g in groups]
    else:
        with ThreadPoolExecutor(threads) as pool:
            bests = list(pool.map(lambda g: _search_group(model, g, *args, progress=progress), groups))
    best = bests[0]
    for other in bests[1:]:
        for k in best:
            best[k].merge(other[k])
    rows = []
    for k, bk in best.items():
        for direction, (vals, sets) in (("synergy", bk.low), ("redundancy", bk.high)):
            rows.append(_row(model, k, direction, "exhaustive", vals, sets, bk.count, bk.degenerate))
    for direction, pick in (("synergy", np.nanargmin), ("redundancy", np.nanargmax)):
        bk = best[exhaustive_up_to]
        vals, sets = bk.low if direction == "synergy" else bk.high
        if not len(vals) or max_size <= exhaustive_up_to:
            continue
        chain = sets[0]
        b = _root(model)
        for v in chain:
            b = _extend(model, b, xp.zeros(1, dtype=xp.int64), xp.full(1, int(v), dtype=xp.int64))
        for k in range(exhaustive_up_to + 1, max_size + 1):
            cands = np.setdiff1d(np.arange(n), chain)
            child, om = _greedy_step(model, b, cands, k)
            if progress:
                progress(len(cands))
            if np.isnan(om).all():
                break
            i = int(pick(om))
            chain = np.append(chain, cands[i])
            b = _take(child, xp.asarray([i]))
            rows.append(_row(model, k, direction, "greedy", om[[i]], chain[None, :], len(cands),
                             int(np.isnan(om).sum())))
    rows.sort(key=lambda r: (r["size"], r["direction"] != "synergy"))
    return rows


#: Exhaustive searches of at least this many multiplet-covariances are split into Dask tasks
#: inside an :func:`infoprobe.parallel.engine` block (smaller ones stay in the process's threads).
DASK_WORK = 50_000_000


def _search_group(model: CopulaModel, group: list, exhaustive_up_to: int, min_size: int, keep: int, chunk,
                  progress=None) -> dict:
    """The exhaustive search of the subtrees whose smallest unit is in ``group`` (sorted
    candidate indices): {size: _Best}. One thread's or one Dask task's share of
    :func:`search_multiplets`."""
    xp, n, nf = model.xp, model.n_units, len(model.fixed)
    best = {k: _Best(keep) for k in range(min_size, exhaustive_up_to + 1)}

    def descend(b: _Batch, k: int):
        """``b``: multiplets of k units in colexicographic order; enumerate their children."""
        start = _starts(model, b, k, n)
        leaf = k + 1 == exhaustive_up_to
        step = _chunk(model, k + 1, chunk)
        for lo in range(0, int(start[-1]), step):
            hi = min(lo + step, int(start[-1]))
            child, vars_, om = _grow(model, b, start, lo, hi, leaf, k + 1 >= min_size)
            if om is not None:
                best[k + 1].add(om, to_numpy(vars_[nf:]).T)
            if progress:
                progress(hi - lo)
            if not leaf:
                descend(child, k + 1)

    if group and exhaustive_up_to > 1:
        g = xp.asarray(group, dtype=xp.int64)
        descend(_extend(model, _root(model), xp.zeros(len(group), dtype=xp.int64), g), 1)
    return best


def _row(model, k, direction, method, vals, sets, count, degenerate) -> dict:
    units = model.units
    row = {"size": k, "direction": direction, "method": method,
           "omega": float(vals[0]) if len(vals) else float("nan"),
           "units": [int(units[v]) for v in sets[0]] if len(vals) else [],
           "evaluated": int(count), "degenerate": int(degenerate)}
    if len(vals) > 1:
        row["runners_up"] = [{"omega": float(o), "units": [int(units[v]) for v in s]}
                             for o, s in zip(vals[1:], sets[1:])]
    return row
