"""Width sweeps: frivolous units over one architecture at several widths, normalised by the
widest model, and their gains (Casper, Boix et al., "Frivolous Units", AAAI 2021, Section 5,
Figs. 3-4)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ...estimators.frivolous import gain
from ...results import Tables, check_outputs, provenance, write_table
from ...stats import across_replicates


@dataclass(repr=False)
class SweepResult(Tables):
    """Frivolous units over a family of models of one architecture at several widths.

    ``rows``: one per (model, layer) including ``all`` (the network): ``width``, ``units``,
    ``prunable_units``, ``redundant_units``, their complements, and each normalised by the
    unit count of the widest model's layer (``*_norm``). ``gains``: one row per (measure,
    layer) with g. ``g_range``: {measure: (g_min, g_max)} over the layers and the network.
    ``across``: with several models at a width (replicate networks), per width and layer the
    mean, sd, median and Student t interval of every normalised count over them
    (:func:`infoprobe.stats.across_replicates`); empty otherwise.
    """

    models: list
    rows: list
    gains: list
    g_range: dict
    results: list
    meta: dict = field(default_factory=dict)
    across: list = field(default_factory=list)

    def tables(self) -> dict:
        return {"sweep": self.rows, "gains": self.gains, **({"sweep_summary": self.across} if self.across else {})}

    def summary(self) -> str:
        """The terminal text: the network rows (counts over the widest model's units) and the
        range of the gain g of each measure."""
        lines = ["width sweep (network; counts / widest model's units):"]
        if self.across:
            lines[0] = lines[0][:-2] + "; mean +- sd over the networks of each width):"
            net = {(r["width"], r["measure"]): r for r in self.across if r["layer"] == "all"}
            for w in dict.fromkeys(r["width"] for r in self.across):
                cells = [f"{m} {net[(w, m + '_norm')]['mean']:.4f} +- {net[(w, m + '_norm')]['std'] or 0:.4f}"
                         for m in ("prunable", "redundant") if (w, m + "_norm") in net]
                lines.append(f"  {w:>6g}x  n={net[(w, 'redundant_norm')]['n']}  " + "  ".join(cells))
        else:
            for r in (r for r in self.rows if r["layer"] == "all"):
                pn = f"{r['prunable_norm']:.4f}" if "prunable_norm" in r else "-"
                lines.append(f"  {r['width']:>6g}x  prunable {pn:>7}  redundant {r['redundant_norm']:.4f}")
        for meas, (lo, hi) in self.g_range.items():
            lines.append(f"  g {meas}: min {lo:.3f}, max {hi:.3f}")
        return "\n".join(lines)

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """``sweep.{csv,json}``, ``gains.{csv,json}`` and, with replicate networks,
        ``sweep_summary.{csv,json}``."""
        outdir = Path(outdir)
        names = list(self.tables())
        check_outputs([outdir / f"{t}.{e}" for t in names for e in ("csv", "json")], overwrite)
        outdir.mkdir(parents=True, exist_ok=True)
        return [f for t, rows in self.tables().items() for f in write_table(outdir, t, rows, self.meta)]

    def plot(self, outdir) -> list:
        """``sweep.png`` (log-log normalised counts against width with g, Figs. 3-4),
        ``sweep_prunability.png`` (network-mode ablation curves per width, Fig. 2a-b) and
        ``sweep_correlations.png`` (|r| of the last hidden layer per width, Fig. 2c-d)."""
        from ... import report

        outdir = Path(outdir)
        files = [report.plot_sweep(self.rows, self.g_range, outdir / "sweep.png", across=self.across)]
        widths = [r["width"] for r in self.rows if r["layer"] == "all"]
        labels = [f"{w:g}x" + (f" #{widths[:i].count(w) + 1}" if widths.count(w) > 1 else "")
                  for i, w in enumerate(widths)]
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
        Several models may share a width (replicate networks, as the paper's 3 trials per
        width): the gains are then taken on the mean normalised count of each width, and
        ``across`` holds the spread.

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
        Fewer than two widths, layer names that differ, or widths that do not match.
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
    if len(np.unique(w)) < 2:
        raise ConfigError("a width sweep needs models of at least two widths")
    widest = int(np.argmax(w))            # the first of the widest: replicates share its unit counts
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
            ws = sorted({r["width"] for r in sel})
            if len(ws) < 2:
                continue
            means = [float(np.mean([r[f"{meas}_norm"] for r in sel if r["width"] == x])) for x in ws]
            g = gain(ws, means)
            gains.append({"measure": meas, "layer": n, "g": g, "widths": ws, "normalised": means})
            if np.isfinite(g):
                vals.append(g)
        if vals:
            g_range[meas] = (min(vals), max(vals))
    meta = provenance({f"model_{i}": (res.meta["inputs"]["source"]["path"], res.meta["inputs"]["source"]["sha256"])
                       for i, res in enumerate(results)}, {"widths": list(w)})
    across = []
    if len(np.unique(w)) < len(w):
        across = across_replicates(rows, by=("width", "layer"),
                                   values=[f"{m}_norm" for m in MEASURES if any(f"{m}_norm" in r for r in rows)])
    return SweepResult([res.source for res in results], rows, gains, g_range, results, meta, across)
