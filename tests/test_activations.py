"""Activations in every exported form: recognised by their values, never silently "none"."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import FIX
from infoprobe.model import activation_numpy, load_model
from infoprobe.rewrite import io_name
from infoprobe.runner import Runner


def _const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.float32)))


def _model(path, act_nodes, out="a"):
    """x [N, 4] -> Gemm l1 (value h) -> ``act_nodes`` (ending in ``out``) -> Gemm l2 -> y."""
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), n) for n in ("w1", "w2"))
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="l1"), *act_nodes,
             helper.make_node("Gemm", [out, "w2"], ["y"], name="l2")]
    g = helper.make_graph(nodes, "act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


PATTERNS = {
    "relu6": [_const("lo", 0.0), _const("hi", 6.0), helper.make_node("Clip", ["h", "lo", "hi"], ["a"])],
    "silu": [helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["h", "s"], ["a"])],
    "hardswish": [helper.make_node("HardSigmoid", ["h"], ["s"], alpha=1 / 6, beta=0.5),
                  helper.make_node("Mul", ["h", "s"], ["a"])],
    "gelu": [_const("r2", np.sqrt(2.0)), _const("one", 1.0), _const("half", 0.5),
             helper.make_node("Div", ["h", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["h", "p"], ["q"]),
             helper.make_node("Mul", ["q", "half"], ["a"])],
    "gelu_tanh": [_const("c3", 0.044715), _const("k", np.sqrt(2 / np.pi)), _const("one", 1.0), _const("half", 0.5),
                  _const("three", 3.0),
                  helper.make_node("Pow", ["h", "three"], ["h3"]), helper.make_node("Mul", ["h3", "c3"], ["t1"]),
                  helper.make_node("Add", ["h", "t1"], ["t2"]), helper.make_node("Mul", ["t2", "k"], ["t3"]),
                  helper.make_node("Tanh", ["t3"], ["t4"]), helper.make_node("Add", ["t4", "one"], ["t5"]),
                  helper.make_node("Mul", ["h", "t5"], ["t6"]), helper.make_node("Mul", ["t6", "half"], ["a"])],
    "mish": [helper.make_node("Softplus", ["h"], ["sp"]), helper.make_node("Tanh", ["sp"], ["th"]),
             helper.make_node("Mul", ["h", "th"], ["a"])],
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_exported_activation_is_recognised_and_its_value_is_the_site(tmp_path, name):
    """The recorded activation is the one in the graph, and the post-activation infoprobe
    exposes equals onnxruntime's value of the pattern's last node in the original model."""
    path = _model(tmp_path / f"{name}.onnx", PATTERNS[name])
    lm = load_model(path)
    assert lm.layer("l1").activation == name and not lm.unsupported
    x = np.random.default_rng(1).normal(scale=3.0, size=(64, 4)).astype(np.float32)
    m = onnx.load(str(path))
    m.graph.output.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["a"], {"x": x})[0]
    out = Runner(lm, expose=True).run(x, outputs=[io_name("l1", "pre"), io_name("l1", "post")])
    got = out[io_name("l1", "post")]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the NumPy version used for lesion constants (sigma(b), sigma(0)) is the graph's function
    f = activation_numpy(None, name)
    np.testing.assert_allclose(f(out[io_name("l1", "pre")].astype(np.float64)), want, atol=1e-5)


def test_unrecognised_nonlinearity_is_said(tmp_path):
    path = _model(tmp_path / "odd.onnx", [helper.make_node("Tanh", ["h"], ["t"]),
                                          helper.make_node("Mul", ["h", "t"], ["a"])])   # x tanh(x)
    lm = load_model(path)
    assert lm.layer("l1").activation == "none"
    assert any("does not recognise" in u["reason"] for u in lm.unsupported)


def test_relu6_of_the_zoo_is_captured_after_the_clip():
    """Every ReLU6 site of the MobileNetV2-style fixture is the Clip's output: its exposed
    post-activation equals onnxruntime's value of that Clip in the original graph, and lies in
    [0, 6] (the pre-activation does not)."""
    lm = load_model(FIX / "zoo_mobilenetv2.onnx")
    m = onnx.load(str(FIX / "zoo_mobilenetv2.onnx"))
    clips = {n.output[0] for n in m.graph.node if n.op_type == "Clip"}
    sites = [lay for lay in lm.layers if lay.activation == "relu6"]
    assert {lay.post_value for lay in sites} == clips and len(sites) == 10
    for name in clips:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    x = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    want = dict(zip([o.name for o in m.graph.output],
                    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})))
    got = Runner(lm, expose=True).run(x)
    for lay in sites:
        np.testing.assert_allclose(got[io_name(lay.name, "post")], want[lay.post_value], atol=1e-5)
        assert got[io_name(lay.name, "post")].min() >= 0 and got[io_name(lay.name, "post")].max() <= 6
    assert min(got[io_name(lay.name, "pre")].min() for lay in sites) < 0
