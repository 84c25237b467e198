"""The intervention engine against independent references: a NumPy forward pass of the same
ablations, onnxruntime on a hand-edited graph, and the engine itself under other chunkings."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from conftest import FIX, initializers, mlp_forward, sigmoid, skip_model
from infoprobe.data import load_data, prepare_inputs
from infoprobe.errors import ConfigError, NoSuffixError
from infoprobe.interventions import Evaluator, Intervention, mean_activation, replacement
from infoprobe.limits import budgets
from infoprobe.model import load_model
from infoprobe.rewrite import suffix
from infoprobe.store import Store


@pytest.fixture(scope="module")
def mnist():
    return load_data(FIX / "mnist_demo.npz", split="test")


@pytest.fixture(scope="module")
def sig():
    return load_model(FIX / "mlp_sigmoid.onnx")


def _x(lm, data):
    return prepare_inputs(data.x, lm.input_shape, 1 / 255, input_name=lm.input_name)


def test_replacement_vocabulary_is_unambiguous(sig, sigmoid_store):
    w = initializers(FIX / "mlp_sigmoid.onnx")
    assert not replacement(sig, "fc1", "zero").any()                      # zero is 0, on any activation
    np.testing.assert_allclose(replacement(sig, "fc1", "activation_of_zero"), 0.5)   # sigma(0)
    np.testing.assert_allclose(replacement(sig, "fc1", "activation_of_bias"), sigmoid(w["fc1.bias"].astype(np.float64)),
                               rtol=1e-6)
    np.testing.assert_allclose(replacement(sig, "fc2", "constant", value=0.25), 0.25)
    with Store(sigmoid_store) as st:
        want = st.read("fc1").astype(np.float64).mean(0)
        np.testing.assert_allclose(replacement(sig, "fc1", "mean", store=st), want, rtol=1e-12)
        np.testing.assert_allclose(mean_activation(st, "fc1"), want, rtol=1e-12)
    for bad, kw in (("bias", {}), ("mean", {}), ("constant", {})):
        with pytest.raises(ConfigError):
            replacement(sig, "fc1", bad, **kw)


def test_accuracy_matches_numpy_forward_pass(sig, mnist):
    """Per-class accuracy under ablations of one and of two layers, against a float64 NumPy
    forward pass with the same units replaced."""
    ev = Evaluator(sig, _x(sig, mnist), labels=mnist.y)
    c1 = replacement(sig, "fc1", "activation_of_bias")
    u1, u2 = np.arange(0, 100, 3), np.arange(10, 60)
    c2 = np.full(100, 0.7)
    sets = [[], [Intervention("fc1", u1, c1[u1])], [Intervention("fc1", u1, c1[u1]), Intervention("fc2", u2, 0.7)]]
    out = ev.evaluate(sets)
    xf = mnist.x.reshape(len(mnist), -1) / 255
    for k, abl in enumerate([None, {0: (u1, c1)}, {0: (u1, c1), 1: (u2, c2)}]):
        _, logits = mlp_forward(FIX / "mlp_sigmoid.onnx", xf, sigmoid, ablate=abl)
        ok = logits.argmax(1) == mnist.y
        assert out.correct[k].sum() == ok.sum()
        np.testing.assert_array_equal(out.correct[k], np.bincount(mnist.y[ok], minlength=10))
        assert abs(out.accuracy[k] - ok.mean()) < 1e-15
    assert out.unchanged[0] == len(mnist) and out.unchanged[2] < len(mnist)
    assert ev.runs == 3


def test_zero_and_activation_of_zero_differ_on_sigmoid(sig, mnist):
    """``zero`` is 0, ``activation_of_zero`` is sigma(0) = 0.5: checked against onnxruntime on
    a graph whose fc1 rows (weights and bias) are zeroed by hand, which outputs sigma(0)."""
    x = _x(sig, mnist)
    ev = Evaluator(sig, x, labels=mnist.y)
    units = np.arange(0, 100, 2)
    m = onnx.load(str(FIX / "mlp_sigmoid.onnx"))
    for t in m.graph.initializer:
        if t.name in ("fc1.weight", "fc1.bias"):
            arr = numpy_helper.to_array(t).copy()
            arr[units] = 0
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sig.input_name: x})[0].argmax(1)
    out = ev.evaluate([[Intervention("fc1", units, replacement(sig, "fc1", k)[units])]
                       for k in ("activation_of_zero", "zero")])
    assert out.correct[0].sum() == (want == mnist.y).sum()
    assert out.correct[1].sum() != out.correct[0].sum()


def test_chunks_and_stacking_do_not_change_counts(sig, mnist, monkeypatch):
    """Chunks forced small by the memory budget, and interventions stacked along the batch,
    give the counts of one chunk with one intervention per run; stacked calls never hold more
    rows than a chunk may."""
    from infoprobe.runner import Runner

    x = _x(sig, mnist)
    rng = np.random.default_rng(1)
    sets = [[Intervention("fc1", rng.choice(100, 30, replace=False)), Intervention("fc2", rng.choice(100, k))]
            for k in (5, 40, 80)] + [[Intervention("fc2", np.arange(50), 0.3)]]
    ref = Evaluator(sig, x, labels=mnist.y, stack_rows=1).evaluate(sets)
    rows, run = [], Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, x, **kw: rows.append(len(x)) or run(self, x, **kw))
    with budgets(memory=16 << 20):   # 16 MiB: chunks of a few hundred rows
        ev = Evaluator(sig, x, labels=mnist.y, stack_rows=1 << 20)   # stack as many sets as a chunk holds
        assert 1 < len(ev.chunks()) and ev.rows < len(x)
        got = ev.evaluate(sets)
    np.testing.assert_array_equal(got.correct, ref.correct)
    np.testing.assert_array_equal(got.unchanged, ref.unchanged)
    assert max(rows) <= ev.rows
    last = len(x) - (len(ev.chunks()) - 1) * ev.rows          # the last, smaller chunk stacks sets
    assert last < ev.rows // 2 and any(r > last and r % last == 0 for r in rows)


def _hand_masked(path, post: str, mask: np.ndarray) -> ort.InferenceSession:
    """onnxruntime on the model at ``path`` with a constant ``mask`` multiplied into the value
    ``post`` for all its consumers (an edit of the protobuf, independent of infoprobe)."""
    m = onnx.load(str(path))
    for node in m.graph.node:
        for i, v in enumerate(node.input):
            if v == post:
                node.input[i] = "masked"
    m.graph.initializer.append(numpy_helper.from_array(mask.astype(np.float32)[None], "hand_mask"))
    at = next(i for i, node in enumerate(m.graph.node) if post in node.output)
    m.graph.node.insert(at + 1, helper.make_node("Mul", [post, "hand_mask"], ["masked"]))
    onnx.checker.check_model(m)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_channel_position_units_match_a_hand_masked_graph(mnist):
    """Channel x position ablation of a conv site against onnxruntime on a graph with a
    constant mask multiplied in after the layer's activation."""
    cm = load_model(FIX / "cnn_small.onnx")
    x = _x(cm, mnist)[:300]
    lay = cm.layer("conv1")
    rng = np.random.default_rng(2)
    units = rng.choice(int(np.prod(lay.shape)), 500, replace=False)
    mask = np.ones(int(np.prod(lay.shape)), np.float32)
    mask[units] = 0
    sess = _hand_masked(FIX / "cnn_small.onnx", lay.post_value, mask.reshape(lay.shape))
    want = sess.run(None, {cm.input_name: x})[0].argmax(1)
    ev = Evaluator(cm, x, labels=mnist.y[:300])
    out = ev.evaluate([[Intervention("conv1", units, 0.0, positions=True)]])
    assert out.unchanged[0] == (want == ev.intact).sum()
    assert out.correct[0].sum() == (want == mnist.y[:300]).sum()
    with pytest.raises(ConfigError, match="channel x position"):
        ev.evaluate([[Intervention("conv1", [0], 0.0), Intervention("conv1", [1], 0.0, positions=True)]])


