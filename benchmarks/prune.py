"""Physical pruning and the CI gate, measured side by side on the sigmoid MNIST MLP.

Three parts (all on the bundled fixtures; measures from the validation split, accuracy on
the test split):

  table    accuracy and label agreement with the original after physically pruning 30%,
           50% and 70% of the hidden units with each plan generator, with and without bias
           balancing (``--replace zero`` vs ``mean``)
  latency  onnxruntime latency of the 50%-pruned model relative to the original, at batch
           1 and a large batch, next to the ratio of multiply-accumulates (the ideal)
  zoo      each zoo model (ResNet, MobileNetV2, ViT, BERT-style encoder) pruned by a 50%
           magnitude plan over its dependency groups (the CNNs also with ``round_to=16``,
           kept channels a multiple of 16; the ResNet also at 25%, 12 and 24 channels left):
           the MAC ratio, and the latency ratio at
           batch 1 and at batch 256 measured side by side
           (``infoprobe.modelstats.compare_latency``), with the measured speed-up as a share
           of the MAC-predicted one (goal: >= 80% at batch 256 on ResNet and MobileNetV2)
  check    time of ``infoprobe.analyses.check.check`` relative to two plain inference passes
           over the same data (inputs converted once, two sessions created from the
           files, each run over all samples), on the 2,000 test images and on 5 and 25 copies of them; target <= 1.2x

Usage::

    python benchmarks/prune.py [--parts table,latency,zoo,check] [--repeats 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from infoprobe.analyses.check import check
from infoprobe.analyses.importance import importance
from infoprobe.analyses.capture import capture
from infoprobe.analyses.plans import make_plan
from infoprobe.data import load_data, prepare_inputs
from infoprobe.model import load_model
from infoprobe.modelstats import measure_latency, model_cost
from infoprobe.prune import apply_plan, save_model
from infoprobe.runner import make_session
from infoprobe.store import Store

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def file_session(path):
    """onnxruntime session of a validated model file."""
    return make_session(load_model(path).ir_model)
HYBRID = "fc1=mutual_information:1,fc2=kl_selectivity:2"
GENERATORS = [  # label, method, options
    ("MI", "measure", {"measure": "mutual_information"}),
    ("KL selectivity", "measure", {"measure": "kl_selectivity"}),
    ("hybrid MI/KL 1:2", "hybrid", {"hybrid": HYBRID}),
    ("magnitude", "magnitude", {}),
    ("merge (surgery)", "merge", {"surgery": True}),
    ("merge (no surgery)", "merge", {"surgery": False}),
    ("random (mean of 5)", "random", {}),
]


def table(lm, store, imp, test, tmp):
    x = prepare_inputs(test.x, lm.input_shape, 1 / 255)
    base = file_session(lm.path).run(None, {lm.input_name: x})[0].argmax(1)
    print(f"baseline test accuracy {np.mean(base == test.y):.4f} ({len(x)} test images)")
    print(f"{'generator':<20} {'pruned':>6}  {'acc zero':>8} {'agree':>6}  {'acc mean':>8} {'agree':>6}")
    for label, method, opts in GENERATORS:
        for frac in (0.3, 0.5, 0.7):
            cells = []
            for replace in ("zero", "mean"):
                accs, agrees = [], []
                for seed in (range(5) if method == "random" else [0]):
                    plan = make_plan(lm, method, frac, store=store, replace=replace, seed=seed,
                                     importance=imp, **opts)
                    path = save_model(apply_plan(lm, plan), tmp / "p.onnx", overwrite=True)
                    pred = file_session(path).run(None, {lm.input_name: x})[0].argmax(1)
                    accs.append(np.mean(pred == test.y))
                    agrees.append(np.mean(pred == base))
                cells.append(f"{np.mean(accs):8.4f} {np.mean(agrees):6.4f}")
            print(f"{label:<20} {frac:>6.0%}  {cells[0]}  {cells[1]}")


def latency(lm, store, imp, test, tmp, repeats):
    plan = make_plan(lm, "measure", 0.5, store=store, importance=imp)
    path = save_model(apply_plan(lm, plan), tmp / "p50.onnx", overwrite=True)
    macs = model_cost(load_model(path).ir_model)["macs"] / model_cost(lm.ir_model)["macs"]
    sessions = {"original": file_session(lm.path), "pruned": file_session(path)}
    x = prepare_inputs(test.x, lm.input_shape, 1 / 255)
    print(f"50% of the hidden units removed: MAC ratio {macs:.3f} (the ideal latency ratio)")
    for batch in (1, 256, 2000):
        med = {k: [] for k in sessions}
        for _ in range(repeats):  # interleaved so that drifts hit both models
            for k, s in sessions.items():
                med[k].append(measure_latency(s, lm.input_name, x[:batch], repeats=200 if batch == 1 else 30)["median_ms"])
        o, p = np.median(med["original"]), np.median(med["pruned"])
        print(f"  batch {batch:>5}: original {o:.4f} ms, pruned {p:.4f} ms, ratio {p / o:.3f}")


def zoo(tmp, repeats):
    from infoprobe.analyses.compress import prunable_part
    from infoprobe.data import model_inputs
    from infoprobe.modelstats import compare_latency

    print(f"{'model':<18} {'pruned':>6} {'round':>5} {'MACs':>6} {'b=1':>6} {'b=256':>6}  "
          "speed-up / MAC-predicted at b=256")
    for name, frac, round_to in (("zoo_resnet", 0.25, 1), ("zoo_resnet", 0.5, 1), ("zoo_resnet", 0.5, 16),
                                 ("zoo_mobilenetv2", 0.5, 1), ("zoo_mobilenetv2", 0.5, 16),
                                 ("zoo_vit", 0.5, 1), ("zoo_encoder", 0.5, 1)):
        lm = load_model(FIX / f"{name}.onnx")
        plan, _ = prunable_part(lm, make_plan(lm, "magnitude", frac, round_to=round_to))
        path = save_model(apply_plan(lm, plan), tmp / f"{name}_50.onnx", overwrite=True)
        macs = model_cost(load_model(path).ir_model)["macs"] / model_cost(lm.ir_model)["macs"]
        if name == "zoo_encoder":
            d = load_data(FIX / "tokens_demo.npz", split="test", x_key="input_ids,attention_mask", limit=256)
            x = model_inputs(lm, d.x, 1.0)
        else:
            x = model_inputs(lm, load_data(FIX / "mnist_demo.npz", split="test", limit=256).x, 1 / 255)
        lat = compare_latency({"original": file_session(lm.path), "pruned": file_session(path)}, lm.input_name, x,
                              batches=(1, 256), repeats=30 * repeats)
        r1, r256 = (lat["pruned"][i]["median_ms"] / lat["original"][i]["median_ms"] for i in (0, 1))
        share = (1 / r256 - 1) / (1 / macs - 1) if macs < 1 else float("nan")
        print(f"{name:<18} {frac:>6.0%} {round_to:>5} {macs:6.3f} {r1:6.3f} {r256:6.3f}  {1 / r256:.2f}x / "
              f"{1 / macs:.2f}x = {share:.0%}")


def check_cost(lm, store, imp, test, tmp, repeats):
    plan = make_plan(lm, "measure", 0.5, store=store, importance=imp)
    cand = save_model(apply_plan(lm, plan), tmp / "c50.onnx", overwrite=True)
    for copies in (1, 5, 25):   # the test split, repeated: fixed costs against per-sample costs
        data = load_data(FIX / "mnist_demo.npz", split="test")
        data.x, data.y = np.concatenate([data.x] * copies), np.concatenate([data.y] * copies)

        def plain():  # what a script comparing the two would do: convert once, run both
            x = prepare_inputs(data.x, lm.input_shape, 1 / 255)
            for path in (lm.path, cand):
                s = file_session(path)
                for i in range(0, len(x), 1024):
                    s.run(None, {lm.input_name: x[i:i + 1024]})

        def gate():
            check(lm.path, cand, data, batch_size=1024)

        times = {"plain": [], "check": []}
        for _ in range(repeats):
            for name, f in (("plain", plain), ("check", gate)):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        p, c = min(times["plain"]), min(times["check"])
        print(f"check on {len(data.x):>6} samples: {c * 1e3:7.1f} ms; two plain passes (sessions included) "
              f"{p * 1e3:7.1f} ms; ratio {c / p:.2f} (best of {repeats})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="table,latency,zoo,check")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    val = load_data(FIX / "mnist_demo.npz", split="validation")
    test = load_data(FIX / "mnist_demo.npz", split="test")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with Store(capture(lm, val, tmp / "acts.h5", progress=False)) as store:
            imp = importance(store, progress=False)
            parts = args.parts.split(",")
            if "table" in parts:
                table(lm, store, imp, test, tmp)
            if "latency" in parts:
                latency(lm, store, imp, test, tmp, args.repeats)
            if "zoo" in parts:
                zoo(tmp, args.repeats)
            if "check" in parts:
                check_cost(lm, store, imp, test, tmp, args.repeats)


if __name__ == "__main__":
    main()
