"""Synergy and redundancy of multiplets of units, layer by layer, and multi-unit importance.

Source: "O-information for multi-neuron importance" (workshop paper, ~2022), Sections 3-4:
for each hidden layer, O-information Omega(x_1..x_k, y) of multiplets of k units with the
class label, on pre-activations of the test set; the most synergistic (min Omega) and most
redundant (max Omega) multiplet for each k, exhaustively up to k = 6 and greedily beyond;
profiles averaged over networks trained from different seeds (Fig. 1); importance of the
synergistic multiplet against single-unit GC-MI rankings and random units (Section 4.2; the
paper retrains the sub-network, infoprobe ablates through the mask mechanism instead).

Exhaustive search costs C(n, k) multiplets of size k: 1.3 x 10^9 for every multiplet of up to
6 of 100 units. By default the exhaustive size of each layer is the largest that fits a time
budget, estimated before the search starts from counts alone (units, classes, multiplets) and a
fixed cost model (:class:`~infoprobe.estimators.oinfo.CostModel`): nothing is timed, so the
same inputs give the same sizes and tables under any load (:func:`synergy_estimate`); greedy
search goes on beyond it. Every layer's model is checked against the memory budget before any
activation is read.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import seed_streams
from ..data import Dataset, model_inputs, resolve_scale
from ..errors import ConfigError, DataError
from ..limits import max_memory, require_memory
from ..estimators.gaussian import gcmi_mixture_cd, gcmi_model_cd
from ..estimators.oinfo import CostModel, copula_model, plan_search, require_model_memory, search_multiplets
from ..interventions import Evaluator, Intervention
from ..model import DEFAULT_MAX_BYTES, LoadedModel, load_model
from ..plan import LayerPlan, PruningPlan
from ..results import Tables, check_outputs, provenance, shown_path, write_table
from ..runner import default_threads
from ..parallel import current, map_tasks, portable
from ..store import Store
from .ablation import rank_units
from ..positions import per_unit
from .plans import replacement_constants, uncoupled

SELECTIONS = ("synergy", "gcmi_model", "gcmi_mixture", "random")
MODES = ("ablate", "keep")
#: Default time budget of a synergy search, in seconds (every layer and network together).
BUDGET = 60.0
#: An exhaustive size asked for explicitly and estimated at more than this many budgets still
#: runs, with a warning.
OVER_BUDGET = 10.0


def layer_activations(store: Store, layer: str, which: str = "pre", *, max_samples: int | None = None,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """A layer's activations [N, U] (float64) and the store's labels [N] (or None).

    Sites with positions are reduced to one value per unit (the mean over positions, padding
    tokens left out: :func:`infoprobe.positions.per_unit`), the paper's "naive solution" for feature maps
    (Section 5). ``max_samples`` draws a
    seeded random subset of rows (sorted, so the result does not depend on chunking). The
    store is read a block of samples at a time, so only the reduced values need fit in memory.

    Raises
    ------
    StoreError, DataError
        Unknown layer, NaN activations.
    BudgetError
        The reduced values [N, U] do not fit in the memory budget (:func:`reduced_values`
        spills them to a scratch file instead).
    """
    with reduced_values(store, layer, which, max_samples=max_samples, seed=seed, spill=False) as (x, y):
        return x, y


def sample_subset(store: Store, max_samples: int | None = None, seed: int = 0) -> tuple:
    """The rows :func:`reduced_values` reads and their labels: ``(rows, y)``, ``rows`` a sorted
    int array of ``max_samples`` rows drawn with ``numpy.random.default_rng(seed)`` (None: every
    row), ``y`` the store's labels of those rows [N] (None without labels)."""
    n, rows = store.n_rows, None
    if max_samples is not None and n > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(n, int(max_samples), replace=False))
    y = store.labels
    if rows is not None and y is not None:
        y = y[rows]
    return rows, y


@contextlib.contextmanager
def reduced_values(store: Store, layer: str, which: str = "pre", *, max_samples: int | None = None, seed: int = 0,
                   spill: bool = True):
    """:func:`layer_activations`, yielded as ``(x, y)`` within a ``with`` block: ``x`` is a
    float64 array [N, U] when it fits in a quarter of the memory budget, otherwise (``spill``)
    a :class:`~infoprobe.scratch.ScratchMatrix` in a scratch folder of the temporary folder
    (``TMPDIR``; N x U x 8 bytes, reserved before the store is read), removed at the end of
    the block however it ends, that :func:`~infoprobe.estimators.oinfo.copula_model` reads a
    block of units at a time (:func:`infoprobe.scratch.scratch_matrix`).

    Parameters
    ----------
    store : Store
        The activation store.
    layer : str
        The layer.
    which : {"pre", "post"}
        Pre- or post-activations.
    max_samples : int, optional
        A seeded random subset of this many samples.
    seed : int
        The subset's seed.
    spill : bool
        Spill values larger than a quarter of the budget to the temporary folder (otherwise
        they must fit in the whole budget).

    Raises
    ------
    ConfigError
        ``which`` is not "pre" or "post".
    StoreError, DataError, BudgetError
        As :func:`layer_activations`.
    ScratchError
        The temporary folder cannot hold the spilled values (full, a file-size limit or quota,
        not writable): one line naming the folder and the size.
    """
    if which not in ("pre", "post"):
        raise ConfigError(f"which must be 'pre' or 'post', not {which!r}")
    info, mask, n = store.layer_info(layer), store.position_mask(layer), store.n_rows
    rows, y = sample_subset(store, max_samples, seed)
    n_out, units = (n if rows is None else len(rows)), int(info["units"])
    need = n_out * units * 8
    if need <= max_memory() // 4 or not spill:
        require_memory(need, f"the {n_out:,} x {units:,} values of layer {layer!r}")
        holder = contextlib.nullcontext(np.empty((n_out, units)))
    else:
        from ..scratch import scratch_matrix

        holder = scratch_matrix(n_out, units, what=f"the {n_out:,} x {units:,} values of layer {layer!r}")
    with holder as out:
        at = 0
        for start, block in store.iter_rows(layer, which):
            m = None if mask is None else mask[start:start + len(block)]
            v = per_unit(block, info["unit_axis"], "mean", m)
            if rows is not None:
                lo, hi = np.searchsorted(rows, [start, start + len(block)])
                v = v[rows[lo:hi] - start]
            out[at:at + len(v)] = v
            at += len(v)
        yield out, y


