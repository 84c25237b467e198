"""Cumulative ablation of ranked units (Liu, Amjad & Geiger 2018, Sections 5-6).

Every ablation replaces a unit's post-activation t_j by a constant c_j
(:func:`infoprobe.interventions.replacement`): ``zero`` ablation has c_j = 0; bias balancing
(``mean``, eq. 7) has c_j = the unit's mean over the data the measures came from, which
equals adding w_jk * mean(t_j) to the next layer's bias. The runs go through the intervention
engine (:class:`infoprobe.interventions.Evaluator`): a layer-wise sweep runs only the suffix
of the model after the ablated layer, chunk by chunk within the memory budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import Dataset, model_inputs, resolve_scale
from ..config import Config, param
from ..errors import ConfigError, DataError
from ..interventions import Evaluator, Intervention, replacement
from ..model import LoadedModel, load_model
from ..parallel import map_tasks, portable
from ..results import Tables, check_outputs, provenance, write_table
from ..runner import default_threads
from ..store import Store
from .importance import MEASURES, ImportanceResult, importance as compute_importance

VALUES = ("zero", "mean")
ORDERS = ("low", "high")
SCOPES = ("layer", "network")


def rank_units(values: np.ndarray, order: str = "low") -> np.ndarray:
    """Unit indices in ablation order: lowest values first (``"low"``) or highest first.

    Ties keep unit order (stable sort), so rankings are deterministic.
    """
    values = np.asarray(values, np.float64)
    if order == "low":
        return np.argsort(values, kind="stable")
    if order == "high":
        return np.argsort(-values, kind="stable")
    raise ConfigError(f"unknown order {order!r}; use low or high")


def parse_hybrid(spec: str) -> dict:
    """Parse ``"fc1=mutual_information:1,fc2=kl_selectivity:2"`` into
    ``{"fc1": ("mutual_information", 1.0), "fc2": ("kl_selectivity", 2.0)}``."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            layer, rest = part.split("=", 1)
            measure, _, ratio = rest.partition(":")
            out[layer.strip()] = (measure.strip(), float(ratio) if ratio else 1.0)
        except ValueError:
            raise ConfigError(f"cannot parse hybrid part {part!r}; expected LAYER=MEASURE:RATIO") from None
    if not out:
        raise ConfigError("empty hybrid specification")
    return out


