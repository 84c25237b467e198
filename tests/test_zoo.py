"""The fixture zoo (``fixtures/build_zoo.py``): every site of every model read as onnxruntime
computes it, the recorded activation equal to the graph's, interventions on residual and
token sites equal to hand-edited graphs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from infoprobe.data import Inputs, load_data, model_inputs
from infoprobe.interventions import Evaluator, Intervention
from infoprobe.model import activation_numpy, load_model
from infoprobe.store import Store

from conftest import FIX

#: Every zoo model with the activations its graph computes (site name -> activation).
ZOO = {
    "zoo_mobilenetv2.onnx": {"stem": "relu6", "block1_dw": "relu6", "block1_project": "none", "block1_add": "none"},
    "zoo_resnet.onnx": {"stem": "relu", "block1_conv2": "none", "block1_add": "relu", "block2_proj": "none"},
    "zoo_silu_cnn.onnx": {"conv1": "silu", "conv3": "silu"},
    "zoo_mlp_ln_gelu.onnx": {"fc1": "none", "ln1": "gelu", "ln2": "gelu"},
    "zoo_vit.onnx": {"block1_ln1": "none", "block1_mlp_fc1_matmul": "gelu", "block1_mlp_residual": "none"},
    "zoo_encoder.onnx": {"layer1_ff_fc1_matmul": "gelu", "pooler": "tanh", "layer2_ln2": "none"},
    "zoo_resnet_qdq.onnx": {"stem": "relu", "block1_add": "relu", "block1_conv2": "none"},
    # QOperator: a ReLU lives in its producer's output range (zero point 0), no op of its own
    "zoo_resnet_qop.onnx": {"stem_quant": "relu", "block1_add_quant": "relu", "block1_conv2_quant": "none",
                            "fc_quant": "none"},
    "zoo_resnet_dyn.onnx": {"stem_quant": "relu", "block1_add": "relu", "block1_conv2_quant": "none"},
}


def _data(name, n=64):
    if name == "zoo_encoder.onnx":
        return load_data(FIX / "tokens_demo.npz", split="test", x_key="input_ids,attention_mask", limit=n)
    return load_data(FIX / "mnist_demo.npz", split="test", limit=n)


def _feeds(name, data):
    """The model's inputs prepared by hand (not by infoprobe)."""
    if isinstance(data.x, Inputs):
        return {k: v.astype(np.int64) for k, v in data.x.arrays.items()}
    x = data.x.astype(np.float32) / 255.0
    return {"input": x.reshape(len(x), 784) if "mlp" in name else x.reshape(len(x), 1, 28, 28)}


def _exposed(path, values, feeds):
    """onnxruntime run of the original file with ``values`` added as graph outputs; the integer
    values of a QOperator model are dequantized here, in NumPy, with their producer's output
    scale and zero point read from the file."""
    m = onnx.load(path)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend([helper.make_empty_tensor_value_info(v) for v in dict.fromkeys(values) if v not in have])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    where = {"QLinearConv": (6, 7), "QGemm": (7, 8), "QLinearAdd": (6, 7)}
    for node in m.graph.node:
        if node.output[0] in out and node.op_type in where and out[node.output[0]].dtype != np.float32:
            scale, zp = (consts[node.input[i]] for i in where[node.op_type])
            out[node.output[0]] = ((out[node.output[0]].astype(np.float64) - zp) * scale).astype(np.float32)
    return out


