"""Pruning-plan generators: which units to remove, and what replaces them.

Every generator returns a :class:`~infoprobe.plan.PruningPlan`. Rankings (lowest first by
default) choose the units; the replacement is a constant for ranking generators and a
one-hot affine term for neuron merging:

- ``measure``: any single-unit measure of :mod:`infoprobe.analyses.importance` (Liu, Amjad &
  Geiger 2018, Section 6: prune units with low mutual information or KL selectivity).
- ``hybrid``: a measure per layer and a ratio of pruned units between layers (ibid., Section
  6 and Fig. 5: MI in the first hidden layer, KL selectivity in the second, ratio 1:2).
- ``random``: a seeded random choice (the baseline).
- ``magnitude``: the L1 norm of each unit's incoming weights (Hu et al. 2016-style baseline).
- ``merge``: data-free neuron merging of Srinivas & Babu (2015, "Data-free parameter pruning
  for deep neural networks", Section 3): the pair (i, j) of units with the smallest
  saliency ``s_ij = <a_j^2> ||w_i - w_j||^2`` (w: incoming weights and bias, a_j: outgoing
  weights, <.> their mean) is merged by removing j; with ``surgery`` its outgoing weights are
  added to i's (a one-hot replacement t_j = t_i), without it j is simply removed (a
  constant replacement).

Replacements (``replace``): ``zero``; ``mean``, bias balancing (ibid., eq. 7: the unit's mean
post-activation over a store; for merging with surgery, ``c_j = mean_j - mean_i`` so that the
replacement is unbiased); ``bias``, the activation of the bias alone (what zeroing the
unit's incoming weights leaves, DESIGN.md).
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConfigError
from ..interventions import replacement
from ..model import LoadedModel
from ..plan import LayerPlan, PruningPlan
from ..prune import dependency_groups, outgoing_weights
from ..store import Store
from .ablation import parse_hybrid, rank_units
from .importance import MEASURES, ImportanceResult, importance as compute_importance

METHODS = ("measure", "hybrid", "random", "magnitude", "merge")
#: Replacements of removed units: the kinds of :func:`infoprobe.interventions.replacement`.
REPLACEMENTS = ("zero", "mean", "activation_of_bias", "activation_of_zero")
#: Names accepted for compatibility: ``bias`` is ``activation_of_bias``.
ALIASES = {"bias": "activation_of_bias"}


def replacement_kind(replace: str) -> str:
    """The replacement kind named ``replace`` (an alias resolved).

    Raises
    ------
    ConfigError
        Not a replacement of :data:`REPLACEMENTS` or :data:`ALIASES`.
    """
    kind = ALIASES.get(replace, replace)
    if kind not in REPLACEMENTS:
        raise ConfigError(f"unknown replacement {replace!r}; use one of {', '.join(REPLACEMENTS)}")
    return kind


def parse_fractions(spec, layers) -> dict:
    """Fraction of units to remove per layer.

    Parameters
    ----------
    spec : float, str or dict
        One fraction for every layer (``0.5`` or ``"0.5"``), or ``"fc1=0.3,fc2=0.6"``, or a
        dict ``{layer: fraction}``.
    layers : list of str
        The layers a single fraction applies to.

    Raises
    ------
    ConfigError
        Unparseable text, or a fraction outside [0, 1).
    """
    if isinstance(spec, str):
        if "=" in spec:
            out = {}
            for part in filter(None, (p.strip() for p in spec.split(","))):
                name, _, val = part.partition("=")
                try:
                    out[name.strip()] = float(val)
                except ValueError:
                    raise ConfigError(f"cannot parse fraction {part!r}; expected LAYER=FRACTION") from None
            spec = out
        else:
            try:
                spec = float(spec)
            except ValueError:
                raise ConfigError(f"cannot parse fraction {spec!r}; use 0.5 or fc1=0.3,fc2=0.6") from None
    if not isinstance(spec, dict):
        spec = {n: float(spec) for n in layers}
    for n, f in spec.items():
        if not 0.0 <= f < 1.0:
            raise ConfigError(f"fraction {f} for layer {n!r} is outside [0, 1)")
    return dict(spec)


def _counts(lm: LoadedModel, fractions: dict) -> dict:
    out = {}
    for n, f in fractions.items():
        lay = lm.layer(n)
        if lay.is_output:
            raise ConfigError(f"layer {n!r} is the output layer; prune hidden layers")
        out[n] = min(int(round(f * lay.units)), lay.units - 1)
    return out


def replacement_constants(lm: LoadedModel, layer: str, replace: str, store: Store | None = None) -> np.ndarray:
    """Constants c [U] (float64) that replace removed units of ``layer``.

    ``zero``: 0. ``mean``: bias balancing, the unit's mean post-activation in ``store``
    (conv: over samples and positions). ``activation_of_bias`` (alias ``bias``): the
    activation of the unit's bias alone, sigma(b_j), as left by zeroing its incoming weights.
    ``activation_of_zero``: sigma(0). See :func:`infoprobe.interventions.replacement`.

    Raises
    ------
    ConfigError
        Unknown ``replace``, or ``mean`` without a store.
    ModelError
        ``activation_of_*`` for an activation infoprobe cannot evaluate.
    """
    kind = replacement_kind(replace)
    if kind == "mean" and store is None:
        raise ConfigError("replace='mean' (bias balancing) needs an activation store (store=, --store)")
    return replacement(lm, layer, kind, store=store)


def coupled_groups(lm: LoadedModel) -> dict:
    """Site name -> its :class:`~infoprobe.prune.DependencyGroup`, for the sites of prunable
    groups of more than one member (whose units a plan removes from every member at once)."""
    return {m: g for g in dependency_groups(lm) if len(g.sites) > 1 and not g.refused for m in g.sites}


def uncoupled(lm: LoadedModel, names, method: str) -> list:
    """``names`` without the sites of dependency groups of several members, each group left
    out with a warning: for the generators that choose units site by site from measurements
    of that site alone (refactor, prunable, synergy, merge), which cannot keep a group whole."""
    coupled = coupled_groups(lm)
    left = [n for n in names if n in coupled]
    if left:
        warnings.warn(f"{method} leaves out {', '.join(left)}: they belong to dependency groups (residual sums, "
                      f"depthwise convs), which {method} does not plan; use measure, magnitude, hybrid or random")
    return [n for n in names if n not in coupled]


def group_scores(scores: dict, sites) -> np.ndarray:
    """One score per unit of a dependency group: the sum over its members that have scores of
    each member's scores divided by their mean absolute value (so that every member weighs
    the same, whatever its scale), float64 [U].

    Raises
    ------
    ConfigError
        No member has scores.
    """
    parts = [np.asarray(scores[m], np.float64) for m in sites if m in scores]
    if not parts:
        raise ConfigError(f"no scores for any site of the dependency group {', '.join(sites)}")
    return sum(p / max(float(np.mean(np.abs(p))), 1e-300) for p in parts)


def kept_multiple(units: int, removed: int, multiple: int) -> int:
    """The removal count nearest ``removed`` that keeps a multiple of ``multiple`` units (at
    least ``multiple``; unchanged when the layer has fewer units or ``multiple`` is 1)."""
    if multiple <= 1 or units < multiple:
        return removed
    kept = max(multiple, multiple * int(round((units - removed) / multiple)))
    return units - min(kept, units)


def plan_from_scores(lm: LoadedModel, scores: dict, counts: dict, *, order: str = "low",
                     replace: str = "zero", store: Store | None = None,
                     generator: dict | None = None, round_to: int = 1) -> PruningPlan:
    """Remove the ``counts[layer]`` units ranked first by ``scores[layer]`` ([U] each) and
    replace them by constants (see :func:`replacement_constants`).

    A layer of a dependency group (:func:`infoprobe.prune.dependency_groups`: the branches of
    a residual sum and the sum, a depthwise conv and its input) is planned as a group: its
    units are ranked by :func:`group_scores` over the members, the first ``counts`` of the
    first member listed are removed from every member, each replaced by its own constant. An
    ``attention`` site loses whole heads: ``round(counts / head width)`` of them (at most all
    but one), ranked by the sum of their units' scores. ``round_to`` > 1 moves each count so
    that the units kept are a multiple of it (:func:`kept_multiple`): CPU conv and GEMM kernels
    work in blocks of channels (8 or 16), and a pruned layer of 12 or 24 channels can run
    slower than the original 16 or 32 (``benchmarks/prune.py``).
    """
    layers, coupled, done = {}, coupled_groups(lm), set()
    for n, k in counts.items():
        if n in done:
            continue
        lay = lm.layer(n)
        s = np.asarray(scores[n], np.float64)
        if s.shape != (lay.units,):
            raise ConfigError(f"scores of layer {n!r} have shape {s.shape}, expected ({lay.units},)")
        members = coupled[n].sites if n in coupled else (n,)
        k = kept_multiple(lay.units, k, round_to) if lay.found_by != "attention" else k
        if lay.found_by == "attention" and lay.heads > 1:   # whole heads: each ranked by its units' sum
            hd = lay.units // lay.heads
            h = min(int(round(k / hd)), lay.heads - 1)
            worst = rank_units(s.reshape(lay.heads, hd).sum(axis=1), order)[:h]
            remove = np.concatenate([np.arange(j * hd, (j + 1) * hd) for j in worst]).astype(np.int64) \
                if h else np.zeros(0, np.int64)
        else:
            remove = rank_units(group_scores(scores, members) if n in coupled else s, order)[:k]
        for m in members:
            consts = replacement_constants(lm, m, replace, store)
            layers[m] = LayerPlan.build(m, lm.layer(m).units, remove, consts[remove])
        done.update(members)
    groups = sorted({coupled[n].sites for n in done if n in coupled})
    gen = dict(generator or {}, replace=replace, order=order, **({"round_to": round_to} if round_to > 1 else {}))
    if groups:
        gen["groups"] = [list(g) for g in groups]
    return PruningPlan(layers, lm.sha256, gen)


def _importance(store, imp, layers, measures) -> ImportanceResult:
    if imp is not None:
        return imp
    if store is None:
        raise ConfigError("information measures need an activation store (store=, --store)")
    return compute_importance(store, layers=layers, js="js_subset_separation" in measures, progress=False)


def measure_plan(lm: LoadedModel, store: Store | None, measure: str, fraction, *, layers=None,
                 order: str = "low", replace: str = "mean", importance: ImportanceResult | None = None,
                 round_to: int = 1) -> PruningPlan:
    """Remove the units with the lowest (``order="low"``) value of ``measure`` in each layer.

    Parameters
    ----------
    lm : LoadedModel
    store : Store
        Activations of held-out data (the validation split): the source of the measures and
        of the bias-balancing means.
    measure : str
        One of :data:`infoprobe.analyses.importance.MEASURES`.
    fraction : float, str or dict
        See :func:`parse_fractions`; applies to ``layers`` (default: every hidden layer).
    importance : ImportanceResult, optional
        Precomputed measures (computed from ``store`` with default settings otherwise).

    Raises
    ------
    ConfigError
    """
    if measure not in MEASURES:
        raise ConfigError(f"unknown measure {measure!r}; use one of {', '.join(MEASURES)}")
    names = list(layers) if layers else plannable_layers(lm)
    counts = _counts(lm, parse_fractions(fraction, names))
    imp = _importance(store, importance, list(counts), [measure])
    scores = {n: imp.measure(n, measure) for n in counts}
    return plan_from_scores(lm, scores, counts, round_to=round_to, order=order, replace=replace, store=store,
                            generator={"method": "measure", "measure": measure,
                                       "fractions": {n: counts[n] / lm.layer(n).units for n in counts},
                                       "store_sha256": store.sha256 if store is not None else None})


def hybrid_plan(lm: LoadedModel, store: Store | None, spec, fraction: float, *, replace: str = "mean",
                importance: ImportanceResult | None = None, round_to: int = 1) -> PruningPlan:
    """The hybrid scheme (Liu, Amjad & Geiger 2018, Section 6): each layer ranked by its own
    measure, numbers of removed units in the ratio given, ``fraction`` of all their units
    removed in total.

    Parameters
    ----------
    spec : str or dict
        ``"fc1=mutual_information:1,fc2=kl_selectivity:2"`` or ``{layer: (measure, ratio)}``.
    fraction : float
        Fraction of the listed layers' units removed altogether; layer l loses
        ``round(ratio_l * fraction * sum(U) / sum(ratio))`` units (at most U_l - 1).

    Raises
    ------
    ConfigError
    """
    spec = parse_hybrid(spec) if isinstance(spec, str) else dict(spec)
    if not 0.0 <= float(fraction) < 1.0:
        raise ConfigError(f"fraction {fraction} is outside [0, 1)")
    for n, (m, r) in spec.items():
        if m not in MEASURES:
            raise ConfigError(f"unknown measure {m!r} in hybrid; use one of {', '.join(MEASURES)}")
        if r <= 0:
            raise ConfigError("hybrid ratios must be positive")
    total = float(fraction) * sum(lm.layer(n).units for n in spec)
    ratio_sum = sum(r for _, r in spec.values())
    counts = {n: min(int(round(r * total / ratio_sum)), lm.layer(n).units - 1) for n, (_, r) in spec.items()}
    for n in counts:
        if lm.layer(n).is_output:
            raise ConfigError(f"layer {n!r} is the output layer; prune hidden layers")
    imp = _importance(store, importance, list(counts), [m for m, _ in spec.values()])
    scores = {n: imp.measure(n, spec[n][0]) for n in counts}
    return plan_from_scores(lm, scores, counts, round_to=round_to, replace=replace, store=store,
                            generator={"method": "hybrid", "fraction": float(fraction),
                                       "hybrid": {n: [m, r] for n, (m, r) in spec.items()},
                                       "counts": counts,
                                       "store_sha256": store.sha256 if store is not None else None})


def random_plan(lm: LoadedModel, fraction, *, seed: int = 0, layers=None, replace: str = "zero",
                store: Store | None = None, round_to: int = 1) -> PruningPlan:
    """Remove a seeded random choice of units per layer (the baseline)."""
    names = list(layers) if layers else plannable_layers(lm)
    counts = _counts(lm, parse_fractions(fraction, names))
    rng = np.random.default_rng(seed)
    scores = {n: rng.permutation(lm.layer(n).units).astype(np.float64) for n in counts}
    return plan_from_scores(lm, scores, counts, round_to=round_to, replace=replace, store=store,
                            generator={"method": "random", "seed": seed,
                                       "fractions": {n: counts[n] / lm.layer(n).units for n in counts}})


def magnitude_plan(lm: LoadedModel, fraction, *, layers=None, replace: str = "zero",
                   store: Store | None = None, round_to: int = 1) -> PruningPlan:
    """Remove the units whose incoming weights have the smallest L1 norm (data-free baseline;
    conv: the norm of the whole kernel of an output channel, batch norm folded in)."""
    names = list(layers) if layers else plannable_layers(lm)
    counts = _counts(lm, parse_fractions(fraction, names))
    scores = {n: np.abs(lm.weights(n)[0].astype(np.float64)).reshape(lm.layer(n).units, -1).sum(1)
              for n in counts}
    return plan_from_scores(lm, scores, counts, round_to=round_to, replace=replace, store=store,
                            generator={"method": "magnitude",
                                       "fractions": {n: counts[n] / lm.layer(n).units for n in counts}})


def merge_order(w_in: np.ndarray, w_out: np.ndarray, n_merge: int, *, surgery: bool = True):
    """Greedy data-free merging of Srinivas & Babu (2015, Section 3.2, eq. 9).

    Parameters
    ----------
    w_in : float [U, F_in]
        Incoming weights of each unit (and its bias as a last column).
    w_out : float [U, F_out]
        Outgoing weights of each unit (every weight of the next layers that reads it).
    n_merge : int
        Number of units to remove.
    surgery : bool
        Add a removed unit's outgoing weights to its partner's (changes later saliencies).

    Returns
    -------
    list of (j, i)
        Removed unit j merged into unit i, in merge order; i may itself be removed later.
    """
    w_in = np.asarray(w_in, np.float64)
    sq = (w_in ** 2).sum(1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * w_in @ w_in.T, 0.0)  # ||w_i - w_j||^2
    np.fill_diagonal(dist, np.inf)
    a2 = (np.asarray(w_out, np.float64) ** 2).mean(axis=1)     # <a_j^2>
    out_sum = np.asarray(w_out, np.float64).copy()
    alive = np.ones(len(w_in), bool)
    best = dist.argmin(axis=0)                                   # partner i of each j
    merges = []
    for _ in range(n_merge):
        sal = np.where(alive, a2 * dist[best, np.arange(len(best))], np.inf)
        j = int(np.argmin(sal))
        i = int(best[j])
        merges.append((j, i))
        alive[j] = False
        dist[j, :] = np.inf
        dist[:, j] = np.inf
        if surgery:
            out_sum[i] += out_sum[j]
            a2[i] = (out_sum[i] ** 2).mean()
        stale = np.flatnonzero(alive & (best == j))
        if len(stale):
            best[stale] = dist[:, stale].argmin(axis=0)
    return merges


def merge_plan(lm: LoadedModel, fraction, *, surgery: bool = True, layers=None, replace: str = "zero",
               store: Store | None = None, include_bias: bool = True) -> PruningPlan:
    """Data-free neuron merging (Srinivas & Babu 2015) as a plan.

    With ``surgery`` a removed unit j is replaced by its final partner i (a one-hot term,
    t_j = t_i, plus ``mean_j - mean_i`` when ``replace="mean"``); without it by a constant
    (``replace``: any of :data:`REPLACEMENTS`), i.e. merging without the weight update.

    Raises
    ------
    ConfigError
        ``replace="activation_of_*"`` with surgery, or as :func:`replacement_constants`.
    """
    names = uncoupled(lm, list(layers) if layers else plannable_layers(lm), "merge")
    counts = _counts(lm, parse_fractions(fraction, names))
    if surgery and replacement_kind(replace).startswith("activation_of"):
        raise ConfigError("merging with surgery replaces a unit by its partner; use replace zero or mean")
    out = {}
    for n, k in counts.items():
        lay = lm.layer(n)
        w, b = lm.weights(n)
        w_in = w.reshape(lay.units, -1)
        if include_bias:
            w_in = np.concatenate([w_in, b[:, None]], axis=1)
        merges = merge_order(w_in, outgoing_weights(lm, n), k, surgery=surgery)
        removed = [j for j, _ in merges]
        if not surgery:
            consts = replacement_constants(lm, n, replace, store)
            out[n] = LayerPlan.build(n, lay.units, removed, consts[removed])
            continue
        partner = dict(merges)
        final = {}
        for j in removed:
            i = partner[j]
            while i in partner:   # follow merges of the partner itself
                i = partner[i]
            final[j] = i
        kept = np.setdiff1d(np.arange(lay.units), removed)
        col = {int(u): c for c, u in enumerate(kept)}
        coef = np.zeros((len(removed), len(kept)))
        for r, j in enumerate(removed):
            coef[r, col[final[j]]] = 1.0
        consts = np.zeros(len(removed))
        if replace == "mean":
            means = replacement_constants(lm, n, "mean", store)
            consts = np.array([means[j] - means[final[j]] for j in removed])
        elif replace != "zero":
            raise ConfigError(f"unknown replacement {replace!r}; use zero or mean")
        out[n] = LayerPlan.build(n, lay.units, removed, consts, coef)
    return PruningPlan(out, lm.sha256, {"method": "merge", "surgery": surgery, "replace": replace,
                                        "include_bias": include_bias,
                                        "fractions": {n: counts[n] / lm.layer(n).units for n in counts}})


def plannable_layers(lm) -> list:
    """The hidden sites a plan removes units from by default: the affine layers (a residual
    sum, a LayerNorm output or attention heads has no weights of its own; removing its units
    means removing them from every branch, which plans do not do)."""
    return [lay.name for lay in lm.hidden_layers if lay.has_weights]


def make_plan(lm: LoadedModel, method: str, fraction, *, store=None,
              measure: str = "mutual_information", hybrid=None, replace: str | None = None,
              surgery: bool = True, order: str = "low", seed: int = 0, layers=None,
              importance: ImportanceResult | None = None, round_to: int = 1) -> PruningPlan:
    """Dispatch to a generator by name (``infoprobe plan``); see the module docstring.

    ``store`` is a :class:`~infoprobe.store.Store` or the path of one. ``replace`` defaults
    to ``mean`` (bias balancing) for ``measure`` and ``hybrid`` and to ``zero`` for the
    data-free generators. ``fraction`` is a float (or per-layer spec, see
    :func:`parse_fractions`); for ``hybrid`` it is the fraction of all listed units.
    ``round_to``: keep a multiple of this many units per layer (see :func:`plan_from_scores`;
    not for ``merge``).

    Raises
    ------
    ConfigError
    """
    if store is not None and not isinstance(store, Store):
        with Store(store) as st:
            return make_plan(lm, method, fraction, store=st, measure=measure, hybrid=hybrid, replace=replace,
                             surgery=surgery, order=order, seed=seed, layers=layers, importance=importance,
                             round_to=round_to)
    if method not in METHODS:
        raise ConfigError(f"unknown plan method {method!r}; use one of {', '.join(METHODS)}")
    if round_to < 1 or (round_to > 1 and method == "merge"):
        raise ConfigError("round_to is a whole number >= 1, and merge does not round (use another method)")
    if store is not None:
        store.check_model(lm)
    if replace is None:
        replace = "mean" if method in ("measure", "hybrid") else "zero"
    replace = replacement_kind(replace)
    if method == "measure":
        return measure_plan(lm, store, measure, fraction, layers=layers, order=order, replace=replace,
                            importance=importance, round_to=round_to)
    if method == "hybrid":
        if not hybrid:
            raise ConfigError("the hybrid method needs a spec such as fc1=mutual_information:1,fc2=kl_selectivity:2")
        try:
            frac = float(fraction)
        except (TypeError, ValueError):
            raise ConfigError("the hybrid method takes one total fraction, e.g. 0.5") from None
        return hybrid_plan(lm, store, hybrid, frac, replace=replace, importance=importance, round_to=round_to)
    if method == "random":
        return random_plan(lm, fraction, seed=seed, layers=layers, replace=replace, store=store, round_to=round_to)
    if method == "magnitude":
        return magnitude_plan(lm, fraction, layers=layers, replace=replace, store=store, round_to=round_to)
    return merge_plan(lm, fraction, surgery=surgery, layers=layers, replace=replace, store=store)