@dataclass(repr=False)
class AblationResult(Tables):
    """Accuracy curves: one row per (scope, layer, ranking, order, value, n_ablated)."""

    rows: list
    params: dict
    inputs: dict = field(default_factory=dict)

    def tables(self) -> dict:
        return {"ablation": self.rows}

    def curve(self, *, scope="layer", layer=None, ranking="mutual_information", order="low",
              value="mean") -> tuple[np.ndarray, np.ndarray]:
        """``(n_ablated, accuracy)`` of one curve (raises ConfigError if absent)."""
        rows = [r for r in self.rows if r["scope"] == scope and (layer is None or r["layer"] == layer)
                and r["ranking"] == ranking and r["order"] == order and r["value"] == value]
        if not rows:
            raise ConfigError(f"no ablation curve for scope={scope} layer={layer} ranking={ranking} "
                              f"order={order} value={value}")
        return np.array([r["n_ablated"] for r in rows]), np.array([r["accuracy"] for r in rows])

    def accuracy_at(self, fraction: float, **kw) -> float:
        """Accuracy of a curve at ``fraction`` of the units ablated (linear interpolation)."""
        n, acc = self.curve(**kw)
        total = max(r["n_units"] for r in self.rows if r["scope"] == kw.get("scope", "layer")
                    and (kw.get("layer") is None or r["layer"] == kw.get("layer")))
        return float(np.interp(fraction * total, n, acc))

    def layer_table(self, fraction: float = 0.5) -> list:
        """Per layer and ranking, accuracy with ``fraction`` of the layer's units ablated, to
        zero (``accuracy_zero``) and with bias balancing (``accuracy_mean``); layer scope only."""
        rows = [r for r in self.rows if r["scope"] == "layer"]
        out = []
        for layer in dict.fromkeys(r["layer"] for r in rows):
            for ranking, order in dict.fromkeys((r["ranking"], r["order"]) for r in rows if r["layer"] == layer):
                row = {"layer": layer, "ranking": ranking, "order": order}
                for value in ("zero", "mean"):
                    if any(r["layer"] == layer and r["ranking"] == ranking and r["order"] == order
                           and r["value"] == value for r in rows):
                        row[f"accuracy_{value}"] = self.accuracy_at(fraction, layer=layer, ranking=ranking,
                                                                    order=order, value=value)
                out.append(row)
        return out

    def summary(self, fraction: float = 0.5) -> str:
        """The terminal text: the baseline accuracy, and per layer and ranking the accuracy with
        ``fraction`` of the layer's units ablated, to zero and with bias balancing."""
        return "\n".join([f"baseline test accuracy {self.params['baseline_accuracy']:.4f}"]
                         + layer_table_lines(self.layer_table(fraction), fraction))

    def plot(self, outdir) -> list:
        """``ablation_<scope>.png`` for every scope the result holds (accuracy against units
        ablated); returns their paths."""
        from ..report import plot_ablation

        files = []
        for s in SCOPES + ("hybrid",):
            p = plot_ablation(self.rows, Path(outdir) / f"ablation_{s}.png", scope=s)
            if p:
                files.append(p)
        return files

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write ``ablation.{csv,json}`` to ``outdir``."""
        outdir = Path(outdir)
        check_outputs([outdir / "ablation.csv", outdir / "ablation.json"], overwrite)
        return write_table(outdir, "ablation", self.rows, provenance(self.inputs, self.params))


#: Columns that identify one point of one curve, across replicate networks.
_POINT = ("scope", "layer", "ranking", "order", "value", "n_units", "n_ablated", "fraction")


@dataclass(repr=False)
class ReplicateAblation(AblationResult):
    """Cumulative ablation of several replicate networks of one configuration (Liu, Amjad &
    Geiger 2018 average their curves over networks).

    ``rows`` holds one row per curve point with the statistics across replicates:
    ``accuracy`` (mean), ``accuracy_std`` (sample standard deviation), ``accuracy_median``,
    ``ci_low``/``ci_high`` (Student t 95% interval of the mean,
    :func:`infoprobe.stats.across_replicates`) and ``replicates``, so every :class:`AblationResult` method reads the
    mean curves; ``replicate_rows`` holds each network's own rows (columns ``replicate`` and
    ``model`` first).
    """

    replicate_rows: list = field(default_factory=list)

    def tables(self) -> dict:
        return {"ablation": self.rows, "ablation_replicates": self.replicate_rows}

    def summary(self, fraction: float = 0.5) -> str:
        n = self.params["replicates"]
        return (f"mean over {n} networks (per-network baselines "
                + ", ".join(f"{b:.4f}" for b in self.params["baseline_accuracies"]) + ")\n"
                + super().summary(fraction))

    def plot(self, outdir) -> list:
        """``ablation_<scope>.png``: mean curves with a +- one standard deviation band across
        the replicate networks."""
        from ..report import plot_ablation

        files = []
        for s in SCOPES + ("hybrid",):
            p = plot_ablation(self.rows, Path(outdir) / f"ablation_{s}.png", scope=s,
                              spread=f"+- 1 sd over {self.params['replicates']} networks")
            if p:
                files.append(p)
        return files

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write ``ablation.{csv,json}`` (statistics across replicates) and
        ``ablation_replicates.{csv,json}`` (every network's rows) to ``outdir``."""
        outdir = Path(outdir)
        check_outputs([outdir / f"{t}.{e}" for t in ("ablation", "ablation_replicates") for e in ("csv", "json")],
                      overwrite)
        meta = provenance(self.inputs, self.params)
        return write_table(outdir, "ablation", self.rows, meta) + write_table(outdir, "ablation_replicates",
                                                                             self.replicate_rows, meta)


