"""Pruning plans from frivolous units: remove the prunable units (replaced by 0), or refactor
the redundant ones into the kept ones (Casper, Boix et al., "Frivolous Units", AAAI 2021,
appendix on removing redundant units).
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ...data import Dataset
from ...errors import ConfigError, PlanError
from ...limits import require_memory
from ...estimators.frivolous import Moments, components_needed, independent_units, pca_spectrum, refactor
from ...model import LoadedModel, load_model
from ...plan import LayerPlan, PruningPlan
from ..plans import uncoupled
from .prunability import Prunability, hidden_layers
from .redundancy import activation_matrices, unit_axes


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
    names = uncoupled(lm, hidden_layers(lm, layers), "refactor")
    if not names:
        raise ConfigError("every chosen layer belongs to a dependency group; refactoring plans single sites")
    axes = unit_axes(lm, names)
    plan = PruningPlan({}, lm.sha256, {"method": "refactor", "tolerance": tolerance, "max_rows": max_rows,
                                       "sequential": sequential, "seed": seed, "data_sha256": data.sha256})
    rows = []
    mats = {}
    for n in tqdm(names, desc="refactor", unit="layer", disable=not progress, leave=False):
        if n not in mats:   # sequential: this layer only, under the plan so far; else every layer once
            mats = activation_matrices(lm, [n] if sequential else names, axes, len(data), max_rows=max_rows,
                                       seed=seed, data=data, scale=scale, batch_size=batch_size,
                                       plan=plan if plan.layers else None)
        u = mats[n].shape[1]
        require_memory(8 * u * u + 8 * mats[n].size, f"refactoring {n!r}: its {u:,} x {u:,} covariance and its "
                       f"{len(mats[n]):,} activation rows in float64 (fewer with --max-rows)")
        m = mats[n].astype(np.float64)
        mom = Moments()
        mom.update(m)
        k = max(1, components_needed(pca_spectrum(mom.covariance(release=True), overwrite=True), tolerance))
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
    keep = set(uncoupled(lm, list(sets), "the prunable plan"))
    for n, s in sets.items():
        if n not in keep:
            continue
        s = np.sort(s)
        if len(s) >= sizes[n]:
            s = s[:-1]   # a plan keeps at least one unit
        if len(s):
            plan.layers[n] = LayerPlan.build(n, sizes[n], s)
    return plan
