"""Frivolous units: prunability by random ablation, redundancy by PCA, width sweeps, and the
thinner network that computes (almost) the same function.

Source: Casper, Boix et al., "Frivolous Units: Wider Networks Are Not Really That Wide"
(AAAI 2021), Sections 3-4 and the appendix on removing redundant units. The defaults are
the authors' choices:

- *Prunability*: a random permutation of a layer's units is ablated cumulatively at the
  fractions 0, 1/6, ..., 1 (post-activations multiplied by 0, no rescaling) and the metric
  is the fraction of predictions that do not change relative to the intact network. Dense
  units are neurons; conv units are channel x position (each spatial location of each feature
  map). The prunable fraction is where the curve crosses 1 - tolerance (0.2), by linear
  interpolation; 3 permutations, the largest value kept.
- *Redundancy*: the layer's activation matrix (conv: channels are the units and spatial
  positions are samples, randomly subsampled to at most 50,000 rows); PCA; the number of
  non-redundant units is the number of components that leave at most 5% of the variance
  unexplained; redundant = units - that number.
- *Width sweeps*: counts normalised by the unit count of the widest model, and the gain g
  (average growth factor per doubling of the width).

Ablations go through the mask inputs of the rewritten graph (DESIGN.md); masks of several
ablations are stacked along the batch so that one onnxruntime run evaluates many of them,
and a per-layer sweep runs only the suffix of the model after the layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..._array import namespace, to_numpy
from ...data import Dataset, prepare_inputs, resolve_scale
from ...errors import ConfigError, ModelError, PlanError
from ...estimators.frivolous import (
    Moments, abs_correlations, components_needed, gain, independent_units, pca_spectrum,
    prunable_fraction, refactor,
)
from ...model import LoadedModel, load_model
from ...plan import LayerPlan, PruningPlan
from ...results import check_outputs, provenance, write_table
from ...rewrite import io_name
from ...runner import Runner, default_threads
from ...store import Store

#: The paper's ablated fractions: 0, 1/6, ..., 1.
FRACTIONS = tuple(np.arange(7) / 6)
MODES = ("layer", "network")
CONV_UNITS = ("position", "channel")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _unit_shape(lay, conv_units: str) -> tuple:
    """Per-sample shape of a mask over the layer's ablation units."""
    if lay.kind == "dense":
        return (lay.units,)
    return tuple(lay.shape) if conv_units == "position" else (lay.units, 1, 1)


