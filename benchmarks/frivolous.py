"""Speed of the prunability analysis (run by hand, not a test).

Prunability of a model (all fractions 0, 1/6, ..., 1; 3 permutations; every hidden layer
alone and all at once) against the same number of plain forward passes of the unmodified
model through onnxruntime on the same test inputs. Target: at most 1.3x. The analysis time
includes building its onnxruntime sessions and the intact pass. It is run with the default
``rows_per_run`` (256: ablations are stacked along the batch only for small data sets) and
with every run stacked to about 4,096 rows, to show what stacking costs or buys.

Models:
- ``synth``: the 4x synthetic-data MLP of the fixtures (10-512-2) on its 1,000 test samples;
- ``synth10k``: the same family's 4x model on 10,000-dimensional inputs (10000-512-2), built
  by ``python fixtures/build_frivolous_fixtures.py --dims 10000 --out-dir DIR`` (skipped
  when ``--synth10k-dir`` is not given);
- ``sigmoid``: the 784-100-100-10 sigmoid MNIST MLP on the 2,000 test images of
  ``fixtures/mnist_demo.npz``.

Usage::

    python benchmarks/frivolous.py [--parts synth,sigmoid,synth10k] [--synth10k-dir DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"


def bench(name, model_path, data_path, split, repeats=5):
    from infoprobe.analyses.frivolous import prunability
    from infoprobe.data import load_data, prepare_inputs, resolve_scale
    from infoprobe.model import load_model
    from infoprobe.rewrite import io_name
    from infoprobe.runner import Runner, make_session

    lm = load_model(model_path)
    data = load_data(data_path, split=split)
    times = {}
    for label, rows in (("default", 256), ("stacked to 4,096 rows", 4096)):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = prunability(lm, data, seed=0, rows_per_run=rows, progress=False)
            best = min(best, time.perf_counter() - t0)
        times[label] = best
    n = res.runs
    x = prepare_inputs(data.x, lm.input_shape, resolve_scale(data.x, "auto"))
    setup = float("inf")
    for _ in range(repeats):   # what the analysis spends before its first ablation
        t0 = time.perf_counter()
        full = Runner(lm, expose=True, spin=False)
        full.run(x, outputs=[lm.output_name] + [io_name(lay.name, "post") for lay in lm.hidden_layers])
        for lay in lm.hidden_layers:
            Runner(lm, after=lay.name)
        setup = min(setup, time.perf_counter() - t0)
    sess = make_session(lm.fresh_ir())
    sess.run(None, {lm.input_name: x[:8]})
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            for start in range(0, len(x), 4096):
                sess.run(None, {lm.input_name: x[start:start + 4096]})
        best = min(best, time.perf_counter() - t0)
    print(f"{name}: {len(lm.hidden_layers)} hidden layer(s), {n} ablations on {len(x)} test samples "
          f"(best of {repeats})")
    print(f"  {n} plain forward passes {best:.3f} s; the analysis's setup (sessions, intact pass) {setup:.3f} s")
    for label, t in times.items():
        print(f"  prunability, {label}: {t:.3f} s, ratio {t / best:.2f}x (target <= 1.3x); "
              f"without the setup {(t - setup) / best:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="synth,sigmoid,synth10k")
    ap.add_argument("--synth10k-dir", type=Path, default=None)
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "synth" in parts:
        bench("synth 4x (10-512-2)", FIX / "synth_mlp_w4.onnx", FIX / "synthetic_10d.npz", "test")
    if "sigmoid" in parts:
        bench("sigmoid MNIST MLP (784-100-100-10)", FIX / "mlp_sigmoid.onnx", FIX / "mnist_demo.npz", "test")
    if "synth10k" in parts and args.synth10k_dir:
        d = args.synth10k_dir
        bench("synth 4x on 10,000 dims (10000-512-2)", d / "synth_mlp_w4.onnx", d / "synthetic_10000d.npz", "test")


if __name__ == "__main__":
    main()