def replicate_ablation(replicates, data: Dataset, *, config: AblationConfig | None = None, progress: bool = True,
                       providers=None, **params) -> ReplicateAblation:
    """:func:`cumulative_ablation` of each replicate network with the same parameters and seed,
    and the statistics of their curves (see :class:`ReplicateAblation`).

    Parameters
    ----------
    replicates : sequence of (model, store)
        Networks of one architecture trained alike (different seeds), each with the store
        its measures and bias-balancing means come from. At least two.
    data : Dataset
        Labelled samples accuracy is measured on, the same for every network.
    config, **params :
        As :func:`cumulative_ablation`; one seed for every network, so each network's random
        baseline draws the same orders.

    Returns
    -------
    ReplicateAblation

    Raises
    ------
    ConfigError
        Fewer than two replicates, or networks whose curves do not line up (other layers or
        unit counts: not replicates of one configuration).
    ModelError, StoreError, DataError
        As :func:`cumulative_ablation`.
    """
    from ..stats import across_replicates

    replicates = list(replicates)
    if len(replicates) < 2:
        raise ConfigError("replicate ablation needs at least two (model, store) pairs")
    several = dict(config=config, progress=False, providers=providers, **params)   # one bar: the networks'
    results = map_tasks(cumulative_ablation, [((portable(m), portable(st), data), several) for m, st in replicates],
                        desc="networks", progress=progress)
    keys = [[tuple(r[k] for k in _POINT) for r in res.rows] for res in results]
    for k, (res, kk) in enumerate(zip(results[1:], keys[1:]), start=2):
        if kk != keys[0]:
            raise ConfigError(f"replicate {k} ({res.inputs['model'][0]}) does not have the first network's curves "
                              "(other layers or unit counts): replicates share one architecture")
    n = len(results)
    per = [dict({"replicate": i, "model": str(res.inputs["model"][0])}, **r)
           for i, res in enumerate(results) for r in res.rows]
    stat = across_replicates(per, by=_POINT, values=("accuracy",))             # in the first network's order
    rows = [dict({k: g[k] for k in _POINT}, accuracy=g["mean"], accuracy_std=g["std"], accuracy_median=g["median"],
                 ci_low=g["ci_low"], ci_high=g["ci_high"], replicates=g["n"]) for g in stat]
    params_out = dict(results[0].params, replicates=n,
                      baseline_accuracies=[res.params["baseline_accuracy"] for res in results],
                      baseline_accuracy=float(np.mean([res.params["baseline_accuracy"] for res in results])))
    inputs = {}
    for i, res in enumerate(results):
        inputs.update({f"{k}_{i}": v for k, v in res.inputs.items() if k != "data"})
        inputs.setdefault("data", res.inputs.get("data"))
    return ReplicateAblation(rows, params_out, {k: v for k, v in inputs.items() if v is not None}, per)


def layer_table_lines(table: list, fraction: float = 0.5) -> list:
    """Lines of :meth:`AblationResult.layer_table`: per layer and ranking, the accuracy with
    ``fraction`` of the units ablated, to zero and with bias balancing."""
    lines = [f"accuracy with {fraction:.0%} of a layer's units ablated:",
             f"  {'layer':<14} {'ranking':<34} {'to zero':>8} {'bias bal.':>9}"]
    for r in table:
        name = r["ranking"] if r["order"] == "-" else f"{r['ranking']} ({r['order']} first)"
        zero, mean = (f"{r[k]:.4f}" if k in r else "-" for k in ("accuracy_zero", "accuracy_mean"))
        lines.append(f"  {r['layer']:<14} {name:<34} {zero:>8} {mean:>9}")
    return lines