def test_residual_depthwise_model_matches_hand_masked_graphs(mnist):
    """The MobileNetV2-style fixture: channel ablations of a depthwise site inside a residual
    block (no suffix: the block's input also feeds its Add) and of the last conv (a suffix),
    against onnxruntime on hand-masked graphs."""
    path = FIX / "zoo_mobilenetv2.onnx"
    lm = load_model(path)
    x = _x(lm, mnist)[:400]
    ev = Evaluator(lm, x, labels=mnist.y[:400])
    with pytest.raises(NoSuffixError):
        suffix(lm, "block1_dw")
    rng = np.random.default_rng(3)
    sets = []
    for site in ("block1_dw", "last"):
        lay = lm.layer(site)
        units = rng.choice(lay.units, lay.units // 2, replace=False)
        mask = np.ones(lay.units)
        mask[units] = 0
        want = _hand_masked(path, lay.post_value, mask.reshape(-1, 1, 1)).run(None, {lm.input_name: x})[0].argmax(1)
        sets.append(([Intervention(site, units, 0.0)], want))
    out = ev.evaluate([s for s, _ in sets])
    for k, (_, want) in enumerate(sets):
        assert out.unchanged[k] == (want == ev.intact).sum() < len(x)
        assert out.correct[k].sum() == (want == mnist.y[:400]).sum()
    assert ev._suffixes["block1_dw"] is None and ev._suffixes["last"] is not None


def test_whole_model_runs_only_where_no_suffix_exists(tmp_path):
    """A skip connection around l1: the engine falls back to the whole model (same labels as
    onnxruntime on the graph with l1's unit zeroed); any other model error propagates."""
    w1, w2 = skip_model(tmp_path / "skip.onnx")
    lm = load_model(tmp_path / "skip.onnx")
    with pytest.raises(NoSuffixError):
        suffix(lm, "l1")
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    ev = Evaluator(lm, x)
    out = ev.evaluate([[Intervention("l1", [1, 3])]])
    r = np.maximum(x @ w1, 0)
    r[:, [1, 3]] = 0
    want = ((r + x) @ w2).argmax(1)
    assert out.unchanged[0] == (want == ev.intact).sum() < 200
    assert ev._suffixes == {"l1": None}
