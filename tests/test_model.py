"""Safe loading and unit-layer discovery."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import FIX, initializers
from infoprobe.errors import ModelError, UnsafeModelError
from infoprobe.model import load_model


def test_discovery_sigmoid_mlp():
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    got = [(l.name, l.kind, l.op, l.units, l.activation, l.fan_in, l.depth, l.inputs, l.is_output) for l in lm.layers]
    assert got == [
        ("fc1", "dense", "Gemm", 100, "sigmoid", 784, 1, (), False),
        ("fc2", "dense", "Gemm", 100, "sigmoid", 100, 2, ("fc1",), False),
        ("fc3", "dense", "Gemm", 10, "none", 100, 3, ("fc2",), True),
    ]
    init = initializers(FIX / "mlp_sigmoid.onnx")
    w, b = lm.weights("fc2")
    np.testing.assert_array_equal(w, init["fc2.weight"])
    np.testing.assert_array_equal(b, init["fc2.bias"])


def test_discovery_matmul_add_and_conv_bn():
    relu = load_model(FIX / "mlp_relu.onnx")
    assert [(l.op, l.units, l.activation) for l in relu.layers] == \
        [("MatMul+Add", 20, "relu")] * 3 + [("MatMul+Add", 10, "none")]
    w, _ = relu.weights(relu.layers[0])
    np.testing.assert_array_equal(w, initializers(FIX / "mlp_relu.onnx")["fc1.weight_t"].T)
    cnn = load_model(FIX / "cnn_small.onnx")
    assert [(l.name, l.kind, l.op, l.units, l.shape, l.depth) for l in cnn.layers] == [
        ("conv1", "conv", "Conv+BatchNormalization", 4, (4, 28, 28), 1),
        ("conv2", "conv", "Conv", 6, (6, 6, 6), 2),
        ("fc", "dense", "Gemm", 10, (10,), 3)]


def test_batchnorm_folding_reproduces_preactivation(demo_data):
    """Folded conv weights applied by a NumPy convolution equal the model's pre-activation."""
    from infoprobe.runner import Runner

    lm = load_model(FIX / "cnn_small.onnx")
    x = demo_data["x"][:8].astype(np.float32)[:, None] / 255
    pre = Runner(lm, expose=True).run(x, outputs=["conv1:pre"])["conv1:pre"]
    w, b = lm.weights("conv1")
    xp = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1))).astype(np.float64)
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))  # [N, 28, 28, 3, 3]
    ref = np.einsum("nhwij,cij->nchw", win, w[:, 0]) + b[None, :, None, None]
    np.testing.assert_allclose(pre, ref, atol=1e-5)


def _gemm_model(trans_b=0, alpha=1.0, beta=1.0, extra_nodes=(), extra_inits=(), opset=17):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3) if trans_b == 0 else (3, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="g", transB=trans_b, alpha=alpha, beta=beta),
             helper.make_node("Tanh", ["h"], ["y"], name="t"), *extra_nodes]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.arange(3, dtype=np.float32), "b"),
                           *extra_inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m, w


def test_gemm_attributes_are_folded(tmp_path):
    m, w = _gemm_model(trans_b=0, alpha=2.0, beta=0.5)
    onnx.save(m, tmp_path / "m.onnx")
    lm = load_model(tmp_path / "m.onnx")
    (lay,) = lm.layers
    assert (lay.units, lay.fan_in, lay.activation) == (3, 4, "tanh")
    W, b = lm.weights(lay)
    np.testing.assert_allclose(W, 2.0 * w.T)
    np.testing.assert_allclose(b, 0.5 * np.arange(3))


def test_unsupported_ops_are_named(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ConvTranspose", ["x", "k"], ["c"], name="up"),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="head", transB=1)]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(rng.normal(size=(1, 1, 3, 3)).astype(np.float32), "k"),
                           numpy_helper.from_array(rng.normal(size=(2, 36)).astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    lm = load_model(tmp_path / "m.onnx")
    assert [l.name for l in lm.layers] == ["head"]
    assert lm.unsupported[0]["node"] == "up" and "ConvTranspose" in lm.unsupported[0]["reason"]


# ---------------------------------------------------------------- untrusted files

def test_truncated_and_garbage(tmp_path):
    data = (FIX / "mlp_sigmoid.onnx").read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="cannot parse|no graph|checker"):
        load_model(tmp_path / "t.onnx")
    (tmp_path / "g.onnx").write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelError):
        load_model(tmp_path / "g.onnx")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")