def _skip_missing(name):
    if not (FIX / name).exists():
        pytest.skip(f"{name} is not built")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_site_is_captured_as_onnxruntime_computes_it(name, tmp_path):
    from infoprobe.analyses.capture import capture

    _skip_missing(name)
    lm = load_model(FIX / name)
    data = _data(name)
    full = capture(lm, data, tmp_path / "full.h5", progress=False, positions="full")
    means = capture(lm, data, tmp_path / "means.h5", progress=False)              # the default
    half = capture(lm, data, tmp_path / "half.h5", progress=False, positions="full", dtype="float16")
    feeds = _feeds(name, data)
    want = _exposed(FIX / name, [v for lay in lm.layers for v in (lay.pre_value, lay.post_value)], feeds)
    mask = feeds.get("attention_mask")
    with Store(full) as st, Store(means) as sm, Store(half) as sh:
        assert sorted(st.layer_names) == sorted(lay.name for lay in lm.layers)
        for lay in lm.layers:
            for role, value in (("pre", lay.pre_value), ("post", lay.post_value)):
                np.testing.assert_allclose(st.read(lay.name, role), want[value], rtol=1e-5, atol=1e-5,
                                           err_msg=f"{name} {lay.name} {role}")
                np.testing.assert_array_equal(sh.read(lay.name, role), st.read(lay.name, role).astype(np.float16))
                # the default store: each unit's mean over positions, padding tokens left out, by hand
                t = np.moveaxis(want[value], 1 + lay.unit_axis, -1).reshape(len(want[value]), -1, lay.units)
                hand = np.stack([t[i][mask[i] == 1].mean(0) if mask is not None and lay.kind == "token"
                                 and t.shape[1] == mask.shape[1] else t[i].mean(0) for i in range(len(t))])
                np.testing.assert_allclose(sm.read(lay.name, role), hand, rtol=1e-5, atol=1e-5)
            assert sm.reduced(lay.name) == (lay.positions > 1)
        sm.check_model(lm)
        if name == "zoo_encoder.onnx":
            np.testing.assert_array_equal(st.position_mask("layer1_ff_fc1_matmul"), data.x.arrays["attention_mask"] == 1)
            assert sm.position_mask("layer1_ff_fc1_matmul") is None      # the means already leave padding out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_recorded_activation_is_the_graphs(name):
    _skip_missing(name)
    lm = load_model(FIX / name)
    for site, act in ZOO[name].items():
        assert lm.layer(site).activation == act, (name, site)
    data = _data(name, 16)
    want = _exposed(FIX / name, [v for lay in lm.layers for v in (lay.pre_value, lay.post_value)], _feeds(name, data))
    nodes = {n.name: n for n in lm.ir_model.graph}
    for lay in lm.layers:
        if lay.activation == "none":
            assert lay.pre_value == lay.post_value
            continue
        f = activation_numpy(nodes[lay.nodes[-1]], lay.activation)
        np.testing.assert_allclose(f(want[lay.pre_value].astype(np.float64)), want[lay.post_value], rtol=1e-4,
                                   atol=1e-5, err_msg=f"{name} {lay.name} {lay.activation}")


