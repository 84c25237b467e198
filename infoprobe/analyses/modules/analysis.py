"""Modules of one network: partition, clusterability, lesion tests, double lesions and
visualisations in one result (Hod et al. 2021; Filan et al. 2021)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...config import Config, param
from ...data import Dataset
from ...errors import ConfigError
from ...interventions import replacement
from ...model import LoadedModel
from ...plan import LayerPlan, PruningPlan
from ...results import Tables, check_outputs, provenance, write_table
from ...stats import adjust
from .double import double_lesions
from .lesions import CATEGORIES, LESIONS, Lesioner, combine, lesion_tests
from .partition import VARIANTS, Partition, clusterability, load_graph, partition
from .visualise import correlation_visualisations


@dataclass(repr=False)
class ModulesResult(Tables):
    """Everything :func:`modules` found for one network.

    ``partition``: :class:`Partition`; ``clusterability``: list of dicts (one per shuffle
    variant); ``subclusters`` and ``random_lesions``: rows of :func:`lesion_tests`;
    ``network``: combined p values and n-cut; ``pairs`` and ``edges``: double lesions;
    ``visualisation``: :func:`correlation_visualisations`' result; ``base_class_accuracy``.
    """

    partition: Partition
    clusterability: list
    subclusters: list = field(default_factory=list)
    random_lesions: list = field(default_factory=list)
    network: dict = field(default_factory=dict)
    pairs: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    visualisation: dict | None = None
    base_class_accuracy: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def tables(self) -> dict:
        return {"subclusters": self.subclusters, "partition": self.partition.rows(),
                "random_lesions": self.random_lesions, "double_lesions": self.pairs, "dependencies": self.edges,
                "clusterability": self.clusterability}

    TABLES = ("partition", "subclusters", "random_lesions", "double_lesions", "dependencies")

    def summary(self, source=None) -> str:
        """The terminal text of one network (named ``source``, default the model or store of
        the provenance): its graph, n-cut and clusterability; with lesion tests, the combined p
        values, the taxonomy, every sub-cluster and the dependencies between them."""
        net = self.network
        if source is None:
            ins = self.meta.get("inputs", {})
            source = next((v.get("path") for v in ins.values() if isinstance(v, dict)), "network")
        lines = [f"{source}: {self.partition.graph.kind} graph, {net['vertices']} vertices "
                 f"({net['removed_vertices']} of zero degree removed), k = {net['n_clusters']}, "
                 f"n-cut {net['ncut']:.3f}"]
        for c in self.clusterability:
            lines.append(f"  shuffled ({c['variant']}): n-cut {c['mean']:.3f} +/- {c['std']:.3f} over "
                         f"{len(c['shuffled'])}, p = {c['p']:.3g}, z = {c['z']:.2f}")
        if self.subclusters:
            lines += [f"  base accuracy (mean per class) {net['base_accuracy']:.4f}; combined p values over "
                      f"{net['n_importance']} sub-clusters:",
                      f"    importance: Fisher {net['fisher_importance']:.3g}, chi-squared {net['chi2_importance']:.3g}",
                      f"    output coherence: Fisher {net['fisher_coherence']:.3g}, "
                      f"chi-squared {net['chi2_coherence']:.3g}",
                      "  " + ", ".join(f"{k}: {v}" for k, v in net["categories"].items() if v),
                      f"  {'layer':<14} {'cl':>3} {'size':>5} {'drop pp':>8} {'p':>6} {'coher.':>7} {'p':>6}  category"]
            for r in self.subclusters:
                lines.append(f"  {r['layer']:<14} {r['cluster']:>3} {r['size']:>5} {-100 * r['accuracy_change']:8.2f} "
                             f"{r['p_importance']:6.3f} {r['coherence']:7.2f} {r['p_coherence']:6.3f}  {r['category']}")
            if self.edges:
                lines.append("  dependencies: " + "; ".join(f"{e['source']} -> {e['target']} ({e['relation']})"
                                                          for e in self.edges))
        return "\n".join(lines)

    def plot(self, outdir) -> list:
        """Write the PNG plots of what was computed (clusterability, sub-clusters, class
        profiles, double lesions, dependencies, visualisations) to ``outdir``; returns their
        paths."""
        from ... import report

        outdir = Path(outdir)
        files = []
        if self.clusterability:
            files.append(report.plot_clusterability(self.clusterability, outdir / "clusterability.png"))
        if self.subclusters:
            files.append(report.plot_subclusters(self.subclusters, outdir / "subclusters.png"))
            files.append(report.plot_class_profiles(self.subclusters, self.random_lesions, self.base_class_accuracy,
                                                    outdir / "class_profiles.png"))
        files += [f for f in (report.plot_double_lesions(self.pairs, self.subclusters, outdir / "double_lesions.png"),
                              report.plot_dependencies(self.edges, self.subclusters, outdir / "dependencies.png"))
                  if f is not None]
        if self.visualisation:
            files.append(report.plot_visualisations(self.visualisation, outdir / "visualisations.png"))
        return files

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write partition, subclusters, random_lesions, double_lesions and dependencies
        (.csv/.json) and network.json to ``outdir``."""
        import json

        from ...results import atomic_write_bytes, plain

        outdir = Path(outdir)
        check_outputs([outdir / f"{t}.{e}" for t in self.TABLES for e in ("csv", "json")]
                      + [outdir / "network.json"], overwrite)
        files = write_table(outdir, "partition", self.partition.rows(), self.meta)
        for name, rows in (("subclusters", self.subclusters), ("random_lesions", self.random_lesions),
                           ("double_lesions", self.pairs), ("dependencies", self.edges)):
            if rows:
                files += write_table(outdir, name, rows, self.meta)
        doc = {"meta": self.meta, "network": plain(self.network), "clusterability": plain(self.clusterability),
               "base_class_accuracy": plain(self.base_class_accuracy)}
        atomic_write_bytes(outdir / "network.json", json.dumps(doc, indent=1, allow_nan=False).encode())
        return files + [outdir / "network.json"]