@dataclass(repr=False)
class SynergyResult(Tables):
    """Best multiplets per network, layer, size and direction, and their profiles.

    ``rows``: one per network (store), layer, size and direction with ``network``, ``store``,
    ``layer``, ``size``, ``direction`` ("synergy"/"redundancy"), ``method``
    ("exhaustive"/"greedy"), ``exhaustive_up_to`` (the layer's exhaustive size), ``omega``
    (bits), ``units``, ``evaluated`` and ``degenerate``.
    ``profiles``: per layer, size and direction, ``mean``/``std``/``min``/``max`` of the best
    Omega over networks (the paper's Fig. 1). ``constant``: {(network, layer): [units]}
    excluded as constant.
    """
    rows: list
    profiles: list
    constant: dict
    meta: dict = field(default_factory=dict)

    def tables(self) -> dict:
        return {"synergy": self.rows, "synergy_profile": self.profiles}

    def layers(self) -> list:
        return list(dict.fromkeys(r["layer"] for r in self.rows))

    def best(self, layer: str, *, direction: str = "synergy", size: int | None = None,
             network: int = 0) -> dict:
        """The row of the best multiplet (largest reported size unless ``size``).

        Raises
        ------
        ConfigError
            No such layer, size or network in the result.
        """
        rows = [r for r in self.rows if r["layer"] == layer and r["direction"] == direction
                and r["network"] == network and r["units"]]
        if not rows:
            raise ConfigError(f"no {direction} multiplets for layer {layer!r} (network {network})")
        if size is None:
            return max(rows, key=lambda r: r["size"])
        for r in rows:
            if r["size"] == size:
                return r
        raise ConfigError(f"layer {layer!r} has no multiplet of size {size}; sizes "
                          f"{min(r['size'] for r in rows)}..{max(r['size'] for r in rows)}")

    def constant_units(self) -> dict:
        """{"<network>:<layer>": [units]} excluded as constant."""
        return {f"{n}:{lay}": u for (n, lay), u in self.constant.items()}

    def summary(self) -> str:
        """The profiles as a table (best synergy and redundancy per layer and size, mean over
        networks) and the excluded constant units: the terminal's summary."""
        p = self.meta.get("parameters", {})
        nets = max(r["networks"] for r in self.profiles)
        spread = nets > 1
        lines = [f"best O-information [bits], mean{' +- sd' if spread else ''} over {nets} network"
                 f"{'s' if nets > 1 else ''} (labels={p.get('labels')}, {p.get('which')}-activations)",
                 "Ω < 0: synergy-dominated, Ω > 0: redundancy-dominated (Rosas et al. 2019); the lowest is "
                 "synergistic only where it is negative, the highest redundant only where it is positive",
                 f"{'layer':<16} {'k':>3} {'lowest Ω':>{15 if spread else 9}} "
                 f"{'highest Ω':>{15 if spread else 11}}  method"]
        best = {(r["layer"], r["size"], r["direction"]): r for r in reversed(self.profiles)}

        def cell(r, width):
            if r.get("mean") is None:              # every multiplet of the size degenerate
                return "n/a".rjust(width)
            if not spread or r.get("std") is None:
                return f"{r['mean']:{width}.3f}"
            return f"{r['mean']:.3f} +- {r['std']:.3f}".rjust(width)

        for lay in self.layers():
            for k in sorted({r["size"] for r in self.profiles if r["layer"] == lay}):
                s, d = best[(lay, k, "synergy")], best[(lay, k, "redundancy")]
                lines.append(f"{lay:<16} {k:>3} {cell(s, 15 if spread else 9)} {cell(d, 15 if spread else 11)}  "
                             f"{s['method']}")
        for key, u in self.constant_units().items():
            lines.append(f"excluded constant units of {key}: {u}")
        return "\n".join(lines)

    def plot(self, outdir) -> list:
        """Write ``synergy.png`` (best synergy and redundancy against multiplet size, per layer)."""
        from ..report import plot_synergy

        return [plot_synergy(self.profiles, Path(outdir) / "synergy.png")]

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write synergy.csv/json (best multiplets) and synergy_profile.csv/json."""
        outdir = Path(outdir)
        check_outputs(self.outputs(outdir), overwrite)
        meta = dict(self.meta, constant_units=self.constant_units())
        return write_table(outdir, "synergy", self.rows, meta) + \
            write_table(outdir, "synergy_profile", self.profiles, self.meta)

    @staticmethod
    def outputs(outdir) -> list:
        """The tables :meth:`save` writes to ``outdir``."""
        return [Path(outdir) / f"{n}.{e}" for n in ("synergy", "synergy_profile") for e in ("csv", "json")]


def _count(n: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return str(int(n))


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


@dataclass
class SynergyEstimate:
    """What :func:`synergy` searches, and how long it should take, before it starts.

    ``rows``: one per layer with ``layer``, ``units``, ``exhaustive_up_to`` (the exhaustive
    size chosen or asked, capped at ``max_size`` and the width), ``max_size``, ``exhaustive``
    and ``greedy`` (multiplets, every network together), ``seconds`` (estimated, every network
    together), ``reason`` (why the size stops there:
    :class:`~infoprobe.estimators.oinfo.SearchCost`), ``share_s`` (the layer's share of the
    budget, automatic sizes) and ``next_s`` (the estimate of the next size, when the budget
    stopped the layer); :func:`synergy` adds ``actual`` (seconds taken: a note, it changes
    nothing). ``requested``: ``"auto"``, the exhaustive size asked or the sizes per layer;
    ``budget`` (seconds); ``networks``; ``cost``: the cost model the estimate rests on
    (:meth:`~infoprobe.estimators.oinfo.CostModel.to_dict`); ``largest``: the largest
    multiplet the samples can estimate (:func:`_check_memory`), which caps ``max_size``.
    """
    rows: list
    requested: object
    budget: float
    networks: int
    cost: dict
    largest: int | None = None

    @property
    def seconds(self) -> float:
        """Estimated seconds of the whole search."""
        return float(sum(r["seconds"] for r in self.rows))

    @property
    def sizes(self) -> dict:
        """Exhaustive size per layer."""
        return {r["layer"]: r["exhaustive_up_to"] for r in self.rows}

    @property
    def over_budget(self) -> float:
        """Estimated time over the budget (1 = exactly the budget)."""
        return self.seconds / self.budget

    def warning(self) -> str | None:
        """One line when the estimate exceeds the budget ``OVER_BUDGET`` times (an explicit
        size) or at all (the automatic size, when even the smallest exhaustive size does not
        fit); else None."""
        if self.requested != "auto" and self.over_budget > OVER_BUDGET:
            what = "the exhaustive sizes asked are" if isinstance(self.requested, dict) else \
                f"exhaustive search up to {self.requested} units is"
            return (f"WARNING: {what} estimated at "
                    f"{_duration(self.seconds)}, {self.over_budget:.0f}x the budget of {_duration(self.budget)}; "
                    "running it as asked (the automatic exhaustive size fits the budget)")
        if self.requested == "auto" and self.over_budget > 1:
            return (f"WARNING: even the smallest exhaustive size is estimated at {_duration(self.seconds)}, "
                    f"over the budget of {_duration(self.budget)}")
        return None

    def lines(self) -> list:
        """The estimate as text: a header, one line per layer, the total, any warning."""
        c = self.cost
        how = (f"cost model: {c['groups']} covariance group{'s' if c['groups'] > 1 else ''}, {c['threads']} "
               f"thread{'s' if c['threads'] > 1 else ''}")
        nets = f"{self.networks} networks, " if self.networks > 1 else ""
        size = "auto" if self.requested == "auto" else "per layer (asked)" if isinstance(self.requested, dict) \
            else f"{self.requested} (asked)"
        out = [f"O-information search: exhaustive size {size}, budget {_duration(self.budget)} ({nets}{how})",
               f"  {'layer':<16} {'units':>6} {'exhaustive':>10} {'multiplets: exhaustive + greedy':>31} "
               f"{'estimate':>9}"]
        for r in self.rows:
            why = ""
            if r.get("reason") == "budget":
                why = (f"  ({r['exhaustive_up_to'] + 1} would take {_duration(r['next_s'])}, over the layer's share "
                       f"of {_duration(r['share_s'])})")
            elif r.get("reason") == "multiplets":
                why = f"  ({r['exhaustive_up_to'] + 1} would evaluate over 10^10 multiplets)"
            out.append(f"  {r['layer']:<16} {r['units']:>6} {'up to ' + str(r['exhaustive_up_to']):>10} "
                       f"{_count(r['exhaustive']) + ' + ' + _count(r['greedy']):>31} {_duration(r['seconds']):>9}"
                       f"{why}")
        total = sum(r["exhaustive"] + r["greedy"] for r in self.rows)
        out.append(f"  {'total':<16} {'':>6} {'':>10} {_count(total):>31} {_duration(self.seconds):>9}")
        if self.warning():
            out.append(self.warning())
        return out

    def to_dict(self) -> dict:
        """The plan as JSON values (written with the results as ``meta["estimate"]``): what was
        asked, the budget, the cost model and each layer's row."""
        return {"requested": self.requested, "budget_s": self.budget, "networks": self.networks,
                "seconds": self.seconds, "cost_model": self.cost, "layers": self.rows}


