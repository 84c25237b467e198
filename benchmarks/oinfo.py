"""O-information throughput and agreement: infoprobe against hoi and thoi, same data, same run.

    python benchmarks/oinfo.py [--parts exhaustive,greedy,cuda] [--samples 10000]

Data: pre-activations of the bundled ReLU MLP's first layer (20 units) and of the sigmoid
MLP's first layer (100 units) on the 10,000 images of ../shared/data/mnist_10k.npz (the
bundled 4,000 images when that is absent), with their labels.

- exhaustive: every multiplet of 3..6 units (60,249), O-information without the label and
  with it (infoprobe: ``ordinal``, the encoding hoi uses, and ``exact``), timed for
  infoprobe's exhaustive search and for an explicit list of all multiplets; hoi 0.0.7
  (``Oinfo``, 64-bit JAX) and thoi 0.2.42 (``multi_order_measures``; with the label via
  ``nplets_measures`` with the label as the last variable) on the same data. Reports
  multiplets/s and the largest difference in bits.
- greedy: 100 units, best triplet then greedy to size 10 (synergy, no label). thoi 0.2.42's
  ``greedy()`` raises a TypeError, so the same algorithm is run with thoi's own estimator
  (exhaustive triplets by ``multi_order_measures``, each step's candidates by
  ``nplets_measures``).
- cuda: the CuPy path (60 units, sizes 3..8) when CuPy and a GPU are present.
Needs: pip install hoi==0.0.7 thoi==0.2.42 torch==2.13.0 (benchmarks only).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "mnist_10k.npz"


def activations(model: str, layer: str, n: int):
    from infoprobe.model import load_model
    from infoprobe.rewrite import io_name
    from infoprobe.runner import Runner

    src = SHARED if SHARED.exists() else ROOT / "fixtures" / "mnist_demo.npz"
    d = np.load(src)
    x, y = d["x"][:n].reshape(-1, 784).astype(np.float32) / 255.0, d["y"][:n].astype(np.int64)
    lm = load_model(ROOT / "fixtures" / f"{model}.onnx")
    pre = Runner(lm, expose=True).run(x, outputs=[io_name(layer, "pre")])[io_name(layer, "pre")]
    return pre.astype(np.float64), y, src.name


def best_of(f, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return best, out


def exhaustive(samples: int):
    from infoprobe.estimators.oinfo import copula_model, o_information, search_multiplets

    x, y, src = activations("mlp_relu", "fc1_matmul", samples)
    n_units = x.shape[1]
    mults = {k: np.array(list(itertools.combinations(range(n_units), k))) for k in range(3, 7)}
    total = sum(len(m) for m in mults.values())
    print(f"\n## Exhaustive: {total:,} multiplets of 3..6 of {n_units} units, N = {len(x):,} ({src})\n")
    print("| implementation | label | seconds | multiplets/s | max abs diff vs infoprobe [bits] |")
    print("|---|---|---|---|---|")
    ours = {}
    for labels in ("none", "ordinal", "exact"):
        m = copula_model(x, y, labels=labels, ties="ordinal" if labels == "ordinal" else "average")
        t, _ = best_of(lambda: search_multiplets(m, min_size=3, max_size=6, exhaustive_up_to=6))
        print(f"| infoprobe search | {labels} | {t:.3f} | {total / t:,.0f} | |")
        t, vals = best_of(lambda: np.concatenate([o_information(m, mults[k]) for k in range(3, 7)]))
        ours[labels] = vals
        print(f"| infoprobe list | {labels} | {t:.3f} | {total / t:,.0f} | |")
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        from hoi.metrics import Oinfo
        for labels, kw in (("none", {}), ("ordinal", {"y": y.astype(np.float64)})):
            est = Oinfo(x, verbose=False, **kw)
            t0 = time.perf_counter()
            vals = est.fit(minsize=3, maxsize=6, method="gc")[:, 0]
            t = time.perf_counter() - t0
            combos, _ = est.get_combinations(3, 6, astype="numpy")
            order = {tuple(c[c >= 0][c[c >= 0] < n_units]): i for i, c in enumerate(combos)}
            idx = [order[tuple(c)] for k in range(3, 7) for c in mults[k]]
            diff = np.abs(vals[idx] - ours[labels]).max()
            print(f"| hoi 0.0.7 Oinfo | {labels} | {t:.2f} | {total / t:,.0f} | {diff:.2e} |")
    except ImportError:
        print("| hoi | - | not installed | | |")
    try:
        import torch
        from thoi.measures.gaussian_copula import multi_order_measures, nplets_measures
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        df = multi_order_measures(x, 3, 6)
        t = time.perf_counter() - t0
        var = df[[f"var_{i}" for i in range(n_units)]].to_numpy(bool)
        pos = {tuple(np.flatnonzero(r)): i for i, r in enumerate(var)}
        vals = df["o"].to_numpy()[[pos[tuple(c)] for k in range(3, 7) for c in mults[k]]] / np.log(2)
        print(f"| thoi 0.2.42 multi_order_measures | none | {t:.2f} | {total / t:,.0f} | "
              f"{np.abs(vals - ours['none']).max():.2e} |")
        from infoprobe.estimators.gaussian import copnorm
        xy = np.column_stack([x, np.asarray(copnorm(y.astype(float), ties="ordinal"))])
        t0 = time.perf_counter()
        res = [nplets_measures(xy, nplets=torch.tensor(np.column_stack([mults[k], np.full(len(mults[k]), n_units)])))
               for k in range(3, 7)]
        t = time.perf_counter() - t0
        vals = np.concatenate([r[:, 0, 2].numpy() for r in res]) / np.log(2)
        print(f"| thoi 0.2.42 nplets_measures | ordinal | {t:.2f} | {total / t:,.0f} | "
              f"{np.abs(vals - ours['ordinal']).max():.2e} |")
    except ImportError:
        print("| thoi | - | not installed | | |")


def greedy(samples: int, max_size: int = 10):
    from infoprobe.estimators.oinfo import copula_model, search_multiplets

    x, y, src = activations("mlp_sigmoid", "fc1", samples)
    n = x.shape[1]
    print(f"\n## Greedy: {n} units, best triplet then greedy to size {max_size} (synergy, no label), "
          f"N = {len(x):,} ({src})\n")
    m = copula_model(x, labels="none")
    t, rows = best_of(lambda: search_multiplets(m, min_size=3, max_size=max_size, exhaustive_up_to=3))
    ours = {r["size"]: r for r in rows if r["direction"] == "synergy"}
    print("| implementation | seconds | Omega at size 3 / size 10 [bits] |")
    print("|---|---|---|")
    print(f"| infoprobe search_multiplets | {t:.3f} | {ours[3]['omega']:.4f} / {ours[max_size]['omega']:.4f} |")
    try:
        import torch
        from thoi.measures.gaussian_copula import multi_order_measures, nplets_measures
        torch.set_num_threads(2)

        def thoi_greedy():
            df = multi_order_measures(x, 3, 3)
            var = df[[f"var_{i}" for i in range(n)]].to_numpy(bool)
            i = int(np.argmin(df["o"].to_numpy()))
            chain, vals = list(np.flatnonzero(var[i])), [df["o"].to_numpy()[i]]
            while len(chain) < max_size:
                cands = np.setdiff1d(np.arange(n), chain)
                nplets = torch.tensor(np.column_stack([np.tile(chain, (len(cands), 1)), cands]))
                o = nplets_measures(x, nplets=nplets)[:, 0, 2].numpy()
                j = int(np.argmin(o))
                chain.append(int(cands[j]))
                vals.append(o[j])
            return chain, np.array(vals) / np.log(2)

        t2, (chain, vals) = best_of(thoi_greedy, repeats=1)
        print(f"| thoi 0.2.42 (same greedy, thoi estimator) | {t2:.3f} | {vals[0]:.4f} / {vals[-1]:.4f} |")
        print(f"\nsame multiplet at size {max_size}: {sorted(chain) == sorted(ours[max_size]['units'])}; "
              f"time ratio thoi / infoprobe: {t2 / t:.1f}")
    except ImportError:
        print("| thoi | not installed | |")


def cuda(samples: int):
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise ImportError
    except Exception:
        print("\n## CUDA: CuPy or a GPU is missing; not run")
        return
    from infoprobe.estimators.oinfo import copula_model, n_multiplets, search_multiplets

    x, y, src = activations("mlp_sigmoid", "fc1", samples)
    x = x[:, :60]
    print(f"\n## CUDA: 60 units, sizes 3..8, N = {len(x):,}\n")
    print("| labels | device | seconds | multiplets/s |")
    print("|---|---|---|---|")
    total = n_multiplets(60, range(3, 9))
    for labels in ("none", "exact"):
        for device in ("cuda", "cpu"):
            m = copula_model(x, y, labels=labels, device=device)
            t, _ = best_of(lambda: search_multiplets(m, min_size=3, max_size=8, exhaustive_up_to=8,
                                                     max_multiplets=10 ** 12), repeats=1)
            print(f"| {labels} | {device} | {t:.2f} | {total / t:,.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="exhaustive,greedy,cuda")
    ap.add_argument("--samples", type=int, default=10000)
    args = ap.parse_args()
    parts = args.parts.split(",")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    if "exhaustive" in parts:
        exhaustive(args.samples)
    if "greedy" in parts:
        greedy(args.samples)
    if "cuda" in parts:
        cuda(args.samples)


if __name__ == "__main__":
    main()