@dataclass(frozen=True)
class ModulesConfig(Config):
    """Parameters of :func:`modules` (Hod et al. 2021; Filan et al. 2021).

    Random streams (:meth:`~infoprobe.config.Config.streams`): ``lesions`` (random
    sub-clusters of the lesion tests), ``shuffles_all`` and ``shuffles_nonzero`` (the
    shuffled networks of each variant), ``double_lesions`` (random partners) and
    ``visualisation`` (the sample subset and random sub-clusters drawn). The spectral
    clustering is seeded with ``seed`` itself (scikit-learn's ``random_state``).
    """

    STEPS = ("lesions", "shuffles_all", "shuffles_nonzero", "double_lesions", "visualisation")

    n_clusters: int = param(12, help="Number of clusters k.")
    kind: str = param("auto", choices=("auto", "mlp", "cnn"), what="graph kind",
                      help="Graph of neurons (mlp) or of conv feature maps (cnn); auto: cnn when there are convs.")
    n_random: int = param(20, help="Random sub-clusters per true sub-cluster.")
    n_shuffles: int = param(50, help="Shuffled networks for clusterability (0: skip).")
    variants: tuple = param(("all",), choices=VARIANTS, what="shuffle variant",
                            help="Shuffle every entry of each layer's weight block, or only the non-zero ones.")
    lesion: str = param("activation_of_zero", choices=LESIONS, what="lesion",
                        help="What a lesioned unit outputs: activation_of_zero, incoming weights and bias zeroed "
                             "(sigma(0)); activation_of_bias, weights only (sigma(b)); zero: 0.")
    n_double: int = param(50, help="Random partners per double lesion of important sub-clusters (0: skip double lesions).")
    alpha: float = param(0.05, help="Significance threshold of the taxonomy.")
    min_drop: float = param(0.01, help="Accuracy drop that matters (0.01 = one percentage point).")
    small_fraction: float = param(0.05, help="Sub-clusters under this fraction of their layer are 'small'.")
    small_units: int = param(0, help="Sub-clusters with fewer units are 'small' too.")
    visualise: bool = param(True, help="Correlation-based visualisations of sub-clusters (image inputs).")
    seed: int = param(0, help="Seeds the clustering, the shuffles and every random draw.")
    eigen_solver: str = param("auto", choices=("auto", "arpack", "lobpcg"), what="eigen solver",
                              help="Spectral embedding solver; auto: ARPACK (the authors' choice) up to 5,000 "
                                   "vertices, LOBPCG above (much faster on large graphs).")
    scale: str | float = param("auto", help="Input multiplier for the data ('auto': 1/255 for 8-bit images).")
    batch_size: int = param(4096, help="Largest chunk of samples per onnxruntime call.")

    def check(self):
        if self.n_clusters < 2:
            raise ConfigError("n_clusters must be at least 2")
        if min(self.n_random, self.n_shuffles, self.n_double, self.small_units) < 0:
            raise ConfigError("n_random, n_shuffles, n_double and small_units must be at least 0")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must lie in (0, 1]; got {self.alpha}")


