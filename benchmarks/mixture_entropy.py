"""Speed of the Gaussian-mixture entropy (run by hand, not a test).

n = 4,096 centres of dimension 10, n_MC = 10^6 Monte Carlo draws (Goldfeld et al., Section
3.2). Printed:

- the machine's matrix-product throughput: the best of several 2048 x 2048 x 2048 products
  (float32 and float64), the physical limit of the distance kernel;
- the distance computation alone, as :func:`infoprobe.estimators.mixture.mixture_entropy`
  does it (one product [G, 1] @ [S^T / beta^2; -|S|^2 / (2 beta^2)] per chunk of draws, in
  cache-sized chunks): time and achieved FLOP/s (2 (d + 1) n n_MC), against that limit
  (target >= 50%);
- the whole entropy estimate (distances, log-sum-exp, sums).

On a CUDA GPU (CuPy installed) the same is measured there.

Usage::

    python benchmarks/mixture_entropy.py [--n-mc 1000000] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def matmul_peak(xp, dtype, sync, n=2048, reps=5):
    a = xp.asarray(np.random.default_rng(0).random((n, n)), dtype=dtype)
    b = xp.asarray(np.random.default_rng(1).random((n, n)), dtype=dtype)
    a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def distances(xp, dtype, sync, centres, n_mc, beta, rows):
    """The distance part of mixture_entropy: the chunked products, nothing else."""
    c = centres - centres.mean(0)
    inv = 1 / beta ** 2
    ct = xp.asarray(np.vstack([c.T * inv, -(c * c).sum(1)[None] * 0.5 * inv]), dtype=dtype)
    g = xp.asarray(np.hstack([np.random.default_rng(2).normal(size=(rows, c.shape[1])), np.ones((rows, 1))]),
                   dtype=dtype)
    out = xp.empty((rows, c.shape[0]), dtype=dtype)
    g @ ct
    sync()
    t0 = time.perf_counter()
    for _ in range(n_mc // rows):
        xp.matmul(g, ct, out=out)
    sync()
    return time.perf_counter() - t0


def run(label, xp, sync, n_mc, n=4096, d=10, beta=0.1):
    from infoprobe.estimators.mixture import CHUNK_ELEMENTS, mixture_entropy

    centres = np.random.default_rng(0).normal(size=(n, d))
    rows = max(1, CHUNK_ELEMENTS // n)
    print(f"{label}: n = {n} centres of dimension {d}, n_MC = {n_mc:,} draws, chunks of {rows} draws")
    for dtype in (np.float32, np.float64):
        peak = matmul_peak(xp, dtype, sync)
        t = distances(xp, dtype, sync, centres, n_mc, beta, rows)
        flops = 2 * (d + 1) * n * n_mc
        print(f"  {np.dtype(dtype).name}: matrix product {peak / 1e9:.1f} GFLOP/s; distances {t:.2f} s = "
              f"{flops / t / 1e9:.1f} GFLOP/s = {100 * flops / t / peak:.0f}% of it (target >= 50%)")
        t0 = time.perf_counter()
        h, se = mixture_entropy(xp.asarray(centres), beta, n_mc=n_mc, dtype=dtype)
        sync()
        print(f"    whole entropy estimate {time.perf_counter() - t0:.2f} s: h = {h:.4f} +/- {se:.4f} nats")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-mc", type=int, default=1_000_000)
    args = ap.parse_args()
    run("CPU (NumPy)", np, lambda: None, args.n_mc)
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            run("CUDA (CuPy)", cupy, cupy.cuda.Device().synchronize, args.n_mc)
    except Exception as exc:  # no CuPy or no device
        print(f"CUDA: not measured ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no CuPy'})")


if __name__ == "__main__":
    main()