def _hand_edit(path, value, factor, feeds, output="logits", quantized=()):
    """onnxruntime of the original file with ``value`` multiplied by ``factor`` (a constant
    broadcast along the unit axis) for every consumer: the hand-made ablation. An integer
    value (``quantized``: its scale and zero point) is dequantized, multiplied and quantized."""
    m = onnx.load(path)
    for node in m.graph.node:
        for i, name in enumerate(node.input):
            if name == value:
                node.input[i] = value + "_ablated"
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(factor, np.float32), "hand_factor"))
    if quantized:
        m.graph.node.extend([helper.make_node("DequantizeLinear", [value, *quantized], ["hand_f"]),
                             helper.make_node("Mul", ["hand_f", "hand_factor"], ["hand_m"]),
                             helper.make_node("QuantizeLinear", ["hand_m", *quantized], [value + "_ablated"])])
    else:
        m.graph.node.append(helper.make_node("Mul", [value, "hand_factor"], [value + "_ablated"], name="hand_mul"))
    m.graph.ClearField("value_info")
    sess = ort.InferenceSession(onnx.shape_inference.infer_shapes(m).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run([output], feeds)[0]


@pytest.mark.parametrize("name,site", [("zoo_resnet.onnx", "block2_add"), ("zoo_mobilenetv2.onnx", "block3_add"),
                                       ("zoo_vit.onnx", "block1_mlp_residual"),
                                       ("zoo_resnet_qop.onnx", "block2_add_quant"),
                                       ("zoo_resnet_dyn.onnx", "block2_add")])
def test_ablating_a_residual_block_output_equals_the_hand_edited_graph(name, site):
    from infoprobe.runner import Runner

    _skip_missing(name)
    lm = load_model(FIX / name)
    data = _data(name, 200)
    lay = lm.layer(site)
    assert lay.found_by == "residual"
    feeds = _feeds(name, data)
    zero = np.zeros([lay.units if i == lay.unit_axis else 1 for i in range(len(lay.shape))])
    hand = _hand_edit(FIX / name, lay.post_value, zero, feeds, quantized=lay.quantized)
    runner = Runner(lm)
    x = model_inputs(lm, data.x, 1 / 255)
    got = runner.run(x, feeds=runner.replacement_feeds(lay, np.arange(lay.units), np.zeros(lay.units)),
                     outputs=[lm.output_name])[lm.output_name]
    np.testing.assert_allclose(got, hand, rtol=1e-5, atol=1e-5)
    ev = Evaluator(lm, x, labels=data.y)
    outcome = ev.evaluate([[Intervention(site, np.arange(lay.units), np.zeros(lay.units))]])
    intact = _exposed(FIX / name, [], feeds)["logits"].argmax(1)
    assert outcome.accuracy[0] == pytest.approx(float(np.mean(hand.argmax(1) == data.y)), abs=1e-12)
    assert outcome.unchanged_fraction[0] == pytest.approx(float(np.mean(hand.argmax(1) == intact)), abs=1e-12)


def test_a_transformer_mlp_neuron_ablated_and_measured_with_padding_masked(tmp_path):
    """Token sites of the encoder: ablating one feed-forward neuron equals a hand-edited graph;
    its importance equals that of a dense store holding the masked means computed by hand."""
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.importance import importance
    from infoprobe.store import StoreWriter

    name, site, unit = "zoo_encoder.onnx", "layer1_ff_fc1_matmul", 5
    _skip_missing(name)
    lm = load_model(FIX / name)
    lay = lm.layer(site)
    assert (lay.kind, lay.shape, lay.unit_axis) == ("token", (16, 64), 1)
    data = _data(name, 300)
    feeds = _feeds(name, data)
    mask = feeds["attention_mask"]
    assert (mask == 0).any()                                   # there is padding to leave out
    factor = np.ones((1, 64))
    factor[0, unit] = 0.0
    hand = _hand_edit(FIX / name, lay.post_value, factor, feeds)
    x = model_inputs(lm, data.x, 1.0)
    ev = Evaluator(lm, x, labels=data.y)
    outcome = ev.evaluate([[Intervention(site, np.array([unit]), np.zeros(1))]])
    intact = _exposed(FIX / name, [], feeds)["logits"].argmax(1)
    assert outcome.accuracy[0] == pytest.approx(float(np.mean(hand.argmax(1) == data.y)), abs=1e-12)
    assert outcome.unchanged_fraction[0] == pytest.approx(float(np.mean(hand.argmax(1) == intact)), abs=1e-12)

    store = capture(lm, data, tmp_path / "acts.h5", layers=[site, "classifier"], progress=False, positions="full")
    post = _exposed(FIX / name, [lay.post_value], feeds)[lay.post_value]          # [N, 16, 64]
    means = np.stack([post[i, mask[i] == 1].mean(axis=0) for i in range(len(post))])   # by hand, per sample
    w = StoreWriter(tmp_path / "hand.h5", n_rows=len(means), n_outputs=3, labels=data.y,
                    layers=[dict(name=site, kind="dense", shape=(64,), units=64, activation="gelu", depth=1,
                                 inputs=[], is_output=False), dict(name="classifier", kind="dense", shape=(3,),
                                                                   units=3, activation="none", depth=2,
                                                                   inputs=[site], is_output=True)])
    w.write(0, {f"layers/{site}/pre": means.astype(np.float32), f"layers/{site}/post": means.astype(np.float32),
                "layers/classifier/pre": np.zeros((len(means), 3), np.float32),
                "layers/classifier/post": np.zeros((len(means), 3), np.float32),
                "outputs/logits": np.zeros((len(means), 3), np.float32)})
    w.finish()
    w.close()
    got = importance(store, layers=[site], progress=False).units
    want = importance(tmp_path / "hand.h5", layers=[site], progress=False).units
    for g, h in zip(got, want):
        for key in ("entropy", "mutual_information", "kl_selectivity", "labeled_mi"):
            assert g[key] == pytest.approx(h[key], abs=1e-9), (g["unit"], key)


def test_stored_means_give_the_same_bias_balancing_and_importance_as_full_maps(tmp_path):
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.importance import importance
    from infoprobe.errors import ConfigError
    from infoprobe.interventions import mean_activation

    for name, site in (("zoo_encoder.onnx", "layer1_ff_fc1_matmul"), ("zoo_resnet.onnx", "block2_add")):
        _skip_missing(name)
        lm = load_model(FIX / name)
        data = _data(name, 120)
        full = capture(lm, data, tmp_path / f"{name}.full.h5", layers=[site], progress=False, positions="full")
        means = capture(lm, data, tmp_path / f"{name}.means.h5", layers=[site], progress=False)
        with Store(full) as sf, Store(means) as sm:
            np.testing.assert_allclose(mean_activation(sm, site), mean_activation(sf, site), rtol=1e-6)
            a = importance(sf, layers=[site], progress=False).units
            b = importance(sm, layers=[site], progress=False).units
            assert [r["mutual_information"] for r in a] == pytest.approx([r["mutual_information"] for r in b], abs=1e-9)
            with pytest.raises(ConfigError, match="--full-maps"):
                importance(sm, layers=[site], conv_reduce="max", progress=False)


PPOCR = FIX / "third_party" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


@pytest.fixture(scope="module")
def ppocr():
    """The PP-OCR text-direction classifier read at 48x192 (its opset conversion's warning
    silenced): fetched by fixtures/fetch_ppocr_cls.py, never committed; skipped when absent."""
    import warnings

    if not PPOCR.exists():
        pytest.skip("run fixtures/fetch_ppocr_cls.py to fetch the PP-OCR classifier")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(PPOCR, input_shapes={None: (3, 48, 192)})


def test_a_third_party_mobilenetv3_from_its_wheel(ppocr):
    """The PP-OCR text-direction classifier (opset 11, dynamic H and W, HardSwish built from
    Add/Clip/Mul/Div, conv biases as Add of a Reshape)."""
    lm, path = ppocr, PPOCR
    convs = [lay for lay in lm.layers if lay.op.startswith("Conv")]
    assert len(convs) == 53 and not lm.unsupported
    assert sum(lay.activation == "hardswish" for lay in lm.layers) == 18
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)
    m = onnx.load(path)
    m.graph.output.extend([helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in dict.fromkeys(
        v for lay in lm.layers for v in (lay.pre_value, lay.post_value))])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    nodes = {n.name: n for n in lm.ir_model.graph}
    for lay in lm.layers:
        if lay.activation != "none":
            f = activation_numpy(nodes[lay.nodes[-1]], lay.activation)
            np.testing.assert_allclose(f(want[lay.pre_value].astype(np.float64)), want[lay.post_value],
                                       rtol=1e-4, atol=1e-5, err_msg=lay.name)


