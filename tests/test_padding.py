"""Padding tokens of a model that computes its own mask (``ids != 0``) stay out of token means."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from infoprobe.cli.main import cli
from infoprobe.model import load_model
from infoprobe.store import Store

V, D, H, T = 12, 6, 5, 7


def _weights():
    rng = np.random.default_rng(0)
    return {"emb": rng.standard_normal((V, D)).astype(np.float32), "w1": rng.standard_normal((D, H)).astype(np.float32),
            "b1": rng.standard_normal(H).astype(np.float32), "w2": rng.standard_normal((H, 3)).astype(np.float32),
            "b2": np.zeros(3, np.float32)}


def _model(path, op="Equal"):
    """ids [N, T] -> embedding -> MatMul+Add -> Relu (a token site) -> mean over the real tokens,
    the mask computed inside the graph: Not(Equal(ids, 0)) or Greater(ids, 0)."""
    w = _weights()
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "ax1"),
              numpy_helper.from_array(np.array([2], np.int64), "ax2")]
    mask = [helper.make_node("Equal", ["ids", "zero"], ["pad"]), helper.make_node("Not", ["pad"], ["real"])] \
        if op == "Equal" else [helper.make_node("Greater", ["ids", "zero"], ["real"])]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w1"], ["m"], name="ffn"), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["h"]), *mask,
             helper.make_node("Cast", ["real"], ["realf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["realf", "ax2"], ["m3"]), helper.make_node("Mul", ["h", "m3"], ["hm"]),
             helper.make_node("ReduceSum", ["hm", "ax1"], ["s"], keepdims=0),
             helper.make_node("ReduceSum", ["m3", "ax1"], ["c"], keepdims=0),
             helper.make_node("Div", ["s", "c"], ["pooled"]), helper.make_node("Gemm", ["pooled", "w2", "b2"], ["logits"])]
    g = helper.make_graph(nodes, "tok", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", T])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("op", ["Equal", "Greater"])
def test_capture_leaves_padding_found_in_the_graph_out_of_token_means(tmp_path, op):
    model = _model(tmp_path / "tok.onnx", op)
    lm = load_model(model)
    assert lm.padding == {"input": "ids", "real": "!=" if op == "Equal" else ">", "value": 0,
                          "node": lm.padding["node"]}
    rng = np.random.default_rng(1)
    n = 40
    lengths = rng.integers(2, T + 1, n)
    ids = np.zeros((n, T), np.int64)
    for i, k in enumerate(lengths):
        ids[i, :k] = rng.integers(1, V, k)
    np.savez(tmp_path / "d.npz", x=ids, y=np.arange(n) % 3)
    r = CliRunner().invoke(cli, ["capture", str(model), "--data", str(tmp_path / "d.npz"), "--out",
                                 str(tmp_path / "a.h5")])
    assert r.exit_code == 0, r.output
    assert f"tok.onnx: padding: tokens whose ids {'==' if op == 'Equal' else '<='} 0 are padding" in r.output
    w = _weights()
    h = np.maximum(w["emb"][ids] @ w["w1"] + w["b1"], 0)                      # [N, T, H]
    real = ids != 0
    expect = (h * real[..., None]).sum(1) / real.sum(1, keepdims=True)        # mean over the real tokens
    site = next(lay.name for lay in lm.layers if lay.kind == "token")
    with Store(tmp_path / "a.h5") as st:
        got = st.read(site, "post")
        np.testing.assert_array_equal(st.token_counts(site), real.sum(1))
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    assert np.abs(h.mean(1) - expect).max() > 0.1                                # padding would have moved them


def test_inspect_says_which_tokens_are_padding(tmp_path):
    r = CliRunner().invoke(cli, ["inspect", str(_model(tmp_path / "tok.onnx"))])
    assert r.exit_code == 0, r.output
    assert "padding: tokens whose ids == 0 are padding" in r.output
