"""Unit sites beyond the affine layers: residual sums, LayerNorm outputs, token-wise units,
attention heads, user-named values, selection, dequantized weights, reductions over positions."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from infoprobe.errors import ConfigError, DataError, ModelError
from infoprobe.model import discovery, load_model
from infoprobe.positions import per_unit, units_last
from infoprobe.rewrite import mask_shape, mix_shape

from conftest import FIX

RNG = np.random.default_rng(0)


def _f(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _save(tmp_path, nodes, inits, inputs, outputs, name="m.onnx"):
    g = helper.make_graph(nodes, "m", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / name
    onnx.save(m, path)
    return path, m


def _transformer_block(tmp_path, T=5, D=8, H=2, F=12):
    """Pre-norm block: LN -> Q, K, V (split into H heads) -> softmax attention -> output
    projection -> residual Add -> LN -> MatMul+Add -> GELU (Erf) -> MatMul+Add -> residual Add
    -> mean over tokens -> Gemm. The op forms of torch.onnx.export at opset 17."""
    dh = D // H
    inits = [_f("g1", RNG.uniform(0.5, 1.5, D)), _f("b1", RNG.normal(size=D)),
             _f("g2", RNG.uniform(0.5, 1.5, D)), _f("b2", RNG.normal(size=D)),
             numpy_helper.from_array(np.array([0, 0, H, dh], np.int64), "split"),
             numpy_helper.from_array(np.array([0, 0, D], np.int64), "merge"),
             _f("scale", np.sqrt(dh)), _f("sqrt2", np.sqrt(2.0)), _f("one", 1.0), _f("half", 0.5),
             _f("wf", RNG.normal(size=(D, 3)) / 3), _f("bf", RNG.normal(size=3))]
    nodes = [helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["ln1"], name="ln1", axis=-1)]
    for p in "qkv":
        inits += [_f(f"w{p}", RNG.normal(size=(D, D)) / 3), _f(f"b{p}", RNG.normal(size=D))]
        nodes += [helper.make_node("MatMul", ["ln1", f"w{p}"], [f"{p}m"], name=f"{p}_proj"),
                  helper.make_node("Add", [f"{p}m", f"b{p}"], [f"{p}a"], name=f"{p}_bias"),
                  helper.make_node("Reshape", [f"{p}a", "split"], [f"{p}r"], name=f"{p}_split"),
                  helper.make_node("Transpose", [f"{p}r"], [f"{p}t"], name=f"{p}_t",
                                   perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    inits += [_f("wo", RNG.normal(size=(D, D)) / 3), _f("bo", RNG.normal(size=D)),
              _f("w1", RNG.normal(size=(D, F)) / 3), _f("bb1", RNG.normal(size=F)),
              _f("w2", RNG.normal(size=(F, D)) / 3), _f("bb2", RNG.normal(size=D))]
    nodes += [
        helper.make_node("MatMul", ["qt", "kt"], ["s"], name="scores"),
        helper.make_node("Div", ["s", "scale"], ["s2"], name="scaled"),
        helper.make_node("Softmax", ["s2"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "vt"], ["ctx"], name="context"),
        helper.make_node("Transpose", ["ctx"], ["ctxt"], name="ctx_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctxt", "merge"], ["heads"], name="merge_heads"),
        helper.make_node("MatMul", ["heads", "wo"], ["om"], name="out_proj"),
        helper.make_node("Add", ["om", "bo"], ["oa"], name="out_bias"),
        helper.make_node("Add", ["x", "oa"], ["r1"], name="res1"),
        helper.make_node("LayerNormalization", ["r1", "g2", "b2"], ["ln2"], name="ln2", axis=-1),
        helper.make_node("MatMul", ["ln2", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "bb1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Div", ["h1b", "sqrt2"], ["gd"], name="gelu_div"),
        helper.make_node("Erf", ["gd"], ["ge"], name="gelu_erf"),
        helper.make_node("Add", ["ge", "one"], ["ga"], name="gelu_add"),
        helper.make_node("Mul", ["h1b", "ga"], ["gm"], name="gelu_mul"),
        helper.make_node("Mul", ["gm", "half"], ["gelu"], name="gelu_half"),
        helper.make_node("MatMul", ["gelu", "w2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "bb2"], ["h2b"], name="fc2_bias"),
        helper.make_node("Add", ["r1", "h2b"], ["r2"], name="res2"),
        helper.make_node("ReduceMean", ["r2"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("Gemm", ["pooled", "wf", "bf"], ["logits"], name="head"),
    ]
    return _save(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, D])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])


def test_a_transformer_block_has_token_residual_layernorm_and_head_sites(tmp_path):
    path, m = _transformer_block(tmp_path)
    lm = load_model(path)
    sites = {lay.name: lay for lay in lm.layers}
    assert list(sites) == ["ln1", "out_proj_heads", "out_proj", "res1", "ln2", "fc1", "fc2", "res2", "head"]
    heads = next(lay for lay in lm.layers if lay.found_by == "attention")
    assert (heads.kind, heads.shape, heads.unit_axis, heads.units, heads.heads) == ("token", (5, 8), 1, 8, 2)
    assert heads.pre_value == "heads"
    fc1 = sites["fc1"]
    assert (fc1.kind, fc1.shape, fc1.unit_axis, fc1.activation, fc1.post_value) == ("token", (5, 12), 1, "gelu", "gelu")
    assert (sites["res1"].found_by, sites["res1"].kind, sites["res1"].unit_axis) == ("residual", "token", 1)
    assert set(sites["res1"].inputs) == {"out_proj"}        # the other branch is the model input
    assert set(sites["res2"].inputs) == {"res1", "fc2"}
    assert sites["ln2"].found_by == "layernorm" and sites["ln2"].inputs == ("res1",)
    assert [s["node"] for s in lm.skipped] == ["q_proj", "k_proj", "v_proj"]
    assert sites["head"].is_output and not any(s.is_output for n, s in sites.items() if n != "head")
    # residual and LayerNorm sites have no weights or bias
    with pytest.raises(ModelError, match="not an affine layer"):
        lm.weights("res1")
    with pytest.raises(ModelError, match="no bias"):
        lm.lesion_constants("ln2", keep_bias=True)
    np.testing.assert_array_equal(lm.lesion_constants("res2", keep_bias=False), np.zeros(8))
    # mask and mix shapes follow the unit axis
    assert mask_shape(fc1) == (1, 12) and mask_shape(fc1, positions=True) == (5, 12)
    assert mix_shape(fc1) == (12, 12) and mix_shape(load_model(FIX / "cnn_small.onnx").layers[0]) == (4, 4, 1, 1)


def test_every_site_of_the_block_is_captured_as_onnxruntime_computes_it(tmp_path):
    from infoprobe.runner import Runner

    path, m = _transformer_block(tmp_path)
    lm = load_model(path)
    x = RNG.normal(size=(7, 5, 8)).astype(np.float32)
    got = Runner(lm, expose=True).run(x)
    ref = onnx.load(path)
    ref.graph.output.extend([helper.make_tensor_value_info(v, TensorProto.FLOAT, None)
                             for lay in lm.layers for v in (lay.pre_value, lay.post_value)
                             if v != "logits"])
    sess = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    for lay in lm.layers:
        np.testing.assert_allclose(got[f"{lay.name}:post"], want[lay.post_value], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[f"{lay.name}:pre"], want[lay.pre_value], rtol=1e-5, atol=1e-6)


def test_residual_sites_of_the_mobilenet_and_their_inputs():
    lm = load_model(FIX / "zoo_mobilenetv2.onnx")
    add = lm.layer("block1_add")
    assert (add.found_by, add.op, add.kind, add.shape, add.activation) == ("residual", "Add", "conv", (16, 14, 14), "none")
    assert set(add.inputs) == {"stem", "block1_project"}
    assert lm.layer("block2_expand").inputs == ("block1_add",)
    assert [lay.name for lay in lm.layers if lay.found_by == "residual"] == ["block1_add", "block3_add"]


def test_user_sites_and_selection(tmp_path):
    path, _ = _transformer_block(tmp_path)
    lm = load_model(path, sites=["s2:2"], select=["fc*", "head"])
    assert [lay.name for lay in lm.layers] == ["s2", "fc1", "fc2", "head"]
    s2 = lm.layer("s2")
    assert (s2.found_by, s2.kind, s2.shape, s2.unit_axis, s2.units) == ("user", "token", (2, 5, 5), 2, 5)
    assert lm.layer("fc1").inputs == ("s2",)
    assert "left out" in lm.skipped[-1]["reason"] and "res1" in lm.skipped[-1]["reason"]
    with discovery(select=["res*"]):
        assert [lay.name for lay in load_model(path).layers] == ["res1", "res2"]
    with pytest.raises(ModelError, match="no value named 'nope'"):
        load_model(path, sites=["nope"])
    with pytest.raises(ModelError, match="give its unit axis"):
        load_model(path, sites=["gd"])
    with pytest.raises(ModelError, match="first or last axis"):
        load_model(path, sites=["s2:1"])
    with pytest.raises(ModelError, match="already the site 'fc1'"):
        load_model(path, sites=["gelu:1"])
    with pytest.raises(ModelError, match="matches none"):
        load_model(path, select=["zz*"])


def test_dequantized_weights_of_a_qdq_conv_are_the_weights(tmp_path):
    w = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
    scale = np.abs(w).reshape(3, -1).max(1) / 127
    q = np.round(w / scale[:, None, None, None]).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq", axis=0),
             helper.make_node("Conv", ["x", "wd", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["y"], name="gap", axes=[2, 3], keepdims=0)]
    inits = [numpy_helper.from_array(q, "wq"), _f("ws", scale), numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
             _f("b", [0.1, -0.2, 0.3])]
    path, _ = _save(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    lm = load_model(path)
    (conv,) = lm.layers
    assert (conv.op, conv.activation, conv.shape) == ("Conv", "relu", (3, 4, 4))
    np.testing.assert_allclose(lm.weights(conv)[0], q.astype(np.float64) * scale[:, None, None, None], rtol=1e-6)


def test_reductions_over_positions_against_loops():
    block = RNG.normal(size=(4, 6, 3))            # token site [N, T, U]
    mask = np.array([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    for i in range(4):
        real = block[i, mask[i] == 1]
        np.testing.assert_allclose(per_unit(block, 1, "mean", mask)[i], real.mean(0), rtol=1e-12)
        np.testing.assert_allclose(per_unit(block, 1, "max", mask)[i], real.max(0))
        np.testing.assert_allclose(per_unit(block, 1, "last", mask)[i], real[-1])
        np.testing.assert_allclose(per_unit(block, 1, "first", mask)[i], block[i, 0])
    rows = per_unit(block, 1, "samples", mask)
    np.testing.assert_array_equal(rows, np.concatenate([block[i, mask[i] == 1] for i in range(4)]))
    conv = RNG.normal(size=(2, 3, 4, 5))          # conv site [N, C, H, W]
    np.testing.assert_allclose(per_unit(conv, 0, "mean"), conv.mean(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_array_equal(per_unit(conv, 0, "max"), conv.max(axis=(2, 3)))
    samples = per_unit(conv, 0, "samples")
    np.testing.assert_array_equal(samples[7], conv[0, :, 1, 2])   # sample 0, position 1*5+2
    assert units_last(conv, 0).shape == (2, 20, 3)
    with pytest.raises(ConfigError, match="unknown reduction"):
        per_unit(block, 1, "median")
    with pytest.raises(DataError, match="every position masked"):
        per_unit(block, 1, "mean", np.zeros((4, 6)))


def test_weight_graph_of_a_branched_network_with_depthwise_and_residual_sites():
    from infoprobe.graph import graph_from_model

    lm = load_model(FIX / "zoo_mobilenetv2.onnx")
    g = graph_from_model(lm)
    blocks = {(g.layers[s], g.layers[d]): w for s, d, w in g.blocks}
    w = lm.weights("block1_dw")[0]                         # depthwise: [64, 1, 3, 3]
    np.testing.assert_allclose(blocks[("block1_expand", "block1_dw")], np.diag(np.abs(w).sum(axis=(1, 2, 3))))
    np.testing.assert_array_equal(blocks[("stem", "block1_add")], np.eye(16))          # identity skip
    np.testing.assert_array_equal(blocks[("block1_project", "block1_add")], np.eye(16))  # branch
    np.testing.assert_allclose(blocks[("block1_add", "block2_expand")],
                               np.abs(lm.weights("block2_expand")[0].astype(np.float64)).sum(axis=(2, 3)))
    assert "block1_add" in g.hidden and g.units[g.layers.index("block1_add")] == 16


def test_weight_graph_of_a_grouped_conv_is_block_diagonal(tmp_path):
    from infoprobe.graph import graph_from_model

    w1, w2 = RNG.normal(size=(4, 1, 3, 3)), RNG.normal(size=(6, 2, 3, 3))   # groups = 2: 3 outputs per group
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2", pads=[1, 1, 1, 1], group=2),
             helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
             helper.make_node("ReduceMean", ["r2"], ["y"], name="gap", axes=[2, 3], keepdims=0)]
    path, _ = _save(tmp_path, nodes, [_f("w1", w1), _f("w2", w2)],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 5, 5])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])])
    g = graph_from_model(load_model(path))
    (_, _, block), = g.blocks
    want = np.zeros((6, 4))
    for j in range(6):                       # output j of group j // 3 reads inputs 2 * (j // 3) + k
        for k in range(2):
            want[j, 2 * (j // 3) + k] = np.abs(w2[j, k].astype(np.float32)).sum()
    np.testing.assert_allclose(block, want, rtol=1e-6)


def test_weight_graph_refuses_sites_without_weights_in_one_line(tmp_path):
    from infoprobe.graph import graph_from_model

    path, _ = _transformer_block(tmp_path)
    with pytest.raises(ModelError, match="'ln1' \\(layernorm\\) has no weights the graph can use"):
        graph_from_model(load_model(path))


def test_dynamic_height_and_width_are_read_from_the_data(tmp_path):
    w = RNG.normal(size=(3, 1, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["y"], name="gap", axes=[2, 3], keepdims=0)]
    path, _ = _save(tmp_path, nodes, [_f("w", w)],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    with pytest.raises(ModelError, match="could not be inferred"):
        load_model(path)
    lm = load_model(path, input_shapes={None: (1, 6, 10)})
    assert lm.layer("conv").shape == (3, 6, 10) and lm.input_shape == (None, 1, 6, 10)
    assert any("symbolic dimensions read from the data" in n for n in lm.notes)
    with discovery():
        from infoprobe.model import hint_input_shapes
        hint_input_shapes({"x": (1, 4, 5)})
        assert load_model(path).layer("conv").shape == (3, 4, 5)


def test_the_inner_sum_of_a_tanh_gelu_is_not_a_residual_site(tmp_path):
    """x + 0.044715 x^3 inside GELU's tanh form adds a value to a function of itself: one
    value, not two branches; here it follows a Concat, so no affine site claims the chain."""
    c = [_f(n, v) for n, v in (("k3", 3.0), ("a", 0.044715), ("s", np.sqrt(2 / np.pi)), ("one", 1.0), ("half", 0.5))]
    nodes = [helper.make_node("Concat", ["x", "x"], ["z"], name="cat", axis=1),
             helper.make_node("Pow", ["z", "k3"], ["z3"], name="pow"),
             helper.make_node("Mul", ["z3", "a"], ["az3"], name="mul_a"),
             helper.make_node("Add", ["z", "az3"], ["inner"], name="inner_add"),
             helper.make_node("Mul", ["inner", "s"], ["si"], name="mul_s"),
             helper.make_node("Tanh", ["si"], ["t"], name="tanh"),
             helper.make_node("Add", ["t", "one"], ["t1"], name="add_one"),
             helper.make_node("Mul", ["z", "t1"], ["zt"], name="mul_z"),
             helper.make_node("Mul", ["zt", "half"], ["g"], name="mul_half"),
             helper.make_node("Gemm", ["g", "w", "b"], ["y"], name="fc")]
    path, _ = _save(tmp_path, nodes, c + [_f("w", RNG.normal(size=(6, 2))), _f("b", np.zeros(2))],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    assert [lay.name for lay in load_model(path).layers] == ["fc"]


def test_redundancy_keeps_every_layers_rows_within_the_memory_budget(tmp_path):
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.frivolous.redundancy import activation_matrices, unit_axes
    from infoprobe.data import load_data
    from infoprobe.limits import budgets
    from infoprobe.store import Store

    store = capture(FIX / "cnn_small.onnx", load_data(FIX / "mnist_demo.npz", limit=40), tmp_path / "c.h5",
                    progress=False, positions="full")
    with Store(store) as st:
        names = ["conv1", "conv2"]                   # 4 + 6 units: 40 bytes a row over both layers
        full = activation_matrices(st, names, unit_axes(st, names), 40, max_rows=5000)
        assert [len(full[n]) for n in names] == [5000, 40 * 36]
        with budgets(memory=8 * 40 * 700), pytest.warns(UserWarning, match="at most 700 rows per layer"):
            small = activation_matrices(st, names, unit_axes(st, names), 40, max_rows=5000)
        assert [len(small[n]) for n in names] == [700, 700]


@pytest.mark.parametrize("bias_shape,folded", [((1, 3, 1, 1), True), ((3, 1, 1), True), ((), True), ((3,), False)])
def test_a_constant_added_after_a_conv_is_its_bias_only_when_it_is_per_channel(tmp_path, bias_shape, folded):
    """Add of [1, C, 1, 1] after a conv is a bias (Paddle writes it so); Add of [C] broadcasts
    along W (here W = C = 3), so it is not, and the site stays the conv's output."""
    w, b = RNG.normal(size=(3, 1, 3, 3)), RNG.normal(size=bias_shape)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b"], ["cb"], name="bias"),
             helper.make_node("Relu", ["cb"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["y"], name="gap", axes=[2, 3], keepdims=0)]
    path, m = _save(tmp_path, nodes, [_f("w", w), _f("b", b)],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 3])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    lay = load_model(path).layer("conv")
    assert (lay.op == "Conv+Add") == folded
    x = RNG.normal(size=(5, 1, 4, 3)).astype(np.float32)
    m.graph.output.append(helper.make_tensor_value_info(lay.pre_value, TensorProto.FLOAT, None))
    pre = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run([lay.pre_value], {"x": x})[0]
    weight, bias = load_model(path).weights(lay)                 # the stored bias reproduces the site's value
    want = ort.InferenceSession(onnx.helper.make_model(onnx.helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["o"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 3])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)], [_f("w", weight), _f("b", bias)]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString(),
        providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(want, pre, rtol=1e-5, atol=1e-5)


def test_a_matmul_bias_is_folded_only_along_the_units(tmp_path):
    """A [T, 1] constant with T = U added after a token MatMul varies along the tokens: not a bias."""
    w = RNG.normal(size=(2, 3))
    for shape, folded in (((3,), True), ((1, 3), True), ((3, 1), False)):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                 helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
        path, _ = _save(tmp_path, nodes, [_f("w", w), _f("b", RNG.normal(size=shape))],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 3])], name=f"{shape}.onnx")
        assert (load_model(path).layer("mm").op == "MatMul+Add") == folded, shape
