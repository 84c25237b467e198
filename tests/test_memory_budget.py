"""--max-memory holds on wide layers: the verbs run in subprocesses under ``prlimit --as`` at
twice a small budget and either succeed, with the numbers of a plain-NumPy reference, or refuse
in one line (exit 2) naming the budget -- never a MemoryError, a traceback or a kill -- and
capture holds one batch at a time."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import FIX
from infoprobe.data import load_data, row_bytes

BUDGET = 512 * 1024**2          # --max-memory
LIMIT = 2 * BUDGET               # prlimit --as: the whole process, libraries included
WIDE, N = 4500, 300              # a careless U x U float64 copy is 162 MB; six at once exceed LIMIT
WIDER = 7000                     # its sums and pairs (8 U^2 + 4 U^2 bytes) exceed BUDGET: refused

needs_prlimit = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("prlimit") is None,
                                   reason="needs Linux's prlimit")


def _store(path, n, u, seed=0):
    """A dense layer of ``u`` units (a rank-40 signal plus noise, ReLU) over ``n`` samples."""
    from infoprobe.store import StoreWriter

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    pre = (rng.standard_normal((n, 40)) @ rng.standard_normal((40, u)) + y[:, None]
           + 0.1 * rng.standard_normal((n, u))).astype(np.float32)
    out = np.eye(4, dtype=np.float32)[y]
    layers = [dict(name="fc", kind="dense", shape=(u,), units=u, activation="relu", depth=1, inputs=[],
                   is_output=False),
              dict(name="out", kind="dense", shape=(4,), units=4, activation="none", depth=2, inputs=["fc"],
                   is_output=True)]
    w = StoreWriter(path, n_rows=n, layers=layers, n_outputs=4, labels=y)
    w.write(0, {"layers/fc/pre": pre, "layers/fc/post": np.maximum(pre, 0), "layers/out/pre": out,
                "layers/out/post": out, "outputs/logits": out})
    w.finish()
    w.close()
    return path, np.maximum(pre, 0).astype(np.float64)


def _wide_mlp(path, units):
    """784 -> ``units`` (ReLU) -> 10: a wide layer for capture."""
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((784, units)) / 28).astype(np.float32)
    w2 = (rng.standard_normal((units, 10)) / np.sqrt(units)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["fc1"]),
             helper.make_node("Relu", ["fc1"], ["relu1"]),
             helper.make_node("MatMul", ["relu1", "w2"], ["o"]), helper.make_node("Add", ["o", "b2"], ["logits"])]
    g = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(units, np.float32), "b1"),
                           numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(10, np.float32), "b2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _run(tmp_path, verb, *args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", INFOPROBE_THREADS="1",
               TMPDIR=str(tmp_path))
    env.pop("INFOPROBE_MAX_MEMORY", None)
    cmd = ["prlimit", f"--as={LIMIT}", sys.executable, "-m", "infoprobe.cli.main", verb, *map(str, args),
           "--max-memory", str(BUDGET), "--no-progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _succeeds_or_refuses(r, verb):
    """Exit 0, or exit 2 with one line that is the budget's refusal (not the fallback for a
    MemoryError, not a traceback); never killed by a signal."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode in (0, 2), (verb, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, (verb, r.stderr[-2000:])
    if r.returncode == 2:
        errors = [ln for ln in lines if ln.startswith("infoprobe: error:")]
        assert len(errors) == 1 and "memory budget" in errors[0] and "out of memory" not in errors[0], \
            (verb, r.stderr[-2000:])
    return r.returncode


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("wide") / "wide.h5", N, WIDE)


@needs_prlimit
def test_frivolous_on_a_wide_layer_within_the_budget_matches_numpy(wide, tmp_path):
    store, post = wide
    r = _run(tmp_path, "frivolous", store, "--out", tmp_path / "f", "--no-plot")
    assert _succeeds_or_refuses(r, "frivolous") == 0, r.stderr[-2000:]
    row = next(x for x in json.loads((tmp_path / "f" / "frivolous.json").read_text())["rows"] if x["layer"] == "fc")
    # the covariance's non-zero spectrum is that of the N x N Gram matrix of the centred rows
    xc = post - post.mean(axis=0)
    spec = np.sort(np.linalg.eigvalsh(xc @ xc.T / N))[::-1].clip(0)
    tail = [spec[k:].sum() / spec.sum() for k in range(len(spec) + 1)]
    k = next(k for k, t in enumerate(tail) if t <= 0.05)
    assert (row["units"], row["rows"], row["non_redundant"]) == (WIDE, N, k)
    assert row["unexplained"] == pytest.approx(tail[k], rel=1e-8)


@needs_prlimit
def test_frivolous_refuses_a_layer_whose_sums_exceed_the_budget(tmp_path):
    store, _ = _store(tmp_path / "wider.h5", 40, WIDER)
    r = _run(tmp_path, "frivolous", store, "--out", tmp_path / "f", "--no-plot")
    assert _succeeds_or_refuses(r, "frivolous") == 2
    assert "covariance sums of 1 layers" in r.stderr and "--layers" in r.stderr