def test_the_third_party_mobilenetv3_prunes_with_its_weights_in_constant_nodes(ppocr, tmp_path):
    """PP-OCR's weights are Constant nodes and its conv biases a Reshape of one: read as
    initializers, its groups outside the squeeze-and-excitation gates are pruned, and the pruned
    model computes what the plan applied by masks computes (onnxruntime on both)."""
    from infoprobe.analyses.compress import prune_model
    from infoprobe.analyses.plans import make_plan
    from infoprobe.data import Dataset

    assert any("Constant nodes" in n and "Reshape nodes" in n for n in ppocr.notes)
    x = np.random.default_rng(0).uniform(-1, 1, (16, 3, 48, 192)).astype(np.float32)
    data = Dataset(x=x, y=np.zeros(16, np.int64), index=np.arange(16), split="all", path=PPOCR, sha256="0" * 64)
    rep = prune_model(ppocr, make_plan(ppocr, "magnitude", 0.3), tmp_path / "small.onnx", data=data, repeats=1)
    assert rep["verification"]["exact"] and rep["ratios"]["parameters"] < 0.95


def test_information_flow_reads_a_model_with_two_inputs():
    """Flow's noisy draws repeat every input array of a sample together; its resume digest
    covers each array."""
    from infoprobe.analyses.flow import _data_digest, information_flow

    _skip_missing("zoo_encoder.onnx")
    data = _data("zoo_encoder.onnx", 20)
    res = information_flow(FIX / "zoo_encoder.onnx", data, beta=0.1, n_samples=3, n_mc=200, n_mc_conditional=20,
                           layers=["pooler"], progress=False)
    assert [r["layer"] for r in res.layers] == ["pooler"] and np.isfinite(res.layers[0]["mi"])
    other = _data("zoo_encoder.onnx", 20)
    other.x.arrays["attention_mask"] = other.x.arrays["attention_mask"].copy()
    assert _data_digest(other) == _data_digest(data)
    other.x.arrays["attention_mask"][0, -1] ^= 1
    assert _data_digest(other) != _data_digest(data)


