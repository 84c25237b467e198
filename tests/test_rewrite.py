"""The mask/offset rewrite and the suffix graph against the original model and NumPy."""
import numpy as np
import onnxruntime as ort
import pytest

from conftest import FIX, mlp_forward, sigmoid, skip_model
from infoprobe.errors import ModelError
from infoprobe.model import load_model
from infoprobe.rewrite import instrument, io_name, suffix
from infoprobe.runner import Runner

MODELS = [("mlp_sigmoid", (784,)), ("mlp_relu", (784,)), ("cnn_small", (1, 28, 28))]


def inputs(demo_data, shape, n=600):
    return (demo_data["x"][-n:].astype(np.float32) / 255).reshape(n, *shape)


@pytest.mark.parametrize("name,shape", MODELS)
def test_identity_masks_leave_outputs_unchanged(demo_data, name, shape):
    x = inputs(demo_data, shape)
    ref = ort.InferenceSession(str(FIX / f"{name}.onnx")).run(None, {"input": x})[0]
    lm = load_model(FIX / f"{name}.onnx")
    out = Runner(lm, expose=True).run(x)
    np.testing.assert_allclose(out["logits"], ref, atol=1e-6, rtol=0)
    for lay in lm.hidden_layers:
        sfx = Runner(lm, after=lay.name).run(out[io_name(lay.name, "post")])
        np.testing.assert_allclose(sfx["logits"], ref, atol=1e-6, rtol=0)


def test_exposed_activations_match_numpy(demo_data):
    x = inputs(demo_data, (784,))
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    out = Runner(lm, expose=True).run(x)
    posts, logits = mlp_forward(FIX / "mlp_sigmoid.onnx", x, sigmoid)
    np.testing.assert_allclose(out["fc1:post"], posts[0], atol=1e-5)
    np.testing.assert_allclose(out["fc2:post"], posts[1], atol=1e-5)
    np.testing.assert_allclose(sigmoid(out["fc2:pre"]), out["fc2:post"], atol=1e-6)
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4)


def test_mask_and_offset_match_numpy_ablation(demo_data):
    """t' = m*t + c, also with per-sample masks [batch, U] and on the suffix graph."""
    x = inputs(demo_data, (784,), 200)
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    run = Runner(lm, expose=True)
    units = np.array([3, 17, 42, 99])
    c = np.linspace(0.1, 0.9, 100)
    mask = np.ones(100, np.float32)
    mask[units] = 0
    off = np.where(mask == 0, c, 0).astype(np.float32)
    _, ref = mlp_forward(FIX / "mlp_sigmoid.onnx", x, sigmoid, ablate={0: (units, c)})
    got = run.run(x, feeds=run.intervention_feeds(lm.layer("fc1"), mask, off))["logits"]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # per-sample masks: ablate only the even rows
    m2 = np.ones((200, 100), np.float32)
    o2 = np.zeros((200, 100), np.float32)
    m2[::2], o2[::2] = mask, off
    got2 = run.run(x, feeds=run.intervention_feeds(lm.layer("fc1"), m2, o2), batch_size=64)["logits"]
    _, intact = mlp_forward(FIX / "mlp_sigmoid.onnx", x, sigmoid)
    np.testing.assert_allclose(got2[::2], ref[::2], atol=1e-4)
    np.testing.assert_allclose(got2[1::2], intact[1::2], atol=1e-4)
    # suffix after fc1 with the same intervention
    sfx = Runner(lm, after="fc1")
    post = run.run(x, outputs=["fc1:post"])["fc1:post"]
    got3 = sfx.run(post, feeds=sfx.intervention_feeds(lm.layer("fc1"), mask, off))["logits"]
    np.testing.assert_allclose(got3, ref, atol=1e-4)


def test_conv_masks_per_channel_and_per_position(demo_data):
    x = inputs(demo_data, (1, 28, 28), 50)
    lm = load_model(FIX / "cnn_small.onnx")
    run = Runner(lm, expose=True)
    lay = lm.layer("conv2")
    # reference: suffix on hand-edited post-activations
    post = run.run(x, outputs=["conv2:post"])["conv2:post"]
    sfx = Runner(lm, after="conv2")
    edited = post.copy()
    edited[:, 2] = 0.5
    want = sfx.run(edited)["logits"]
    m = np.ones(6, np.float32)
    m[2] = 0
    o = np.zeros(6, np.float32)
    o[2] = 0.5
    np.testing.assert_allclose(run.run(x, feeds=run.intervention_feeds(lay, m, o))["logits"], want, atol=1e-5)
    # one channel x position
    edited = post.copy()
    edited[:, 4, 1, 3] = 0.0
    mp = np.ones((1, 6, 6, 6), np.float32)
    mp[0, 4, 1, 3] = 0
    got = run.run(x, feeds=run.intervention_feeds(lay, mp, np.zeros_like(mp)))["logits"]
    np.testing.assert_allclose(got, sfx.run(edited)["logits"], atol=1e-5)
    assert not np.allclose(got, run.run(x)["logits"])


def test_rewritten_graph_is_valid_and_named():
    import onnx
    import onnx_ir as ir

    lm = load_model(FIX / "cnn_small.onnx")
    proto = ir.to_proto(instrument(lm))
    onnx.checker.check_model(proto, full_check=True)
    outs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert outs["conv1:post"][1:] == [4, 28, 28]
    assert {"conv1:mask", "conv1:offset", "fc:mask"} <= {i.name for i in proto.graph.input}
    sfx = ir.to_proto(suffix(lm, "conv2"))
    assert "input" not in {i.name for i in sfx.graph.input}
    assert "conv1:mask" not in {i.name for i in sfx.graph.input}


def test_no_suffix_after_output_layer_or_around_skip(tmp_path):
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    with pytest.raises(ModelError, match="output layer"):
        suffix(lm, "fc3")
    skip_model(tmp_path / "skip.onnx")
    with pytest.raises(ModelError, match="skip connection"):
        suffix(load_model(tmp_path / "skip.onnx"), "l1")