@dataclass(frozen=True)
class AblationConfig(Config):
    """Parameters of :func:`cumulative_ablation` (Liu, Amjad & Geiger 2018, Sections 5-6).

    Random streams (:meth:`~infoprobe.config.Config.streams`): ``random_orders``, the
    permutations of the random baseline.
    """

    STEPS = ("random_orders",)

    measures: tuple = param(("mutual_information", "kl_selectivity"), choices=MEASURES, what="measure",
                            help="Rankings (importance measures); 'random' is added by random_repeats > 0.")
    orders: tuple = param(("low",), choices=ORDERS, what="order", help="Ablate the lowest- or highest-ranked units first.")
    values: tuple = param(VALUES, choices=VALUES, what="ablation value",
                          help="Replace ablated units by 0 ('zero') or by their mean (bias balancing, eq. 7).")
    scopes: tuple = param(("layer",), choices=SCOPES, what="scope",
                          help="Rank and ablate within each layer, or across all chosen layers at once.")
    layers: tuple | None = param(None, help="Layers to ablate (default: the store's hidden layers).")
    n_steps: int | None = param(None, help="Points per curve (default: every unit count up to 100).")
    random_repeats: int = param(5, help="Random baseline repeats (0: none).")
    seed: int = param(0, help="Seeds the random orders.")
    hybrid: dict | None = param(None, help="{layer: (measure, ratio)}: the hybrid scheme of Section 6.")
    scale: str | float = param("auto", help="Input multiplier for the data ('auto': 1/255 for 8-bit images).")
    batch_size: int = param(4096, help="Largest chunk of samples per onnxruntime call (lowered to fit --max-memory).")
    device: str = param("cpu", choices=("cpu", "cuda"), what="device",
                        help="Where the information measures that rank the units are computed (NumPy or CuPy).")

    def check(self):
        if self.random_repeats < 0:
            raise ConfigError("random_repeats must be at least 0")
        if self.n_steps is not None and self.n_steps < 2:
            raise ConfigError("n_steps must be at least 2")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        for n, (m, r) in (self.hybrid or {}).items():
            if m not in MEASURES:
                raise ConfigError(f"unknown measure {m!r} in hybrid; use one of {', '.join(MEASURES)}")
            if r <= 0:
                raise ConfigError("hybrid ratios must be positive")


def _steps(n_units: int, n_steps: int | None) -> np.ndarray:
    if n_steps is None:
        n_steps = n_units + 1 if n_units <= 100 else 51
    return np.unique(np.round(np.linspace(0, n_units, max(2, n_steps))).astype(int))


def cumulative_ablation(model, store, data: Dataset, *, importance: ImportanceResult | None = None,
                        config: AblationConfig | None = None, progress: bool = True, providers=None,
                        **params) -> AblationResult:
    """Cumulatively ablate units ranked by information measures, or at random, and record
    test accuracy (Liu, Amjad & Geiger 2018, Section 5 and Figs. 1, 3, 4; hybrid: Section 6).

    Parameters
    ----------
    model : LoadedModel or path-like
    store : Store or path-like
        Activations of the data the measures come from (the validation split); also the
        source of the bias-balancing means.
    data : Dataset
        Labelled samples on which accuracy is measured (the test split).
    importance : ImportanceResult, optional
        Computed from ``store`` with default settings when omitted.
    config : AblationConfig, optional
        The parameters below, as one object; keyword parameters change its fields.
    measures : sequence of str
        Rankings from :data:`infoprobe.analyses.importance.MEASURES`; ``"random"`` is added
        by ``random_repeats > 0``.
    orders : sequence of {"low", "high"}
        Ablate lowest- or highest-ranked units first.
    values : sequence of {"zero", "mean"}
        Ablation to zero, or bias balancing (eq. 7).
    scopes : sequence of {"layer", "network"}
        Per layer (units ranked within the layer, the rest of the network intact), or over
        all chosen layers at once (units ranked across layers, Section 5.2).
    layers : list of str, optional
        Layers to ablate (default: hidden layers present in the store).
    n_steps : int, optional
        Points per curve (default: every unit count up to 100 units, else 51 points).
    random_repeats : int
        Random orders per curve for the baseline (mean and standard deviation reported).
    seed : int
        Seeds the random orders.
    hybrid : dict, optional
        ``{layer: (measure, ratio)}``: the hybrid scheme of Section 6 -- units pruned from
        every listed layer at once in proportion to ``ratio``, each layer ranked (low first)
        by its own measure. See :func:`parse_hybrid`.
    scale : "auto" or float
        Input multiplier for ``data.x`` (as in capture).

    Returns
    -------
    AblationResult
        Rows with columns scope, layer, ranking, order, value, n_units, n_ablated, fraction,
        accuracy, accuracy_std, repeats and ``class_<c>_accuracy``.

    Raises
    ------
    ModelError, StoreError, DataError (no labels), ConfigError
    """
    cfg = AblationConfig.build(config, **params)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    own = not isinstance(store, Store)
    st = Store(store) if own else store
    try:
        return _run(lm, st, data, importance, cfg, progress, providers)
    finally:
        if own:
            st.close()