#: Largest synergy.json :func:`recorded_sizes` reads.
MAX_RESULT_BYTES = 64 << 20


def recorded_sizes(path) -> dict:
    """The exhaustive size of each layer that an earlier :func:`synergy` wrote in its
    ``synergy.json`` (``meta.parameters.exhaustive_sizes``): give it as ``exhaustive_up_to``
    to search the same multiplets again.

    Parameters
    ----------
    path : path-like
        A ``synergy.json`` (a regular file of at most :data:`MAX_RESULT_BYTES`).

    Returns
    -------
    dict of layer -> int

    Raises
    ------
    ConfigError
        Not a regular file, too large, not JSON, or without a size (an integer of at least 2)
        for each layer.
    """
    from ..config import read_json

    doc = read_json(path, max_bytes=MAX_RESULT_BYTES, what="the synergy result")
    try:
        sizes = doc["meta"]["parameters"]["exhaustive_sizes"]
    except (KeyError, TypeError):
        raise ConfigError(f"{path} is not a synergy.json with meta.parameters.exhaustive_sizes") from None
    if not isinstance(sizes, dict) or not sizes or not all(
            isinstance(k, str) and type(v) is int and v >= 2 for k, v in sizes.items()):
        raise ConfigError(f"{path}: meta.parameters.exhaustive_sizes must map each layer to a size of at least 2")
    return dict(sizes)


