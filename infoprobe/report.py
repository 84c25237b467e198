"""Plots from result tables only (never from models): importance distributions and
cumulative-ablation curves in the style of Liu, Amjad & Geiger 2018, Figs. 1-4."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .results import atomic_write_bytes

MEASURE_LABELS = {
    "entropy": "entropy H(T) [bits]", "mutual_information": "mutual information I(T;Y) [bits]",
    "kl_selectivity": "KL selectivity [bits]", "js_subset_separation": "JS subset separation [bits]",
    "labeled_mi": "labeled MI [bits]",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_importance(units: list, path) -> Path:
    """Histograms of each measure per layer (Fig. 2) from importance rows; writes a PNG."""
    plt = _pyplot()
    measures = [m for m in MEASURE_LABELS if units and units[0].get(m) is not None]
    layers = list(dict.fromkeys(r["layer"] for r in units))
    fig, axes = plt.subplots(1, len(measures), figsize=(3.3 * len(measures), 2.8), squeeze=False,
                             layout="constrained")
    for ax, m in zip(axes[0], measures):
        vals = [np.array([r[m] for r in units if r["layer"] == lay], float) for lay in layers]
        hi = max((v.max() for v in vals if len(v)), default=1.0)
        bins = np.linspace(0, hi if hi > 0 else 1.0, 21)
        for lay, v in zip(layers, vals):
            ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=lay)
        ax.set_xlabel(MEASURE_LABELS[m], fontsize=8)
        ax.set_ylabel("units")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Distribution of single-unit importance measures per layer", fontsize=10)
    return _save(fig, path)


def plot_ablation(rows: list, path, *, scope: str = "layer") -> Path | None:
    """Accuracy against units ablated, one panel per layer (Figs. 1, 3, 4); writes a PNG.

    Solid lines are bias balancing (``value="mean"``), dashed lines ablation to zero; the
    random baseline is drawn with a +/- one standard deviation band. Returns None when the
    table has no rows of ``scope``.
    """
    plt = _pyplot()
    rows = [r for r in rows if r["scope"] == scope]
    if not rows:
        return None
    panels = list(dict.fromkeys(r["layer"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False,
                             layout="constrained")
    curves = list(dict.fromkeys((r["ranking"], r["order"]) for r in rows))
    colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(curves)}
    for ax, panel in zip(axes[0], panels):
        for (ranking, order) in curves:
            for value, style in (("mean", "-"), ("zero", "--")):
                sel = [r for r in rows if r["layer"] == panel and r["ranking"] == ranking
                       and r["order"] == order and r["value"] == value]
                if not sel:
                    continue
                k = np.array([r["n_ablated"] for r in sel])
                acc = np.array([r["accuracy"] for r in sel])
                name = ranking if order == "-" else f"{ranking} ({order} first)"
                ax.plot(k, acc, style, color=colors[(ranking, order)], linewidth=1.4,
                        label=f"{name}, {'bias balancing' if value == 'mean' else 'zero'}")
                if ranking == "random":
                    sd = np.array([r["accuracy_std"] for r in sel])
                    ax.fill_between(k, acc - sd, acc + sd, color=colors[(ranking, order)], alpha=0.15)
        ax.set_title(panel if scope == "layer" else f"{scope}: {panel}", fontsize=9)
        ax.set_xlabel("units ablated")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower left")
    return _save(fig, path)


def plot_synergy(profiles: list, path) -> Path:
    """Best redundancy (max Omega, up) and synergy (min Omega, down) against multiplet size,
    one panel per layer, mean and sd over networks (the O-information paper's Fig. 1).

    Hatched bars are greedy sizes; plain bars exhaustive. Writes a PNG.
    """
    plt = _pyplot()
    layers = list(dict.fromkeys(r["layer"] for r in profiles))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.0), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, lay in zip(axes[0], layers):
        for direction, color in (("redundancy", "tab:red"), ("synergy", "tab:blue")):
            rs = [r for r in profiles if r["layer"] == lay and r["direction"] == direction]
            for r in rs:
                ax.bar(r["size"], r["mean"], yerr=r["std"] if r["networks"] > 1 else None, color=color,
                       alpha=0.85, hatch="//" if "greedy" in r["method"] else None, edgecolor="white",
                       error_kw={"elinewidth": 0.8}, label=direction if r is rs[0] else None)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(lay, fontsize=9)
        ax.set_xlabel("multiplet size k")
    axes[0][0].set_ylabel("O-information [bits]")
    axes[0][0].legend(fontsize=7)
    nets = max((r["networks"] for r in profiles), default=1)
    fig.suptitle(f"Best redundancy and synergy per layer (mean over {nets} network"
                 f"{'s' if nets > 1 else ''}; hatched: greedy)", fontsize=10)
    return _save(fig, path)