def _run(lm, st, data, imp, cfg: AblationConfig, progress, providers):
    measures, orders, values, scopes, hybrid = cfg.measures, cfg.orders, cfg.values, cfg.scopes, cfg.hybrid
    n_steps, random_repeats = cfg.n_steps, cfg.random_repeats
    if data.y is None:
        raise DataError(f"{data.path} has no labels ('y'); ablation measures accuracy and needs them")
    names = list(cfg.layers) if cfg.layers else [n for n in st.hidden_layers()]
    st.check_model(lm, [n for n in st.layer_names if n in set(names) | set(hybrid or {})])
    for n in names:
        if lm.layer(n).is_output:
            raise ConfigError(f"layer {n!r} is the output layer; ablate hidden layers")
        if n not in st.layer_names:
            raise ConfigError(f"layer {n!r} is not in the store {st.path}")
    for n in hybrid or {}:
        lm.layer(n)
    needs_imp = bool(measures) or bool(hybrid)
    if imp is None and needs_imp:
        imp_layers = sorted(set(names) | set(hybrid or {}), key=st.layer_names.index)
        imp = compute_importance(st, layers=imp_layers, js="js_subset_separation" in measures
                                 or any(m == "js_subset_separation" for m, _ in (hybrid or {}).values()),
                                 device=cfg.device, progress=progress)
    factor = resolve_scale(data.x, cfg.scale)
    x = model_inputs(lm, data.x, factor)
    y = data.y
    consts = {(n, v): replacement(lm, n, v, store=st) for n in set(names) | set(hybrid or {}) for v in values}
    rng = cfg.streams()["random_orders"]
    rows = []
    engine = Evaluator(lm, x, labels=y, batch_size=cfg.batch_size, providers=providers,
                       threads=default_threads()).shareable(data, factor)
    base_acc = float(engine.base.accuracy[0])

    def emit(scope, layer, ranking, order, value, n_units, k, accs, cls):
        accs, cls = np.atleast_1d(accs), np.atleast_2d(cls)
        row = {"scope": scope, "layer": layer, "ranking": ranking, "order": order, "value": value,
               "n_units": n_units, "n_ablated": int(k), "fraction": k / n_units,
               "accuracy": float(accs.mean()), "accuracy_std": float(accs.std()) if len(accs) > 1 else 0.0,
               "repeats": len(accs)}
        for c, label in enumerate(engine.classes):
            col = cls[:, c]
            row[f"class_{label}_accuracy"] = float(col.mean()) if not np.isnan(col).any() else None
        rows.append(row)

    def sweep(scope, label, n_units, orders_by_ranking, ablate_for):
        """Every curve of one unit population: all its ablations go to the engine at once."""
        ks = _steps(n_units, n_steps)
        for (ranking, order, value), perms in orders_by_ranking.items():
            sets = [ablate_for(perm, int(k), value) for perm in perms for k in ks]
            out = engine.evaluate(sets, advance=bar.update)
            res = out.accuracy.reshape(len(perms), len(ks))
            cls = out.class_accuracy.reshape(len(perms), len(ks), engine.n_classes)
            for i, k in enumerate(ks):
                emit(scope, label, ranking, order, value, n_units, k, res[:, i], cls[:, i])

    def plan(n_units, ranks):
        """{(ranking, order, value): [permutation, ...]} for a unit population."""
        out = {}
        for m in measures:
            for o in orders:
                for v in values:
                    out[(m, o, v)] = [rank_units(ranks(m), o)]
        if random_repeats > 0:
            perms = [rng.permutation(n_units) for _ in range(random_repeats)]
            for v in values:
                out[("random", "-", v)] = perms
        return out

    if hybrid:
        hl = list(hybrid)
        ratios = np.array([hybrid[n][1] for n in hl], np.float64)
        h_units = np.array([lm.layer(n).units for n in hl])
        h_steps = _steps(int(np.floor(np.min(h_units * ratios.sum() / ratios))), n_steps)

    total = 0
    if "layer" in scopes:
        total += sum(len(_steps(lm.layer(n).units, n_steps)) for n in names) * \
            (len(measures) * len(orders) + random_repeats) * len(values)
    if "network" in scopes:
        total += len(_steps(sum(lm.layer(n).units for n in names), n_steps)) * \
            (len(measures) * len(orders) + random_repeats) * len(values)
    if hybrid:
        total += len(h_steps) * len(values)
    bar = tqdm(total=total, unit="ablation", desc="ablation", disable=not progress)

    def ablate(n, units, v):
        units = np.asarray(units, np.int64)
        return Intervention(n, units, consts[(n, v)][units])

    if "layer" in scopes:
        for n in names:
            units = lm.layer(n).units
            sweep("layer", n, units, plan(units, lambda m, n=n: imp.measure(n, m)),
                  lambda perm, k, v, n=n: [ablate(n, perm[:k], v)] if k else [])

    if "network" in scopes:
        sizes = [lm.layer(n).units for n in names]
        offsets = np.concatenate([[0], np.cumsum(sizes)])

        def split(perm, k, v):
            chosen = np.asarray(perm[:k])
            out = []
            for i, n in enumerate(names):
                sel = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
                if len(sel):
                    out.append(ablate(n, sel, v))
            return out

        sweep("network", "+".join(names), int(offsets[-1]),
              plan(int(offsets[-1]), lambda m: np.concatenate([imp.measure(n, m) for n in names])), split)

    if hybrid:
        perms = {n: rank_units(imp.measure(n, hybrid[n][0]), "low") for n in hl}
        label = ",".join(f"{n}={hybrid[n][0]}:{hybrid[n][1]:g}" for n in hl)
        for v in values:
            counts = [np.minimum(np.round(k * ratios / ratios.sum()).astype(int), h_units) for k in h_steps]
            sets = [[ablate(n, perms[n][:kk], v) for n, kk in zip(hl, per_layer) if kk] for per_layer in counts]
            out = engine.evaluate(sets, advance=bar.update)
            for i, per_layer in enumerate(counts):
                emit("hybrid", "+".join(hl), label, "low", v, int(h_units.sum()), int(per_layer.sum()),
                     out.accuracy[i], out.class_accuracy[i])
    bar.close()
    params = dict(cfg.record(), layers=names, input_scale=factor, data_split=data.split, n_test=len(data),
                  baseline_accuracy=base_acc, importance=imp.params if imp is not None else None)
    inputs = {"model": (lm.path, lm.sha256), "store": (st.path, st.sha256),
              "data": (data.path, data.sha256)}
    return AblationResult(rows, params, inputs)