def _layer_names(stores, layers) -> list:
    common = [n for n in stores[0].hidden_layers() if all(n in s.layer_names for s in stores[1:])]
    names = list(layers) if layers else common
    if not names:
        raise ConfigError("the stores have no hidden layer in common")
    for s in stores:
        for n in names:
            if n not in s.layer_names:
                raise ConfigError(f"layer {n!r} is not in {s.path}; it has: {', '.join(s.layer_names)}")
    return names


def _model(st: Store, layer, which, labels, ties, biascorrect, max_samples, seed, device):
    with reduced_values(st, layer, which, max_samples=max_samples, seed=seed) as (x, y):
        if labels != "none" and y is None:
            st.require_labels()
        return copula_model(x, y, labels=labels, ties=ties, biascorrect=biascorrect, device=device)


def _estimate(stores, names, which, labels, max_size, exhaustive_up_to, budget, ties, biascorrect,
              max_samples, seed, device, threads, throughput) -> SynergyEstimate:
    units = {n: int(stores[0].layer_info(n)["shape"][0]) for n in names}  # units or channels
    classes, largest = _check_memory(stores, names, labels, max_samples, seed)
    least = 3 - (labels != "none")
    if largest < least:
        raise DataError(f"too few samples for O-information with labels={labels!r}: "
                        + (f"the smallest class has {largest + 1} samples, and a multiplet of {least} units needs "
                           f"more than {least} per class (use --labels ordinal, or more samples)"
                           if labels == "exact" else f"they estimate multiplets of at most {largest} units, and "
                           f"the search starts at {least}"))
    if largest < max_size:
        warnings.warn(f"synergy searches multiplets of at most {largest} units, not {max_size}: "
                      + ("its smallest class has " + str(largest + 1) if labels == "exact"
                         else "it has " + str(largest + 1 + (labels == "ordinal")))
                      + " samples, and the Gaussian entropy of d variables needs more than d")
        max_size = largest
    if throughput is None:
        throughput = CostModel()
    elif not isinstance(throughput, CostModel):
        throughput = CostModel.flat(throughput)
    cost = throughput.for_search(labels=labels, classes=classes, threads=threads)
    nets = len(stores)
    common = dict(throughput=cost, budget=budget, max_size=max_size, min_size=3 - (labels != "none"), networks=nets)
    if isinstance(exhaustive_up_to, dict):     # a size per layer (those an earlier run reached)
        missing = [n for n in names if n not in exhaustive_up_to]
        if missing:
            raise ConfigError(f"exhaustive_up_to gives no size for the layers {', '.join(missing)}")
        costs = {}
        for n in names:
            costs.update(plan_search({n: units[n]}, exhaustive_up_to=exhaustive_up_to[n], **common))
    else:
        costs = plan_search(units, exhaustive_up_to=exhaustive_up_to, **common)
    rows = []
    for n, c in costs.items():
        row = {"layer": n, "units": units[n], "exhaustive_up_to": c.exhaustive_up_to, "max_size": c.max_size,
               "exhaustive": nets * c.exhaustive, "greedy": nets * c.greedy, "seconds": nets * c.seconds,
               "reason": c.reason}
        if c.share is not None:
            row["share_s"] = c.share
        if c.next_seconds is not None:
            row["next_s"] = nets * c.next_seconds
        rows.append(row)
    requested = exhaustive_up_to if exhaustive_up_to == "auto" or isinstance(exhaustive_up_to, dict) \
        else int(exhaustive_up_to)
    return SynergyEstimate(rows, requested, float(budget), nets, cost.to_dict(), largest)


def _check_memory(stores, names, labels, max_samples, seed) -> tuple[int, int]:
    """Refuse, before any activation is read, a layer whose O-information model does not fit in
    the memory budget (:func:`~infoprobe.estimators.oinfo.require_model_memory`, for every store
    and layer); return the number of classes of the first store's samples (0 unless
    ``labels="exact"``) and the largest multiplet every store's samples can estimate (the
    Gaussian entropy of d variables needs more than d samples: of the smallest class with
    ``labels="exact"``, where each class has its own covariance; of all the samples, the
    label counting as a variable with ``"ordinal"``)."""
    classes, largest = None, None
    for st in stores:
        rows, y = sample_subset(st, max_samples, seed)
        if labels != "none" and y is None:
            st.require_labels()
        n = st.n_rows if rows is None else len(rows)
        c = len(np.unique(y)) if labels == "exact" else 0
        classes = c if classes is None else classes
        k = int(np.unique(y, return_counts=True)[1].min()) - 1 if labels == "exact" \
            else n - 1 - (labels == "ordinal")
        largest = k if largest is None else min(largest, k)
        for name in names:
            u = int(st.layer_info(name)["units"])
            values = n * u * 8           # reduced_values holds them in memory within a quarter, else spills
            require_model_memory(n, u, groups=1 + c, fixed=int(labels == "ordinal"),
                                 held=values if values <= max_memory() // 4 else 0,
                                 what=f"layer {name!r} of {shown_path(st.path)} ({u:,} units, {n:,} samples)",
                                 fewer_samples="or use fewer samples (--max-samples)",
                                 fewer_units="or leave the layer out (--layers)")
    return classes, largest