def _external(tmp_path, location):
    m, _ = _gemm_model()
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "48")):
        e = w.external_data.add()
        e.key, e.value = k, v
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("location,match", [
    ("/etc/passwd", "absolute"),
    ("../secret.bin", r"'\.\.'"),
    ("sub/../../secret.bin", r"'\.\.'"),
])
def test_external_data_outside_folder_is_refused(tmp_path, location, match):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 48)
    with pytest.raises(UnsafeModelError, match=match):
        load_model(_external(tmp_path, location))


def test_external_data_symlink_and_hardlink_are_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 48)
    path = _external(tmp_path, "w.bin")
    os.symlink(tmp_path / "secret.bin", path.parent / "w.bin")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        load_model(path)
    os.unlink(path.parent / "w.bin")
    os.link(tmp_path / "secret.bin", path.parent / "w.bin")
    with pytest.raises(UnsafeModelError, match="hard link"):
        load_model(path)
    os.unlink(path.parent / "w.bin")
    (tmp_path / "linkdir").mkdir()
    os.symlink(tmp_path / "linkdir", path.parent / "sub")
    (tmp_path / "linkdir" / "w.bin").write_bytes(b"\0" * 48)
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        load_model(_external(tmp_path, "sub/w.bin"))


def test_external_data_inside_folder_loads(tmp_path):
    m, w = _gemm_model()
    path = tmp_path / "m.onnx"
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    lm = load_model(path)
    np.testing.assert_allclose(lm.weights(lm.layers[0])[0], w.T)


def test_size_limit_and_opset(tmp_path):
    with pytest.raises(UnsafeModelError, match="max-model-size"):
        load_model(FIX / "mlp_sigmoid.onnx", max_bytes=1000)


def test_an_old_opset_is_converted_and_said_or_refused_with_the_reason(tmp_path, monkeypatch):
    import onnxruntime as ort
    from onnx import version_converter

    m, _ = _gemm_model(opset=11)
    onnx.save(m, tmp_path / "old.onnx")
    with pytest.warns(UserWarning, match="opset 11"):
        lm = load_model(tmp_path / "old.onnx")
    assert lm.notes == ["converted from opset 11 to 13 with onnx.version_converter"]
    assert "converted from opset 11" in lm.summary()
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(lm.source.proto.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)

    def fail(*a, **k):
        raise RuntimeError("No Adapter For Foo")
    monkeypatch.setattr(version_converter, "convert_version", fail)
    with pytest.raises(ModelError, match="opset 11.*could not convert it: No Adapter For Foo"):
        load_model(tmp_path / "old.onnx")


def test_checker_failure_is_a_model_error(tmp_path):
    m, _ = _gemm_model()
    m.graph.node[1].input[0] = "does_not_exist"
    onnx.save(m, tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match="checker"):
        load_model(tmp_path / "bad.onnx")