def _segmenter(path):
    """A model whose output is a map, not class logits: Conv(1->4, 3x3) + Relu, Conv(4->2, 1x1),
    output [N, 2, 28, 28]."""
    rng = np.random.default_rng(5)
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["maps"], name="head")]
    g = helper.make_graph(nodes, "segmenter", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 2, 28, 28])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_outputs_that_are_not_class_logits_are_compared_within_a_tolerance(tmp_path):
    """Prunability of a segmenter-like model: a sample is unchanged while its output map
    moves by at most ``agreement`` of its norm; the count equals a hand-edited graph's run
    and NumPy norms. Label-counting analyses refuse such an output in one line."""
    from infoprobe.analyses.frivolous.prunability import prunability
    from infoprobe.errors import ModelError

    path = _segmenter(tmp_path / "seg.onnx")
    lm = load_model(path)
    data = _data("zoo_resnet.onnx", 200)
    feeds = _feeds("zoo_resnet.onnx", data)
    x = model_inputs(lm, data.x, 1 / 255)
    intact = _exposed(path, [], feeds)["maps"].reshape(200, -1).astype(np.float64)
    for units, quantile in (([1], 0.5), ([0, 2], 0.25), ([0], 0.9)):
        factor = np.ones((4, 1, 1), np.float32)
        factor[units] = 0.0
        hand = _hand_edit(path, "r1", factor, feeds, output="maps").reshape(200, -1).astype(np.float64)
        rel = np.linalg.norm(hand - intact, axis=1) / np.linalg.norm(intact, axis=1)
        tol = float(np.quantile(rel, quantile))              # a tolerance that splits the samples
        want = rel <= tol
        assert 0 < want.sum() < 200
        ev = Evaluator(lm, x, agreement=tol)
        got = ev.evaluate([[Intervention("conv1", np.array(units), np.zeros(len(units)))]])
        assert got.unchanged[0] == int(want.sum()), (units, tol)
    dead = Evaluator(lm, x, agreement=0.0).evaluate([[Intervention("conv1", np.array([3]), np.zeros(1))]])
    assert dead.unchanged[0] == 200             # unit 3 never fires: ablating it changes no output at all
    with pytest.raises(ModelError, match="not class logits"):
        Evaluator(lm, x)
    with pytest.warns(UserWarning, match="not class logits"):
        pr = prunability(lm, data, progress=False, n_permutations=1, modes=("layer",))
    assert pr.agreement == 0.05


def test_qoperator_sites_are_dequantized_outputs_with_dequantized_weights():
    """A QOperator model's conv site: its weights and bias (dequantized by infoprobe) applied
    in float to the dequantized input site give the site's dequantized output to within one
    quantization step; a ReLU dropped into the output range is recorded as relu, pre = post."""
    name = "zoo_resnet_qop.onnx"
    _skip_missing(name)
    lm = load_model(FIX / name)
    assert any("integer outputs of a quantized model" in n for n in lm.notes)
    stem, conv2 = lm.layer("stem_quant"), lm.layer("block1_conv2_quant")
    assert (stem.activation, stem.pre_value == stem.post_value, stem.quantized[1]) == ("relu", True,
                                                                                       "stem_bn_out_zero_point")
    assert conv2.activation == "none" and conv2.inputs == ("block1_conv1_quant",)
    data = _data(name, 64)
    got = _exposed(FIX / name, [lm.layer("block1_conv1_quant").post_value, conv2.post_value], _feeds(name, data))
    w, b = lm.weights(conv2)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "ref",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": got[lm.layer("block1_conv1_quant").post_value]})[0]
    scale = float(onnx.numpy_helper.to_array(next(t for t in onnx.load(FIX / name).graph.initializer
                                                  if t.name == conv2.quantized[0])))
    err = np.abs(ref - got[conv2.post_value])
    inside = np.abs(ref) < 100 * scale              # values beyond the uint8 range saturate
    assert err[inside].max() <= 0.5 * scale + 1e-6 and err[inside].mean() < 0.3 * scale


@pytest.mark.parametrize("name", ["zoo_resnet.onnx", "zoo_resnet_qdq.onnx", "zoo_resnet_qop.onnx",
                                  "zoo_resnet_dyn.onnx"])
def test_multiply_accumulates_of_quantized_models_are_counted(name):
    import onnx_ir as ir

    from infoprobe.modelstats import model_cost

    _skip_missing(name)
    cost = model_cost(ir.load(FIX / name))
    # by hand: C_out x C_in x kh x kw x H_out x W_out of each conv, and the classifier's 32 x 10
    hand = (16 * 1 * 9 * 196 + 2 * 16 * 16 * 9 * 196 + 32 * 16 * 9 * 49 + 32 * 16 * 49 + 3 * 32 * 32 * 9 * 49
            + 32 * 10)
    assert cost["macs"] == hand and not cost["macs_unknown"]
    weights = 16 * 9 + 2 * 16 * 16 * 9 + 32 * 16 * 9 + 32 * 16 + 3 * 32 * 32 * 9 + 32 * 10
    if name in ("zoo_resnet_qdq.onnx", "zoo_resnet_qop.onnx"):   # int8 weights and per-channel zero points
        assert cost["bytes_by_dtype"]["int8"] == weights + (16 * 3 + 32 * 5 + 10)
    elif name == "zoo_resnet_dyn.onnx":                          # uint8 weights, one zero point per tensor
        assert cost["bytes_by_dtype"]["uint8"] == weights + 9
    else:
        assert cost["bytes_by_dtype"] == {"float32": 4 * cost["parameters"]}
