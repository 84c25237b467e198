"""Redundancy: how many of a layer's units PCA finds non-redundant, and how correlated the
units are (Casper, Boix et al., "Frivolous Units", AAAI 2021, Section 4 and Fig. 2c-d).

The layer's activation matrix (conv: channels are the units and spatial positions are
samples, randomly subsampled to at most 50,000 rows); PCA; the number of non-redundant units
is the number of components that leave at most 5% of the variance unexplained; redundant =
units - that number.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...arrays import namespace
from ...data import Dataset, model_inputs, position_mask, resolve_scale
from ...errors import ConfigError
from ...interventions import chunk_rows
from ...limits import max_memory, require_memory, rows_within
from ...estimators.frivolous import Moments, abs_correlations, components_needed, diagonal, pca_spectrum
from ...model import LoadedModel, load_model
from ...positions import per_unit
from ...rewrite import io_name
from ...runner import Runner, default_threads
from ...store import Store, is_store_path
from .prunability import hidden_layers

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Most |r| values :func:`redundancy` keeps per layer for the violins (8 MB); the table's
#: mean and quantiles are those of every pair.
KEPT_PAIRS = 1_000_000


def activation_batches(source, names, *, data=None, scale="auto", batch_size=4096, plan=None, providers=None):
    """Yield {layer: post-activation block} over the samples, from a store or a model (with
    ``plan``'s replacements applied through the mask mechanism)."""
    if isinstance(source, Store):   # one block size for every layer keeps the layers in step
        per_row = max(int(np.prod(source.dataset(n, "post").shape[1:], dtype=np.float64)) * 4 for n in names)
        rows = rows_within(per_row, batch_size, share=0.25, what="one sample of a layer")
        iters = [source.iter_rows(n, "post", rows=rows) for n in names]
        for blocks in zip(*iters):
            yield {n: b for n, (_, b) in zip(names, blocks)}
        return
    lm = source
    if data is None:
        raise ConfigError("redundancy from a model needs data")
    x = model_inputs(lm, data.x, resolve_scale(data.x, scale))
    runner = Runner(lm, expose=True, mix=plan is not None, providers=providers, threads=default_threads(),
                    arena="shared")
    feeds = runner.plan_feeds(plan) if plan is not None else None
    outs = [io_name(n, "post") for n in names]
    rows = chunk_rows(runner, x, batch_size)   # memory bounded whatever the number of samples
    for s in range(0, len(x), rows):
        r = runner.run(x[s:s + rows], feeds=feeds, outputs=outs, batch_size=rows)
        yield {n: r[io_name(n, "post")] for n in names}


def activation_matrices(source, names, axes: dict, n_samples: int, *, max_rows: int = 50_000, seed: int = 0,
                        **kw) -> dict:
    """Per layer the float32 activation matrix [rows, U] that redundancy is measured on:
    every sample of a dense layer, every (sample, position) of a conv or token site
    (``axes``: {layer: unit axis}; :func:`infoprobe.positions.per_unit` with ``samples``),
    randomly subsampled (without replacement, seeded) to at most ``max_rows`` rows (lowered, with
    a warning, so that every layer's rows fit in an eighth of the memory budget). Padding
    tokens (a store's ``/samples/mask``, the data's ``attention_mask``) are left out.
    :func:`activation_moments` gives their moments without holding them."""
    units = {n: (source.layer_info(n)["units"] if isinstance(source, Store) else source.layer(n).units) for n in names}
    fit = (max_memory() // 8) // max(1, 4 * sum(units.values()))   # every layer's rows kept at once
    if fit < max_rows:
        warnings.warn(f"redundancy keeps at most {fit:,} rows per layer (max_rows {max_rows:,} lowered so that "
                      f"{len(names)} layers of {sum(units.values()):,} units fit in 1/8 of --max-memory)")
        max_rows = max(1, fit)
    out = {n: [] for n in names}
    for blocks in _picked_rows(source, names, axes, n_samples, max_rows=max_rows, seed=seed, **kw):
        for n, rows in blocks.items():
            out[n].append(rows)
    return {n: np.concatenate(v) for n, v in out.items()}


def activation_moments(source, names, axes: dict, n_samples: int, *, max_rows: int = 50_000, seed: int = 0,
                       xp=np, **kw) -> dict:
    """The rows of :func:`activation_matrices` (the same ``max_rows`` seeded rows, never
    lowered) as streaming moments per layer ({layer: :class:`~infoprobe.estimators.frivolous.Moments`}
    on ``xp``'s device): memory is one block of samples and a U x U matrix per layer, whatever
    ``max_rows`` and the number of samples.

    Raises
    ------
    BudgetError
        The layers' U x U sums together, with the unit-to-unit correlations of the widest
        (:func:`redundancy` computes each layer's in turn), exceed the memory budget.
    """
    units = {n: (source.layer_info(n)["units"] if isinstance(source, Store) else source.layer(n).units) for n in names}
    widest = max(units.values(), default=0)
    require_memory(8 * sum(u * u for u in units.values()) + 8 * (widest * (widest - 1) // 2),
                   f"the covariance sums of {len(names)} layers ({sum(units.values()):,} units) and the correlations "
                   f"of the widest ({widest:,} units; fewer with --layers)")
    out = {n: Moments() for n in names}
    for blocks in _picked_rows(source, names, axes, n_samples, max_rows=max_rows, seed=seed, **kw):
        for n, rows in blocks.items():
            if len(rows):
                out[n].update(xp.asarray(rows))
    return out


def _picked_rows(source, names, axes, n_samples, *, max_rows, seed, **kw):
    """Yield {layer: float32 rows [r, U]} of each block of samples: the (sample, position) rows
    drawn once for all (``max_rows`` of them, seeded) that fall in the block."""
    rng = np.random.default_rng(seed)
    masks = _position_masks(source, names, kw.get("data"))
    picks, start, offset = {}, 0, dict.fromkeys(names, 0)
    for blocks in activation_batches(source, names, **kw):
        out = {}
        for n, b in blocks.items():
            m = None if masks[n] is None else masks[n][start:start + len(b)]
            rows = per_unit(np.asarray(b, np.float32), axes[n], "samples", m)
            if n not in picks:
                total = n_samples * (len(rows) // len(b)) if m is None else int(np.count_nonzero(masks[n]))
                picks[n] = (np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows
                            else np.arange(total))
            sel = picks[n]
            lo, hi = np.searchsorted(sel, [offset[n], offset[n] + len(rows)])
            out[n] = rows[sel[lo:hi] - offset[n]]
            offset[n] += len(rows)
        start += len(next(iter(blocks.values())))
        yield out


def _position_masks(source, names, data) -> dict:
    """{site: padding mask [N, T] or None}: a store's ``/samples/mask``, or the data's
    ``attention_mask`` for the model's token sites of length T."""
    if isinstance(source, Store):
        flat = [n for n in names if source.reduced(n)]
        if flat:
            warnings.warn(f"sites {', '.join(flat)} were stored as each unit's mean over positions, so their redundancy "
                          "takes samples, not samples x positions, as rows; capture with --full-maps to count "
                          "positions as samples (Casper et al.)")
        return {n: source.position_mask(n) for n in names}
    m = position_mask(data.x, source.padding) if data is not None else None
    return {n: m if m is not None and source.layer(n).kind == "token" and source.layer(n).shape[0] == m.shape[1]
            else None for n in names}


def open_source(source):
    """An open Store or LoadedModel for a path (a store when :func:`infoprobe.store.is_store_path`
    says so), or ``source`` itself."""
    if isinstance(source, (Store, LoadedModel)):
        return source
    p = Path(source)
    return Store(p) if is_store_path(p) else load_model(p)


def layer_kinds(source, names) -> dict:
    """{site: kind} of a store's or a model's sites."""
    if isinstance(source, Store):
        return {n: source.layer_info(n)["kind"] for n in names}
    return {n: source.layer(n).kind for n in names}


def unit_axes(source, names) -> dict:
    """{site: unit axis of its per-sample shape} of a store's or a model's sites."""
    if isinstance(source, Store):
        return {n: source.layer_info(n)["unit_axis"] for n in names}
    return {n: source.layer(n).unit_axis for n in names}


def redundancy(source, data: Dataset | None = None, *, layers=None, tolerance: float = 0.05,
               max_rows: int = 50_000, seed: int = 0, device: str = "cpu", scale="auto",
               batch_size: int = 4096, progress: bool = True) -> tuple[list, dict]:
    """Redundant units of each hidden layer by PCA, and the distribution of absolute
    unit-to-unit correlations (Casper et al., Section 4, "Redundancy"; Fig. 2c-d).

    Parameters
    ----------
    source : LoadedModel, Store or path-like
        An ONNX model (with ``data``) or an activation store (its post-activations).
    data : Dataset, optional
        Test samples, for a model.
    layers : list of str, optional
        Hidden layers (default: all).
    tolerance : float
        Largest fraction of the variance left unexplained (paper: 0.05).
    max_rows : int
        Rows of the activation matrix (conv: samples x positions) kept at most, drawn at
        random with ``seed`` (an int or a ``numpy.random.Generator``; paper: 50,000).
    device : {"cpu", "cuda"}
        Where the covariance and its eigendecomposition are computed (NumPy or CuPy).

    Returns
    -------
    rows : list of dict
        Per layer: ``layer``, ``kind``, ``units``, ``rows`` (samples of the matrix),
        ``non_redundant``, ``redundant``, ``redundant_fraction``, ``unexplained`` (fraction
        of the variance the non-redundant components leave), ``constant_units``, and the
        mean and quantiles of |r| (``corr_mean``, ``corr_q05`` ... ``corr_q95``).
    correlations : dict
        layer -> float64 [P] absolute correlations of the pairs of non-constant units: all
        of them, or :data:`KEPT_PAIRS` drawn at random (pair order kept) from a layer with
        more (the row's mean and quantiles are those of all pairs).

    Memory: every layer's U x U sums at once, then one layer at a time its covariance (in
    the sums' memory) and the |r| of all its pairs; checked against the memory budget before
    any sample is read (:func:`activation_moments`).

    Raises
    ------
    ConfigError, DataError, DeviceError, ModelError
    """
    src = open_source(source)
    try:
        return _redundancy(src, data, layers, tolerance, max_rows, seed, namespace(device), scale, batch_size,
                           progress)
    finally:
        if isinstance(src, Store) and src is not source:
            src.close()


def _redundancy(src, data, layers, tolerance, max_rows, seed, xp, scale, batch_size, progress):
    rng = np.random.default_rng(seed)    # the rows, then the kept pairs
    if isinstance(src, Store):
        names = list(layers) if layers is not None else src.hidden_layers()
        unknown = [n for n in names if n not in src.layer_names]
        if unknown:
            raise ConfigError(f"the store has no layer {unknown[0]!r}; it has: " + ", ".join(src.layer_names))
        n_samples = int(src.dataset(names[0], "post").shape[0]) if names else 0
        moments = activation_moments(src, names, unit_axes(src, names), n_samples, max_rows=max_rows, seed=rng,
                                     xp=xp)
    else:
        if data is None:
            raise ConfigError("redundancy of a model needs data (--data), or give an activation store")
        names = hidden_layers(src, layers)
        moments = activation_moments(src, names, unit_axes(src, names), len(data), max_rows=max_rows, seed=rng,
                                     xp=xp, data=data, scale=scale, batch_size=batch_size)
    kinds = layer_kinds(src, names)
    rows, corrs = [], {}
    for n in tqdm(names, desc="redundancy", unit="layer", disable=not progress, leave=False):
        mom = moments.pop(n)               # its sums become the covariance, then LAPACK's workspace
        n_rows = mom.n
        cov = mom.covariance(release=True)
        d = diagonal(cov)
        u = int(cov.shape[0])
        r = abs_correlations(cov)
        spec = pca_spectrum(cov, overwrite=True)
        del cov, mom
        k = components_needed(spec, tolerance)
        total = spec.sum()
        row = {"layer": n, "kind": kinds[n], "units": u, "rows": n_rows, "non_redundant": k, "redundant": u - k,
               "redundant_fraction": (u - k) / u,
               "unexplained": float(spec[k:].sum() / total) if total > 0 else 0.0,
               "constant_units": int((d <= 1e-12 * max(1.0, float(d.max()))).sum()),
               "corr_mean": float(r.mean()) if len(r) else float("nan")}
        kept = r if len(r) <= KEPT_PAIRS else r[np.sort(rng.choice(len(r), KEPT_PAIRS, replace=False))]
        # when only a sample is kept, every pair is partitioned in place: no second copy of them
        qs = (np.quantile(r, QUANTILES, overwrite_input=kept is not r) if len(r)
              else [float("nan")] * len(QUANTILES))
        row.update({f"corr_q{int(round(q * 100)):02d}": float(v) for q, v in zip(QUANTILES, qs)})
        corrs[n] = kept
        rows.append(row)
    return rows, corrs
