"""Speed of the modules analysis (run by hand, not a test).

Parts:
- ``lesions``: the whole lesion-test analysis of the Fashion-MNIST MLP (12 clusters x 20
  random sub-clusters x 4 hidden layers, on the test split) against the same number of
  plain forward passes of the unmodified model through onnxruntime on the same inputs.
  Target: at most 1.5x.
- ``cluster``: spectral clustering of a large sparse MLP graph (784-5000x4-10, 5% of weights
  non-zero: about 21,000 vertices and 7.9 M edges) with ARPACK (scikit-learn's
  shift-invert path) and LOBPCG.

Usage::

    python benchmarks/modules.py [--data ../shared/data/fashion_mnist_70k.npz] [--parts lesions,cluster]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def bench_lesions(data_path, model):
    from infoprobe.analyses.modules import Lesioner, lesion_tests, partition
    from infoprobe.data import load_data, prepare_inputs
    from infoprobe.graph import graph_from_model
    from infoprobe.model import load_model
    from infoprobe.runner import make_session

    lm = load_model(ROOT / "fixtures" / model)
    data = load_data(data_path, split="test")
    part = partition(graph_from_model(lm), 12, seed=0)
    t0 = time.perf_counter()
    les = Lesioner(lm, data, part.graph.hidden)
    rows, _ = lesion_tests(les, part, n_random=20, seed=0, progress=False)
    t_lesion = time.perf_counter() - t0
    n = les.calls
    x = prepare_inputs(data.x, lm.input_shape, 1 / 255)
    sess = make_session(lm.fresh_ir())
    sess.run(None, {lm.input_name: x[:8]})
    t0 = time.perf_counter()
    for _ in range(n):
        for start in range(0, len(x), 4096):
            sess.run(None, {lm.input_name: x[start:start + 4096]})
    t_plain = time.perf_counter() - t0
    print(f"{model}: {len(rows)} sub-clusters, {n} lesioned or intact runs on {len(x)} test images")
    print(f"  lesion-test analysis {t_lesion:.2f} s, {n} plain forward passes {t_plain:.2f} s, "
          f"ratio {t_lesion / t_plain:.2f}x (target <= 1.5x)")


def bench_cluster():
    from infoprobe.estimators.graphcut import ncut, spectral_partition
    from infoprobe.graph import WeightGraph

    rng = np.random.default_rng(0)
    units = [784, 5000, 5000, 5000, 5000, 10]
    blocks = [(i, i + 1, rng.random((units[i + 1], units[i])) * (rng.random((units[i + 1], units[i])) < 0.05))
              for i in range(len(units) - 1)]
    g = WeightGraph("mlp", [f"l{i}" for i in range(len(units))], units, blocks, [])
    t0 = time.perf_counter()
    a = g.adjacency()
    print(f"graph: {a.shape[0]} vertices, {a.nnz // 2} edges, adjacency built in {time.perf_counter() - t0:.2f} s")
    for solver in ("lobpcg", "arpack"):
        t0 = time.perf_counter()
        lab = spectral_partition(a, 12, seed=0, eigen_solver=solver)
        print(f"  {solver}: {time.perf_counter() - t0:.1f} s, n-cut {ncut(a, lab):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = ROOT.parent / "shared/data/fashion_mnist_70k.npz"
    ap.add_argument("--data", default=str(shared if shared.exists() else ROOT / "fixtures/fashion_demo.npz"))
    ap.add_argument("--parts", default="lesions,cluster")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "lesions" in parts:
        for model in ("fashion_mlp.onnx", "fashion_mlp_pruned.onnx"):
            bench_lesions(args.data, model)
    if "cluster" in parts:
        bench_cluster()


if __name__ == "__main__":
    main()