def test_external_data_is_read_from_the_model_folder_whatever_the_cwd(tmp_path, monkeypatch):
    """The same activations from the model's folder, from elsewhere, and with every weight
    embedded; a file of the same name in the working directory is never read."""
    from infoprobe.analyses.capture import capture
    from infoprobe.data import load_data
    from infoprobe.store import Store

    folder, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    folder.mkdir(), elsewhere.mkdir()
    m = onnx.load(str(FIX / "mlp_sigmoid.onnx"))
    onnx.save(m, folder / "mlp.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="mlp.onnx.data", size_threshold=0)
    (elsewhere / "mlp.onnx.data").write_bytes(os.urandom((folder / "mlp.onnx.data").stat().st_size))   # a decoy
    data = load_data(FIX / "mnist_demo.npz", split="test", limit=50)
    posts = []
    for cwd, model in ((folder, "mlp.onnx"), (elsewhere, folder / "mlp.onnx"), (tmp_path, FIX / "mlp_sigmoid.onnx")):
        monkeypatch.chdir(cwd)
        out = capture(model, data, tmp_path / f"{len(posts)}.h5", progress=False)
        with Store(out) as st:
            posts.append({n: st.read(n, "post") for n in st.layer_names})
    for other in posts[1:]:
        for name, post in posts[0].items():
            np.testing.assert_array_equal(post, other[name])


@pytest.mark.parametrize("offset,length,match", [
    ("100000", "48", "beyond the end"), ("0", "4", "disagrees"), ("abc", "48", "not a whole number"),
    ("-5", "48", "negative")])
def test_external_data_offsets_and_lengths_are_checked(tmp_path, offset, length, match):
    path = _external(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes(b"\0" * 48)
    m = onnx.load(str(path), load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        e.value = {"offset": offset, "length": length}.get(e.key, e.value)
    onnx.save(m, path)
    with pytest.raises(ModelError, match=match):
        load_model(path)


def test_a_shared_data_file_counts_once_towards_the_size_limit(tmp_path):
    m = onnx.load(str(FIX / "mlp_sigmoid.onnx"))
    path = tmp_path / "mlp.onnx"
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    total = path.stat().st_size + (tmp_path / "w.bin").stat().st_size
    assert load_model(path, max_bytes=total).file_bytes == total
    with pytest.raises(UnsafeModelError, match="max-model-size"):
        load_model(path, max_bytes=total - 1)


def test_names_that_are_not_utf8_are_refused(tmp_path):
    """protobuf hands such strings over as bytes; onnx-ir and the checker then fail far away."""
    m, _ = _gemm_model()
    m.graph.node[0].name = "gemm_GEMM"
    raw = m.SerializeToString().replace(b"gemm_GEMM", b"gemm_\xb6EMM")
    (tmp_path / "bad.onnx").write_bytes(raw)
    with pytest.raises(ModelError, match="not UTF-8"):
        load_model(tmp_path / "bad.onnx")


def test_a_layer_with_nan_weights_is_named_not_analysed(tmp_path):
    m, _ = _gemm_model()
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    onnx.save(m, tmp_path / "nan.onnx")
    with pytest.raises(ModelError, match="NaN or infinite"):
        load_model(tmp_path / "nan.onnx")


def test_runtime_sizes_separate_what_grows_with_the_batch_from_weights_and_constants(tmp_path):
    """Values that grow with the batch bound the rows of a run; a weight never does; a
    constant-shape bomb and a bomb of a shape computed from the input are refused first."""
    from infoprobe.errors import BudgetError
    from infoprobe.limits import budgets
    from infoprobe.model import load_onnx, runtime_rows

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(3, 100_000)).astype(np.float32), "w")   # 1.2 MB weight

    def save(nodes, inits, name):
        g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 100_000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, *inits])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / name)
        return load_onnx(tmp_path / name)

    gemm = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    plain = save([gemm], [], "plain.onnx")
    assert plain.runtime_sizes["per_sample"][:2] == (400_000, "x") and plain.runtime_sizes["static"][0] == 0
    with budgets(memory="16M"):        # a quarter: 4 MiB = 10 samples of 400,000 bytes, whatever the weight
        assert runtime_rows(plain, 1000) == 10
    shape = numpy_helper.from_array(np.array([1000, 1000], np.int64), "shape")
    static = save([helper.make_node("ConstantOfShape", ["shape"], ["big"]),
                   helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
                   helper.make_node("Add", ["x", "s"], ["x2"]),
                   helper.make_node("Gemm", ["x2", "w"], ["y"], transB=1)], [shape], "static.onnx")
    assert static.runtime_sizes["static"][:2] == (4_000_000, "big")       # float32 [1000, 1000], once
    with budgets(memory="4M"), pytest.raises(BudgetError, match="whatever the batch"):
        runtime_rows(static, 1)
    grown = save([helper.make_node("Shape", ["x"], ["n"], end=1),
                  helper.make_node("Concat", ["n", "k"], ["to"], axis=0),
                  helper.make_node("Expand", ["one", "to"], ["huge"]),
                  helper.make_node("ReduceSum", ["huge"], ["s"], keepdims=0),
                  helper.make_node("Add", ["x", "s"], ["x2"]),
                  helper.make_node("Gemm", ["x2", "w"], ["y"], transB=1)],
                 [numpy_helper.from_array(np.array([50_000_000], np.int64), "k"),
                  numpy_helper.from_array(np.ones(1, np.float32), "one")], "grown.onnx")
    assert grown.runtime_sizes["per_sample"][:2] == (200_000_000, "huge")   # [N, 5e7] float32
    with budgets(memory="512M"), pytest.raises(BudgetError, match="for each sample"):
        runtime_rows(grown, 64)
