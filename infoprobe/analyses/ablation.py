"""Cumulative ablation of ranked units (Liu, Amjad & Geiger 2018, Sections 5-6).

Every ablation replaces a unit's post-activation t_j by a constant c_j through the
mask/offset inputs of the rewritten graph (DESIGN.md): ``zero`` ablation has c_j = 0; bias
balancing (``mean``, eq. 7) has c_j = the unit's mean over the data the measures came from,
which equals adding w_jk * mean(t_j) to the next layer's bias. Layer-wise sweeps run only
the suffix of the model after the ablated layer, from its post-activations computed once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import Dataset, prepare_inputs, resolve_scale
from ..errors import ConfigError, DataError, ModelError
from ..model import LoadedModel, load_model
from ..results import check_outputs, provenance, write_table
from ..rewrite import io_name
from ..runner import Runner, default_threads
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


def ablation_constants(store: Store, layer: str, value: str) -> np.ndarray:
    """Per-unit constants c [U] that replace ablated units.

    ``"zero"``: zeros. ``"mean"`` (bias balancing, eq. 7): the mean post-activation over the
    store's samples (conv: over samples and positions, one constant per channel).
    """
    info = store.layer_info(layer)
    if value == "zero":
        return np.zeros(int(info["units"]), np.float64)
    if value != "mean":
        raise ConfigError(f"unknown ablation value {value!r}; use zero or mean")
    total, n = None, 0
    for _, block in store.iter_rows(layer, "post"):
        b = block.reshape(len(block), block.shape[1], -1).astype(np.float64)
        s = b.sum(axis=(0, 2))
        total = s if total is None else total + s
        n += b.shape[0] * b.shape[2]
    return total / n


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


@dataclass
class AblationResult:
    """Accuracy curves: one row per (scope, layer, ranking, order, value, n_ablated)."""

    rows: list
    params: dict
    inputs: dict = field(default_factory=dict)

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

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write ``ablation.{csv,json}`` to ``outdir``."""
        outdir = Path(outdir)
        check_outputs([outdir / "ablation.csv", outdir / "ablation.json"], overwrite)
        return write_table(outdir, "ablation", self.rows, provenance(self.inputs, self.params))


def _steps(n_units: int, n_steps: int | None) -> np.ndarray:
    if n_steps is None:
        n_steps = n_units + 1 if n_units <= 100 else 51
    return np.unique(np.round(np.linspace(0, n_units, max(2, n_steps))).astype(int))


class _Evaluator:
    """Accuracy and per-class accuracy of a runner under per-layer ablations."""

    def __init__(self, runner: Runner, x: np.ndarray, y: np.ndarray, n_classes: int, output: str,
                 batch_size: int):
        self.runner, self.x, self.y, self.output = runner, x, y, output
        self.n_classes, self.batch_size = n_classes, batch_size
        self.class_rows = [np.flatnonzero(y == c) for c in range(n_classes)]

    def __call__(self, ablations: dict) -> tuple[float, np.ndarray]:
        """``ablations``: layer -> (UnitLayer, unit indices, constants [U])."""
        feeds = {}
        for lay, units, consts in ablations.values():
            feeds.update(self.runner.replacement_feeds(lay, units, consts[units]))
        logits = self.runner.run(self.x, feeds=feeds, outputs=[self.output],
                                 batch_size=self.batch_size)[self.output]
        correct = self.runner.lm.predicted_labels(logits) == self.y
        per_class = np.array([correct[r].mean() if len(r) else np.nan for r in self.class_rows])
        return float(correct.mean()), per_class


def cumulative_ablation(model, store, data: Dataset, *, importance: ImportanceResult | None = None,
                        measures=("mutual_information", "kl_selectivity"), orders=("low",),
                        values=VALUES, scopes=("layer",), layers=None, n_steps: int | None = None,
                        random_repeats: int = 5, seed: int = 0, hybrid: dict | None = None,
                        scale="auto", batch_size: int = 4096, progress: bool = True,
                        providers=None) -> AblationResult:
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
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    own = not isinstance(store, Store)
    st = Store(store) if own else store
    try:
        return _run(lm, st, data, importance, measures, orders, values, scopes, layers, n_steps,
                    random_repeats, seed, hybrid, scale, batch_size, progress, providers)
    finally:
        if own:
            st.close()