def synergy_estimate(stores, *, layers=None, which: str = "pre", labels: str = "exact", max_size: int = 10,
                     exhaustive_up_to="auto", budget: float = BUDGET, ties: str = "average",
                     biascorrect: bool = True, max_samples: int | None = None, seed: int = 0,
                     device: str = "cpu", threads: int | None = None, throughput=None) -> SynergyEstimate:
    """Exhaustive size per layer, multiplets and estimated time of :func:`synergy`, without running it.

    Takes :func:`synergy`'s arguments. The exhaustive size of each layer comes from
    :func:`~infoprobe.estimators.oinfo.plan_search` (the largest that fits its share of
    ``budget``, or ``exhaustive_up_to`` if it is a number or a number per layer); the time from
    counts (the layer's units, the multiplets of each size, the first store's classes with
    ``labels="exact"``, ``threads``) and a cost model
    (:class:`~infoprobe.estimators.oinfo.CostModel`, :meth:`~infoprobe.estimators.oinfo.CostModel.for_search`):
    nothing is timed, so the same inputs give the same estimate and sizes under any load.
    Reads the stores' labels, not their activations.

    Parameters
    ----------
    throughput : CostModel or float, optional
        The cost model (default: ``CostModel()``, the constants measured by
        ``benchmarks/oinfo_cost.py``), or a fixed number of multiplets per second.

    Returns
    -------
    SynergyEstimate

    Raises
    ------
    StoreError, DataError
        As :func:`synergy`.
    ConfigError
        Unknown layers, a budget that is not positive, an exhaustive size below the smallest
        multiplet, or one that would evaluate more than 10^10 multiplets.
    BudgetError
        A layer's O-information model does not fit in the memory budget (one line naming
        ``--max-memory`` and ``--max-samples`` or ``--layers``).
    """
    paths = stores if isinstance(stores, (list, tuple)) else [stores]
    if not paths:
        raise ConfigError("give at least one activation store")
    opened = [(s if isinstance(s, Store) else Store(s)) for s in paths]
    try:
        return _estimate(opened, _layer_names(opened, layers), which, labels, max_size, exhaustive_up_to,
                         budget, ties, biascorrect, max_samples, seed, device, threads, throughput)
    finally:
        for s, p in zip(opened, paths):
            if not isinstance(p, Store):
                s.close()


def synergy(stores, *, layers=None, which: str = "pre", labels: str = "exact", max_size: int = 10,
            exhaustive_up_to="auto", budget: float = BUDGET, keep: int = 1, ties: str = "average",
            biascorrect: bool = True, max_samples: int | None = None, seed: int = 0, device: str = "cpu",
            threads: int | None = None, throughput=None, on_estimate=None, progress: bool = True) -> SynergyResult:
    """Most synergistic and most redundant multiplets of every layer of one or more networks.

    Parameters
    ----------
    stores : path-like or Store, or a list of them
        Activation stores, one per network (e.g. the same architecture trained from several
        seeds); profiles average over them.
    layers : list of str, optional
        Layers to analyse (default: the hidden layers common to all stores).
    which : {"pre", "post"}
        Pre-activations by default, as in the paper (ReLU post-activations tie at 0).
    labels : {"exact", "ordinal", "none"}
        How the class label joins each multiplet (:mod:`infoprobe.estimators.oinfo`).
    max_size, keep
        See :func:`~infoprobe.estimators.oinfo.search_multiplets` (defaults: greedy up to 10
        units, the best multiplet only).
    exhaustive_up_to : "auto", int or dict of layer -> int
        Largest size searched exhaustively, greedy beyond. ``"auto"`` (default): per layer,
        the largest whose estimated time fits its share of ``budget`` (Section 4.1 of the
        paper searches up to 6, which takes hours on 100 units); the estimate comes from
        counts and a cost model, never from timing, so the same inputs always give the same
        sizes. A number (or a number per layer, e.g. the ``exhaustive_sizes`` an earlier run
        recorded, which replays that run exactly) is searched as asked (capped at ``max_size``
        and the layer's width), even far over the budget.
    budget : float
        Seconds for the whole search (every layer and network), for ``"auto"``, as the cost
        model estimates them (the time taken varies with the machine and its load; the sizes
        do not).
    ties, biascorrect
        See :func:`~infoprobe.estimators.oinfo.copula_model`.
    max_samples : int, optional
        Use a seeded random subset of at most this many samples.
    device : {"cpu", "cuda"}
        Where the search runs (planned with the same cost model on either).
    threads : int, optional
        CPU threads for the search (default: all cores). The plan counts ``threads`` as given,
        or one thread when None, so that it does not depend on the machine.
    throughput : CostModel or float, optional
        The cost model behind the estimate (default: ``CostModel()``,
        :func:`synergy_estimate`), or a fixed number of multiplets per second.
    on_estimate : callable(SynergyEstimate), optional
        Called with the estimate before the search starts (the CLI prints it).

    Returns
    -------
    SynergyResult
        ``meta["parameters"]["exhaustive_sizes"]`` holds the exhaustive size of each layer
        (give it back as ``exhaustive_up_to`` to replay the run), ``meta["estimate"]`` the plan:
        the cost model, each layer's estimate and why its size stops there, and the seconds
        each layer took.

    Raises
    ------
    StoreError, DataError
        Unreadable stores, NaN activations, labels missing (unless ``labels="none"``).
    ConfigError
        Unknown layers, bad sizes or budget, a search too large to run exhaustively (more than
        10^10 multiplets).
    BudgetError
        A layer's O-information model (one unit's samples, or the covariance sums of its
        units) does not fit in the memory budget
        (:func:`~infoprobe.estimators.oinfo.require_model_memory`): refused before any
        activation is read, naming ``--max-memory`` and ``--max-samples`` or ``--layers``.
    """
    paths = stores if isinstance(stores, (list, tuple)) else [stores]
    if not paths:
        raise ConfigError("give at least one activation store")
    opened = [(s if isinstance(s, Store) else Store(s)) for s in paths]
    try:
        return _run(opened, layers, which, labels, max_size, exhaustive_up_to, budget, keep, ties, biascorrect,
                    max_samples, seed, device, threads, throughput, on_estimate, progress)
    finally:
        for s, p in zip(opened, paths):
            if not isinstance(p, Store):
                s.close()


