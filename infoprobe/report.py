"""Plots from result tables only (never from models): importance distributions and
cumulative-ablation curves (Liu, Amjad & Geiger 2018, Figs. 1-4), synergy profiles, and the
lesion tests, double lesions, visualisations and clusterability of modules (Hod et al.,
Figs. 1, 2, 6, 8, 9), frivolous units (Casper et al., Figs. 2-4), and information flow (Goldfeld et al., Figs. 1, 5, 6)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .results import atomic_write_bytes

#: Columns that place a checkpoint in training in the flow tables, in order of preference, and
#: how plots and headlines name them (:func:`infoprobe.analyses.flow.checkpoint_axis`).
AXIS_LABELS = {"epoch": "epoch", "step": "step", "checkpoint_index": "checkpoint"}

MEASURE_LABELS = {
    "entropy": "entropy H(T) [bits]", "mutual_information": "mutual information I(T;Y) [bits]",
    "kl_selectivity": "KL selectivity [bits]", "js_subset_separation": "JS subset separation [bits]",
    "labeled_mi": "labeled MI [bits]",
}


def axis_column(rows) -> str:
    """The column of flow rows (``flow``, ``units``, ``distances``, ``flow_summary`` tables)
    that places a checkpoint in training: ``epoch`` or ``step`` where the first row has one,
    else ``checkpoint_index`` (the checkpoint's index in training order, from 0)."""
    first = rows[0] if rows and isinstance(rows[0], dict) else {}
    return next((c for c in AXIS_LABELS if c in first), "checkpoint_index")


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
    ncol = min(len(layers), max(1, len(measures) * 2))         # the legend below the panels, as wide as they are
    rows = -(-len(layers) // ncol)
    fig, axes = plt.subplots(1, len(measures), figsize=(3.3 * len(measures), 2.8 + 0.17 * rows), squeeze=False,
                             layout="constrained")
    for ax, m in zip(axes[0], measures):
        vals = [np.array([r[m] for r in units if r["layer"] == lay], float) for lay in layers]
        hi = max((v.max() for v in vals if len(v)), default=1.0)
        bins = np.linspace(0, hi if hi > 0 else 1.0, 21)
        for lay, v in zip(layers, vals):
            ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=lay)
        ax.set_xlabel(MEASURE_LABELS[m], fontsize=8)
        ax.set_ylabel("units")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=ncol, fontsize=6,
               frameon=False)
    fig.suptitle("Distribution of single-unit importance measures per layer", fontsize=10)
    return _save(fig, path)