class _Sweep:
    """Fraction of unchanged predictions under batches of masks, through one runner.

    ``masks`` are {layer: float32 [K, *unit_shape]}: K ablations evaluated together, stacked
    along the batch in groups of about ``rows`` rows per run.
    """

    def __init__(self, runner: Runner, inputs: np.ndarray, intact: np.ndarray, output: str, rows: int,
                 batch_size: int):
        self.runner, self.inputs, self.intact, self.output = runner, inputs, intact, output
        self.batch_size = batch_size
        self.group = max(1, rows // len(inputs))
        self.runs = 0  # ablations evaluated (benchmarks compare with as many forward passes)

    def __call__(self, masks: dict) -> np.ndarray:
        n = len(self.inputs)
        k = len(next(iter(masks.values())))
        out = np.empty(k)
        for g0 in range(0, k, self.group):
            g1 = min(k, g0 + self.group)
            reps = g1 - g0
            x = self.inputs if reps == 1 else np.concatenate([self.inputs] * reps)
            feeds = {}
            for name, m in masks.items():
                m = m[g0:g1]
                feeds[io_name(name, "mask")] = m if reps == 1 else np.repeat(m, n, axis=0)
            res = self.runner.run(x, feeds=feeds, outputs=[self.output], batch_size=self.batch_size)[self.output]
            labels = self.runner.lm.predicted_labels(res).reshape(reps, n)
            out[g0:g1] = (labels == self.intact[None]).mean(axis=1)
        self.runs += k
        return out


def _fractions(fractions) -> np.ndarray:
    f = np.asarray(FRACTIONS if fractions is None else fractions, np.float64)
    if f.ndim != 1 or len(f) < 2 or f[0] != 0 or np.any(np.diff(f) <= 0) or f[-1] > 1:
        raise ConfigError("fractions must ascend strictly from 0 to at most 1, e.g. 0,1/6,...,1")
    return f


def _hidden(lm: LoadedModel, layers) -> list:
    hidden = [lay.name for lay in lm.hidden_layers]
    if layers is None:
        return hidden
    layers = list(layers)
    for n in layers:
        if n not in hidden:
            raise ConfigError(f"{n!r} is not a hidden unit layer of {lm.path.name}; its hidden layers are: "
                              + ", ".join(hidden))
    return [n for n in hidden if n in layers]


@dataclass
class Prunability:
    """Ablation curves and prunable fractions.

    Attributes
    ----------
    curves : list of dict
        One row per (mode, layer, permutation, ablated count): ``mode`` ("layer" or
        "network"), ``layer`` ("all" in network mode), ``permutation``, ``fraction``
        (ablated / units), ``ablated``, ``units`` (ablation units: neurons, channels or
        channel x positions), ``unchanged`` (fraction of predictions equal to the intact
        network's).
    summary : list of dict
        One row per (mode, layer): ``units``, ``unit`` (what a unit is), ``prunable_fraction``
        (largest over permutations), ``prunable_units`` (that fraction times ``units``),
        ``crossed`` (False: the curve never fell below 1 - tolerance), ``best_permutation``,
        ``per_permutation`` (the prunable fraction of each permutation).
    permutations : dict
        (mode, layer) -> list of int64 arrays, the ablation order of each permutation
        (network mode: indices into the layers' units concatenated in ``layers`` order).
    layers : list of str
    conv_units : str
    unit_counts : dict
        layer -> number of ablation units.
    runs : int
        Ablations evaluated (benchmarks compare with as many plain forward passes).
    """

    curves: list
    summary: list
    permutations: dict
    layers: list
    conv_units: str
    unit_counts: dict = field(default_factory=dict)
    runs: int = 0

    def row(self, layer: str, mode: str = "layer") -> dict:
        for r in self.summary:
            if r["mode"] == mode and r["layer"] == layer:
                return r
        raise ConfigError(f"no prunability result for layer {layer!r} in {mode} mode")


def prunability(model, data: Dataset, *, layers=None, fractions=None, n_permutations: int = 3,
                tolerance: float = 0.2, conv_units: str = "position", modes=MODES, seed: int = 0,
                scale="auto", batch_size: int = 4096, rows_per_run: int = 256, progress: bool = True,
                providers=None) -> Prunability:
    """Prunability of each hidden layer, and of all of them at once, by cumulative random
    ablation (Casper et al., Section 4, "Prunability"; Fig. 2a-b).

    Parameters
    ----------
    model : LoadedModel or path-like
        An ONNX classifier.
    data : Dataset
        Test samples [N, ...] (labels are not needed: the metric compares predictions with
        the intact network's).
    layers : list of str, optional
        Hidden unit layers (default: all).
    fractions : float [K], optional
        Ablated fractions, ascending from 0 (default 0, 1/6, ..., 1). Each fraction f
        ablates round(f * units) units.
    n_permutations : int
        Random permutations per curve; the largest prunable fraction is kept (paper: 3).
    tolerance : float
        Tolerated fraction of changed predictions (paper: 0.2).
    conv_units : {"position", "channel"}
        Conv ablation units: channel x position (the paper's) or whole channels (needed
        for a physical pruning plan).
    modes : sequence of {"layer", "network"}
        One layer at a time (the rest intact), and/or every chosen layer at once with one
        permutation over all their units.
    seed : int
        Seeds the permutations (``numpy.random.default_rng``).
    scale : "auto" or float
        Input multiplier (as in capture).
    batch_size : int
        Rows per onnxruntime call.
    rows_per_run : int
        Ablations are stacked along the batch so that one run holds about this many rows
        (default 256: stacking only pays when the per-call overhead of onnxruntime dominates,
        i.e. for small data sets; on a CPU, repeating the masks costs more than it saves for
        1,000 samples and more, as ``benchmarks/frivolous.py`` measures).

    Returns
    -------
    Prunability

    Raises
    ------
    ConfigError
        Unknown layer, mode or conv unit, bad fractions or tolerance.
    DataError, ModelError
        Data that does not fit the model; a model onnxruntime cannot run.
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    if conv_units not in CONV_UNITS:
        raise ConfigError(f"unknown conv unit {conv_units!r}; use position or channel")
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"modes must be among {', '.join(MODES)}")
    if n_permutations < 1:
        raise ConfigError("n_permutations must be at least 1")
    fr = _fractions(fractions)
    names = _hidden(lm, layers)
    if not names:
        raise ConfigError(f"{lm.path.name} has no hidden unit layer to ablate")
    threads = default_threads()
    x = prepare_inputs(data.x, lm.input_shape, resolve_scale(data.x, scale), input_name=lm.input_name)
    # the intact pass runs once; its idle threads must not spin while the suffix sessions work
    full = Runner(lm, expose=True, providers=providers, threads=threads, spin=False)
    res = full.run(x, outputs=[lm.output_name] + [io_name(n, "post") for n in names], batch_size=batch_size)
    intact = lm.predicted_labels(res[lm.output_name])
    shapes = {n: _unit_shape(lm.layer(n), conv_units) for n in names}
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    rng = np.random.default_rng(seed)

    runners = {}   # one suffix session per first layer, shared by the layer and network modes

    def sweep_for(members):
        first = members[0]
        if first not in runners:
            try:
                runners[first] = Runner(lm, after=first, providers=providers, threads=threads)
            except ModelError:   # a skip connection around the layer: run the whole model
                runners[first] = None
        runner = runners[first]
        if runner is not None and all(io_name(n, "mask") in runner.input_names for n in members):
            return _Sweep(runner, res[io_name(first, "post")], intact, lm.output_name, rows_per_run, batch_size)
        return _Sweep(full, x, intact, lm.output_name, rows_per_run, batch_size)

    jobs = [("layer", n, [n]) for n in names] if "layer" in modes else []
    if "network" in modes:
        jobs.append(("network", "all", names))
    curves, summary, perms, sweeps = [], [], {}, []
    total = len(jobs) * n_permutations * (len(fr) - 1)
    bar = tqdm(total=total, desc="prunability", unit="ablation", disable=not progress, leave=False)
    for mode, label, members in jobs:
        sweep = sweep_for(members)
        sweeps.append(sweep)
        offsets = np.cumsum([0] + [sizes[n] for n in members])
        n_units = int(offsets[-1])
        counts = np.round(fr * n_units).astype(np.int64)
        per_perm, kept_perms = [], []
        # masks of several fractions are built together, within about 64 MiB
        per_call = max(1, min(len(fr) - 1, 2**24 // n_units))
        for p in range(n_permutations):
            order = rng.permutation(n_units)
            kept_perms.append(order)
            unchanged = [1.0]
            for i0 in range(1, len(fr), per_call):
                part = counts[i0:i0 + per_call]
                flat = np.ones((len(part), n_units), np.float32)
                for i, c in enumerate(part):
                    flat[i, order[:c]] = 0.0
                masks = {n: flat[:, offsets[j]:offsets[j + 1]].reshape(-1, *shapes[n])
                         for j, n in enumerate(members)}
                unchanged += list(sweep(masks))
                bar.update(len(part))
            unchanged = np.array(unchanged)
            frac = counts / n_units
            per_perm.append(prunable_fraction(frac, unchanged, tolerance))
            curves += [{"mode": mode, "layer": label, "permutation": p, "fraction": float(f), "ablated": int(c),
                        "units": n_units, "unchanged": float(u)} for f, c, u in zip(frac, counts, unchanged)]
        best = int(np.argmax([f for f, _ in per_perm]))
        kinds = {lm.layer(n).kind for n in members}
        unit = ("neuron" if kinds == {"dense"} else
                "channel x position" if conv_units == "position" and kinds == {"conv"} else
                "channel" if kinds == {"conv"} else "mixed")
        summary.append({"mode": mode, "layer": label, "units": n_units, "unit": unit,
                        "prunable_fraction": per_perm[best][0], "prunable_units": per_perm[best][0] * n_units,
                        "crossed": per_perm[best][1], "best_permutation": best,
                        "per_permutation": [f for f, _ in per_perm]})
        perms[(mode, label)] = kept_perms
    bar.close()
    return Prunability(curves, summary, perms, names, conv_units, dict(sizes), sum(s.runs for s in sweeps))


# --------------------------------------------------------------------------- activations

def _rows(block: np.ndarray, kind: str) -> np.ndarray:
    """Activation rows [n, U]: dense as is; conv [n, C, H, W] with positions as samples."""
    if kind == "conv" and block.ndim == 4:
        return np.moveaxis(block, 1, -1).reshape(-1, block.shape[1])
    return block.reshape(len(block), -1)


def _batches(source, names, *, data=None, scale="auto", batch_size=4096, plan=None, providers=None):
    """Yield {layer: post-activation block} over the samples, from a store or a model (with
    ``plan``'s replacements applied through the mask mechanism)."""
    if isinstance(source, Store):   # one block size for every layer keeps the layers in step
        iters = [source.iter_rows(n, "post", rows=batch_size) for n in names]
        for blocks in zip(*iters):
            yield {n: b for n, (_, b) in zip(names, blocks)}
        return
    lm = source
    if data is None:
        raise ConfigError("redundancy from a model needs data")
    x = prepare_inputs(data.x, lm.input_shape, resolve_scale(data.x, scale), input_name=lm.input_name)
    runner = Runner(lm, expose=True, mix=plan is not None, providers=providers, threads=default_threads())
    feeds = runner.plan_feeds(plan) if plan is not None else None
    outs = [io_name(n, "post") for n in names]
    for s in range(0, len(x), batch_size):
        r = runner.run(x[s:s + batch_size], feeds=feeds, outputs=outs, batch_size=batch_size)
        yield {n: r[io_name(n, "post")] for n in names}


def activation_matrices(source, names, kinds: dict, n_samples: int, *, max_rows: int = 50_000, seed: int = 0,
                        **kw) -> dict:
    """Per layer the float32 activation matrix [rows, U] that redundancy is measured on:
    every sample of a dense layer, every (sample, position) of a conv layer, randomly
    subsampled (without replacement, seeded) to at most ``max_rows`` rows."""
    rng = np.random.default_rng(seed)
    picks, out, start = {}, {n: [] for n in names}, 0
    for blocks in _batches(source, names, **kw):
        for n, b in blocks.items():
            rows = _rows(np.asarray(b, np.float32), kinds[n])
            per = len(rows) // len(b)
            if n not in picks:
                total = n_samples * per
                picks[n] = (np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows
                            else np.arange(total))
            sel = picks[n]
            lo, hi = np.searchsorted(sel, [start * per, (start + len(b)) * per])
            out[n].append(rows[sel[lo:hi] - start * per])
        start += len(next(iter(blocks.values())))
    return {n: np.concatenate(v) for n, v in out.items()}


def _source(source):
    if isinstance(source, (Store, LoadedModel)):
        return source
    p = Path(source)
    return Store(p) if p.suffix.lower() in (".h5", ".hdf5") else load_model(p)


def _layer_kinds(source, names) -> dict:
    if isinstance(source, Store):
        return {n: source.layer_info(n)["kind"] for n in names}
    return {n: source.layer(n).kind for n in names}


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
        random with ``seed`` (paper: 50,000).
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
        layer -> float64 [P] absolute correlations of all pairs of non-constant units.

    Raises
    ------
    ConfigError, DataError, DeviceError, ModelError
    """
    src = _source(source)
    try:
        return _redundancy(src, data, layers, tolerance, max_rows, seed, namespace(device), scale, batch_size,
                           progress)
    finally:
        if isinstance(src, Store) and src is not source:
            src.close()


def _redundancy(src, data, layers, tolerance, max_rows, seed, xp, scale, batch_size, progress):
    if isinstance(src, Store):
        names = list(layers) if layers is not None else src.hidden_layers()
        unknown = [n for n in names if n not in src.layer_names]
        if unknown:
            raise ConfigError(f"the store has no layer {unknown[0]!r}; it has: " + ", ".join(src.layer_names))
        n_samples = int(src.dataset(names[0], "post").shape[0]) if names else 0
        mats = activation_matrices(src, names, _layer_kinds(src, names), n_samples, max_rows=max_rows, seed=seed)
    else:
        if data is None:
            raise ConfigError("redundancy of a model needs --data (or give an activation store)")
        names = _hidden(src, layers)
        mats = activation_matrices(src, names, _layer_kinds(src, names), len(data), max_rows=max_rows, seed=seed,
                                   data=data, scale=scale, batch_size=batch_size)
    kinds = _layer_kinds(src, names)
    rows, corrs = [], {}
    for n in tqdm(names, desc="redundancy", unit="layer", disable=not progress, leave=False):
        m = mats[n]
        mom = Moments()
        for s in range(0, len(m), 8192):
            mom.update(xp.asarray(m[s:s + 8192]))
        cov = mom.covariance()
        spec = pca_spectrum(cov)
        k = components_needed(spec, tolerance)
        total = spec.sum()
        r = abs_correlations(cov)
        corrs[n] = r
        d = np.diag(to_numpy(cov))
        u = m.shape[1]
        row = {"layer": n, "kind": kinds[n], "units": u, "rows": len(m), "non_redundant": k, "redundant": u - k,
               "redundant_fraction": (u - k) / u,
               "unexplained": float(spec[k:].sum() / total) if total > 0 else 0.0,
               "constant_units": int((d <= 1e-12 * max(1.0, float(d.max()))).sum()),
               "corr_mean": float(r.mean()) if len(r) else float("nan")}
        qs = np.quantile(r, QUANTILES) if len(r) else [float("nan")] * len(QUANTILES)
        row.update({f"corr_q{int(round(q * 100)):02d}": float(v) for q, v in zip(QUANTILES, qs)})
        rows.append(row)
    return rows, corrs


# --------------------------------------------------------------------------- plans

def refactor_plan(model, data: Dataset, *, layers=None, tolerance: float = 0.05, max_rows: int = 50_000,
                  sequential: bool = True, seed: int = 0, scale="auto", batch_size: int = 4096,
                  progress: bool = True) -> tuple[PruningPlan, list]:
    """A pruning plan that removes the redundant units of each hidden layer and refactors
    them into the kept ones (Casper et al., appendix on removing redundant units).

    Per layer: the number of kept units is the number of non-redundant units at
    ``tolerance`` (:func:`~infoprobe.estimators.frivolous.components_needed`); the kept units
    are the first ones chosen by QR with column pivoting on the centred activations
    (:func:`~infoprobe.estimators.frivolous.independent_units`); every other unit j becomes
    t_j = sum_k a_jk t_k + c_j, with a the least-squares fit and c carrying the mean
    (:func:`~infoprobe.estimators.frivolous.refactor`). :func:`infoprobe.prune.apply_plan`
    then folds a into the outgoing weights of the kept units and c into the next bias.

    Parameters
    ----------
    model : LoadedModel or path-like
    data : Dataset
        Samples the activations are taken from (the paper: the test split).
    layers : list of str, optional
        Hidden layers to refactor (default: all).
    tolerance : float
        Unexplained-variance tolerance of the PCA count (paper: 0.05); a tiny value (1e-9)
        removes only exactly redundant units.
    max_rows : int
        As for :func:`redundancy`.
    sequential : bool
        Fit each layer on the activations of the network with the earlier layers already
        refactored (default), so errors do not compound; False fits every layer on the
        intact network.

    Returns
    -------
    (PruningPlan, rows)
        The plan (for ``infoprobe prune``) and per layer ``units``, ``kept``, ``removed``,
        ``residual`` (fraction of the layer's variance the fit leaves unexplained).

    Raises
    ------
    ConfigError, DataError, ModelError
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    names = _hidden(lm, layers)
    kinds = _layer_kinds(lm, names)
    plan = PruningPlan({}, lm.sha256, {"method": "refactor", "tolerance": tolerance, "max_rows": max_rows,
                                       "sequential": sequential, "seed": seed, "data_sha256": data.sha256})
    rows = []
    mats = {}
    for n in tqdm(names, desc="refactor", unit="layer", disable=not progress, leave=False):
        if n not in mats:   # sequential: this layer only, under the plan so far; else every layer once
            mats = activation_matrices(lm, [n] if sequential else names, kinds, len(data), max_rows=max_rows,
                                       seed=seed, data=data, scale=scale, batch_size=batch_size,
                                       plan=plan if plan.layers else None)
        m = mats[n].astype(np.float64)
        u = m.shape[1]
        mom = Moments()
        mom.update(m)
        k = max(1, components_needed(pca_spectrum(mom.covariance()), tolerance))
        if k < u:
            kept = independent_units(m, k)
            removed, coef, const = refactor(m, kept)
            plan.layers[n] = LayerPlan.build(n, u, removed, const, coef)
            fit = m[:, kept] @ coef.T + const
            var = m.var(axis=0).sum()
            resid = float(((m[:, removed] - fit) ** 2).mean(axis=0).sum() / var) if var > 0 else 0.0
        else:
            removed, resid = [], 0.0
        rows.append({"layer": n, "units": u, "kept": u - len(removed), "removed": len(removed), "residual": resid})
    return plan, rows


def prunable_plan(model, result: Prunability, *, mode: str = "network") -> PruningPlan:
    """A pruning plan removing the units that random ablation found prunable: the first
    floor(prunable_fraction x units) units of the best permutation, replaced by 0 (the
    paper's ablation), which :func:`infoprobe.prune.apply_plan` folds into the next bias.

    Parameters
    ----------
    model : LoadedModel or path-like
        The model ``result`` was measured on.
    result : Prunability
    mode : {"network", "layer"}
        ``network`` (default): the set ablated jointly over all layers, whose effect the
        curve measured. ``layer``: each layer's own set, combined (their joint effect was
        not measured; check the pruned model).

    Raises
    ------
    PlanError
        Conv ablation units are channel x positions (a position cannot be removed from a
        model: measure with ``conv_units="channel"``), or the mode was not measured.
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    if result.conv_units == "position" and any(lm.layer(n).kind == "conv" for n in result.layers):
        raise PlanError("conv units were measured as channel x positions, which cannot be removed physically; "
                        "measure prunability with conv_units='channel' (--conv-units channel) for a plan")
    plan = PruningPlan({}, lm.sha256, {"method": "prunable", "mode": mode, "conv_units": result.conv_units})
    sizes = result.unit_counts
    if mode == "network":
        key = ("network", "all")
        if key not in result.permutations:
            raise PlanError("network mode was not measured; measure it or use mode='layer'")
        r = result.row("all", "network")
        order = result.permutations[key][r["best_permutation"]]
        n_abl = int(np.floor(r["prunable_fraction"] * r["units"] + 1e-9))
        offsets = np.cumsum([0] + [sizes[n] for n in result.layers])
        chosen = order[:n_abl]
        sets = {n: chosen[(chosen >= offsets[j]) & (chosen < offsets[j + 1])] - offsets[j]
                for j, n in enumerate(result.layers)}
    elif mode == "layer":
        sets = {}
        for n in result.layers:
            if ("layer", n) not in result.permutations:
                raise PlanError(f"layer mode was not measured for {n!r}")
            r = result.row(n, "layer")
            order = result.permutations[("layer", n)][r["best_permutation"]]
            sets[n] = order[:int(np.floor(r["prunable_fraction"] * r["units"] + 1e-9))]
    else:
        raise ConfigError(f"unknown mode {mode!r}; use network or layer")
    for n, s in sets.items():
        s = np.sort(s)
        if len(s) >= sizes[n]:
            s = s[:-1]   # a plan keeps at least one unit
        if len(s):
            plan.layers[n] = LayerPlan.build(n, sizes[n], s)
    return plan


# --------------------------------------------------------------------------- one model

@dataclass
class FrivolousResult:
    """Prunability and redundancy of one model (or redundancy of one store).

    ``layers``: the per-layer table (one row per hidden layer, plus ``all`` for the network
    mode); ``prunability``: :class:`Prunability` or None; ``correlations``: layer -> |r|.
    """

    source: str
    layers: list
    prunability: Prunability | None
    redundancy: list
    correlations: dict
    meta: dict = field(default_factory=dict)

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write ``frivolous.{csv,json}`` (per layer) and ``prunability.{csv,json}`` (the
        ablation curves) to ``outdir``."""
        outdir = Path(outdir)
        names = ["frivolous"] + (["prunability"] if self.prunability else [])
        check_outputs([outdir / f"{t}.{e}" for t in names for e in ("csv", "json")], overwrite)
        outdir.mkdir(parents=True, exist_ok=True)
        files = write_table(outdir, "frivolous", self.layers, self.meta)
        if self.prunability:
            files += write_table(outdir, "prunability", self.prunability.curves, self.meta)
        return files

    def plot(self, outdir) -> list:
        """``prunability.png`` (ablation curves, Fig. 2a-b) and ``correlations.png``
        (violins of |r| per layer, Fig. 2c-d)."""
        from ... import report

        outdir = Path(outdir)
        files = []
        if self.prunability:
            files.append(report.plot_prunability({self.source: self.prunability.curves}, outdir / "prunability.png",
                                                 tolerance=self.meta["parameters"]["prune_tolerance"]))
        if self.correlations:
            files.append(report.plot_correlations({self.source: self.correlations}, outdir / "correlations.png"))
        return files


def frivolous(source, data: Dataset | None = None, *, layers=None, prune_tolerance: float = 0.2,
              redundancy_tolerance: float = 0.05, fractions=None, n_permutations: int = 3,
              conv_units: str = "position", modes=MODES, max_rows: int = 50_000, seed: int = 0,
              device: str = "cpu", scale="auto", batch_size: int = 4096, progress: bool = True) -> FrivolousResult:
    """Prunable and redundant units of every hidden layer of one model (Casper et al.,
    Sections 3-4): :func:`prunability` (needs a model and data) and :func:`redundancy`
    (a model with data, or an activation store), merged into one table.

    Parameters are those of :func:`prunability` (``prune_tolerance`` is its tolerance) and
    :func:`redundancy` (``redundancy_tolerance``).

    Returns
    -------
    FrivolousResult
        ``layers`` rows: ``layer``, ``kind``, ``units`` (neurons or channels), and from
        prunability ``ablation_units``, ``unit``, ``prunable_fraction``, ``prunable_units``,
        ``crossed``; from redundancy ``non_redundant``, ``redundant``, ``redundant_fraction``,
        ``unexplained`` and the |r| summary. The network-mode row has ``layer`` = "all".

    Raises
    ------
    ConfigError, DataError, DeviceError, ModelError
    """
    src = _source(source)
    try:
        return _frivolous(src, data, layers, prune_tolerance, redundancy_tolerance, fractions, n_permutations,
                          conv_units, modes, max_rows, seed, device, scale, batch_size, progress)
    finally:
        if isinstance(src, Store) and src is not source:
            src.close()


def _frivolous(src, data, layers, prune_tolerance, redundancy_tolerance, fractions, n_permutations, conv_units,
               modes, max_rows, seed, device, scale, batch_size, progress):
    if isinstance(src, LoadedModel) and data is None:
        raise ConfigError("a model needs --data: prunability and redundancy are measured on its activations")
    pr = None
    if isinstance(src, LoadedModel):
        pr = prunability(src, data, layers=layers, fractions=fractions, n_permutations=n_permutations,
                         tolerance=prune_tolerance, conv_units=conv_units, modes=modes, seed=seed, scale=scale,
                         batch_size=batch_size, progress=progress)
    red, corrs = redundancy(src, data, layers=layers, tolerance=redundancy_tolerance, max_rows=max_rows,
                            seed=seed, device=device, scale=scale, batch_size=batch_size, progress=progress)
    rows = []
    for r in red:
        row = {"layer": r["layer"], "kind": r["kind"], "units": r["units"]}
        if pr is not None and any(s["mode"] == "layer" for s in pr.summary):
            s = pr.row(r["layer"], "layer")
            row.update({"ablation_units": s["units"], "unit": s["unit"], "prunable_fraction": s["prunable_fraction"],
                        "prunable_units": s["prunable_units"], "crossed": s["crossed"]})
        row.update({k: v for k, v in r.items() if k not in ("layer", "kind", "units")})
        rows.append(row)
    if pr is not None and any(s["mode"] == "network" for s in pr.summary):
        s = pr.row("all", "network")
        rows.append({"layer": "all", "kind": "network", "units": sum(r["units"] for r in red),
                     "ablation_units": s["units"], "unit": s["unit"], "prunable_fraction": s["prunable_fraction"],
                     "prunable_units": s["prunable_units"], "crossed": s["crossed"],
                     "non_redundant": sum(r["non_redundant"] for r in red),
                     "redundant": sum(r["redundant"] for r in red),
                     "redundant_fraction": float(np.mean([r["redundant_fraction"] for r in red]))})
    path = src.path
    inputs = {"source": (path, src.sha256)}
    if data is not None:
        inputs["data"] = (data.path, data.sha256)
    params = {"prune_tolerance": prune_tolerance, "redundancy_tolerance": redundancy_tolerance, "fractions": list(_fractions(fractions)),
              "n_permutations": n_permutations, "conv_units": conv_units, "modes": list(modes),
              "max_rows": max_rows, "seed": seed, "layers": layers, "split": getattr(data, "split", None)}
    return FrivolousResult(str(path), rows, pr, red, corrs, provenance(inputs, params))


# --------------------------------------------------------------------------- width sweeps

@dataclass
class SweepResult:
    """Frivolous units over a family of models of one architecture at several widths.

    ``rows``: one per (model, layer) including ``all`` (the network): ``width``, ``units``,
    ``prunable_units``, ``redundant_units``, their complements, and each normalised by the
    unit count of the widest model's layer (``*_norm``). ``gains``: one row per (measure,
    layer) with g. ``g_range``: {measure: (g_min, g_max)} over the layers and the network.
    """

    models: list
    rows: list
    gains: list
    g_range: dict
    results: list
    meta: dict = field(default_factory=dict)

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """``sweep.{csv,json}`` and ``gains.{csv,json}``."""
        outdir = Path(outdir)
        check_outputs([outdir / f"{t}.{e}" for t in ("sweep", "gains") for e in ("csv", "json")], overwrite)
        outdir.mkdir(parents=True, exist_ok=True)
        return write_table(outdir, "sweep", self.rows, self.meta) + write_table(outdir, "gains", self.gains, self.meta)

    def plot(self, outdir) -> list:
        """``sweep.png`` (log-log normalised counts against width with g, Figs. 3-4),
        ``sweep_prunability.png`` (network-mode ablation curves per width, Fig. 2a-b) and
        ``sweep_correlations.png`` (|r| of the last hidden layer per width, Fig. 2c-d)."""
        from ... import report

        outdir = Path(outdir)
        files = [report.plot_sweep(self.rows, self.g_range, outdir / "sweep.png")]
        labels = [f"{r['width']:g}x" for r in self.rows if r["layer"] == "all"]
        curves = {lab: res.prunability.curves for lab, res in zip(labels, self.results) if res.prunability}
        if curves:
            files.append(report.plot_prunability(curves, outdir / "sweep_prunability.png",
                                                 tolerance=self.results[0].meta["parameters"]["prune_tolerance"],
                                                 mode="network"))
        last = [res.redundancy[-1]["layer"] for res in self.results if res.redundancy]
        if last:
            corr = {lab: {last[i]: res.correlations[last[i]]} for i, (lab, res) in enumerate(zip(labels, self.results))}
            files.append(report.plot_correlations(corr, outdir / "sweep_correlations.png"))
        return files


MEASURES = ("prunable", "redundant", "non_prunable", "non_redundant")


def width_sweep(results: list, widths=None) -> SweepResult:
    """Prunable and redundant unit counts of models of one architecture at several widths,
    normalised by the widest model, and their gains (Casper et al., Section 5, Figs. 3-4).

    Parameters
    ----------
    results : list of FrivolousResult
        One per model, same hidden layer names.
    widths : float [M], optional
        Width factors (e.g. 0.25, 0.5, 1, 2, 4). Default: each model's total hidden units
        divided by the median over the family (exactly 1/4 ... 4 for the paper's family).

    Returns
    -------
    SweepResult
        Network rows (``layer`` = "all"): prunable units from the network-mode ablation,
        normalised by the widest model's total; redundancy is the mean of the layers'
        normalised counts, each layer weighted equally (as the paper reports). Gains use
        :func:`~infoprobe.estimators.frivolous.gain` on each curve.

    Raises
    ------
    ConfigError
        Fewer than two models, layer names that differ, or widths that do not match.
    """
    if len(results) < 2:
        raise ConfigError("a width sweep needs at least two models")
    names = [[r["layer"] for r in res.layers if r["layer"] != "all"] for res in results]
    if any(n != names[0] for n in names):
        raise ConfigError("the models of a sweep must have the same hidden layers (one architecture at several "
                          "widths); got " + "; ".join(",".join(n) for n in names))
    totals = np.array([sum(r["units"] for r in res.layers if r["layer"] != "all") for res in results], np.float64)
    if widths is None:
        w = totals / np.median(totals)
    else:
        w = np.asarray(widths, np.float64)
        if w.shape != totals.shape:
            raise ConfigError(f"{len(w)} widths for {len(results)} models")
    if len(np.unique(w)) != len(w):
        raise ConfigError("two models of the sweep have the same width")
    widest = int(np.argmax(w))
    ref = {r["layer"]: r for r in results[widest].layers}
    rows = []
    for res, wi in zip(results, w):
        by = {r["layer"]: r for r in res.layers}
        layer_rows = []
        for n in names[0] + (["all"] if "all" in by else []):
            r = by[n]
            row = {"model": res.source, "width": float(wi), "layer": n, "units": r["units"]}
            if "prunable_units" in r:
                norm = ref[n]["ablation_units"]
                row.update({"ablation_units": r["ablation_units"], "prunable_units": r["prunable_units"],
                            "non_prunable_units": r["ablation_units"] - r["prunable_units"],
                            "prunable_norm": r["prunable_units"] / norm,
                            "non_prunable_norm": (r["ablation_units"] - r["prunable_units"]) / norm})
            if n != "all":
                row.update({"redundant_units": r["redundant"], "non_redundant_units": r["non_redundant"],
                            "redundant_norm": r["redundant"] / ref[n]["units"],
                            "non_redundant_norm": r["non_redundant"] / ref[n]["units"]})
                layer_rows.append(row)
            else:
                row.update({"redundant_units": r["redundant"], "non_redundant_units": r["non_redundant"],
                            "redundant_norm": float(np.mean([x["redundant_norm"] for x in layer_rows])),
                            "non_redundant_norm": float(np.mean([x["non_redundant_norm"] for x in layer_rows]))})
            rows.append(row)
    gains, g_range = [], {}
    for meas in MEASURES:
        vals = []
        for n in dict.fromkeys(r["layer"] for r in rows):
            sel = [r for r in rows if r["layer"] == n and f"{meas}_norm" in r]
            if len(sel) < 2:
                continue
            g = gain([r["width"] for r in sel], [r[f"{meas}_norm"] for r in sel])
            gains.append({"measure": meas, "layer": n, "g": g, "widths": [r["width"] for r in sel],
                          "normalised": [r[f"{meas}_norm"] for r in sel]})
            if np.isfinite(g):
                vals.append(g)
        if vals:
            g_range[meas] = (min(vals), max(vals))
    meta = provenance({f"model_{i}": (res.meta["inputs"]["source"]["path"], res.meta["inputs"]["source"]["sha256"])
                       for i, res in enumerate(results)}, {"widths": list(w)})
    return SweepResult([res.source for res in results], rows, gains, g_range, results, meta)
