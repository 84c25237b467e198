"""Weights held outside initializers -- in ``Constant`` nodes, behind ``Identity``, stored as
float16 and ``Cast`` to float -- are read as initializers: the same sites, activations and
physical pruning as the model that holds them as initializers (onnxruntime on both files)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import FIX
from infoprobe.analyses.compress import prune_model
from infoprobe.analyses.plans import make_plan
from infoprobe.data import load_data
from infoprobe.model import load_model


def _hide_weights(src, dst):
    """cnn_small with conv1's weight in a Constant node, conv2's bias behind an Identity and the
    classifier's weight stored as float16 and Cast to float (the float16 values are the ones the
    reference model below holds, so that both compute the same)."""
    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    w1 = inits.pop("conv1.weight")
    b2 = inits.pop("conv2.bias")
    fc = numpy_helper.to_array(inits.pop("fc.weight")).astype(np.float16)
    nodes = [helper.make_node("Constant", [], ["conv1.weight"], value=w1),
             helper.make_node("Identity", ["conv2.bias.raw"], ["conv2.bias"]),
             helper.make_node("Cast", ["fc.weight.half"], ["fc.weight"], to=TensorProto.FLOAT)]
    del m.graph.initializer[:]
    m.graph.initializer.extend([*inits.values(), numpy_helper.from_array(numpy_helper.to_array(b2), "conv2.bias.raw"),
                                numpy_helper.from_array(fc, "fc.weight.half")])
    graph_nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + graph_nodes)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))
    ref = onnx.load(str(src))                      # the reference: the same float16-rounded classifier weight
    for t in ref.graph.initializer:
        if t.name == "fc.weight":
            t.CopyFrom(numpy_helper.from_array(fc.astype(np.float32), "fc.weight"))
    onnx.save(ref, str(dst.with_name("reference.onnx")))
    return dst, dst.with_name("reference.onnx")


@pytest.fixture(scope="module")
def hidden(tmp_path_factory):
    return _hide_weights(FIX / "cnn_small.onnx", tmp_path_factory.mktemp("const") / "hidden.onnx")


def test_sites_and_weights_are_those_of_the_initializer_model(hidden):
    model, reference = hidden
    a, b = load_model(model), load_model(reference)
    assert [(lay.name, lay.kind, lay.shape, lay.has_weights) for lay in a.layers] == \
        [(lay.name, lay.kind, lay.shape, lay.has_weights) for lay in b.layers]
    for lay in a.layers:
        wa, ba = a.weights(lay.name)
        wb, bb = b.weights(lay.name)
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
    assert any("1 Constant node, 1 Identity node, 1 Cast node folded" in n for n in a.notes)


def test_a_model_with_constant_weights_is_pruned_like_the_initializer_model(hidden, tmp_path):
    model, reference = hidden
    data = load_data(FIX / "mnist_demo.npz", split="test", limit=300)
    x = (np.asarray(data.x, np.float32) / 255)[:, None]
    outs = {}
    for name, path in (("hidden", model), ("reference", reference)):
        lm = load_model(path)
        plan = make_plan(lm, "magnitude", 0.5)
        prune_model(lm, plan, tmp_path / f"{name}_small.onnx", data=data, repeats=1)
        sess = ort.InferenceSession(str(tmp_path / f"{name}_small.onnx"), providers=["CPUExecutionProvider"])
        outs[name] = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(outs["hidden"], outs["reference"], rtol=1e-5, atol=1e-5)
    original = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert not np.allclose(outs["hidden"], original, atol=1e-3)     # something was pruned