def modules(source, data: Dataset | None = None, *, config: ModulesConfig | None = None, progress: bool = True,
            providers=None, **params) -> ModulesResult:
    """Modules of a network from its weights, tested by lesions (Hod et al. 2021; Filan et
    al. 2021).

    Steps: graphify the network (:mod:`infoprobe.graph`); spectral clustering into
    ``n_clusters`` clusters and its n-cut; clusterability against ``n_shuffles`` shuffled
    networks per shuffle variant; with ``data``, lesion tests of every sub-cluster against
    ``n_random`` random sub-clusters, their taxonomy, Fisher and chi-squared combined p values
    for importance and output coherence, double lesions of important sub-clusters
    (``n_double`` random partners; 0 skips them) and correlation-based visualisations.

    Parameters
    ----------
    source : path-like or LoadedModel
        An ONNX model, or an activation store (weights only: no lesion tests).
    data : Dataset, optional
        Labelled test samples for the lesion tests (needs an ONNX ``source``).
    config : ModulesConfig, optional
        The parameters below, as one object; keyword parameters (its fields) change it.
    n_clusters : int
        k (12 in the paper).
    kind : {"auto", "mlp", "cnn"}
        Graph of neurons (MLP) or of conv feature maps (CNN).
    variants : sequence of {"all", "nonzero"}
        Shuffle every entry of each layer's weight block, or only its non-zero entries.
    lesion : {"activation_of_zero", "activation_of_bias", "zero"}
        What a lesioned unit outputs; see :class:`Lesioner`.
    alpha, min_drop, small_fraction, small_units :
        Thresholds of the taxonomy (:func:`classify`); ``min_drop`` is in accuracy (0.01 = one
        percentage point).
    seed : int
        Seeds the clustering, shuffles and random sub-clusters.
    eigen_solver : {"auto", "arpack", "lobpcg"}
        See :func:`infoprobe.estimators.graphcut.spectral_partition`.

    Returns
    -------
    ModulesResult

    Raises
    ------
    ModelError, StoreError, DataError, ConfigError

    Warns
    -----
    UnreachableAlphaWarning
        ``n_random`` (or ``n_double``, when there are pairs to test) is below
        :func:`draws_needed` (``alpha``): the smallest percentile p value, 1/(n + 1), is not
        below ``alpha``, so nothing can be significant.
    """
    cfg = ModulesConfig.build(config, **params)
    n_clusters, eigen_solver, seed = cfg.n_clusters, cfg.eigen_solver, cfg.seed
    streams = cfg.streams()
    graph, lm, sha = load_graph(source, cfg.kind)
    if data is not None and lm is None:
        raise ConfigError("lesion tests need the ONNX model, not an activation store")
    part = partition(graph, n_clusters, seed=seed, eigen_solver=eigen_solver)
    clus = [clusterability(graph, part.ncut, n_clusters=n_clusters, n_shuffles=cfg.n_shuffles, variant=v,
                           seed=seed, eigen_solver=eigen_solver, rng=streams[f"shuffles_{v}"], progress=progress)
            for v in cfg.variants] if cfg.n_shuffles > 0 else []
    params = dict(cfg.record(), graph=graph.kind)
    inputs = {"model" if lm is not None else "store": (getattr(lm, "path", source), sha)}
    network = {"ncut": part.ncut, "n_clusters": n_clusters, "vertices": graph.n_vertices,
               "removed_vertices": int(np.count_nonzero(part.labels < 0))}
    for c in clus:
        network[f"clusterability_p_{c['variant']}"] = c["p"]
        network[f"clusterability_z_{c['variant']}"] = c["z"]
    res = ModulesResult(part, clus, network=network)
    if data is not None:
        les = Lesioner(lm, data, graph.hidden, lesion=cfg.lesion, scale=cfg.scale, batch_size=cfg.batch_size,
                       providers=providers)
        taxonomy = dict(alpha=cfg.alpha, min_drop=cfg.min_drop)
        rows, rand = lesion_tests(les, part, n_random=cfg.n_random, seed=streams["lesions"], **taxonomy,
                                  small_fraction=cfg.small_fraction, small_units=cfg.small_units, progress=progress)
        res.subclusters, res.random_lesions = rows, rand
        res.base_class_accuracy = les.base.tolist()
        network.update(combine(rows, cfg.n_random))
        network["base_accuracy"] = float(np.mean(les.base))
        network["categories"] = {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}
        if cfg.n_double > 0:
            res.pairs, res.edges = double_lesions(les, part, rows, n_random=cfg.n_double, seed=streams["double_lesions"],
                                                  **taxonomy, progress=progress)
        if cfg.visualise:
            shown = [r for r in rows if r["category"] not in ("small", "complete")]
            res.visualisation = correlation_visualisations(les, shown, part, seed=streams["visualisation"])
        params.update(input_scale=les.factor, data_split=data.split, n_test=len(data))
        inputs["data"] = (data.path, data.sha256)
    res.meta = provenance(inputs, params)
    return res


