"""Modules in the weight graph: spectral clustering, clusterability, and lesion tests of the
importance and output coherence of sub-clusters.

Sources: Hod, Casper, Filan et al., "Importance and Coherence: Methods for Evaluating
Modularity in Neural Networks" (Sections 2-3; Appendices A.1, A.3, A.4, A.6, A.7, A.9, A.10)
and Filan et al. 2021, "Clusterability in Neural Networks" (n-cut against shuffled networks).

A *sub-cluster* is the set of units of one cluster in one hidden layer. A *lesion* replaces
the post-activation of its units by the activation of zero input, sigma(0) -- their incoming
weights and biases set to zero -- through the mask/offset inputs of the rewritten graph
(DESIGN.md); ``lesion="bias"`` zeroes the weights only (sigma(b), the paper's wording).
Every statistic is compared with *random sub-clusters*: the same number of units drawn from
the same layer among the units still in the graph.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...data import Dataset, prepare_inputs, resolve_scale
from ...errors import ConfigError, DataError, ModelError
from ...estimators.graphcut import ncut, spectral_partition
from ...graph import WeightGraph, graph_from_model, graph_from_store
from ...model import LoadedModel, load_model
from ...plan import LayerPlan, PruningPlan
from ...results import check_outputs, provenance, write_table
from ...rewrite import io_name
from ...runner import Runner, default_threads
from ...stats import adjust, chi2_ranks, fisher_combined, percentile_p
from ..ablation import _Evaluator

LESIONS = ("zero", "bias")
VARIANTS = ("all", "nonzero")
CATEGORIES = ("complete", "small", "important", "prunable", "sig-but-not-diff", "diff-but-not-sig", "other")


# --------------------------------------------------------------------------- partition

@dataclass
class Partition:
    """A spectral partition of a weight graph.

    Attributes
    ----------
    graph : WeightGraph
    labels : int64 [V]
        Cluster of every vertex, -1 for vertices of zero degree.
    n_clusters : int
    ncut : float
        Normalised cut of the partition (dimensionless, at most ``n_clusters``).
    seed : int
    """

    graph: WeightGraph
    labels: np.ndarray
    n_clusters: int
    ncut: float
    seed: int

    def layer_labels(self, layer: str) -> np.ndarray:
        """Cluster of each unit of ``layer`` (int64 [U], -1 for removed units)."""
        return self.labels[self.graph.vertices(layer)]

    def rows(self) -> list:
        """One row per vertex: layer, unit, cluster."""
        out = []
        for lay in self.graph.layers:
            for u, c in enumerate(self.layer_labels(lay)):
                out.append({"layer": lay, "unit": u, "cluster": int(c)})
        return out

    def sub_clusters(self) -> list:
        """The sub-clusters of the hidden layers: dicts with ``layer``, ``cluster``, ``units``
        (int64 array), ``size``, ``layer_units`` (all units of the layer) and ``in_graph``
        (units of the layer still in the graph), in layer then cluster order."""
        out = []
        for lay in self.graph.hidden:
            lab = self.layer_labels(lay)
            in_graph = int(np.count_nonzero(lab >= 0))
            for c in np.unique(lab[lab >= 0]):
                units = np.flatnonzero(lab == c)
                out.append({"layer": lay, "cluster": int(c), "units": units, "size": len(units),
                            "layer_units": len(lab), "in_graph": in_graph})
        return out


def partition(graph: WeightGraph, n_clusters: int = 12, *, seed: int = 0, blocks=None,
              eigen_solver: str = "auto") -> Partition:
    """Normalised spectral clustering of a weight graph (Hod et al., Section 2 and A.1).

    Parameters
    ----------
    graph : WeightGraph
        From :func:`infoprobe.graph.graph_from_model` or :func:`~infoprobe.graph.graph_from_store`.
    n_clusters : int
        k, 12 in the paper.
    seed : int
        ``random_state`` of scikit-learn's ``SpectralClustering``.
    blocks : list, optional
        Replacement edge blocks (e.g. shuffled ones).
    eigen_solver : {"auto", "arpack", "lobpcg"}
        See :func:`infoprobe.estimators.graphcut.spectral_partition`.

    Returns
    -------
    Partition

    Raises
    ------
    ConfigError
        ``n_clusters`` < 2 or not below the number of connected vertices.
    """
    a = graph.adjacency(blocks)
    labels = spectral_partition(a, n_clusters, seed=seed, eigen_solver=eigen_solver)
    return Partition(graph, labels, n_clusters, ncut(a, labels), seed)


def clusterability(graph: WeightGraph, true_ncut: float, *, n_clusters: int = 12, n_shuffles: int = 50,
                   variant: str = "all", seed: int = 0, eigen_solver: str = "auto", progress: bool = True) -> dict:
    """n-cut of a network against the n-cuts of networks with shuffled weights (Filan et al.
    2021).

    Each shuffled network permutes the entries of every layer's edge block (``variant="all"``)
    or only its non-zero entries (``"nonzero"``, which keeps a pruned network's sparsity);
    it is then clustered like the network itself.

    Parameters
    ----------
    graph : WeightGraph
    true_ncut : float
        The network's n-cut (from :func:`partition`).
    n_clusters, seed, eigen_solver :
        As for :func:`partition`; shuffles draw from ``numpy.random.default_rng(seed)``.
    n_shuffles : int
    variant : {"all", "nonzero"}

    Returns
    -------
    dict
        ``variant``, ``ncut``, ``shuffled`` (list of n-cuts), ``mean``, ``std``, ``p`` =
        (#{shuffled < true} + 1) / (n + 1) (left-sided: a low n-cut is more clusterable) and
        ``z`` = (true - mean) / std.

    Raises
    ------
    ConfigError
        Unknown variant or ``n_shuffles`` < 1.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown shuffle variant {variant!r}; use all or nonzero")
    if n_shuffles < 1:
        raise ConfigError("n_shuffles must be at least 1")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in tqdm(range(n_shuffles), desc=f"shuffles ({variant})", unit="net", disable=not progress):
        blocks = graph.shuffled_blocks(rng, nonzero_only=variant == "nonzero")
        vals.append(partition(graph, n_clusters, seed=seed, blocks=blocks, eigen_solver=eigen_solver).ncut)
    vals = np.array(vals)
    sd = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
    return {"variant": variant, "ncut": float(true_ncut), "shuffled": vals.tolist(), "mean": float(vals.mean()),
            "std": sd, "p": float((np.count_nonzero(vals < true_ncut) + 1) / (len(vals) + 1)),
            "z": float((true_ncut - vals.mean()) / sd) if sd and np.isfinite(sd) and sd > 0 else float("nan")}


# --------------------------------------------------------------------------- lesions

def lesion_constants(lm: LoadedModel, layer: str, lesion: str = "zero") -> np.ndarray:
    """Post-activation of each unit of ``layer`` once lesioned (float64 [U]).

    ``zero``: sigma(0), the output of a unit whose incoming weights and bias are zero (the
    default, matching the authors' code); ``bias``: sigma(b_j), incoming weights zeroed only
    (batch norm folded, :meth:`~infoprobe.model.LoadedModel.lesion_constants`).

    Raises
    ------
    ConfigError
        Unknown ``lesion``.
    ModelError
        An activation infoprobe cannot evaluate in NumPy.
    """
    if lesion not in LESIONS:
        raise ConfigError(f"unknown lesion {lesion!r}; use zero or bias")
    return lm.lesion_constants(layer, keep_bias=lesion == "bias")


class Lesioner:
    """Per-class test accuracy of a model under lesions of sets of units, through one
    onnxruntime session per layer: the layers before the earliest lesioned layer run once.

    Parameters
    ----------
    lm : LoadedModel
    data : Dataset
        Labelled test samples.
    lesion : {"zero", "bias"}
        ``zero``: a lesioned unit outputs sigma(0) (incoming weights and bias zeroed);
        ``bias``: sigma(b_j) (incoming weights zeroed, bias kept; batch norm folded).
    layers : list of str
        Hidden layers that will be lesioned.
    scale : "auto" or float
        Input multiplier (as in capture).

    Raises
    ------
    DataError
        No labels.
    ModelError
        An activation infoprobe cannot evaluate for the lesion constant.
    """

    def __init__(self, lm: LoadedModel, data: Dataset, layers, *, lesion: str = "zero", scale="auto",
                 batch_size: int = 4096, providers=None, threads=None):
        if data.y is None:
            raise DataError(f"{data.path} has no labels ('y'); lesion tests measure accuracy and need them")
        self.lm, self.layers = lm, list(layers)
        self.y = np.asarray(data.y, np.int64)
        self.n_classes = int(self.y.max()) + 1
        factor = resolve_scale(data.x, scale)
        self.factor = factor
        self.x = prepare_inputs(data.x, lm.input_shape, factor, input_name=lm.input_name)
        threads = threads if threads is not None else default_threads()
        self.full = Runner(lm, expose=True, providers=providers, threads=threads)
        posts = self.full.run(self.x, outputs=[io_name(n, "post") for n in self.layers], batch_size=batch_size)
        #: post-activations of the intact model, {layer: float32 [N, ...]}
        self.posts = {n: posts[io_name(n, "post")] for n in self.layers}
        self.evaluators = {}
        for n in self.layers:
            try:
                runner, inputs = Runner(lm, after=n, providers=providers, threads=threads), self.posts[n]
            except ModelError:  # a skip connection around the layer: run the whole model
                runner, inputs = self.full, self.x
            self.evaluators[n] = _Evaluator(runner, inputs, self.y, self.n_classes, lm.output_name, batch_size)
        self.whole = _Evaluator(self.full, self.x, self.y, self.n_classes, lm.output_name, batch_size)
        self.constants = {n: lesion_constants(lm, n, lesion) for n in self.layers}
        self.calls = 0  # runs so far (benchmarks compare with as many plain forward passes)
        self.base = self({})

    def __call__(self, lesions: dict) -> np.ndarray:
        """Per-class accuracy [C] with ``lesions`` = {layer: unit indices} lesioned together."""
        lesions = {k: np.asarray(v, np.int64) for k, v in lesions.items() if len(v)}
        if not lesions:
            ev = self.whole
        else:
            first = min(lesions, key=self.layers.index)
            ev = self.evaluators[first]
        self.calls += 1
        _, per_class = ev({n: (self.lm.layer(n), u, self.constants[n]) for n, u in lesions.items()})
        return per_class


def _coherence(delta: np.ndarray) -> float:
    """Normalised class-wise range ptp(d / mean(d)) of per-class accuracy changes d.

    Defined everywhere so that percentile p values keep their lattice: 0 when no class
    changes, +inf when classes change but their mean change is exactly 0.
    """
    delta = np.asarray(delta, np.float64)
    m = float(np.mean(delta))
    if m == 0.0:
        return 0.0 if not delta.any() else float("inf")
    return float(np.ptp(delta / m))


def classify(row: dict, *, alpha: float = 0.05, min_drop: float = 0.01, small_fraction: float = 0.05,
             small_units: int = 0) -> str:
    """Taxonomy of a lesioned sub-cluster (Hod et al., Fig. 2 and Appendix A.9), checked in
    order: ``complete`` (every unit of the layer still in the graph), ``small`` (under
    ``small_fraction`` of the layer, or fewer than ``small_units`` units), ``important``
    (p < ``alpha`` and accuracy drop > ``min_drop``), ``prunable`` (less damage than random
    sub-clusters: upper p < ``alpha``, and drop < ``min_drop``), ``sig-but-not-diff``
    (p < ``alpha``), ``diff-but-not-sig`` (drop > ``min_drop``), ``other``.

    ``row`` needs ``size``, ``layer_units``, ``in_graph``, ``accuracy_change`` (mean of
    per-class accuracies; negative is damage), ``p_importance`` and ``p_prunable``.
    """
    drop = -row["accuracy_change"]
    if row["size"] >= row["in_graph"]:
        return "complete"
    if row["size"] / row["layer_units"] < small_fraction or row["size"] < small_units:
        return "small"
    sig = np.isfinite(row["p_importance"]) and row["p_importance"] < alpha
    if sig and drop > min_drop:
        return "important"
    if np.isfinite(row["p_prunable"]) and row["p_prunable"] < alpha and drop < min_drop:
        return "prunable"
    if sig:
        return "sig-but-not-diff"
    if drop > min_drop:
        return "diff-but-not-sig"
    return "other"


def _random_units(rng, pool, size, n):
    return [np.sort(rng.choice(pool, size, replace=False)) for _ in range(n)]


class UnreachableAlphaWarning(UserWarning):
    """Too few random draws: no percentile p value can fall below ``alpha``."""


def draws_needed(alpha: float) -> int:
    """Fewest random draws n for which a percentile p value can fall below ``alpha``.

    The smallest percentile p value among n draws is 1/(n + 1) (:func:`infoprobe.stats.
    percentile_p`, Phipson & Smyth 2010), and the tests call a result significant when
    p < ``alpha`` (strictly), so n is the least integer with 1/(n + 1) < alpha: 20 for
    alpha = 0.05 (19 draws give exactly 0.05).

    Parameters
    ----------
    alpha : float
        Significance level, in (0, 1].

    Returns
    -------
    int

    Raises
    ------
    ConfigError
        ``alpha`` outside (0, 1].
    """
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"alpha must lie in (0, 1]; got {alpha}")
    n = max(int(np.floor(1.0 / alpha)) - 1, 0)
    while 1.0 / (n + 1) >= alpha:
        n += 1
    return n


def _warn_unreachable(n_random: int, alpha: float, what: str, option: str) -> None:
    """Warn (:class:`UnreachableAlphaWarning`) when 1/(n_random + 1) >= alpha."""
    if not 0.0 < alpha <= 1.0:
        return
    need = draws_needed(alpha)
    if n_random < need:
        warnings.warn(f"{what}: with {n_random} random draws ({option}) the smallest percentile p value is "
                      f"1/{n_random + 1} = {1.0 / (n_random + 1):.3g}, not below alpha = {alpha:g}, so none can "
                      f"be significant; use at least {need} random draws", UnreachableAlphaWarning, stacklevel=3)


def lesion_tests(lesioner: Lesioner, part: Partition, *, n_random: int = 20, seed: int = 0,
                 alpha: float = 0.05, min_drop: float = 0.01, small_fraction: float = 0.05, small_units: int = 0,
                 progress: bool = True) -> tuple[list, list]:
    """Lesion every sub-cluster and ``n_random`` random sub-clusters of the same size and layer
    (Hod et al., Section 3.2).

    Statistics, from per-class test accuracies a_c:
    - importance: the change of the mean of per-class accuracies, mean(a_lesioned) - mean(a);
      left-sided percentile p value among the random sub-clusters (``p_importance``), and the
      right-sided one (``p_prunable``: less damage than the randoms);
    - output coherence: the normalised class-wise range ptp(d / mean(d)) of the per-class
      changes d; right-sided p value (``p_coherence``).

    A p value is significant when below ``alpha``; with fewer than :func:`draws_needed`
    random sub-clusters (1/(n_random + 1) >= alpha) none can be, and an
    :class:`UnreachableAlphaWarning` says so (no sub-cluster is then ``important`` or
    ``prunable``).

    Returns
    -------
    rows : list of dict
        One per sub-cluster: layer, cluster, size, layer_units, in_graph, fraction,
        accuracy_change, random_mean, random_std, p_importance, p_prunable, coherence,
        p_coherence, category, class_<c>_change, units.
    random_rows : list of dict
        One per random lesion: layer, cluster, draw, accuracy_change, coherence,
        class_<c>_change.
    """
    _warn_unreachable(n_random, alpha, "lesion tests", "--random")
    rng = np.random.default_rng(seed)
    subs = part.sub_clusters()
    base = lesioner.base
    rows, random_rows = [], []
    bar = tqdm(total=len(subs) * (n_random + 1), desc="lesions", unit="lesion", disable=not progress)
    for s in subs:
        lay = s["layer"]
        pool = np.flatnonzero(part.layer_labels(lay) >= 0)
        d_true = lesioner({lay: s["units"]}) - base
        complete = s["size"] >= len(pool)
        draws = [] if complete else _random_units(rng, pool, s["size"], n_random)
        d_rand = np.array([lesioner({lay: u}) - base for u in draws]).reshape(len(draws), len(base))
        bar.update(1 + n_random)
        imp_true, imp_rand = float(np.mean(d_true)), d_rand.mean(axis=1)
        coh_true = _coherence(d_true)
        coh_rand = np.array([_coherence(d) for d in d_rand])
        row = {"layer": lay, "cluster": s["cluster"], "size": s["size"], "layer_units": s["layer_units"],
               "in_graph": s["in_graph"], "fraction": s["size"] / s["layer_units"],
               "accuracy_change": imp_true,
               "random_mean": float(imp_rand.mean()) if len(draws) else imp_true,
               "random_std": float(imp_rand.std()) if len(draws) else 0.0,
               "p_importance": percentile_p(imp_true, imp_rand, "left") if len(draws) else float("nan"),
               "p_prunable": percentile_p(imp_true, imp_rand, "right") if len(draws) else float("nan"),
               "coherence": coh_true,
               "p_coherence": percentile_p(coh_true, coh_rand, "right") if len(draws) else float("nan")}
        row["category"] = classify(row, alpha=alpha, min_drop=min_drop, small_fraction=small_fraction,
                                   small_units=small_units)
        for c, v in enumerate(d_true):
            row[f"class_{c}_change"] = float(v)
        row["units"] = s["units"].tolist()
        rows.append(row)
        for i, d in enumerate(d_rand):
            r = {"layer": lay, "cluster": s["cluster"], "draw": i, "accuracy_change": float(d.mean()),
                 "coherence": float(coh_rand[i])}
            for c, v in enumerate(d):
                r[f"class_{c}_change"] = float(v)
            random_rows.append(r)
    bar.close()
    return rows, random_rows


def combine(rows: list, n_random: int) -> dict:
    """Network-level p values: Fisher's method (shifted p values) and the chi-squared test of
    p-value ranks over the sub-clusters, for importance and for output coherence
    (Appendix A.4). Sub-clusters without a p value (complete layers, undefined coherence)
    are left out; ``n_<stat>`` says how many were combined."""
    out = {}
    for stat in ("importance", "coherence"):
        p = np.array([r[f"p_{stat}"] for r in rows], np.float64)
        p = p[np.isfinite(p)]
        out[f"n_{stat}"] = int(len(p))
        out[f"fisher_{stat}"] = fisher_combined(p, n_random) if len(p) else float("nan")
        out[f"chi2_{stat}"] = chi2_ranks(p, n_random) if len(p) else float("nan")
    return out


# --------------------------------------------------------------------------- double lesions

def double_lesions(lesioner: Lesioner, part: Partition, rows: list, *, n_random: int = 50, seed: int = 0,
                   alpha: float = 0.05, min_drop: float = 0.01, progress: bool = True) -> tuple[list, list]:
    """Double lesions of pairs of important sub-clusters in different layers, and the
    dependency graph they suggest (Hod et al., Appendix A.10).

    For X (earlier layer) and Y (later layer), with l(S) the drop of the mean per-class
    accuracy when S is lesioned: delta(Y, X) = l(X u Y) - l(X), and Y is important given X
    when l(X u Y) exceeds l(X u Y') for random Y' (same size and layer as Y) with right-sided
    percentile p < ``alpha`` and delta(Y, X) > ``min_drop``; likewise X given Y.

    Dependency edges X -> Y (the paper's Fig. 7, following the argument of its first case):
    neither important given the other: ``exclusive`` (X's information reaches the output
    only through Y, and Y's comes only from X); X not important given Y but Y important given
    X: ``Y has other sources``; X important given Y but Y not given X: ``X has other
    targets``; both important: no conclusion (no edge).

    With fewer than :func:`draws_needed` random partners no pair can be significant; an
    :class:`UnreachableAlphaWarning` says so.

    Returns
    -------
    pairs : list of dict
        x, y (``layer/cluster`` labels), loss_x, loss_y, loss_xy, delta_y_given_x,
        delta_x_given_y, p_y_given_x, p_x_given_y, y_given_x, x_given_y (bool), relation.
    edges : list of dict
        source, target, relation.
    """
    rng = np.random.default_rng(seed)
    imp = [r for r in rows if r["category"] == "important"]
    order = lesioner.layers.index
    pairs_idx = [(a, b) for i, a in enumerate(imp) for b in imp[i + 1:] if a["layer"] != b["layer"]]
    if pairs_idx:
        _warn_unreachable(n_random, alpha, "double lesions", "--double-random")
    base = float(np.mean(lesioner.base))
    pools = {lay: np.flatnonzero(part.layer_labels(lay) >= 0) for lay in {r["layer"] for r in imp}}
    loss = lambda les: base - float(np.mean(lesioner(les)))  # noqa: E731
    pairs, edges = [], []
    bar = tqdm(total=len(pairs_idx) * (1 + 2 * n_random), desc="double lesions", unit="lesion",
               disable=not progress or not pairs_idx)
    for a, b in pairs_idx:
        x, y = (a, b) if order(a["layer"]) < order(b["layer"]) else (b, a)
        ux, uy = np.asarray(x["units"]), np.asarray(y["units"])
        l_x, l_y = -x["accuracy_change"], -y["accuracy_change"]
        l_xy = loss({x["layer"]: ux, y["layer"]: uy})
        l_xy_rand = [loss({x["layer"]: ux, y["layer"]: u}) for u in _random_units(rng, pools[y["layer"]], len(uy), n_random)]
        l_rand_xy = [loss({x["layer"]: u, y["layer"]: uy}) for u in _random_units(rng, pools[x["layer"]], len(ux), n_random)]
        bar.update(1 + 2 * n_random)
        d_yx, d_xy = l_xy - l_x, l_xy - l_y
        p_yx, p_xy = percentile_p(l_xy, l_xy_rand, "right"), percentile_p(l_xy, l_rand_xy, "right")
        y_given_x = bool(p_yx < alpha and d_yx > min_drop)
        x_given_y = bool(p_xy < alpha and d_xy > min_drop)
        relation = {(False, False): "exclusive", (False, True): "Y has other sources",
                    (True, False): "X has other targets", (True, True): "no conclusion"}[(x_given_y, y_given_x)]
        lx, ly = f"{x['layer']}/{x['cluster']}", f"{y['layer']}/{y['cluster']}"
        pairs.append({"x": lx, "y": ly, "loss_x": l_x, "loss_y": l_y, "loss_xy": l_xy,
                      "delta_y_given_x": d_yx, "delta_x_given_y": d_xy, "p_y_given_x": p_yx,
                      "p_x_given_y": p_xy, "y_given_x": y_given_x, "x_given_y": x_given_y,
                      "relation": relation})
        if relation != "no conclusion":
            edges.append({"source": lx, "target": ly, "relation": relation})
    bar.close()
    return pairs, edges


# --------------------------------------------------------------------------- visualisation

def image_shape(input_shape: tuple) -> tuple | None:
    """(H, W) of an image input from a model's input shape (batch dimension first): the last
    two dimensions of [N, C, H, W] or [N, H, W], the square root of a flat [N, H*W]; None when
    the input is not an image or its size is symbolic."""
    shape = tuple(input_shape[1:])
    if not shape or any(not isinstance(d, (int, np.integer)) for d in shape):
        return None
    if len(shape) >= 2:
        return int(shape[-2]), int(shape[-1])
    side = int(round(np.sqrt(shape[0])))
    return (side, side) if side * side == shape[0] else None


def _ranked(m: np.ndarray) -> np.ndarray:
    """Columns of m [N, A] as centred ranks of unit norm (zeros for constant columns), so
    that the product of two such matrices is the Spearman correlation."""
    from scipy.stats import rankdata

    r = rankdata(m, axis=0).astype(np.float64)
    r -= r.mean(axis=0)
    sd = np.sqrt((r ** 2).sum(axis=0))
    sd[sd == 0] = np.inf
    return r / sd


def align_signs(v: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Sign alignment of unit visualisations (Hod et al., Algorithm 2, after Watanabe 2019).

    For ``iterations`` passes, each row i is flipped when the sum of cosines between it and
    the other rows is negative.

    Parameters
    ----------
    v : float array [K, P]
        One visualisation per unit.

    Returns
    -------
    float array [K, P]
    """
    v = np.array(v, np.float64)
    norm = np.linalg.norm(v, axis=1)
    norm[norm == 0] = 1.0
    cos = (v / norm[:, None]) @ (v / norm[:, None]).T
    np.fill_diagonal(cos, 0.0)
    sign = np.ones(len(v))
    for _ in range(iterations):
        changed = False
        for i in range(len(v)):
            if sign[i] * (cos[i] @ sign) < 0:  # sum of cosines with the other (signed) rows
                sign[i] = -sign[i]
                changed = True
        if not changed:
            break
    return v * sign[:, None]


def correlation_visualisations(lesioner: Lesioner, rows: list, part: Partition, *, n_random: int = 4,
                               iterations: int = 20, seed: int = 0, max_samples: int | None = 10000) -> dict | None:
    """Correlation-based visualisation of sub-clusters (Hod et al., Section 3.1.1, A.3).

    Each unit's visualisation is the Spearman correlation of its post-activation (conv: the
    L1 norm of its feature map) with every input pixel over the test samples; a sub-cluster's
    is the mean of its units' visualisations after :func:`align_signs`; the same is drawn for
    ``n_random`` random sub-clusters of the same size and layer (the paper's Fig. 1). Inputs
    and post-activations are the ones the :class:`Lesioner` computed for the intact model
    (a seeded subset of ``max_samples`` rows).

    Returns
    -------
    dict or None
        ``image_shape`` (H, W), ``columns`` (``layer/cluster`` labels) and ``images`` float
        [1 + n_random, n_columns, H, W]; None when the input is not an image.
    """
    hw = image_shape(lesioner.lm.input_shape)
    if hw is None or not rows:
        return None
    keep = slice(None)
    if max_samples is not None and len(lesioner.x) > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(lesioner.x), max_samples, replace=False))
    x = lesioner.x[keep]
    pix = _ranked(x.reshape(len(x), -1, hw[0] * hw[1]).mean(axis=1))
    corr = {}
    for n in dict.fromkeys(r["layer"] for r in rows):  # Spearman correlation [U, P] of every unit with every pixel
        act = lesioner.posts[n][keep]
        if act.ndim > 2:
            act = np.abs(act.reshape(len(act), act.shape[1], -1)).sum(axis=2)
        corr[n] = _ranked(act).T @ pix
    rng = np.random.default_rng(seed)
    images = np.zeros((1 + n_random, len(rows), *hw))
    for j, r in enumerate(rows):
        pool = np.flatnonzero(part.layer_labels(r["layer"]) >= 0)
        sets = [np.asarray(r["units"])] + _random_units(rng, pool, len(r["units"]), n_random)
        for i, units in enumerate(sets):
            images[i, j] = align_signs(corr[r["layer"]][units], iterations).mean(axis=0).reshape(hw)
    return {"image_shape": hw, "columns": [f"{r['layer']}/{r['cluster']}" for r in rows], "images": images}


# --------------------------------------------------------------------------- orchestration

@dataclass
class ModulesResult:
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

    TABLES = ("partition", "subclusters", "random_lesions", "double_lesions", "dependencies")

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

        from ...results import _plain, atomic_write_bytes

        outdir = Path(outdir)
        check_outputs([outdir / f"{t}.{e}" for t in self.TABLES for e in ("csv", "json")]
                      + [outdir / "network.json"], overwrite)
        files = write_table(outdir, "partition", self.partition.rows(), self.meta)
        for name, rows in (("subclusters", self.subclusters), ("random_lesions", self.random_lesions),
                           ("double_lesions", self.pairs), ("dependencies", self.edges)):
            if rows:
                files += write_table(outdir, name, rows, self.meta)
        doc = {"meta": self.meta, "network": _plain(self.network), "clusterability": _plain(self.clusterability),
               "base_class_accuracy": _plain(self.base_class_accuracy)}
        atomic_write_bytes(outdir / "network.json", json.dumps(doc, indent=1, allow_nan=False).encode())
        return files + [outdir / "network.json"]


def load_graph(source, kind: str = "auto"):
    """A weight graph and its loaded source from an ONNX model (.onnx) or an activation
    store (.h5/.hdf5). Returns ``(graph, LoadedModel or None, sha256)``."""
    from ...store import Store

    if isinstance(source, LoadedModel):
        return graph_from_model(source, kind), source, source.sha256
    path = Path(source)
    if path.suffix.lower() in (".h5", ".hdf5"):
        with Store(path) as st:
            return graph_from_store(st, kind), None, st.sha256
    lm = load_model(path)
    return graph_from_model(lm, kind), lm, lm.sha256


def modules(source, data: Dataset | None = None, *, n_clusters: int = 12, kind: str = "auto",
            n_random: int = 20, n_shuffles: int = 50, variants=("all",), lesion: str = "zero",
            n_double: int = 50, alpha: float = 0.05, min_drop: float = 0.01, small_fraction: float = 0.05,
            small_units: int = 0, visualise: bool = True, seed: int = 0, eigen_solver: str = "auto", scale="auto",
            batch_size: int = 4096, progress: bool = True, providers=None) -> ModulesResult:
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
    n_clusters : int
        k (12 in the paper).
    kind : {"auto", "mlp", "cnn"}
        Graph of neurons (MLP) or of conv feature maps (CNN).
    variants : sequence of {"all", "nonzero"}
        Shuffle every entry of each layer's weight block, or only its non-zero entries.
    lesion : {"zero", "bias"}
        See :class:`Lesioner`.
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
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"unknown shuffle variant {v!r}; use all or nonzero")
    graph, lm, sha = load_graph(source, kind)
    if data is not None and lm is None:
        raise ConfigError("lesion tests need the ONNX model, not an activation store")
    part = partition(graph, n_clusters, seed=seed, eigen_solver=eigen_solver)
    clus = [clusterability(graph, part.ncut, n_clusters=n_clusters, n_shuffles=n_shuffles, variant=v,
                           seed=seed, eigen_solver=eigen_solver, progress=progress)
            for v in variants] if n_shuffles > 0 else []
    params = {"n_clusters": n_clusters, "graph": graph.kind, "n_random": n_random, "n_shuffles": n_shuffles,
              "variants": list(variants), "lesion": lesion, "n_double": n_double, "alpha": alpha,
              "min_drop": min_drop, "small_fraction": small_fraction, "small_units": small_units, "seed": seed,
              "eigen_solver": eigen_solver}
    inputs = {"model" if lm is not None else "store": (getattr(lm, "path", source), sha)}
    network = {"ncut": part.ncut, "n_clusters": n_clusters, "vertices": graph.n_vertices,
               "removed_vertices": int(np.count_nonzero(part.labels < 0))}
    for c in clus:
        network[f"clusterability_p_{c['variant']}"] = c["p"]
        network[f"clusterability_z_{c['variant']}"] = c["z"]
    res = ModulesResult(part, clus, network=network)
    if data is not None:
        les = Lesioner(lm, data, graph.hidden, lesion=lesion, scale=scale, batch_size=batch_size,
                       providers=providers)
        rows, rand = lesion_tests(les, part, n_random=n_random, seed=seed, alpha=alpha, min_drop=min_drop,
                                  small_fraction=small_fraction, small_units=small_units, progress=progress)
        res.subclusters, res.random_lesions = rows, rand
        res.base_class_accuracy = les.base.tolist()
        network.update(combine(rows, n_random))
        network["base_accuracy"] = float(np.mean(les.base))
        network["categories"] = {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}
        if n_double > 0:
            res.pairs, res.edges = double_lesions(les, part, rows, n_random=n_double, seed=seed, alpha=alpha,
                                                  min_drop=min_drop, progress=progress)
        if visualise:
            shown = [r for r in rows if r["category"] not in ("small", "complete")]
            res.visualisation = correlation_visualisations(les, shown, part, seed=seed)
        params.update(input_scale=les.factor, data_split=data.split, n_test=len(data))
        inputs["data"] = (data.path, data.sha256)
    res.meta = provenance(inputs, params)
    return res


def prunable_plan(lm: LoadedModel, result: ModulesResult, *, lesion: str | None = None) -> PruningPlan:
    """A pruning plan removing the units of every sub-cluster classed ``prunable``, each
    replaced by its lesion constant (sigma(0), or sigma(b) with ``lesion="bias"``), in the
    format of ``infoprobe prune``. Prunable sub-clusters of one layer are removed together,
    which the lesion tests did not try: verify with ``infoprobe prune --data``.

    Raises
    ------
    ConfigError
        No prunable sub-cluster.
    """
    lesion = lesion or result.meta.get("parameters", {}).get("lesion", "zero")
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
        consts = lesion_constants(lm, name, lesion)[units]
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