@needs_prlimit
def test_importance_on_a_wide_layer_under_prlimit(wide, tmp_path):
    r = _run(tmp_path, "importance", wide[0], "--out", tmp_path / "i", "--no-plot", "--no-js")
    if _succeeds_or_refuses(r, "importance") == 0:
        rows = json.loads((tmp_path / "i" / "importance.json").read_text())["rows"]
        assert sum(x["layer"] == "fc" for x in rows) == WIDE


@needs_prlimit
def test_synergy_on_a_wide_layer_under_prlimit(wide, tmp_path):
    r = _run(tmp_path, "synergy", wide[0], "--out", tmp_path / "s", "--no-plot", "--layers", "fc",
             "--max-size", "3", "--exhaustive-up-to", "2", "--budget", "20")
    if _succeeds_or_refuses(r, "synergy") == 0:
        rows = json.loads((tmp_path / "s" / "synergy.json").read_text())["rows"]
        assert {(x["layer"], x["size"]) for x in rows} == {("fc", 2), ("fc", 3)}


@needs_prlimit
def test_capture_of_a_wide_model_under_prlimit(tmp_path):
    import h5py

    model = _wide_mlp(tmp_path / "wide.onnx", WIDE)
    # the default --max-model-size (2G) under a 1G address space: the model is read in a buffer of its own size
    r = _run(tmp_path, "capture", model, "--data", FIX / "mnist_demo.npz", "--split", "test", "--limit", 500,
             "--out", tmp_path / "c.h5")
    assert _succeeds_or_refuses(r, "capture") == 0, r.stderr[-2000:]
    d = load_data(FIX / "mnist_demo.npz", split="test", limit=500)
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(model).graph.initializer}
    pre = (d.x.reshape(len(d.x), -1).astype(np.float32) / 255) @ init["w1"]     # an independent forward pass
    with h5py.File(tmp_path / "c.h5") as f:
        site = next(g for g in f["layers"].values() if g["pre"].shape == (500, WIDE))
        np.testing.assert_allclose(site["pre"][()], pre, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(site["post"][()], np.maximum(site["pre"][()], 0))


def test_capture_holds_one_batch_at_a_time(tmp_path):
    """The arrays capture holds (tracemalloc) do not grow with the number of batches: a batch's
    inputs and activations are let go before the next one runs."""
    from infoprobe.analyses.capture import capture
    from infoprobe.model import load_model

    lm = load_model(FIX / "cnn_small.onnx")
    peaks = {}
    for n in (50, 50, 400):              # the first run pays one-off allocations
        d = load_data(FIX / "mnist_demo.npz", split="test", limit=n)
        tracemalloc.start()
        try:
            capture(lm, d, tmp_path / f"s{n}.h5", batch_size=50, progress=False, overwrite=True, positions="full")
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    batch_input = 50 * row_bytes(d.x)
    assert peaks[400] - peaks[50] < batch_input / 2, (peaks, batch_input)


def test_capture_batches_fit_a_quarter_of_the_budget(tmp_path, monkeypatch):
    """Each batch's input, the activations onnxruntime hands back for it (measured on one
    sample) twice over -- inside onnxruntime and copied out -- and the float64 mean of its
    widest site fit a quarter of --max-memory."""
    from infoprobe.analyses.capture import capture
    from infoprobe.limits import budgets
    from infoprobe.model import load_model
    from infoprobe.runner import Runner

    lm = load_model(FIX / "cnn_small.onnx")
    d = load_data(FIX / "mnist_demo.npz", split="test", limit=200)
    from infoprobe.data import model_inputs

    one = Runner(lm, expose=True).run(model_inputs(lm, d.x[:1], 1 / 255))
    sites = sum(v.nbytes for k, v in one.items() if k != lm.output_name)
    widest = max(8 * int(np.prod(lay.shape)) for lay in lm.layers)
    per_sample = row_bytes(d.x) + 2 * sites + widest
    seen = []
    run = Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, x, **kw: seen.append(len(x)) or run(self, x, **kw))
    with budgets(memory="4M"):
        capture(lm, d, tmp_path / "s.h5", progress=False)
    assert sum(seen) in (200, 201) and max(seen) * per_sample <= 4 * 1024**2 // 4, (seen, per_sample)


def test_session_arenas():
    from infoprobe.errors import ConfigError
    from infoprobe.runner import session_options

    assert session_options(arena="own").enable_cpu_mem_arena
    assert not session_options(arena="none").enable_cpu_mem_arena
    with pytest.raises(ConfigError, match="unknown arena"):
        session_options(arena="pool")


@pytest.mark.parametrize("order", ["C", "F"])
def test_pca_spectrum_in_place_makes_no_copy(order):
    """overwrite=True: LAPACK works in the covariance's memory (tracemalloc sees less than a
    quarter of it); the eigenvalues are NumPy's."""
    from infoprobe.estimators.frivolous import pca_spectrum

    x = np.random.default_rng(2).standard_normal((600, 400))
    cov = np.cov(x.T, bias=True)
    want = np.linalg.eigvalsh(cov)[::-1].clip(0)
    a = np.array(cov, order=order)
    pca_spectrum(np.eye(3), overwrite=True)          # imports done before counting
    tracemalloc.start()
    try:
        got = pca_spectrum(a, overwrite=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < cov.nbytes / 4, (peak, cov.nbytes)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