def _run(lm, st, data, imp, measures, orders, values, scopes, layers, n_steps, random_repeats, seed,
         hybrid, scale, batch_size, progress, providers):
    if data.y is None:
        raise DataError(f"{data.path} has no labels ('y'); ablation measures accuracy and needs them")
    for what, given, allowed in (("measure", measures, MEASURES), ("order", orders, ORDERS),
                                 ("ablation value", values, VALUES), ("scope", scopes, SCOPES)):
        for g in given:
            if g not in allowed:
                raise ConfigError(f"unknown {what} {g!r}; use one of {', '.join(allowed)}")
    store_model = st.attrs.get("model_sha256")
    if store_model and store_model != lm.sha256:
        raise DataError(f"the store {st.path} was captured from another model (SHA-256 {store_model[:12]}..., "
                        f"this model is {lm.sha256[:12]}...); capture it again from {lm.path.name}")
    names = list(layers) if layers else [n for n in st.hidden_layers()]
    for n in names:
        if lm.layer(n).is_output:
            raise ConfigError(f"layer {n!r} is the output layer; ablate hidden layers")
        if n not in st.layer_names:
            raise ConfigError(f"layer {n!r} is not in the store {st.path}")
        if tuple(st.layer_info(n)["shape"]) != tuple(lm.layer(n).shape):
            raise DataError(f"the store's layer {n!r} has shape {st.layer_info(n)['shape']} but the model's "
                            f"has {lm.layer(n).shape}: the store was captured from another model")
    if hybrid:
        for n, (m, r) in hybrid.items():
            lm.layer(n)
            if m not in MEASURES:
                raise ConfigError(f"unknown measure {m!r} in hybrid; use one of {', '.join(MEASURES)}")
            if r <= 0:
                raise ConfigError("hybrid ratios must be positive")
    needs_imp = bool(measures) or bool(hybrid)
    if imp is None and needs_imp:
        imp_layers = sorted(set(names) | set(hybrid or {}), key=st.layer_names.index)
        imp = compute_importance(st, layers=imp_layers, js="js_subset_separation" in measures
                                 or any(m == "js_subset_separation" for m, _ in (hybrid or {}).values()),
                                 progress=progress)
    st_labels = st.labels
    n_classes = int(max(data.y.max(), st_labels.max() if st_labels is not None else 0)) + 1
    factor = resolve_scale(data.x, scale)
    x = prepare_inputs(data.x, lm.input_shape, factor, input_name=lm.input_name)
    y = data.y
    consts = {(n, v): ablation_constants(st, n, v) for n in set(names) | set(hybrid or {}) for v in values}
    rng = np.random.default_rng(seed)
    rows = []
    threads = default_threads()
    layerwise = "layer" in scopes
    full = Runner(lm, expose=layerwise, providers=providers, threads=threads)
    if layerwise:  # the layers before each ablated layer, computed once for all its sweeps
        posts = full.run(x, outputs=[io_name(n, "post") for n in names], batch_size=batch_size)
    full_eval = _Evaluator(full, x, y, n_classes, lm.output_name, batch_size)
    base_acc, base_cls = full_eval({})

    def emit(scope, layer, ranking, order, value, n_units, k, accs, cls):
        accs, cls = np.atleast_1d(accs), np.atleast_2d(cls)
        row = {"scope": scope, "layer": layer, "ranking": ranking, "order": order, "value": value,
               "n_units": n_units, "n_ablated": int(k), "fraction": k / n_units,
               "accuracy": float(accs.mean()), "accuracy_std": float(accs.std()) if len(accs) > 1 else 0.0,
               "repeats": len(accs)}
        for c in range(cls.shape[1]):
            col = cls[:, c]
            row[f"class_{c}_accuracy"] = float(col.mean()) if not np.isnan(col).any() else None
        rows.append(row)

    def sweep(scope, label, evaluate, n_units, orders_by_ranking, ablate_for):
        ks = _steps(n_units, n_steps)
        for (ranking, order, value), perms in orders_by_ranking.items():
            res = np.empty((len(perms), len(ks)))
            cls = np.empty((len(perms), len(ks), n_classes))
            for r, perm in enumerate(perms):
                for i, k in enumerate(ks):
                    if k == 0:
                        res[r, i], cls[r, i] = base_acc, base_cls
                    else:
                        res[r, i], cls[r, i] = evaluate(ablate_for(perm, int(k), value))
                    bar.update(1)
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
    if layerwise:
        total += sum(len(_steps(lm.layer(n).units, n_steps)) for n in names) * \
            (len(measures) * len(orders) + random_repeats) * len(values)
    if "network" in scopes:
        total += len(_steps(sum(lm.layer(n).units for n in names), n_steps)) * \
            (len(measures) * len(orders) + random_repeats) * len(values)
    if hybrid:
        total += len(h_steps) * len(values)
    bar = tqdm(total=total, unit="ablation", desc="ablation", disable=not progress)

    if layerwise:
        for n in names:
            lay = lm.layer(n)
            try:
                runner, inputs = Runner(lm, after=n, providers=providers, threads=threads), posts[io_name(n, "post")]
            except ModelError:  # no suffix (skip connection around the layer): run the whole model
                runner, inputs = full, x
            ev = _Evaluator(runner, inputs, y, n_classes, lm.output_name, batch_size)
            sweep("layer", n, ev, lay.units, plan(lay.units, lambda m, n=n: imp.measure(n, m)),
                  lambda perm, k, v, n=n, lay=lay: {n: (lay, perm[:k], consts[(n, v)])})

    if "network" in scopes:
        sizes = [lm.layer(n).units for n in names]
        offsets = np.concatenate([[0], np.cumsum(sizes)])

        def split(perm, k, v):
            chosen = np.asarray(perm[:k])
            out = {}
            for i, n in enumerate(names):
                sel = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
                out[n] = (lm.layer(n), sel, consts[(n, v)])
            return out

        sweep("network", "+".join(names), full_eval, int(offsets[-1]),
              plan(int(offsets[-1]), lambda m: np.concatenate([imp.measure(n, m) for n in names])), split)

    if hybrid:
        perms = {n: rank_units(imp.measure(n, hybrid[n][0]), "low") for n in hl}
        label = ",".join(f"{n}={hybrid[n][0]}:{hybrid[n][1]:g}" for n in hl)
        for v in values:
            for k in h_steps:
                per_layer = np.minimum(np.round(k * ratios / ratios.sum()).astype(int), h_units)
                if k == 0:
                    acc, cls = base_acc, base_cls
                else:
                    acc, cls = full_eval({n: (lm.layer(n), perms[n][:kk], consts[(n, v)])
                                          for n, kk in zip(hl, per_layer)})
                bar.update(1)
                emit("hybrid", "+".join(hl), label, "low", v, int(h_units.sum()), int(per_layer.sum()),
                     acc, cls)
    bar.close()
    params = {"measures": list(measures), "orders": list(orders), "values": list(values),
              "scopes": list(scopes), "layers": names, "n_steps": n_steps,
              "random_repeats": random_repeats, "seed": seed,
              "hybrid": {k: list(v) for k, v in (hybrid or {}).items()}, "input_scale": factor,
              "data_split": data.split, "n_test": len(data), "baseline_accuracy": base_acc,
              "importance": imp.params if imp is not None else None}
    inputs = {"model": (lm.path, lm.sha256), "store": (st.path, st.sha256),
              "data": (data.path, data.sha256)}
    return AblationResult(rows, params, inputs)
