"""Scale: independent work on a Dask LocalCluster, and estimators over a store larger than the
memory budget (run by hand, not a test).

Parts:

- ``sweep``: ``infoprobe frivolous --sweep`` over the 15 bundled width-family networks (five
  widths, three seeds) in one process, then with ``--workers N``; wall times, their ratio, and
  the largest relative difference between the two runs' tables.
- ``flow``: ``infoprobe flow --checkpoints`` over the seven bundled SZT checkpoints
  (``--mc 20000 --samples 50``), the same way.
- ``store``: a store of one dense layer (256 units, pre- and post-activations) of
  ``--store-factor`` x ``--max-memory`` bytes, then ``infoprobe importance`` (quantile
  quantizer) and ``infoprobe synergy`` (exhaustive to 2, greedy to 3) under ``--max-memory``,
  each timed and its peak resident memory read by ``/usr/bin/time -v``.

Every command runs as a fresh process, as a user would run it, so the LocalCluster's start
(a few seconds) is counted.

Usage::

    python benchmarks/scale.py [--parts sweep,flow,store] [--workers 2] [--max-memory 256M]
                               [--store-factor 4] [--tmp DIR]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
INFOPROBE = [sys.executable, "-m", "infoprobe.cli.main"]


def run(args, *, timed=True) -> tuple[float, int]:
    """Wall seconds and peak resident kilobytes (``/usr/bin/time -v``) of one command."""
    cmd = (["/usr/bin/time", "-v"] if timed and Path("/usr/bin/time").exists() else []) + INFOPROBE + args
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}\n{r.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return wall, int(m.group(1)) if m else -1


def tables(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*.json")):
        doc = json.loads(p.read_text())
        out[str(p.relative_to(folder))] = doc.get("rows", doc)
    return out


def largest_difference(a, b) -> float:
    """Largest relative difference between the numbers of two JSON documents of one shape."""
    if isinstance(a, dict):
        return max([largest_difference(a[k], b[k]) for k in a if k not in ("created", "meta")] or [0.0])
    if isinstance(a, list):
        return max([largest_difference(x, y) for x, y in zip(a, b)] or [0.0])
    if isinstance(a, (int, float)) and not isinstance(a, bool) and a is not None and b is not None:
        if a == b or (a != a and b != b):
            return 0.0
        return abs(a - b) / max(abs(a), abs(b), 1e-300)
    return 0.0 if a == b else float("inf")


def serial_vs_cluster(name, args, out: Path, workers: int) -> None:
    t1, _ = run(args + ["--out", str(out / f"{name}_serial")], timed=False)
    tn, _ = run(args + ["--out", str(out / f"{name}_dask"), "--workers", str(workers)], timed=False)
    diff = largest_difference(tables(out / f"{name}_serial"), tables(out / f"{name}_dask"))
    print(f"{name}: serial {t1:.1f} s, {workers} workers {tn:.1f} s, ratio {t1 / tn:.2f}x; "
          f"largest relative difference {diff:.1e}")


def write_store(path: Path, nbytes: int, units: int = 256) -> int:
    from infoprobe.store import StoreWriter

    n = nbytes // (units * 4 * 2)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    centre = rng.standard_normal((10, units)).astype(np.float32)
    layers = [dict(name="fc", kind="dense", shape=(units,), units=units, activation="relu", depth=1, inputs=[],
                   is_output=False),
              dict(name="out", kind="dense", shape=(10,), units=10, activation="none", depth=2, inputs=["fc"],
                   is_output=True)]
    w = StoreWriter(path, n_rows=n, layers=layers, n_outputs=10, labels=y)
    step = 65536
    for s in range(0, n, step):
        yb = y[s:s + step]
        pre = rng.standard_normal((len(yb), units), dtype=np.float32) + centre[yb]
        z = np.zeros((len(yb), 10), np.float32)
        w.write(s, {"layers/fc/pre": pre, "layers/fc/post": np.maximum(pre, 0), "layers/out/pre": z,
                    "layers/out/post": z, "outputs/logits": z})
    w.finish()
    w.close()
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="sweep,flow,store")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-memory", default="256M")
    ap.add_argument("--store-factor", type=float, default=4.0)
    ap.add_argument("--tmp", default=None, help="Folder for results and the store (default: a temporary one).")
    a = ap.parse_args()
    from infoprobe.limits import human, parse_size

    parts = a.parts.split(",")
    tmp = Path(a.tmp) if a.tmp else Path(tempfile.mkdtemp(prefix="infoprobe-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if "sweep" in parts:
            models = sorted(map(str, FIX.glob("synth_mlp_w*.onnx"))) + sorted(map(str, FIX.glob("synth_rep_w*.onnx")))
            serial_vs_cluster("sweep", ["frivolous", "--sweep", *models, "--data", str(FIX / "synthetic_10d.npz"),
                                        "--split", "test", "--no-plot", "--no-progress"], tmp, a.workers)
        if "flow" in parts:
            models = sorted(map(str, FIX.glob("szt_e*.onnx")))
            serial_vs_cluster("flow", ["flow", "--checkpoints", *models, "--data", str(FIX / "szt_12bit.npz"),
                                       "--beta", "0.005", "--mc", "20000", "--samples", "50", "--no-plot",
                                       "--no-progress"], tmp, a.workers)
        if "store" in parts:
            budget = parse_size(a.max_memory)
            store = tmp / "big.h5"
            n = write_store(store, int(a.store_factor * budget))
            size = store.stat().st_size
            print(f"store: {n:,} samples x 256 units (pre and post), {human(size)} on disk = "
                  f"{size / budget:.1f}x --max-memory {a.max_memory}")
            for verb, extra in (("importance", ["--quantizer", "quantile", "--no-js"]),
                                ("synergy", ["--max-size", "3", "--exhaustive-up-to", "2"])):
                wall, kb = run([verb, str(store), "--out", str(tmp / verb), "--no-plot", "--no-progress",
                                "--max-memory", a.max_memory, *extra])
                print(f"  {verb}: {wall:.1f} s, peak resident {human(kb * 1024)} "
                      f"({kb * 1024 / size:.2f}x the store, {kb * 1024 / budget:.2f}x --max-memory)")
    finally:
        if not a.tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
