"""Re-measure the cost model of the O-information search (``LEAF_COST``, ``INNER_COST`` and
``STEP_COST`` of ``infoprobe.estimators.oinfo``).

    OMP_NUM_THREADS=1 python benchmarks/oinfo_cost.py [--units 40] [--min-time 0.1] [--repeats 3]
    OMP_NUM_THREADS=1 python benchmarks/oinfo_cost.py --check

The synergy planner does not time anything: it picks exhaustive sizes from counts and those
fixed constants (``CostModel``), so that the same inputs give the same plan under any load.
This script is how the constants were measured, and how to measure them again on another
machine.

It times the search's own code (``_grow`` and the best-so-far update over the search's
batches, in one thread, the best of ``--repeats`` timings of at least ``--min-time`` seconds
each) in CPU seconds (``time.process_time``: other work on a shared machine slows the wall
clock, much less the CPU time of one thread) for every label encoding (``none``: 1 covariance
group; ``ordinal``: 1 group, the label as one more variable; ``exact`` with 2 and 10 classes:
3 and 11 groups) and multiplet sizes 2..7, on the last exhaustive level (``leaf``: Omega
only) and on the levels below it (``inner``: each child's factor built too); and greedy steps
of 1 and 200 candidates. It fits

    seconds per multiplet = a + G (b + c v^2)    (v: variables of the multiplet, G: groups)

(non-negative least squares on relative error, separately for leaf and inner: ``a`` is the
work that does not depend on the groups, indexing and bookkeeping) and a fixed overhead per
greedy step, then prints the constants, each measured rate next to the model's, and whole
searches against the model's estimate. On a machine shared with other work the timings still
scatter by up to about 30%; the best of a few repeats is kept. ``--check`` only compares whole
searches with the estimates of the recorded constants.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from infoprobe.estimators.oinfo import CostModel


def model(labels: str, classes: int, units: int, samples: int = 2000):
    from infoprobe.estimators.oinfo import copula_model

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, samples)
    x = rng.standard_normal((samples, units)) + np.sin(np.arange(units)[None, :] * (y[:, None] + 1))
    return copula_model(x, y, labels=labels)


def time_level(m, k: int, leaf: bool, min_time: float, repeats: int) -> float:
    """Seconds per multiplet of k units created from parents of k - 1 units (the search's batches)."""
    from infoprobe.estimators.oinfo import _Best, _chunk, _extend, _grow, _root, _starts, _take

    xp, n = m.xp, m.n_units
    step = _chunk(m, k, None)
    rng = np.random.default_rng(1)
    parents = np.sort(np.argsort(rng.random((step, n - 1)), axis=1)[:, :k - 1], axis=1)
    parents = parents[np.argsort(parents[:, -1], kind="stable")] if k > 1 else parents
    b = _take(_root(m), xp.zeros(step, dtype=xp.int64))
    for i in range(k - 1):
        b = _extend(m, b, slice(None), xp.asarray(parents[:, i]))
    start = _starts(m, b, k - 1, n)
    total, nf = int(start[-1]), len(m.fixed)
    best, kept = float("inf"), _Best(1)

    def batch(lo, hi):          # as the search does: the children, their Omega, the best kept
        _, vars_, om = _grow(m, b, start, lo, hi, leaf, True)
        kept.add(om, vars_[nf:].T)

    batch(0, min(step, total))                                    # warm-up
    for _ in range(repeats):
        done, lo, t0 = 0, 0, time.process_time()
        while done < 2 * step or time.process_time() - t0 < min_time:
            hi = min(lo + step, total)
            batch(lo, hi)
            done, lo = done + hi - lo, (hi if hi < total else 0)
        best = min(best, (time.process_time() - t0) / done)
    return best


def time_greedy(m, k: int, candidates: int, min_time: float, repeats: int) -> float:
    from infoprobe.estimators.oinfo import _extend, _greedy_step, _root

    xp = m.xp
    b = _root(m)
    for v in range(k - 1):
        b = _extend(m, b, xp.zeros(1, dtype=xp.int64), xp.full(1, v, dtype=xp.int64))
    cands = np.arange(k - 1, k - 1 + candidates) % m.n_units
    best = float("inf")
    for _ in range(repeats):
        reps, t0 = 0, time.process_time()
        while reps < 3 or time.process_time() - t0 < min_time:
            _greedy_step(m, b, cands, k)
            reps += 1
        best = min(best, (time.process_time() - t0) / reps)
    return best


def fit(obs):
    """(a, b, c) of seconds = a + G (b + c v^2), non-negative least squares on relative error."""
    from scipy.optimize import nnls

    g, v, t = (np.array(c, float) for c in zip(*obs))
    coef, _ = nnls(np.column_stack([np.ones_like(g), g, g * v * v]) / t[:, None], np.ones_like(t))
    return tuple(float(c) for c in coef)


def per_multiplet(coef, g, v):
    a, b, c = coef
    return a + g * (b + c * v * v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=40)
    ap.add_argument("--min-time", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="2,3,4,5,6,7")
    ap.add_argument("--check", action="store_true",
                    help="Only compare whole searches with the estimates of the recorded constants.")
    args = ap.parse_args()
    if args.check:
        return check(CostModel())
    sizes = [int(s) for s in args.sizes.split(",")]
    configs = [("none", 2), ("ordinal", 10), ("exact", 2), ("exact", 10)]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, one search thread")
    obs = {"leaf": [], "inner": []}
    greedy = []
    for labels, classes in configs:
        m = model(labels, classes, args.units)
        g, nf = m.cov.shape[0], len(m.fixed)
        for k in sizes:
            if k + nf + (labels == "exact") < 3:
                continue
            for kind in ("leaf", "inner"):
                t = time_level(m, k, kind == "leaf", args.min_time, args.repeats)
                obs[kind].append((g, k + nf, t))
                print(f"{labels:>7} G={g:<2} k={k} {kind:>5}: {1 / t:12,.0f} multiplets/s", flush=True)
        for cands in (1, 200):
            greedy.append((g, 6 + nf, cands, time_greedy(m, 6, cands, args.min_time, args.repeats)))
    leaf, inner = fit(obs["leaf"]), fit(obs["inner"])
    # greedy step: overhead + candidates x inner cost
    over = [t - c * per_multiplet(inner, g, v) for g, v, c, t in greedy]
    step = max(0.0, float(np.median(over)))
    print("\nLEAF = ({:.3g}, {:.3g}, {:.3g})\nINNER = ({:.3g}, {:.3g}, {:.3g})".format(*leaf, *inner)
          + f"\nSTEP = {step:.3g}")
    print("\n| kind | G | v | measured multiplets/s | model | model / measured |\n|---|---|---|---|---|---|")
    for kind, coef in (("leaf", leaf), ("inner", inner)):
        for g, v, t in obs[kind]:
            r = 1 / per_multiplet(coef, g, v)
            print(f"| {kind} | {g} | {v} | {1 / t:,.0f} | {r:,.0f} | {r * t:.2f} |")
    for g, v, c, t in greedy:
        print(f"| greedy step, {c} candidates | {g} | {v} | {t * 1e3:.3f} ms | "
              f"{(step + c * per_multiplet(inner, g, v)) * 1e3:.3f} ms | |")
    check(CostModel(leaf, inner, step))


def check(cost):
    """Whole searches (one thread) against the fitted model's estimate."""
    from infoprobe.estimators.oinfo import search_cost, search_multiplets

    print("\n| search | estimated s | measured s | measured / estimated |\n|---|---|---|---|")
    for labels, classes, units, e, top in (("exact", 10, 60, 4, 8), ("exact", 2, 40, 5, 8), ("none", 2, 40, 5, 8),
                                           ("ordinal", 10, 100, 3, 10)):
        m = model(labels, classes, units)
        est = search_cost(units, e, throughput=cost.for_search(labels=labels, classes=classes), max_size=top).seconds
        t0 = time.process_time()
        search_multiplets(m, max_size=top, exhaustive_up_to=e, threads=1)
        t = time.process_time() - t0
        print(f"| {labels}, {classes} classes, {units} units, exhaustive up to {e} | {est:.2f} | {t:.2f} | "
              f"{t / est:.2f} |")


if __name__ == "__main__":
    main()
