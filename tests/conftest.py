from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_data():
    d = np.load(FIX / "mnist_demo.npz")
    return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def sigmoid_store(tmp_path_factory):
    """Validation-split store of the sigmoid MLP (captured once per session)."""
    from infoprobe.analyses.capture import capture
    from infoprobe.data import load_data

    out = tmp_path_factory.mktemp("store") / "acts.h5"
    return capture(FIX / "mlp_sigmoid.onnx", load_data(FIX / "mnist_demo.npz", split="validation"), out,
                   progress=False)


@pytest.fixture
def cupy():
    """CuPy with a usable CUDA device, or the test is skipped."""
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("CUDA is unusable")
    return cp


def initializers(path) -> dict:
    """Initializers of an ONNX file straight from the protobuf (independent of infoprobe)."""
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def mlp_forward(path, x, act, ablate=None):
    """NumPy forward pass of a fixture MLP; returns (posts per hidden layer, logits).

    ``ablate``: {hidden layer index (0-based): (units, constants)} replaces post-activations.
    """
    w = initializers(path)
    names = sorted({k.split(".")[0] for k in w})
    h = x.astype(np.float64)
    posts = []
    for i, n in enumerate(names):
        W = w[f"{n}.weight"] if f"{n}.weight" in w else w[f"{n}.weight_t"].T
        h = h @ W.T.astype(np.float64) + w[f"{n}.bias"]
        if i < len(names) - 1:
            h = act(h)
            if ablate and i in ablate:
                units, c = ablate[i]
                h = h.copy()
                h[:, units] = c[units]
            posts.append(h)
    return posts, h


def skip_model(path):
    """A 4-4-4 model with a skip connection around its first unit layer ``l1`` (Gemm, Relu,
    Add of the input, Gemm ``l2``), saved at ``path``; returns the weights (w1, w2) [4, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = (rng.normal(size=(4, 4)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="l1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["s"]),  # skip connection around l1
             helper.make_node("Gemm", ["s", "w2"], ["y"], name="l2")]
    g = helper.make_graph(nodes, "skip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return w1, w2