def _run(stores, layers, which, labels, max_size, exhaustive_up_to, budget, keep, ties, biascorrect,
         max_samples, seed, device, threads, throughput, on_estimate, progress):
    names = _layer_names(stores, layers)
    est = _estimate(stores, names, which, labels, max_size, exhaustive_up_to, budget, ties, biascorrect,
                    max_samples, seed, device, threads, throughput)
    if on_estimate is not None:
        on_estimate(est)
    max_size = min(max_size, est.largest if est.largest is not None else max_size)
    sizes = est.sizes
    total = sum(r["exhaustive"] + r["greedy"] for r in est.rows)
    bar = tqdm(total=total, disable=not progress, unit="multiplet", unit_scale=True, desc="O-information")
    rows, constant, took = [], {}, dict.fromkeys(names, 0.0)
    serial = current() is None          # a live bar in this process; on Dask, one step per finished search
    common = dict(which=which, labels=labels, ties=ties, biascorrect=biascorrect, max_samples=max_samples, seed=seed,
                  device=device, max_size=max_size, keep=keep, threads=threads)
    tasks = [((portable(st), n, sizes[n]), dict(common, progress=bar.update if serial else None))
             for st in stores for n in names]

    def done(i, out):
        if not serial:
            bar.update(sum(r["evaluated"] for r in out[1]))

    try:
        found_all = map_tasks(_search_task, tasks, desc="searches", on_result=done)
    finally:
        bar.close()
    for k, (const, found, seconds, n_units) in enumerate(found_all):
        net, n = k // len(names), names[k % len(names)]
        if const:
            constant[(net, n)] = const
        took[n] += seconds
        exhaustive = min(sizes[n], max_size, n_units)
        for r in found:
            row = {"network": net, "store": shown_path(stores[net].path), "layer": n}
            for key, val in r.items():
                row[key] = val
                if key == "method":
                    row["exhaustive_up_to"] = exhaustive
            rows.append(row)
    for r in est.rows:
        r["actual"] = round(took[r["layer"]], 3)
    meta = provenance({f"store{i}": (s.path, s.sha256) for i, s in enumerate(stores)},
                      {"which": which, "labels": labels, "max_size": max_size,
                       "exhaustive_up_to": exhaustive_up_to, "exhaustive_sizes": sizes, "budget_s": budget,
                       "keep": keep, "ties": ties,
                       "biascorrect": biascorrect, "max_samples": max_samples, "seed": seed,
                       "units": "bits", "source": "O-information multi-neuron importance, Sections 3-4"})
    meta["model_sha256"] = [s.attrs.get("model_sha256") for s in stores]
    meta["estimate"] = est.to_dict()
    return SynergyResult(rows, profiles(rows), constant, meta)


def _search_task(store, layer: str, exhaustive_up_to: int, *, which, labels, ties, biascorrect, max_samples, seed,
                 device, max_size, keep, threads, progress=None):
    """The multiplet search of one layer of one network (a task of :func:`synergy`:
    :func:`infoprobe.parallel.map_tasks`): its constant units, the rows of
    :func:`~infoprobe.estimators.oinfo.search_multiplets`, the seconds it took and the number
    of candidate units."""
    st = store if isinstance(store, Store) else Store(store)
    try:
        t0 = time.perf_counter()
        model = _model(st, layer, which, labels, ties, biascorrect, max_samples, seed, device)
        found = search_multiplets(model, max_size=max_size, exhaustive_up_to=exhaustive_up_to, keep=keep,
                                  threads=threads, progress=progress)
        return [int(u) for u in model.constant], found, time.perf_counter() - t0, model.n_units
    finally:
        if st is not store:
            st.close()


def profiles(rows: list, confidence: float = 0.95) -> list:
    """The best Omega per layer, size and direction over networks (the O-information paper's
    Fig. 1 averages 20): ``mean``, ``std`` (sample standard deviation), ``median``, ``min``,
    ``max``, and the Student t interval of the mean ``ci_low``/``ci_high``
    (:func:`infoprobe.stats.across_replicates`; None for one network), in bits, with
    ``networks`` and the search ``method`` of the size."""
    from ..stats import across_replicates

    methods = {}
    for r in rows:
        methods.setdefault((r["layer"], r["size"]), set()).add(r["method"])
    stat = across_replicates(rows, by=("layer", "size", "direction"), values=("omega",), confidence=confidence)
    return [{"layer": g["layer"], "size": g["size"], "direction": g["direction"],
             "method": "/".join(sorted(methods[(g["layer"], g["size"])])),
             **{k: g[k] for k in ("mean", "std", "median", "min", "max", "ci_low", "ci_high")}, "networks": g["n"]}
            for g in stat]


def _network_of(result: SynergyResult, lm: LoadedModel) -> int:
    shas = result.meta.get("model_sha256") or []
    matches = [i for i, s in enumerate(shas) if s == lm.sha256]
    if not matches:
        raise DataError(f"none of the analysed stores was captured from {lm.path.name} (SHA-256 "
                        f"{lm.sha256[:12]}...); run synergy on a store of this model")
    return matches[0]


