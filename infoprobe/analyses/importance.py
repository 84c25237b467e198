"""Single-unit information measures of every unit of a store's layers."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import estimators as est
from ..arrays import namespace, to_numpy
from ..errors import ConfigError
from ..limits import max_memory, require_memory, rows_within
from ..results import Tables, check_outputs, provenance, write_table
from ..positions import REDUCTIONS, per_unit
from ..store import Store

#: Measure names, in the order of eq. 19 (entropy >= MI >= JS >= labeled MI), plus KL selectivity.
MEASURES = ("entropy", "mutual_information", "kl_selectivity", "js_subset_separation", "labeled_mi")
QUANTIZERS = ("threshold", "uniform", "quantile")


@dataclass(frozen=True)
class Quantizer:
    """How unit outputs are quantized (Section 3 and Appendix C of Liu et al. 2018).

    Parameters
    ----------
    method : {"threshold", "uniform", "quantile"}
        ``threshold``: one bit, code 1 iff t > threshold (default threshold from the
        activation: 0.5 sigmoid, 0 ReLU/tanh). ``uniform``: ``bins`` equal-width bins between
        each unit's minimum and maximum. ``quantile``: ``bins`` bins at each unit's quantiles.
    bins : int
        Number of bins (``threshold`` always has 2).
    threshold : float, optional
        Overrides the activation's default threshold.
    """

    method: str = "threshold"
    bins: int = 2
    threshold: float | None = None

    def __post_init__(self):
        if self.method not in QUANTIZERS:
            raise ConfigError(f"unknown quantizer {self.method!r}; use one of {', '.join(QUANTIZERS)}")
        if self.bins < 2:
            raise ConfigError("a quantizer needs at least 2 bins")

    @property
    def n_bins(self) -> int:
        return 2 if self.method == "threshold" else self.bins


@dataclass(repr=False)
class ImportanceResult(Tables):
    """Per-unit measures (``units``: one row per unit) and the specific-information table
    (``specific``: one row per unit and class, empty when the per-class output was left out:
    ``params["per_class"]``), both in bits. Class columns hold the store's labels;
    ``params["classes"]`` lists them by their code 0..C-1."""

    units: list
    specific: list
    params: dict
    inputs: dict = field(default_factory=dict)

    def tables(self) -> dict:
        return {"importance": self.units, "specific_information": self.specific}

    def layers(self) -> list:
        """Layer names in row order."""
        return list(dict.fromkeys(r["layer"] for r in self.units))

    def measure(self, layer: str, name: str) -> np.ndarray:
        """Values of measure ``name`` for the units of ``layer`` (float64 [U], in unit order).

        Raises
        ------
        ConfigError
            Unknown measure or layer.
        """
        if name not in MEASURES:
            raise ConfigError(f"unknown measure {name!r}; use one of {', '.join(MEASURES)}")
        rows = [r for r in self.units if r["layer"] == layer]
        if not rows:
            raise ConfigError(f"layer {layer!r} has no importance values; it has: {', '.join(self.layers())}")
        if rows[0].get(name) is None and name == "js_subset_separation":
            raise ConfigError("JS subset separation was not computed (js=False, --no-js)")
        return np.array([r[name] for r in sorted(rows, key=lambda r: r["unit"])], np.float64)

    #: Measures averaged per layer by :meth:`mean_bits`.
    SUMMARY_MEASURES = ("entropy", "mutual_information", "kl_selectivity", "labeled_mi")

    def mean_bits(self) -> dict:
        """{layer: {measure: mean over the layer's units}} of :attr:`SUMMARY_MEASURES`, in bits."""
        return {lay: {m: float(self.measure(lay, m).mean()) for m in self.SUMMARY_MEASURES}
                for lay in self.layers()}

    def summary(self) -> str:
        """The per-layer means of :meth:`mean_bits` as a table (the terminal's summary), then the
        classes, how JS subset separation was searched and whether the per-class output was left out."""
        lines = [f"{'layer':<20} {'H':>7} {'I(T;Y)':>7} {'KL sel':>7} {'lab.MI':>7}   (means, bits)"]
        for lay, m in self.mean_bits().items():
            lines.append(f"{lay:<20} {m['entropy']:7.3f} {m['mutual_information']:7.3f} "
                         f"{m['kl_selectivity']:7.3f} {m['labeled_mi']:7.3f}")
        p = self.params
        classes = p.get("classes") or []
        if classes:
            lines.append(f"{len(classes):,} classes (labels {classes[0]}..{classes[-1]})"
                         + (f"; JS subset separation: {p['js_method']}" if p.get("js_method") else ""))
        if p.get("per_class") is False:
            lines.append(f"per-class output left out ({p['per_class_rows']:,} rows: units x classes; --per-class "
                         "writes it)")
        return "\n".join(lines)

    def plot(self, outdir) -> list:
        """Write ``importance.png`` (distributions of the measures per layer) to ``outdir``."""
        from ..report import plot_importance

        return [plot_importance(self.units, Path(outdir) / "importance.png")]

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write ``importance.{csv,json}`` and ``specific_information.{csv,json}`` (no rows when the
        per-class output was left out) to ``outdir``."""
        outdir = Path(outdir)
        names = ["importance", "specific_information"]
        check_outputs([outdir / f"{n}.{e}" for n in names for e in ("csv", "json")], overwrite)
        meta = provenance(self.inputs, self.params)
        return write_table(outdir, "importance", self.units, meta) + \
            write_table(outdir, "specific_information", self.specific, meta)


#: Per-class rows (units x classes over the layers) up to which the per-class output is written
#: by default (``per_class=None``; ``--per-class`` / ``--no-per-class`` decide otherwise).
PER_CLASS_ROWS = 200_000
#: Bytes one row of the importance table and one per-class row take in memory until written
#: (the row, its JSON-ready copy, the CSV and JSON text), checked against the memory budget.
UNIT_ROW_BYTES = 4096
PER_CLASS_ROW_BYTES = 2048 + 64          # a specific-information row and a class of a js_subset list
#: float64 [B, C] tables of one unit held at once while its measures are computed (the counts and
#: the temporaries of the estimators).
_TABLES_PER_UNIT = 12
#: int64 [rows, units] arrays held at once while a block of samples is quantized and counted.
_CODES_PER_VALUE = 5


def importance(store, *, layers=None, which: str = "post", quantizer: Quantizer = Quantizer(),
               js: bool = True, js_top: int = est.discrete.JS_TOP, per_class: bool | None = None,
               device: str = "cpu", conv_reduce: str = "mean", max_quantile_rows: int = 200_000, seed: int = 0,
               progress: bool = True) -> ImportanceResult:
    """Entropy, MI, KL selectivity, JS subset separation and labeled MI of every unit, in bits.

    Measures follow Liu, Amjad & Geiger 2018: H(T) (eq. 3), I(T;Y) (eq. 4), KL selectivity
    max_y D_KL(P_{T|Y=y} || P_T) (eq. 5) with the specific-information table, JS subset
    separation max_A I(T; 1[Y in A]) (eq. 14; searched as in
    :func:`infoprobe.estimators.discrete.js_subset_separation`) and labeled MI
    max_y I(T; 1[Y=y]) (eq. 16), from the joint frequencies of quantized outputs and labels
    (eq. 2).

    The classes are the distinct labels of the store (any integers, gaps allowed), coded
    0..C-1 in increasing order; every class column and table (``class``,
    ``kl_selectivity_class``, ``labeled_mi_class``, ``js_subset``) holds the original labels,
    and ``params["classes"]`` maps code -> label.

    Memory stays within the budget (:mod:`infoprobe.limits`) at any number of classes, units
    and bins: the store is streamed in row blocks and counted into float64 tables [units, B, C]
    a block of units at a time (a block's tables and the estimators' temporaries in a quarter
    of the budget; more than one block reads the layer once per block), and the tables that
    are kept are checked against the budget before they are built.

    Parameters
    ----------
    store : Store or path-like
        Must hold labels.
    layers : list of str, optional
        Default: the hidden layers (all but the output layer).
    which : {"post", "pre"}
        Post-activations (default, as in the paper) or pre-activations.
    quantizer : Quantizer
    js : bool
        Compute JS subset separation.
    js_top : int
        With more than two bins and more than ``js_top + 1`` classes, JS subset separation
        keeps the ``js_top`` most frequent classes apart and pools the others (a lower bound;
        ``params["js_method"]`` and ``params["js_classes"]`` say so); 1..20, default 12 (exact
        up to 13 classes; each more doubles the time). One-bit codes are searched exactly at
        any number of classes.
    per_class : bool, optional
        Build the per-class output: the ``specific_information`` table (one row per unit and
        class) and the ``js_subset`` lists. Default (None): when units x classes, over the
        layers, is at most :data:`PER_CLASS_ROWS` and fits in the memory budget; otherwise the
        table is empty and the lists None (``params["per_class"]`` says which). True refuses
        when it does not fit. The summary columns are always there.
    device : {"cpu", "cuda"}
    conv_reduce : {"mean", "max", "first", "last"}
        How a site with positions gives one value per unit and sample
        (:func:`infoprobe.positions.per_unit`): a conv unit is a channel, its value the spatial
        mean (or max) of its feature map; a token unit's value is the mean (max) over the
        tokens, or the first (``[CLS]``) or last token's; padding tokens (the store's
        ``/samples/mask``) are left out. This choice is infoprobe's: the paper treats dense
        layers only.
    max_quantile_rows : int
        Quantile edges are computed from at most this many rows (a seeded random subset).
    seed : int

    Returns
    -------
    ImportanceResult

    Raises
    ------
    StoreError, DataError (no labels, NaN activations), ConfigError, DeviceError
    BudgetError
        The importance table, or the per-class output asked for, does not fit in the memory
        budget, or one unit's [B, C] tables do not fit in a quarter of it.
    """
    if conv_reduce not in REDUCTIONS or conv_reduce == "samples":
        raise ConfigError(f"unknown reduction over positions {conv_reduce!r}; use mean, max, first or last")
    if which not in ("pre", "post"):
        raise ConfigError("which must be 'pre' or 'post'")
    own = not isinstance(store, Store)
    st = Store(store) if own else store
    try:
        xp = namespace(device)
        classes, codes, freq = np.unique(st.require_labels(), return_inverse=True, return_counts=True)
        n_classes, n_bins = len(classes), quantizer.n_bins
        names = st.hidden_layers() if layers is None else list(layers)
        n_units = {name: int(st.layer_info(name)["units"]) for name in names}
        rows_pc = sum(n_units.values()) * n_classes
        need = sum(n_units.values()) * UNIT_ROW_BYTES
        if per_class is None:
            per_class = rows_pc <= PER_CLASS_ROWS and need + rows_pc * PER_CLASS_ROW_BYTES <= max_memory()
        require_memory(need + (rows_pc * PER_CLASS_ROW_BYTES if per_class else 0),
                       f"the importance table of {sum(n_units.values()):,} units"
                       + (f" with its per-class output ({rows_pc:,} rows: units x {n_classes:,} classes; "
                          "per_class=False, --no-per-class, leaves it out)" if per_class else ""))
        js_method, js_classes = None, None
        if js:
            groups = est.discrete.js_groups(freq, js_top)
            if n_bins == 2:
                js_method = "exact: the C-1 splits of the classes ordered by P(T=1|Y) (Breiman et al. 1984, Sec. 4.2.2)"
            elif groups.max() + 1 == n_classes:
                js_method = "exact: all 2^(C-1)-1 class splits"
            else:
                js_method = (f"lower bound: all splits of the {js_top} most frequent classes, the other "
                             f"{n_classes - js_top:,} pooled as one")
                js_classes = classes[groups > 0].tolist()
        # a block of units: its count tables and the estimators' temporaries in 1/4 of the budget
        cols = rows_within(n_bins * n_classes * 8 * _TABLES_PER_UNIT, max(n_units.values(), default=1), share=0.25,
                           what=f"the {n_bins} x {n_classes:,} (bins x classes) tables of one unit")
        units_rows, spec_rows = [], []
        rng = np.random.default_rng(seed)
        y_dev = xp.asarray(codes.astype(np.int64))
        bar = tqdm(total=sum(-(-u // cols) for u in n_units.values()) * st.n_rows, unit="sample", desc="importance",
                   disable=not progress)
        flat = []                         # (layer, units with a constant code, units, conv or token)
        for name in names:
            info = st.layer_info(name)
            mask = st.position_mask(name)   # padding tokens never enter a reduction
            if conv_reduce != "mean" and st.reduced(name):
                raise ConfigError(f"site {name!r} was stored as each unit's mean over its positions; the {conv_reduce} "
                                  "over positions needs every position: capture with full maps (--full-maps)")

            def reduced(block, start=None, rows=None, info=info, mask=mask):
                m = None if mask is None else (mask[rows] if rows is not None else mask[start:start + len(block)])
                return per_unit(block, info["unit_axis"], conv_reduce, m)

            act = info["activation"] if which == "post" else "none"
            size = n_units[name]
            edges = _edges(st, name, which, quantizer, act, size, reduced, rng, max_quantile_rows, xp)
            step = rows_within(min(cols, size) * 8 * _CODES_PER_VALUE, st.n_rows, share=1 / 8,
                               what=f"the bin codes of one sample of {name}")
            constant = 0
            for j in range(0, size, cols):      # a block of units at a time: one pass over the layer each
                k = min(cols, size - j)
                counts = xp.zeros((k, n_bins, n_classes), dtype=xp.float64)
                for start, block in st.iter_rows(name, which):
                    b = reduced(block, start)
                    for s in range(0, len(b), step):
                        part = xp.asarray(b[s:s + step, j:j + k])
                        counts += est.joint_counts(est.quantize(part, edges[j:j + k]),
                                                   y_dev[start + s:start + s + part.shape[0]], n_bins, n_classes)
                    bar.update(len(block))
                constant += _measure_rows(counts, js, js_top, per_class, classes, name, j, info, units_rows, spec_rows)
                del counts
            if constant > size // 2:      # a code that never changes carries no information at all
                flat.append((name, constant, size, info["kind"] != "dense"))
        bar.close()
        if flat:                          # one warning for every layer it concerns
            why = (" (a mean over positions after a ReLU is almost never at the threshold 0)"
                   if quantizer.method == "threshold" and any(f[3] for f in flat) else "")
            where = (f"{flat[0][1]} of {flat[0][2]} units of {flat[0][0]}" if len(flat) == 1 else
                     f"most units of {len(flat)} layers ({sum(f[1] for f in flat):,} of {sum(f[2] for f in flat):,}; "
                     + ", ".join(f"{f[0]} {f[1]} of {f[2]}" for f in flat[:3]) + (", …" if len(flat) > 3 else "")
                     + ")")
            warnings.warn(f"{where} have a constant {quantizer.method} code, every sample in one bin{why}; their "
                          "measures are 0 bits: a quantile quantizer (--quantizer quantile) splits each unit at its "
                          "own quantiles", stacklevel=2)
        params = {"which": which, "quantizer": quantizer.method, "bins": n_bins,
                  "threshold": quantizer.threshold, "js": js, "js_top": js_top, "js_method": js_method,
                  "js_classes": js_classes, "conv_reduce": conv_reduce, "layers": names, "n_samples": st.n_rows,
                  "n_classes": n_classes, "classes": classes.tolist(), "per_class": per_class,
                  "per_class_rows": rows_pc, "units": "bits", "seed": seed,
                  "store_attrs": {k: st.attrs.get(k) for k in ("model_sha256", "data_split")}}
        return ImportanceResult(units_rows, spec_rows, params, inputs={"store": (st.path, st.sha256)})
    finally:
        if own:
            st.close()


def _edges(st, name, which, quantizer, act, n_units, reduced, rng, max_quantile_rows, xp):
    """Inner bin edges [U, B-1] of a layer's units (a pass over the layer for uniform and quantile bins)."""
    if quantizer.method == "threshold":
        thr = quantizer.threshold if quantizer.threshold is not None else est.default_threshold(act)
        return est.threshold_edges(n_units, thr, like=xp.zeros(0))
    if quantizer.method == "uniform":
        lo = np.full(n_units, np.inf)
        hi = np.full(n_units, -np.inf)
        for start, block in st.iter_rows(name, which):
            b = reduced(block, start)
            lo, hi = np.minimum(lo, b.min(0)), np.maximum(hi, b.max(0))
        return est.uniform_edges(xp.asarray(lo), xp.asarray(hi), quantizer.bins)
    keep = min(st.n_rows, max_quantile_rows)
    fit = max_memory() // 4 // (4 * n_units)        # the sample, float32, in a quarter of the budget
    if fit < keep:
        warnings.warn(f"the quantile edges of {name} come from {fit:,} samples (max_quantile_rows "
                      f"{keep:,} lowered so that {n_units:,} units fit in 1/4 of --max-memory)", stacklevel=3)
        keep = max(1, fit)
    rows = np.sort(rng.choice(st.n_rows, keep, replace=False))
    sample, at = np.empty((len(rows), n_units), np.float32), 0
    for start, block in st.iter_rows(name, which):   # a first pass, a block of samples at a time
        lo, hi = np.searchsorted(rows, [start, start + len(block)])
        if hi > lo:
            sample[at:at + hi - lo] = reduced(block[rows[lo:hi] - start], rows=rows[lo:hi])
            at += hi - lo
    cols = rows_within(len(rows) * 8 * 3, n_units, share=0.25, what=f"one unit's {len(rows):,} samples")
    return xp.concat([est.quantile_edges(xp.asarray(sample[:, j:j + cols]), quantizer.bins)
                      for j in range(0, n_units, cols)], axis=0)


def _measure_rows(counts, js, js_top, per_class, classes, name, first, info, units_rows, spec_rows) -> int:
    """Append the rows of a block of units (``counts`` [k, B, C], units ``first``..) to
    ``units_rows`` (and ``spec_rows`` when ``per_class``); return how many have a constant code."""
    h = to_numpy(est.entropy(counts))
    mi = to_numpy(est.mutual_information(counts))
    spec = to_numpy(est.specific_information(counts))
    kl, kl_arg = (to_numpy(a) for a in est.kl_selectivity(counts))
    lmi, lmi_arg = (to_numpy(a) for a in est.labeled_mutual_information(counts))
    if js:
        jsv, in_a = (to_numpy(a) for a in est.js_subset_separation(counts, top=js_top))
    labels = classes.tolist()
    for i in range(counts.shape[0]):
        units_rows.append({
            "layer": name, "unit": first + i, "depth": int(info["depth"]), "activation": info["activation"],
            "entropy": h[i], "mutual_information": mi[i],
            "kl_selectivity": kl[i], "kl_selectivity_class": labels[int(kl_arg[i])],
            "js_subset_separation": jsv[i] if js else None,
            "js_subset_size": int(in_a[i].sum()) if js else None,
            "js_subset": classes[in_a[i]].tolist() if js and per_class else None,
            "labeled_mi": lmi[i], "labeled_mi_class": labels[int(lmi_arg[i])],
        })
        if per_class:
            spec_rows.extend({"layer": name, "unit": first + i, "class": c, "specific_information": v}
                             for c, v in zip(labels, spec[i].tolist()))
    return int((h <= 1e-12).sum())