def prunable_plan(lm: LoadedModel, result: ModulesResult, *, lesion: str | None = None) -> PruningPlan:
    """A pruning plan removing the units of every sub-cluster classed ``prunable``, each
    replaced by what the lesion tests replaced it with (``lesion``, default: the result's;
    :func:`infoprobe.interventions.replacement`), in the format of ``infoprobe prune``. Prunable sub-clusters of one layer are removed together,
    which the lesion tests did not try: verify with ``infoprobe prune --data``.

    Raises
    ------
    ConfigError
        No prunable sub-cluster.
    """
    lesion = lesion or result.meta.get("parameters", {}).get("lesion", "activation_of_zero")
    by_layer: dict = {}
    for r in result.subclusters:
        if r["category"] == "prunable":
            by_layer.setdefault(r["layer"], []).extend(r["units"])
    if not by_layer:
        raise ConfigError("no sub-cluster is classed prunable; nothing to plan")
    layers = []
    for name, units in by_layer.items():
        lay = lm.layer(name)
        units = np.sort(np.asarray(units, np.int64))
        consts = replacement(lm, name, lesion)[units]
        layers.append(LayerPlan.build(name, lay.units, units, consts))
    return PruningPlan(layers={lp.layer: lp for lp in layers}, model_sha256=lm.sha256,
                       generator={"method": "modules-prunable", "lesion": lesion,
                                  "n_clusters": result.partition.n_clusters, "seed": result.partition.seed})


def network_table(rows: list, *, alpha: float = 0.05) -> list:
    """Multiple-comparison control over a table of networks (Hod et al., Appendix A.7).

    Benjamini-Hochberg runs separately on the Fisher p values and on the chi-squared p values
    (each family grouped over networks and statistics, as in the paper's Table 4);
    Holm-Bonferroni runs on every p value of the table at once (Table 5).

    Parameters
    ----------
    rows : list of dict
        One per network with ``fisher_importance``, ``chi2_importance``,
        ``fisher_coherence``, ``chi2_coherence`` (and optionally clusterability p values).

    Returns
    -------
    list of dict
        ``rows`` with ``<column>_bh`` and ``<column>_holm`` (adjusted p values) and
        ``<column>_bh_reject`` / ``<column>_holm_reject`` added.
    """
    cols = [c for c in ("fisher_importance", "chi2_importance", "fisher_coherence", "chi2_coherence",
                        "clusterability_p_all", "clusterability_p_nonzero") if any(c in r for r in rows)]
    out = [dict(r) for r in rows]
    get = lambda c: [r.get(c, float("nan")) for r in rows]  # noqa: E731
    families = {"fisher": [c for c in cols if c.startswith("fisher")],
                "chi2": [c for c in cols if c.startswith("chi2")],
                "clusterability": [c for c in cols if c.startswith("clusterability")]}
    for fam in families.values():
        if not fam:
            continue
        p = np.concatenate([get(c) for c in fam])
        rej, adj = adjust(p, "bh", alpha)
        for k, c in enumerate(fam):
            for i, r in enumerate(out):
                r[f"{c}_bh"], r[f"{c}_bh_reject"] = adj[k * len(rows) + i], bool(rej[k * len(rows) + i])
    p = np.concatenate([get(c) for c in cols]) if cols else np.array([])
    rej, adj = adjust(p, "holm", alpha)
    for k, c in enumerate(cols):
        for i, r in enumerate(out):
            r[f"{c}_holm"], r[f"{c}_holm_reject"] = adj[k * len(rows) + i], bool(rej[k * len(rows) + i])
    return out
