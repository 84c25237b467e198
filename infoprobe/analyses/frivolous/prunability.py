"""Prunability: cumulative random ablation of a layer's units until the predictions change
(Casper, Boix et al., "Frivolous Units", AAAI 2021, Section 4 and Fig. 2a-b).

A random permutation of a layer's units is ablated cumulatively at the fractions 0, 1/6,
..., 1 (post-activations multiplied by 0, no rescaling) and the metric is the fraction of
predictions that do not change relative to the intact network. Dense units are neurons;
conv units are channel x position (each spatial location of each feature map) or whole
channels. The runs go through the intervention engine
(:class:`infoprobe.interventions.Evaluator`).
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ...data import Dataset, model_inputs, resolve_scale
from ...errors import ConfigError
from ...estimators.frivolous import prunable_fraction
from ...interventions import Evaluator, Intervention
from ...model import LoadedModel, load_model
from ...rewrite import mask_shape

#: The paper's ablated fractions: 0, 1/6, ..., 1.
FRACTIONS = tuple(np.arange(7) / 6)
MODES = ("layer", "network")
CONV_UNITS = ("position", "channel")


def checked_fractions(fractions) -> np.ndarray:
    f = np.asarray(FRACTIONS if fractions is None else fractions, np.float64)
    if f.ndim != 1 or len(f) < 2 or f[0] != 0 or np.any(np.diff(f) <= 0) or f[-1] > 1:
        raise ConfigError("fractions must ascend strictly from 0 to at most 1, e.g. 0,1/6,...,1")
    return f


def hidden_layers(lm: LoadedModel, layers) -> list:
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
    agreement : float or None
        None: ``unchanged`` compares predicted labels; a float: outputs, a sample being
        unchanged while its output moves by at most this fraction of its norm (relative L2;
        a model whose output is not class logits).
    """

    curves: list
    summary: list
    permutations: dict
    layers: list
    conv_units: str
    unit_counts: dict = field(default_factory=dict)
    runs: int = 0
    agreement: float | None = None

    def row(self, layer: str, mode: str = "layer") -> dict:
        for r in self.summary:
            if r["mode"] == mode and r["layer"] == layer:
                return r
        raise ConfigError(f"no prunability result for layer {layer!r} in {mode} mode")


def prunability(model, data: Dataset, *, layers=None, fractions=None, n_permutations: int = 3,
                tolerance: float = 0.2, conv_units: str = "position", modes=MODES, seed=0,
                scale="auto", batch_size: int = 4096, rows_per_run: int = 256, progress: bool = True,
                providers=None, agreement: float | None = None) -> Prunability:
    """Prunability of each hidden layer, and of all of them at once, by cumulative random
    ablation (Casper et al., Section 4, "Prunability"; Fig. 2a-b).

    Parameters
    ----------
    model : LoadedModel or path-like
        An ONNX model: a classifier, or any model when predictions are compared by output
        agreement.
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
    seed : int or numpy.random.Generator
        Seeds the permutations (``numpy.random.default_rng(seed)``), or their stream.
    scale : "auto" or float
        Input multiplier (as in capture).
    batch_size : int
        Largest chunk of samples per onnxruntime call (lowered to fit the memory budget).
    rows_per_run : int
        Ablations are stacked along the batch so that one run holds about this many rows
        (default 256: stacking only pays when the per-call overhead of onnxruntime dominates,
        i.e. for small data sets; on a CPU, repeating the masks costs more than it saves for
        1,000 samples and more, as ``benchmarks/frivolous.py`` measures). See
        :class:`infoprobe.interventions.Evaluator`.
    agreement : float, optional
        Compare outputs rather than predicted labels: a sample's prediction is unchanged
        while ``||o' - o||_2 <= agreement * ||o||_2`` (its output flattened). Default: labels
        for a classifier's logits, and :data:`infoprobe.interventions.AGREEMENT` (0.05) for
        any other output (a detector's boxes, a segmenter's maps, an embedding), with a
        warning that says so.

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
    fr = checked_fractions(fractions)
    names = hidden_layers(lm, layers)
    if not names:
        raise ConfigError(f"{lm.path.name} has no hidden unit layer to ablate")
    factor = resolve_scale(data.x, scale)
    x = model_inputs(lm, data.x, factor)
    engine = Evaluator(lm, x, batch_size=batch_size, stack_rows=rows_per_run, providers=providers,
                       agreement="auto" if agreement is None else agreement).shareable(data, factor)
    if agreement is None and engine.agreement is not None:
        warnings.warn(f"the output {lm.output_name!r} of {lm.path.name} is not class logits: a prediction counts as "
                      f"unchanged while the output moves by at most {engine.agreement:g} of its norm (relative L2; "
                      "set it with --agreement)")
    positions = conv_units == "position"
    sizes = {n: int(np.prod(mask_shape(lm.layer(n), positions))) for n in names}
    rng = np.random.default_rng(seed)

    jobs = [("layer", n, [n]) for n in names] if "layer" in modes else []
    if "network" in modes:
        jobs.append(("network", "all", names))
    curves, summary, perms = [], [], {}
    total = len(jobs) * n_permutations * (len(fr) - 1)
    bar = tqdm(total=total, desc="prunability", unit="ablation", disable=not progress, leave=False)
    for mode, label, members in jobs:
        offsets = np.cumsum([0] + [sizes[n] for n in members])
        n_units = int(offsets[-1])
        counts = np.round(fr * n_units).astype(np.int64)
        per_perm, kept_perms = [], []
        for p in range(n_permutations):
            order = rng.permutation(n_units)
            kept_perms.append(order)
            sets = []
            for c in counts[1:]:
                chosen = order[:c]
                sets.append([Intervention(n, chosen[(chosen >= offsets[j]) & (chosen < offsets[j + 1])] - offsets[j],
                                          0.0, positions) for j, n in enumerate(members)])
            unchanged = np.concatenate([[1.0], engine.evaluate(sets, advance=bar.update).unchanged_fraction])
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
    return Prunability(curves, summary, perms, names, conv_units, dict(sizes), engine.runs, engine.agreement)
