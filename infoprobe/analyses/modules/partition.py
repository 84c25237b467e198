"""Spectral partitions of a weight graph and their clusterability against shuffled networks
(Hod et al. 2021, Section 2 and A.1; Filan et al. 2021)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...errors import ConfigError
from ...estimators.graphcut import ncut, spectral_partition
from ...graph import WeightGraph, graph_from_model, graph_from_store
from ...model import LoadedModel, load_model

VARIANTS = ("all", "nonzero")


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
                   variant: str = "all", seed: int = 0, eigen_solver: str = "auto", rng=None,
                   progress: bool = True) -> dict:
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
        As for :func:`partition` (``seed`` seeds the clustering of each shuffled network).
    rng : numpy.random.Generator, optional
        The shuffles' random stream (default ``numpy.random.default_rng(seed)``).
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
    rng = rng if rng is not None else np.random.default_rng(seed)
    vals = []
    for _ in tqdm(range(n_shuffles), desc=f"shuffles ({variant})", unit="net", disable=not progress):
        blocks = graph.shuffled_blocks(rng, nonzero_only=variant == "nonzero")
        vals.append(partition(graph, n_clusters, seed=seed, blocks=blocks, eigen_solver=eigen_solver).ncut)
    vals = np.array(vals)
    sd = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
    return {"variant": variant, "ncut": float(true_ncut), "shuffled": vals.tolist(), "mean": float(vals.mean()),
            "std": sd, "p": float((np.count_nonzero(vals < true_ncut) + 1) / (len(vals) + 1)),
            "z": float((true_ncut - vals.mean()) / sd) if sd and np.isfinite(sd) and sd > 0 else float("nan")}


def load_graph(source, kind: str = "auto"):
    """A weight graph and its loaded source from an ONNX model or an activation store
    (:func:`infoprobe.store.is_store_path`). Returns ``(graph, LoadedModel or None, sha256)``."""
    from ...store import Store, is_store_path

    if isinstance(source, LoadedModel):
        return graph_from_model(source, kind), source, source.sha256
    path = Path(source)
    if is_store_path(path):
        with Store(path) as st:
            return graph_from_store(st, kind), None, st.sha256
    lm = load_model(path)
    return graph_from_model(lm, kind), lm, lm.sha256