def plot_ablation(rows: list, path, *, scope: str = "layer", spread: str | None = None) -> Path | None:
    """Accuracy against units ablated, one panel per layer (Figs. 1, 3, 4); writes a PNG.

    Solid lines are bias balancing (``value="mean"``), dashed lines ablation to zero; the
    random baseline is drawn with a +/- one standard deviation band. With ``spread`` (the
    band's meaning, e.g. "+- 1 sd over 3 networks": rows of replicate networks' means) every
    curve gets its ``accuracy_std`` band. Returns None when the table has no rows of ``scope``.
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
                if ranking == "random" or spread:
                    sd = np.array([r["accuracy_std"] for r in sel])
                    ax.fill_between(k, acc - sd, acc + sd, color=colors[(ranking, order)], alpha=0.15)
        ax.set_title((panel if scope == "layer" else f"{scope}: {panel}") + (f" (mean, band {spread})" if spread else ""),
                     fontsize=9)
        ax.set_xlabel("units ablated")
        ax.set_ylabel("test accuracy" + (" (mean over networks)" if spread else ""))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower left")
    return _save(fig, path)


def plot_synergy(profiles: list, path) -> Path:
    """The largest (redundancy side) and smallest (synergy side) O-information found against
    multiplet size, one panel per layer, mean and sd over networks (the O-information paper's
    Fig. 1). The legend names the sides by the search, and the title states the sign
    convention (Omega > 0 redundancy-dominated, Omega < 0 synergy-dominated): a bar of the
    synergy side above zero is a multiplet that is not synergy-dominated.

    Hatched bars are greedy sizes; plain bars exhaustive; a size whose multiplets were all
    degenerate (no mean) has no bar. Writes a PNG.
    """
    plt = _pyplot()
    layers = list(dict.fromkeys(r["layer"] for r in profiles))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.0), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, lay in zip(axes[0], layers):
        for direction, color, label in (("redundancy", "tab:red", "largest Ω (redundancy side)"),
                                        ("synergy", "tab:blue", "smallest Ω (synergy side)")):
            rs = [r for r in profiles if r["layer"] == lay and r["direction"] == direction
                  and r.get("mean") is not None]          # a size with no estimable multiplet has no bar
            for r in rs:
                ax.bar(r["size"], r["mean"], yerr=r["std"] if r["networks"] > 1 and r.get("std") is not None
                       else None, color=color,
                       alpha=0.85, hatch="//" if "greedy" in r["method"] else None, edgecolor="white",
                       error_kw={"elinewidth": 0.8}, label=label if r is rs[0] else None)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(lay, fontsize=9)
        ax.set_xlabel("multiplet size k")
    axes[0][0].set_ylabel("O-information [bits]")
    axes[0][0].legend(fontsize=7)
    nets = max((r["networks"] for r in profiles), default=1)
    fig.suptitle(f"Largest and smallest O-information per layer (mean{' +- sd' if nets > 1 else ''} over {nets} "
                 f"network{'s' if nets > 1 else ''}; hatched: greedy)\nΩ > 0: redundancy-dominated, "
                 "Ω < 0: synergy-dominated", fontsize=10)
    return _save(fig, path)


CATEGORY_COLORS = {"important": "tab:red", "sig-but-not-diff": "tab:orange", "diff-but-not-sig": "tab:purple",
                   "complete": "black", "prunable": "tab:green", "small": "tab:gray", "other": "tab:blue"}


def plot_subclusters(rows: list, path) -> Path:
    """Sub-cluster size (fraction of its layer) against accuracy drop under lesion, coloured
    by taxonomy; important sub-clusters labelled ``layer/cluster`` (Hod et al., Fig. 2).
    Writes a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for cat, color in CATEGORY_COLORS.items():
        sel = [r for r in rows if r["category"] == cat]
        if sel:
            ax.scatter([r["fraction"] for r in sel], [-100 * r["accuracy_change"] for r in sel], s=28,
                       color=color, label=f"{cat} ({len(sel)})", edgecolor="white", linewidth=0.5)
        if cat == "important":
            for r in sel:
                ax.annotate(f"{r['layer']}/{r['cluster']}", (r["fraction"], -100 * r["accuracy_change"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("proportion of the layer's units in the sub-cluster")
    ax.set_ylabel("accuracy drop under lesion [percentage points]")
    ax.set_title("Lesioned sub-clusters (drop of the mean per-class test accuracy)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_class_profiles(rows: list, random_rows: list, base: list, path, *, max_panels: int = 48) -> Path:
    """Per-class accuracy of the network with each sub-cluster lesioned (red), with random
    sub-clusters of the same size lesioned (grey), and intact (green); the mean over classes
    is the rightmost point (Hod et al., Fig. 6). One panel per sub-cluster; writes a PNG."""
    plt = _pyplot()
    rows = rows[:max_panels]
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("class_") and k.endswith("_change")]
    names = [k[len("class_"):-len("_change")] for k in keys]   # the labels present, in base's order
    n_classes = len(base)
    cols = min(6, len(rows)) or 1
    nrows = int(np.ceil(len(rows) / cols)) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(2.3 * cols, 1.9 * nrows), squeeze=False, sharey=True,
                             layout="constrained")
    xs = np.arange(n_classes + 1)
    b = np.append(base, np.mean(base))
    for ax, r in zip(axes.ravel(), rows):
        for q in (q for q in random_rows if (q["layer"], q["cluster"]) == (r["layer"], r["cluster"])):
            d = np.array([q[k] for k in keys])
            ax.plot(xs, b + np.append(d, d.mean()), color="0.6", linewidth=0.6, alpha=0.7)
        d = np.array([r[k] for k in keys])
        ax.plot(xs, b, color="tab:green", linewidth=1.2)
        ax.plot(xs, b + np.append(d, d.mean()), color="tab:red", linewidth=1.4)
        ax.set_title(f"{r['layer']}/{r['cluster']} ({r['size']} units, {r['category']})", fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels(names + ["all"], fontsize=5)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_ylim(0, 1.02)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    fig.suptitle("Per-class test accuracy: intact (green), sub-cluster lesioned (red), random "
                 "sub-clusters lesioned (grey)", fontsize=9)
    return _save(fig, path)


def plot_double_lesions(pairs: list, rows: list, path) -> Path | None:
    """Matrix of double lesions of important sub-clusters (Hod et al., Fig. 9): cell (X, Y)
    is delta(Y, X), the extra accuracy drop from lesioning Y once X is lesioned, starred when Y
    is important given X; the diagonal is the single-lesion drop. Writes a PNG; None without
    pairs."""
    if not pairs:
        return None
    plt = _pyplot()
    names = [f"{r['layer']}/{r['cluster']}" for r in rows if r["category"] == "important"]
    idx = {n: i for i, n in enumerate(names)}
    m = np.full((len(names), len(names)), np.nan)
    star = np.zeros_like(m, bool)
    for r in rows:
        n = f"{r['layer']}/{r['cluster']}"
        if n in idx:
            m[idx[n], idx[n]] = -100 * r["accuracy_change"]
    for p in pairs:
        x, y = idx[p["x"]], idx[p["y"]]
        m[x, y], star[x, y] = 100 * p["delta_y_given_x"], p["y_given_x"]
        m[y, x], star[y, x] = 100 * p["delta_x_given_y"], p["x_given_y"]
    size = 0.8 * len(names) + 2.5
    fig, ax = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    im = ax.imshow(m, cmap="viridis")
    lo, hi = np.nanmin(m), np.nanmax(m)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(m[i, j]):
                dark = (m[i, j] - lo) < 0.55 * (hi - lo)        # viridis is dark at the bottom
                ax.text(j, i, f"{m[i, j]:.1f}{'*' if star[i, j] else ''}", ha="center", va="center",
                        fontsize=8, fontweight="bold" if star[i, j] else "normal",
                        color="white" if dark else "black")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("Y (lesioned second)")
    ax.set_ylabel("X (lesioned first)")
    fig.colorbar(im, ax=ax, label="extra accuracy drop [percentage points]")
    ax.set_title("Double lesions: delta(Y, X) (* important given X); diagonal: single lesion", fontsize=8)
    return _save(fig, path)


def plot_dependencies(edges: list, rows: list, path) -> Path | None:
    """Dependency graph of important sub-clusters from double lesions (Hod et al., Fig. 8):
    one column per layer, arrows X -> Y coloured by relation. Writes a PNG; None without
    edges."""
    if not edges:
        return None
    plt = _pyplot()
    imp = [r for r in rows if r["category"] == "important"]
    layers = list(dict.fromkeys(r["layer"] for r in imp))
    pos = {}
    for i, lay in enumerate(layers):
        sel = [r for r in imp if r["layer"] == lay]
        for j, r in enumerate(sel):
            pos[f"{lay}/{r['cluster']}"] = (i, j - (len(sel) - 1) / 2)
    colors = {"exclusive": "tab:red", "Y has other sources": "tab:blue", "X has other targets": "tab:green"}
    fig, ax = plt.subplots(figsize=(1.8 * len(layers) + 2, 3.6), layout="constrained")
    for e in edges:
        (x0, y0), (x1, y1) = pos[e["source"]], pos[e["target"]]
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": colors[e["relation"]],
                                                        "linewidth": 1.3, "shrinkA": 12, "shrinkB": 12})
    for name, (x, y) in pos.items():
        ax.scatter([x], [y], s=500, color="white", edgecolor="black", zorder=3)
        ax.text(x, y, name.split("/")[1], ha="center", va="center", fontsize=8, zorder=4)
    for rel, c in colors.items():
        ax.plot([], [], color=c, label=rel)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers)
    ax.set_yticks([])
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ys = [y for _, y in pos.values()] or [0.0]
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)          # nodes (and their labels) inside the canvas
    ax.set_xlabel("layer (nodes: important sub-clusters, labelled by cluster)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("Dependencies between important sub-clusters (double lesions)", fontsize=9)
    return _save(fig, path)


def plot_visualisations(vis: dict, path) -> Path:
    """Correlation-based visualisations (Hod et al., Fig. 1): the top row for the true
    sub-clusters, the rows below for random sub-clusters of the same size and layer; each
    column scaled from black to white independently. Writes a PNG."""
    plt = _pyplot()
    images = np.asarray(vis["images"])
    n_rows, n_cols = images.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(0.9 * n_cols + 0.6, 0.95 * n_rows + 0.5), squeeze=False)
    for j in range(n_cols):
        lo, hi = images[:, j].min(), images[:, j].max()
        for i in range(n_rows):
            ax = axes[i, j]
            ax.imshow(images[i, j], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(vis["columns"][j], fontsize=6)
        axes[0, 0].set_ylabel("true", fontsize=7)
    for i in range(1, n_rows):
        axes[i, 0].set_ylabel(f"random {i}", fontsize=7)
    fig.suptitle("Spearman correlation of units with input pixels, sign-aligned mean per sub-cluster",
                 fontsize=8)
    return _save(fig, path)


def plot_feature_grid(images: dict, rows: list, path, *, max_rows: int = 24) -> Path:
    """Feature visualisations of sub-clusters (Hod et al., Fig. 5): one row per sub-cluster,
    the true sub-cluster's optimised input in the first column (framed) and the random
    sub-clusters' beside it; channels averaged to grey, each image scaled on its own. The
    row label gives the layer, cluster and the p values of score and entropy. Writes a PNG.

    Parameters
    ----------
    images : dict (layer, cluster) -> array [1 + n_random, C, H, W]
    rows : list of dict with layer, cluster, size, p_score, p_entropy
    """
    plt = _pyplot()
    rows = rows[:max_rows]
    n_cols = max(len(images[(r["layer"], r["cluster"])]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(0.8 * n_cols + 1.8, 0.85 * len(rows) + 0.6),
                             squeeze=False)
    for i, r in enumerate(rows):
        imgs = np.asarray(images[(r["layer"], r["cluster"])]).mean(axis=1)
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(imgs):
                ax.axis("off")
                continue
            ax.imshow(imgs[j], cmap="gray")
            if j == 0:
                for side in ax.spines.values():
                    side.set_color("tab:red")
                    side.set_linewidth(2)
                ax.set_ylabel(f"{r['layer']} c{r['cluster']} ({r['size']})\n"
                              f"p {r['p_score']:.2f} / {r['p_entropy']:.2f}", fontsize=6)
            if i == 0:
                ax.set_title("true" if j == 0 else f"random {j}", fontsize=7)
    fig.suptitle("Inputs optimised for sub-clusters (framed) and random sets; p values: score / entropy",
                 fontsize=8)
    return _save(fig, path)


def plot_clusterability(clus: list, path) -> Path:
    """Histogram of the n-cuts of shuffled networks with the network's n-cut (Filan et al.
    2021), one panel per shuffle variant. Writes a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(clus), figsize=(4.2 * len(clus), 3.0), squeeze=False, layout="constrained")
    for ax, c in zip(axes[0], clus):
        n = len(c["shuffled"])
        ax.hist(c["shuffled"], bins=15, color="0.6", label=f"{n} shuffled networks")
        ax.axvline(c["ncut"], color="tab:red", linewidth=2, label="this network")
        ax.set_xlabel("n-cut (lower: more clusterable)")
        ax.set_ylabel("shuffled networks")
        floor = 1 / (n + 1)
        ax.set_title(f"shuffle {c['variant']}: p = {c['p']:.3g}, z = {c['z']:.2f}\n"
                     f"(p cannot go below 1/{n + 1} = {floor:.3g} with {n} shuffles)", fontsize=8)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_prunability(curves: dict, path, *, tolerance: float = 0.2, mode: str | None = None) -> Path:
    """Fraction of unchanged predictions against the fraction of units ablated at random
    (Casper et al., Fig. 2a-b); writes a PNG.

    ``curves``: {label: prunability curve rows}. One panel per (mode, layer) when one label
    is given (each permutation a thin line); with several labels (a width sweep) one panel
    of ``mode`` rows, one line per label (the mean over permutations). The dashed line is
    1 - tolerance, where the prunable fraction is read.
    """
    plt = _pyplot()
    labels = list(curves)
    single = len(labels) == 1
    rows0 = curves[labels[0]]
    panels = (list(dict.fromkeys((r["mode"], r["layer"]) for r in rows0)) if single
              else [(mode or "network", "all" if (mode or "network") == "network" else rows0[0]["layer"])])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False, layout="constrained")
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(2, len(labels))))
    for ax, (md, layer) in zip(axes[0], panels):
        for li, lab in enumerate(labels):
            sel = [r for r in curves[lab] if r["mode"] == md and r["layer"] == layer]
            if not sel:
                continue
            perms = sorted({r["permutation"] for r in sel})
            if single:
                for p in perms:
                    pr = [r for r in sel if r["permutation"] == p]
                    ax.plot([r["fraction"] for r in pr], [r["unchanged"] for r in pr], "o-", ms=3, lw=1,
                            color=plt.cm.tab10(p % 10), label=f"permutation {p}")
            else:
                f = np.array([r["fraction"] for r in sel if r["permutation"] == perms[0]])
                u = np.mean([[r["unchanged"] for r in sel if r["permutation"] == p] for p in perms], axis=0)
                ax.plot(f, u, "o-", ms=3, lw=1.4, color=colors[li], label=lab)
        ax.axhline(1 - tolerance, color="grey", ls="--", lw=1,
                   label=f"{1 - tolerance:g}: prunable while above (tolerance {tolerance:g})")
        ax.set_title(f"{layer}" if md == "layer" else "all layers at once", fontsize=9)
        ax.set_xlabel("fraction of units ablated")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predictions unchanged")
    axes[0][-1].legend(fontsize=6, loc="lower left")
    return _save(fig, path)


def plot_correlations(correlations: dict, path) -> Path:
    """Violins of the absolute unit-to-unit correlation coefficients (Casper et al.,
    Fig. 2c-d); writes a PNG. ``correlations``: {label: {layer: |r| array}}; one violin
    per (label, layer)."""
    plt = _pyplot()
    items = [(f"{lab}\n{layer}" if len(correlations) > 1 else layer, np.asarray(v, float))
             for lab, d in correlations.items() for layer, v in d.items()]
    items = [(n, v) for n, v in items if len(v)]
    fig, ax = plt.subplots(figsize=(max(3.5, 1.0 * len(items) + 1), 3.2), layout="constrained")
    if items:
        ax.violinplot([v for _, v in items], showmedians=True)
        ax.set_xticks(np.arange(1, len(items) + 1), [n for n, _ in items], fontsize=7)
    ax.set_ylabel("|correlation| between units")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_sweep(rows: list, g_range: dict, path, *, across=None) -> Path:
    """Prunable and redundant units (normalised by the widest model) against width on
    log-log axes, one line per layer and a bold one for the network, with g_min/g_max
    (Casper et al., Figs. 3-4); the dotted line has g = 2 (growth with the width); writes a PNG.
    With ``across`` (several networks per width), the lines join the means and the error
    bars are +- one standard deviation over the networks of each width."""
    plt = _pyplot()
    measures = [m for m in ("prunable", "redundant") if any(f"{m}_norm" in r for r in rows)]
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.6), squeeze=False,
                             layout="constrained")
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    for ax, m in zip(axes[0], measures):
        for i, layer in enumerate(layers):
            sel = sorted((r for r in rows if r["layer"] == layer and r.get(f"{m}_norm") is not None),
                         key=lambda r: r["width"])
            sel = [r for r in sel if r[f"{m}_norm"] > 0]
            if not sel:
                continue
            net = layer == "all"
            style = dict(lw=2.4 if net else 1, color="black" if net else plt.cm.tab10(i % 10),
                         label="network" if net else layer)
            if across:
                stat = [a for a in across if a["layer"] == layer and a["measure"] == f"{m}_norm" and a["mean"]]
                ax.errorbar([a["width"] for a in stat], [a["mean"] for a in stat],
                            yerr=[a["std"] or 0.0 for a in stat], fmt="o-", capsize=3, **style)
            else:
                ax.plot([r["width"] for r in sel], [r[f"{m}_norm"] for r in sel], "o-", **style)
        ws = sorted({r["width"] for r in rows})
        ref = [r[f"{m}_norm"] for r in rows if r["layer"] == "all" and r["width"] == ws[-1] and r.get(f"{m}_norm")]
        if ref:
            ax.plot(ws, [ref[0] * w / ws[-1] for w in ws], ":", color="grey", label="g = 2")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        lo, hi = g_range.get(m, (float("nan"), float("nan")))
        n = max((a["n"] for a in across or []), default=1)
        ax.set_title(f"{m} units: g_min {lo:.2f}, g_max {hi:.2f}"
                     + (f"\n(mean +- sd over {n} networks per width)" if across else ""), fontsize=9)
        ax.set_xlabel("width factor")
        ax.set_ylabel(f"{m} units / units of the widest model")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    return _save(fig, path)


def plot_flow(trajectory: list, path, across: list | None = None) -> Path:
    """I(X;T_l) (with its Monte Carlo standard error) and H(Bin(T_l)) against the checkpoints'
    position in training (the ``epoch`` or ``step`` column where the rows have one, else
    ``checkpoint_index``: :func:`axis_column`), one line per layer (Goldfeld et al., Figs. 1,
    5); writes a PNG. Without MI values (beta = 0) only the binned entropy is drawn. With
    ``across`` (rows of :func:`infoprobe.stats.across_replicates` by checkpoint and layer
    over training runs), each line is the mean over the runs, in a band of +- one standard
    deviation."""
    plt = _pyplot()
    has_mi = any(r.get("mi") is not None for r in trajectory)
    fig, axes = plt.subplots(2 if has_mi else 1, 1, figsize=(6, 6 if has_mi else 3.2), squeeze=False,
                             sharex=True, layout="constrained")
    layers = list(dict.fromkeys(r["layer"] for r in trajectory))
    x = axis_column(across) if across else axis_column(trajectory)
    epochs = sorted({r[x] for r in (across or trajectory)})
    positive = [e for e in epochs if e > 0]
    log_x = (x != "checkpoint_index" and len(epochs) > 2 and min(epochs) >= 0
             and max(epochs) / max(min(positive) if positive else 1, 1e-12) > 50)
    for i, layer in enumerate(layers):
        sel = sorted((r for r in trajectory if r["layer"] == layer), key=lambda r: r[x])
        e = np.array([r[x] for r in sel], float)
        color = plt.cm.viridis(i / max(1, len(layers) - 1))
        if across:
            for ax, measure in ([(axes[0][0], "mi")] if has_mi else []) + [(axes[-1][0], "binned_entropy")]:
                g = sorted((r for r in across if r["layer"] == layer and r["measure"] == measure),
                           key=lambda r: r[x])
                ge = np.array([r[x] for r in g], float)
                m = np.array([r["mean"] for r in g], float)
                sd = np.array([r["std"] if r["std"] is not None else 0.0 for r in g], float)
                ax.plot(ge, m, "o-", ms=3, lw=1.2, color=color, label=f"{layer} (mean of {g[0]['n']} runs)")
                ax.fill_between(ge, m - sd, m + sd, color=color, alpha=0.2, lw=0)
            continue
        if has_mi:
            mi = np.array([r["mi"] for r in sel], float)
            se = np.array([r["mi_se"] for r in sel], float)
            axes[0][0].errorbar(e, mi, yerr=se, fmt="o-", ms=3, lw=1.2, capsize=2, color=color, label=layer)
        axes[-1][0].plot(e, [r["binned_entropy"] for r in sel], "o-", ms=3, lw=1.2, color=color, label=layer)
    if has_mi:
        unit = trajectory[0].get("unit", "bits")
        axes[0][0].set_ylabel(f"I(X;T) [{unit}]")
        axes[0][0].set_title(f"noisy network, beta = {trajectory[0]['beta']:g}"
                             + ("; bands: +- 1 sd over runs" if across else ""), fontsize=9)
        axes[0][0].legend(fontsize=6)
        axes[0][0].grid(alpha=0.3)
    ax = axes[-1][0]
    ax.set_ylabel(f"H(Bin(T)) [bits], bin {trajectory[0]['bin_size']:g}")
    ax.set_xlabel({"checkpoint_index": "checkpoint (index in training order; epochs not known)",
                   "step": "training step"}.get(x, x))
    ax.grid(alpha=0.3)
    if not has_mi:
        ax.legend(fontsize=6)
    if log_x:
        ax.set_xscale("symlog", linthresh=max(1.0, min(positive)))
    return _save(fig, path)


def plot_distances(by_epoch: dict, path, *, axis: str = "epoch") -> Path:
    """Histograms of within- and between-class pairwise distances of representations, one row
    per layer and one column per checkpoint (Goldfeld et al., Figs. 6, 8); writes a PNG.
    ``by_epoch``: {position: distance rows}, the position on ``axis`` (a key of
    :data:`AXIS_LABELS`: each column is titled "epoch 10", "step 46" or "checkpoint 3")."""
    plt = _pyplot()
    epochs = list(by_epoch)
    layers = list(dict.fromkeys(r["layer"] for r in by_epoch[epochs[0]]))
    fig, axes = plt.subplots(len(layers), len(epochs), figsize=(2.8 * len(epochs), 1.8 * len(layers)),
                             squeeze=False, layout="constrained")
    colors = {"within": "tab:blue", "between": "tab:orange", "all": "tab:grey"}
    for ci, ep in enumerate(epochs):
        for li, layer in enumerate(layers):
            ax = axes[li][ci]
            for kind in ("within", "between", "all"):
                sel = [r for r in by_epoch[ep] if r["layer"] == layer and r["kind"] == kind]
                if sel:
                    ax.stairs([r["density"] for r in sel], [sel[0]["lo"]] + [r["hi"] for r in sel],
                              color=colors[kind], label=kind, fill=kind != "between", alpha=0.6)
            if li == 0:
                ax.set_title(f"{AXIS_LABELS[axis]} {ep:g}", fontsize=9)
            if ci == 0:
                ax.set_ylabel(layer, fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0][-1].legend(fontsize=6)
    fig.supxlabel("pairwise distance between representations", fontsize=8)
    return _save(fig, path)
