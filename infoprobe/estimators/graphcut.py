"""Normalised spectral clustering and the normalised cut of a weighted graph
(Shi & Malik 2000; von Luxburg 2007; Hod et al., "Importance and Coherence", Appendix A.1).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError


def _adjacency(adjacency) -> sp.csr_matrix:
    a = sp.csr_matrix(adjacency, dtype=np.float64)
    if a.shape[0] != a.shape[1]:
        raise ConfigError(f"the adjacency must be square, not {a.shape}")
    if a.nnz and a.data.min() < 0:
        raise ConfigError("edge weights must be non-negative")
    if abs(a - a.T).sum() > 1e-9 * max(1.0, abs(a).sum()):
        raise ConfigError("the adjacency must be symmetric (an undirected graph)")
    return a


def ncut(adjacency, labels) -> float:
    """Normalised cut of a partition: sum over clusters c of cut(c) / vol(c).

    cut(c) = W(c, V minus c), the weight of the edges leaving c; vol(c) = sum of the degrees of
    its vertices. This is the quantity the companion paper (Filan et al. 2021) reports, whose
    largest value is the number of clusters (von Luxburg's definition carries a factor 1/2).

    Parameters
    ----------
    adjacency : array or sparse matrix [V, V]
        Symmetric, non-negative.
    labels : int array [V]
        Cluster of each vertex; negative labels (removed vertices) are left out with their
        edges. Clusters of zero volume contribute nothing.

    Returns
    -------
    float
        Dimensionless, in [0, number of clusters].

    Raises
    ------
    ConfigError
        A non-square, asymmetric or negative adjacency, or labels of another length.
    """
    a = _adjacency(adjacency)
    labels = np.asarray(labels).ravel()
    if len(labels) != a.shape[0]:
        raise ConfigError(f"{len(labels)} labels for {a.shape[0]} vertices")
    keep = np.flatnonzero(labels >= 0)
    a = a[keep][:, keep]
    lab = np.unique(labels[keep], return_inverse=True)[1]
    h = sp.csr_matrix((np.ones(len(lab)), (np.arange(len(lab)), lab)), shape=(len(lab), lab.max() + 1 if len(lab) else 0))
    deg = np.asarray(a.sum(axis=1)).ravel()
    vol = h.T @ deg
    within = (h.T @ a @ h).diagonal()
    ok = vol > 0
    return float(np.sum((vol[ok] - within[ok]) / vol[ok]))


#: Above this many connected vertices ``eigen_solver="auto"`` uses LOBPCG: scikit-learn's
#: ARPACK path factorises the Laplacian (shift-invert), which took 361 s on a 20,794-vertex
#: graph with 7.9 M edges where LOBPCG took 7 s for the same n-cut (benchmarks/modules.py).
ARPACK_MAX_VERTICES = 5000
SOLVERS = ("auto", "arpack", "lobpcg")


def spectral_partition(adjacency, n_clusters: int = 12, *, seed: int = 0, eigen_solver: str = "auto",
                       assign_labels: str = "kmeans", n_init: int = 10) -> np.ndarray:
    """Normalised spectral clustering (Shi & Malik) of a weighted graph with scikit-learn's
    ``SpectralClustering(affinity="precomputed")``, as the authors of the method did.

    Vertices of zero degree are removed before clustering and get label -1.

    Parameters
    ----------
    adjacency : array or sparse matrix [V, V]
        Symmetric, non-negative edge weights.
    n_clusters : int
        k (the paper uses 12).
    seed : int
        ``random_state`` of the eigensolver's start vector and of k-means.
    eigen_solver : {"auto", "arpack", "lobpcg"}
        ``auto``: ARPACK (the authors' choice) up to :data:`ARPACK_MAX_VERTICES` connected
        vertices, LOBPCG above.
    assign_labels : {"kmeans", "discretize", "cluster_qr"}
    n_init : int
        k-means restarts.

    Returns
    -------
    int64 array [V]
        Cluster 0..k-1 of each vertex, -1 for removed ones.

    Raises
    ------
    ConfigError
        ``n_clusters`` < 2 or not smaller than the number of connected vertices, an unknown
        solver, or a bad adjacency.
    """
    from sklearn.cluster import SpectralClustering

    if eigen_solver not in SOLVERS:
        raise ConfigError(f"unknown eigen solver {eigen_solver!r}; use one of {', '.join(SOLVERS)}")
    a = _adjacency(adjacency)
    deg = np.asarray(a.sum(axis=1)).ravel()
    keep = np.flatnonzero(deg > 0)
    if eigen_solver == "auto":
        eigen_solver = "arpack" if len(keep) <= ARPACK_MAX_VERTICES else "lobpcg"
    if n_clusters < 2 or n_clusters >= len(keep):
        raise ConfigError(f"cannot make {n_clusters} clusters of {len(keep)} connected vertices")
    sc = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", eigen_solver=eigen_solver,
                            assign_labels=assign_labels, random_state=seed, n_init=n_init)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        lab = sc.fit_predict(a[keep][:, keep])
    labels = np.full(a.shape[0], -1, np.int64)
    labels[keep] = lab
    return labels