def synergy_plan(model, result: SynergyResult, *, size: int | None = None, replace: str = "zero",
                 store: Store | None = None) -> PruningPlan:
    """Keep only the most synergistic multiplet of each analysed layer: a pruning plan that
    removes its complement (format of :mod:`infoprobe.plan`, for ``infoprobe prune``).

    Parameters
    ----------
    model : LoadedModel or path-like
        The network one of the result's stores was captured from.
    result : SynergyResult
    size : int, optional
        Multiplet size to keep per layer (default: the largest reported).
    replace : str
        A replacement of :data:`infoprobe.analyses.plans.REPLACEMENTS` (or ``"bias"``).
        Constants for the removed units (:func:`~infoprobe.analyses.plans.replacement_constants`;
        ``mean``, bias balancing, needs ``store``).

    Raises
    ------
    DataError
        No store of the result comes from this model.
    ConfigError
        Missing sizes or layers.
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    net = _network_of(result, lm)
    layers = {}
    for n in uncoupled(lm, result.layers(), "the synergy plan"):
        lay = lm.layer(n)
        kept = result.best(n, size=size, network=net)["units"]
        remove = np.setdiff1d(np.arange(lay.units), kept)
        consts = replacement_constants(lm, n, replace, store)
        layers[n] = LayerPlan.build(n, lay.units, remove, consts[remove])
    return PruningPlan(layers, lm.sha256, {"method": "synergy", "size": size, "replace": replace,
                                           "labels": result.meta.get("parameters", {}).get("labels"),
                                           "which": result.meta.get("parameters", {}).get("which")})


def multiunit_importance(model, store, data: Dataset, result: SynergyResult, *, size: int | None = None,
                         replace: str = "zero", random_repeats: int = 20, seed: int = 0, scale="auto",
                         batch_size: int = 4096, providers=None) -> list:
    """Accuracy after ablating the most synergistic multiplet of each layer, against the same
    number of units chosen by single-unit GC-MI (``gcmi_model_cd``, ``gcmi_mixture_cd``;
    highest MI first, as in the paper) and at random (Section 4.2).

    Each selection is tested in two modes: ``ablate`` replaces the selected units by
    constants, ``keep`` replaces every other unit of the layer (the sub-network the paper
    retrains). A larger drop under ``ablate``, and a smaller one under ``keep``, mean a more
    important selection.

    Parameters
    ----------
    model : LoadedModel or path-like
    store : Store or path-like
        The store the synergy result came from (the GC-MI rankings are computed on it, with
        the same ``which``); also the source of ``mean`` constants.
    data : Dataset
        Labelled samples on which accuracy is measured (the test split).
    result : SynergyResult
    size : int, optional
        Multiplet size (default: the largest reported per layer).
    replace : str
        A replacement of :data:`infoprobe.analyses.plans.REPLACEMENTS` (or ``"bias"``).
    random_repeats : int
        Random selections per layer (mean and sd reported).

    Returns
    -------
    list of dict rows: ``layer``, ``n_units``, ``k``, ``selection``, ``mode``, ``accuracy``,
    ``accuracy_std``, ``drop`` (baseline minus accuracy), ``repeats``, ``units``.

    Raises
    ------
    DataError
        Unlabelled data, or no store of the result comes from this model.
    """
    if data.y is None:
        raise DataError(f"{data.path} has no labels ('y'); importance measures accuracy and needs them")
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    net = _network_of(result, lm)
    own = not isinstance(store, Store)
    st = Store(store) if own else store
    try:
        st.check_model(lm)
        which = result.meta.get("parameters", {}).get("which", "pre")
        factor = resolve_scale(data.x, scale)
        x = model_inputs(lm, data.x, factor)
        engine = Evaluator(lm, x, labels=data.y, batch_size=batch_size,
                           providers=providers, threads=default_threads())
        base = float(engine.base.accuracy[0])
        rng = np.random.default_rng(seed)
        rows = [{"layer": "", "n_units": 0, "k": 0, "selection": "none", "mode": "", "accuracy": base,
                 "accuracy_std": 0.0, "drop": 0.0, "repeats": 1, "units": []}]
        for n in result.layers():
            lay = lm.layer(n)
            syn = result.best(n, size=size, network=net)["units"]
            k = len(syn)
            xs, ys = layer_activations(st, n, which)
            consts = replacement_constants(lm, n, replace, st)
            picks = {"synergy": [np.array(syn)],
                     "gcmi_model": [rank_units(gcmi_model_cd(xs, ys), "high")[:k]],
                     "gcmi_mixture": [rank_units(np.nan_to_num(gcmi_mixture_cd(xs, ys), nan=-np.inf),
                                                 "high")[:k]],
                     "random": [rng.choice(lay.units, k, replace=False) for _ in range(random_repeats)]}
            for sel, sets in picks.items():
                for mode in MODES:
                    targets = [np.sort(units if mode == "ablate" else np.setdiff1d(np.arange(lay.units), units))
                               for units in sets]
                    accs = engine.evaluate([[Intervention(n, t, consts[t])] for t in targets]).accuracy
                    rows.append({"layer": n, "n_units": lay.units, "k": k, "selection": sel, "mode": mode,
                                 "accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
                                 "drop": float(base - np.mean(accs)), "repeats": len(accs),
                                 "units": [int(u) for u in sets[0]] if sel != "random" else []})
        return rows
    finally:
        if own:
            st.close()


# --------------------------------------------------------------------------- the whole workflow

@dataclass
class SynergyStudy:
    """What :func:`synergy_study` computed and wrote.

    ``result``: the search (:class:`SynergyResult`); ``files``: every file written, in order;
    ``importance``: rows of :func:`multiunit_importance` (with data), else None; ``plan``: the
    :func:`synergy_plan` written (with a plan path), else None.
    """

    result: SynergyResult
    files: list
    importance: list | None = None
    plan: PruningPlan | None = None

    def to_dict(self) -> dict:
        """The profiles, the excluded constant units, the importance rows (when computed) and
        the files, as JSON values."""
        doc = {"profiles": self.result.profiles, "constant_units": self.result.constant_units()}
        if self.importance is not None:
            doc["importance"] = self.importance
        return dict(doc, files=[str(f) for f in self.files])

    def summary(self) -> str:
        """The profiles (:meth:`SynergyResult.summary`) and, when computed, the accuracy after
        ablating each selection of units and after keeping only it."""
        lines = [self.result.summary()]
        if self.importance is not None:
            lines += ["", f"multi-unit importance (baseline accuracy {self.importance[0]['accuracy']:.4f})",
                      f"{'layer':<16} {'k':>3} {'selection':<13} {'ablate':>8} {'keep only':>10}"]
            imp = [r for r in self.importance if r["layer"]]
            kept = {(q["layer"], q["selection"]): q for q in reversed(imp) if q["mode"] == "keep"}
            for r in imp:
                if r["mode"] == "ablate":
                    lines.append(f"{r['layer']:<16} {r['k']:>3} {r['selection']:<13} {r['accuracy']:8.4f} "
                                 f"{kept[(r['layer'], r['selection'])]['accuracy']:10.4f}")
        return "\n".join(lines)


def synergy_study(stores, *, out, model=None, data: Dataset | None = None, plan=None, plan_size: int | None = None,
                  replace: str = "zero", random_repeats: int = 20, seed: int = 0, scale="auto",
                  overwrite: bool = False, plot: bool = True, max_model_bytes: int = DEFAULT_MAX_BYTES,
                  **search) -> SynergyStudy:
    """The synergy workflow: :func:`synergy` over ``stores``, its tables (and plot) written to
    ``out``; with ``plan``, :func:`synergy_plan` written there; with ``data``,
    :func:`multiunit_importance` written to ``out/multiunit_importance.{csv,json}``.

    Every output is checked before the search starts (none is replaced unless ``overwrite``).

    Parameters
    ----------
    stores : path-like or Store, or a list of them
    out : path-like
        Folder of the tables and plot.
    model : LoadedModel or path-like, optional
        The network of the first store; needed by ``plan`` and ``data``. A path is loaded
        with ``max_model_bytes``.
    data : Dataset, optional
        Labelled test data for :func:`multiunit_importance`.
    plan : path-like, optional
        Where to write the plan keeping only each layer's most synergistic multiplet.
    plan_size, replace, random_repeats :
        ``size``, ``replace`` and ``random_repeats`` of :func:`synergy_plan` and
        :func:`multiunit_importance` (the constants of ``mean`` come from the first store).
    seed : int
        Of the search's sample subset (``numpy.random.default_rng(seed)``) and, through an
        independent stream (:func:`infoprobe.config.seed_streams`), of the random selections.
    scale : "auto" or float
        Input multiplier of ``data``.
    plot : bool
        Write ``synergy.png``.
    **search
        Passed to :func:`synergy` (``layers``, ``which``, ``labels``, ``max_size``,
        ``exhaustive_up_to``, ``budget``, ``keep``, ``ties``, ``biascorrect``,
        ``max_samples``, ``device``, ``threads``, ``on_estimate``, ``progress``, ...).

    Returns
    -------
    SynergyStudy

    Raises
    ------
    ConfigError
        ``plan`` or ``data`` without ``model``; as :func:`synergy`.
    OutputExistsError, ModelError, StoreError, DataError
    """
    paths = list(stores) if isinstance(stores, (list, tuple)) else [stores]
    if (plan is not None or data is not None) and model is None:
        raise ConfigError("a plan and multi-unit importance need the model of the first store (model=, --model)")
    out = Path(out)
    check_outputs(SynergyResult.outputs(out), overwrite)
    if plan is not None:
        check_outputs([plan], overwrite)
    if data is not None:
        check_outputs([out / "multiunit_importance.csv", out / "multiunit_importance.json"], overwrite)
    lm = model if model is None or isinstance(model, LoadedModel) else load_model(model, max_bytes=max_model_bytes)
    res = synergy(paths, seed=seed, **search)
    files = res.save(out, overwrite=overwrite)
    if plot:
        files += res.plot(out)
    study = SynergyStudy(res, files)
    if plan is None and data is None:
        return study
    st = paths[0] if isinstance(paths[0], Store) else Store(paths[0])
    try:
        if plan is not None:
            study.plan = synergy_plan(lm, res, size=plan_size, replace=replace, store=st)
            study.plan.save(plan, overwrite=overwrite)
            files.append(plan)
        if data is not None:
            # the search's sample subset draws from the seed itself; the random selections from
            # an independent stream of it (infoprobe.config.seed_streams)
            selections = seed_streams(seed, ("samples", "random_selections"))["random_selections"]
            study.importance = multiunit_importance(lm, st, data, res, size=plan_size, replace=replace,
                                                    random_repeats=random_repeats, seed=selections, scale=scale)
            files += write_table(out, "multiunit_importance", study.importance, res.meta)
    finally:
        if st is not paths[0]:
            st.close()
    return study
