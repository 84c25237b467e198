"""Cost of an ablation sweep against plain forward passes, measured side by side.

M single-layer ablation masks over N test images of the sigmoid MLP (784-100-100-10), six
ways, each timed as the best of ``--repeats`` runs:

  plain     M forward passes of the unmodified model (one session)            -- the unit
  engine    infoprobe's intervention engine (what ablate, frivolous and modules run):
            an Evaluator built (sessions, intact pass) and the M ablations evaluated
  sweep     the suffix by hand: layers before the ablated one computed once,
            then the suffix graph with each mask broadcast over the batch
  full      every mask through the whole instrumented model (no suffix)
  fresh     a new InferenceSession per ablation (what re-building models costs)
  floor     the suffix graph M times with no intervention fed (the floor)

Usage::

    python benchmarks/ablation_sweep.py [--masks 200] [--n 2000] [--layer fc1] [--threads 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from infoprobe.data import load_data, prepare_inputs
from infoprobe.interventions import Evaluator, Intervention
from infoprobe.model import load_model
from infoprobe.rewrite import instrument, io_name
from infoprobe.runner import Runner

ROOT = Path(__file__).resolve().parents[1]


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "fixtures/mlp_sigmoid.onnx"))
    ap.add_argument("--data", default=str(ROOT / "fixtures/mnist_demo.npz"))
    ap.add_argument("--layer", default="fc1")
    ap.add_argument("--masks", type=int, default=200)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    lm = load_model(args.model)
    lay = lm.layer(args.layer)
    data = load_data(args.data, split="test", limit=args.n)
    x = prepare_inputs(data.x, lm.input_shape, 1 / 255)
    rng = np.random.default_rng(0)
    masks = [(rng.random(lay.units) > 0.5).astype(np.float32) for _ in range(args.masks)]
    zeros = np.zeros(lay.units, np.float32)
    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    threads = args.threads or None

    plain_sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    full = Runner(lm, threads=threads)
    sfx = Runner(lm, after=args.layer, threads=threads)
    prefix = Runner(lm, expose=True, threads=threads)
    model_bytes = ir.to_proto(instrument(lm, expose=False)).SerializeToString()

    def plain():
        for _ in masks:
            plain_sess.run(None, {lm.input_name: x})

    def sweep():
        post = prefix.run(x, outputs=[io_name(args.layer, "post")])[io_name(args.layer, "post")]
        for m in masks:
            sfx.run(post, feeds=sfx.intervention_feeds(lay, m, zeros), outputs=[lm.output_name])

    post = prefix.run(x, outputs=[io_name(args.layer, "post")])[io_name(args.layer, "post")]

    def engine():
        ev = Evaluator(lm, x, labels=data.y, threads=threads)
        ev.evaluate([[Intervention(args.layer, np.flatnonzero(m == 0))] for m in masks])

    def floor():
        for _ in masks:
            sfx.session.run([lm.output_name], {**sfx.identity, sfx.data_input: post})

    def whole():
        for m in masks:
            full.run(x, feeds=full.intervention_feeds(lay, m, zeros), outputs=[lm.output_name])

    def fresh():
        for m in masks:
            s = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
            feeds = {**full.identity, **full.intervention_feeds(lay, m, zeros), lm.input_name: x}
            s.run([lm.output_name], feeds)

    # the sweep's answers are the whole model's answers
    a = sfx.run(post, feeds=sfx.intervention_feeds(lay, masks[0], zeros))[lm.output_name]
    b = full.run(x, feeds=full.intervention_feeds(lay, masks[0], zeros))[lm.output_name]
    assert np.allclose(a, b, atol=1e-5)

    t = {name: best(fn, args.repeats) for name, fn in
         (("plain", plain), ("engine", engine), ("sweep", sweep), ("full", whole), ("fresh", fresh), ("floor", floor))}
    print(f"model {Path(args.model).name}, layer {args.layer} ({lay.units} units), M = {args.masks} masks, "
          f"N = {len(x)} images, threads = {args.threads or 'default'}, best of {args.repeats}")
    print(f"{'way':<8} {'seconds':>9} {'ms/ablation':>12} {'x plain':>8}")
    for k, v in t.items():
        print(f"{k:<8} {v:9.3f} {1000 * v / args.masks:12.3f} {v / t['plain']:8.3f}")
    print(f"sweep / floor = {t['sweep'] / t['floor']:.2f} (1.00 is the cost of running only the suffix)")


if __name__ == "__main__":
    main()
