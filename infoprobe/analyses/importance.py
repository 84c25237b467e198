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
from ..limits import max_memory, rows_within
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
    (``specific``: one row per unit and class), both in bits."""

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
        """The per-layer means of :meth:`mean_bits` as a table (the terminal's summary)."""
        lines = [f"{'layer':<20} {'H':>7} {'I(T;Y)':>7} {'KL sel':>7} {'lab.MI':>7}   (means, bits)"]
        for lay, m in self.mean_bits().items():
            lines.append(f"{lay:<20} {m['entropy']:7.3f} {m['mutual_information']:7.3f} "
                         f"{m['kl_selectivity']:7.3f} {m['labeled_mi']:7.3f}")
        return "\n".join(lines)

    def plot(self, outdir) -> list:
        """Write ``importance.png`` (distributions of the measures per layer) to ``outdir``."""
        from ..report import plot_importance

        return [plot_importance(self.units, Path(outdir) / "importance.png")]

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write ``importance.{csv,json}`` and ``specific_information.{csv,json}`` to ``outdir``."""
        outdir = Path(outdir)
        names = ["importance", "specific_information"]
        check_outputs([outdir / f"{n}.{e}" for n in names for e in ("csv", "json")], overwrite)
        meta = provenance(self.inputs, self.params)
        return write_table(outdir, "importance", self.units, meta) + \
            write_table(outdir, "specific_information", self.specific, meta)


def importance(store, *, layers=None, which: str = "post", quantizer: Quantizer = Quantizer(),
               js: bool = True, device: str = "cpu", conv_reduce: str = "mean",
               max_quantile_rows: int = 200_000, seed: int = 0, progress: bool = True) -> ImportanceResult:
    """Entropy, MI, KL selectivity, JS subset separation and labeled MI of every unit, in bits.

    Measures follow Liu, Amjad & Geiger 2018: H(T) (eq. 3), I(T;Y) (eq. 4), KL selectivity
    max_y D_KL(P_{T|Y=y} || P_T) (eq. 5) with the full specific-information table,
    JS subset separation max_A I(T; 1[Y in A]) (eq. 14, exact) and labeled MI
    max_y I(T; 1[Y=y]) (eq. 16), from the joint frequencies of quantized outputs and labels
    (eq. 2). The store is streamed in row blocks; only count tables [U, B, C] are kept.

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
        Compute JS subset separation (O(2^C); refused above 20 classes).
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
    """
    if conv_reduce not in REDUCTIONS or conv_reduce == "samples":
        raise ConfigError(f"unknown reduction over positions {conv_reduce!r}; use mean, max, first or last")
    own = not isinstance(store, Store)
    st = Store(store) if own else store
    try:
        xp = namespace(device)
        labels = st.require_labels()
        n_classes = int(labels.max()) + 1
        if js and n_classes > est.discrete.MAX_JS_CLASSES:
            raise ConfigError(f"JS subset separation is exact over 2^(C-1) subsets and limited to "
                              f"{est.discrete.MAX_JS_CLASSES} classes; the store has {n_classes}: pass js=False "
                              "(--no-js)")
        if which not in ("pre", "post"):
            raise ConfigError("which must be 'pre' or 'post'")
        names = st.hidden_layers() if layers is None else list(layers)
        units_rows, spec_rows = [], []
        rng = np.random.default_rng(seed)
        y_dev = xp.asarray(labels)
        bar = tqdm(total=len(names) * st.n_rows, unit="sample", desc="importance", disable=not progress)
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
            n_units = int(info["units"])
            if quantizer.method == "threshold":
                thr = quantizer.threshold if quantizer.threshold is not None else est.default_threshold(act)
                edges = est.threshold_edges(n_units, thr, like=y_dev)
            elif quantizer.method == "uniform":
                lo = np.full(n_units, np.inf)
                hi = np.full(n_units, -np.inf)
                for start, block in st.iter_rows(name, which):
                    b = reduced(block, start)
                    lo, hi = np.minimum(lo, b.min(0)), np.maximum(hi, b.max(0))
                edges = est.uniform_edges(xp.asarray(lo), xp.asarray(hi), quantizer.bins)
            else:
                keep = min(st.n_rows, max_quantile_rows)
                fit = max_memory() // 4 // (4 * n_units)        # the sample, float32, in a quarter of the budget
                if fit < keep:
                    warnings.warn(f"the quantile edges of {name} come from {fit:,} samples (max_quantile_rows "
                                  f"{keep:,} lowered so that {n_units:,} units fit in 1/4 of --max-memory)", stacklevel=2)
                    keep = max(1, fit)
                rows = np.sort(rng.choice(st.n_rows, keep, replace=False))
                sample, at = np.empty((len(rows), n_units), np.float32), 0
                for start, block in st.iter_rows(name, which):   # a first pass, a block of samples at a time
                    lo, hi = np.searchsorted(rows, [start, start + len(block)])
                    if hi > lo:
                        sample[at:at + hi - lo] = reduced(block[rows[lo:hi] - start], rows=rows[lo:hi])
                        at += hi - lo
                cols = rows_within(len(rows) * 8 * 3, n_units, share=0.25, what=f"one unit's {len(rows):,} samples")
                edges = xp.concat([est.quantile_edges(xp.asarray(sample[:, j:j + cols]), quantizer.bins)
                                        for j in range(0, n_units, cols)], axis=0)
            counts = None
            for start, block in st.iter_rows(name, which):
                b = xp.asarray(reduced(block, start))
                c = est.joint_counts(est.quantize(b, edges), y_dev[start:start + len(block)],
                                     quantizer.n_bins, n_classes)
                counts = c if counts is None else counts + c
                bar.update(len(block))
            h = to_numpy(est.entropy(counts))
            constant = int((h <= 1e-12).sum())
            if constant > n_units // 2:      # a code that never changes carries no information at all
                why = (" (a mean over positions after a ReLU is almost never at the threshold 0)"
                       if quantizer.method == "threshold" and info["kind"] != "dense" else "")
                warnings.warn(f"{constant} of {n_units} units of {name} have a constant {quantizer.method} code, every "
                              f"sample in one bin{why}; their measures are 0 bits: a quantile quantizer "
                              "(--quantizer quantile) splits each unit at its own quantiles", stacklevel=2)
            mi = to_numpy(est.mutual_information(counts))
            spec = to_numpy(est.specific_information(counts))
            kl, kl_arg = (to_numpy(a) for a in est.kl_selectivity(counts))
            lmi, lmi_arg = (to_numpy(a) for a in est.labeled_mutual_information(counts))
            if js:
                jsv, js_mask = (to_numpy(a) for a in est.js_subset_separation(counts))
            for u in range(n_units):
                units_rows.append({
                    "layer": name, "unit": u, "depth": int(info["depth"]), "activation": info["activation"],
                    "entropy": h[u], "mutual_information": mi[u],
                    "kl_selectivity": kl[u], "kl_selectivity_class": int(kl_arg[u]),
                    "js_subset_separation": jsv[u] if js else None,
                    "js_subset": est.subset_classes(js_mask[u]) if js else None,
                    "labeled_mi": lmi[u], "labeled_mi_class": int(lmi_arg[u]),
                })
                for c in range(n_classes):
                    spec_rows.append({"layer": name, "unit": u, "class": c, "specific_information": spec[u, c]})
        bar.close()
        params = {"which": which, "quantizer": quantizer.method, "bins": quantizer.n_bins,
                  "threshold": quantizer.threshold, "js": js, "conv_reduce": conv_reduce,
                  "layers": names, "n_samples": st.n_rows, "n_classes": n_classes, "units": "bits",
                  "seed": seed, "store_attrs": {k: st.attrs.get(k) for k in ("model_sha256", "data_split")}}
        return ImportanceResult(units_rows, spec_rows, params, inputs={"store": (st.path, st.sha256)})
    finally:
        if own:
            st.close()
