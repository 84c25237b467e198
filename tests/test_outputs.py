"""One output rule for every verb: which output holds the class scores, what is refused.

References are onnxruntime runs of the same files (the converter's own ``label`` output for
the scikit-learn models), independent of infoprobe's choice of output.
"""
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import FIX
from infoprobe.analyses.check import check
from infoprobe.cli.main import cli
from infoprobe.data import load_data, model_inputs
from infoprobe.errors import ModelError
from infoprobe.interventions import Evaluator
from infoprobe.model import load_model, load_onnx

DATA = FIX / "mnist_demo.npz"
SK, SK_ZIPMAP, SK_PRUNED = FIX / "sk_mlp.onnx", FIX / "sk_mlp_zipmap.onnx", FIX / "sk_mlp_pruned.onnx"


@pytest.fixture(scope="module")
def test_split():
    d = load_data(DATA, split="test")
    return d, (np.asarray(d.x, np.float32).reshape(len(d.x), -1) / 255).astype(np.float32)


def _ort(path, x, name):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([name], {"input": x})[0]


@pytest.mark.parametrize("path, label_output", [(SK, "label"), (SK_ZIPMAP, "output_label")])
def test_sklearn_models_are_scored_by_their_probabilities(path, label_output, test_split):
    data, x = test_split
    lm = load_model(path)
    assert lm.output_choice["problem"] is None
    assert lm.output_choice["description"].endswith("float [N, 10]")
    assert any(label_output in o and "int64" in o for o in lm.output_choice["others"])
    ev = Evaluator(lm, model_inputs(lm, data.x, 1 / 255), labels=data.y)
    reference = _ort(path, x, label_output)           # the converter's own predicted labels
    np.testing.assert_array_equal(ev.intact, reference)
    assert ev.base.accuracy[0] == pytest.approx((reference == data.y).mean())
    assert ev.base.accuracy[0] > 0.85                 # not the 0.21 of the label tensor read as one score


def test_check_fails_a_candidate_that_changes_labels(test_split, tmp_path):
    data, x = test_split
    ref, cand = _ort(SK, x, "label"), _ort(SK_PRUNED, x, "label")
    changed = float((ref != cand).mean())
    assert changed > 0.09
    res = check(SK, SK_PRUNED, data, divergence_samples=0, latency_repeats=1)
    assert res.metrics["label_change"] == pytest.approx(changed)
    assert res.metrics["accuracy_reference"] == pytest.approx((ref == data.y).mean())
    assert res.metrics["accuracy_candidate"] == pytest.approx((cand == data.y).mean())
    assert res.params["output"]["name"] == "probabilities"
    r = CliRunner().invoke(cli, ["check", str(SK), str(SK_PRUNED), "--data", str(DATA), "--split", "test",
                                 "--divergence-samples", "0"])
    assert r.exit_code == 1, r.output
    assert "class scores: output 'probabilities'" in r.output and "[FAIL] max_label_change" in r.output
    r = CliRunner().invoke(cli, ["check", str(SK), str(SK_PRUNED), "--data", str(DATA), "--output", "label"])
    assert r.exit_code == 2 and "not a float tensor" in r.output and len(r.output.strip().splitlines()) == 1


def _embedding_model(path, name="sentence_embedding", normalise=True):
    """[N, 8] -> Gemm -> Relu -> Gemm -> (L2 normalised, as torch.nn.functional.normalize exports) [N, 6]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 12)), ("b1", (12,)), ("w2", (12, 6)), ("b2", (6,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["e" if normalise else name])]
    if normalise:
        inits.append(numpy_helper.from_array(np.array([1e-12], np.float32), "eps"))
        nodes += [helper.make_node("ReduceL2", ["e"], ["n"], axes=[1], keepdims=1),
                  helper.make_node("Max", ["n", "eps"], ["m"]), helper.make_node("Div", ["e", "m"], [name])]
    g = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 6])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("name, normalise, why", [("output", True, "divided by its norm"),
                                                  ("sentence_embedding", False, "named like an embedding")])
def test_embedding_outputs_are_refused_by_label_counting(tmp_path, name, normalise, why):
    lm = load_model(_embedding_model(tmp_path / "emb.onnx", name, normalise))
    assert why in lm.output_choice["problem"]
    x = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    with pytest.raises(ModelError, match="not class scores.*this analysis counts predicted labels"):
        Evaluator(lm, x, labels=np.arange(40) % 3)
    # compared as outputs (frivolous's agreement criterion), never as 6 classes
    assert Evaluator(lm, x, agreement="auto").agreement is not None
    # the user may say otherwise
    assert load_model(tmp_path / "emb.onnx", output=name).output_choice["problem"] is None


def test_ablate_on_an_embedding_output_exits_2_in_one_line(tmp_path):
    model = _embedding_model(tmp_path / "emb.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((60, 8)).astype(np.float32), y=np.arange(60) % 3)
    r = CliRunner().invoke(cli, ["capture", str(model), "--data", str(tmp_path / "d.npz"), "--out",
                                 str(tmp_path / "a.h5")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["ablate", str(model), str(tmp_path / "a.h5"), "--data", str(tmp_path / "d.npz"),
                                 "--out", str(tmp_path / "res")])
    assert r.exit_code == 2, r.output
    assert "sentence_embedding" in r.output and "not class scores" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


def test_labels_the_output_cannot_predict_are_refused(test_split):
    data, _ = test_split
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    x = model_inputs(lm, data.x[:50], 1 / 255)
    with pytest.raises(ModelError, match=r"labels include 882.*scores 10 classes \(0-9\)"):
        Evaluator(lm, x, labels=np.where(np.arange(50) % 2, 882, 3))


def test_classes_are_the_labels_present(test_split):
    """Labels {1, 4, 7}: three class columns named by the labels (not 8 columns sized by the
    largest), each the accuracy on that class's samples."""
    data, _ = test_split
    keep = np.isin(data.y, [1, 4, 7])
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    x = model_inputs(lm, data.x[keep], 1 / 255)
    y = data.y[keep].astype(np.int64)
    ev = Evaluator(lm, x, labels=y)
    np.testing.assert_array_equal(ev.classes, [1, 4, 7])
    logits = ort.InferenceSession(str(FIX / "mlp_sigmoid.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.asarray(x, np.float32)})[0]
    pred = logits.argmax(1)
    expect = [(pred[y == c] == c).mean() for c in (1, 4, 7)]
    np.testing.assert_allclose(ev.base.class_accuracy[0], expect)


def test_a_model_with_only_integer_outputs_has_no_class_scores(tmp_path):
    m = onnx.load(str(SK))
    del m.graph.output[1]                              # keep only the int64 'label'
    onnx.save(m, str(tmp_path / "labels_only.onnx"))
    lm = load_model(tmp_path / "labels_only.onnx")
    assert "no float output" in lm.output_choice["problem"]
    with pytest.raises(ModelError, match="no float output"):
        lm.predicted_labels(np.zeros((2,), np.int64))


def test_zipmap_output_keeps_its_class_labels(tmp_path, test_split):
    """A ZipMap over classes that are not 0..C-1 (a classifier trained on labels 10..19): the
    scores' columns are mapped to those labels."""
    data, x = test_split
    m = onnx.load(str(SK_ZIPMAP))
    for node in m.graph.node:
        if node.op_type == "ZipMap":
            for a in node.attribute:
                if a.name == "classlabels_int64s":
                    a.ints[:] = [c + 10 for c in a.ints]
    onnx.save(m, str(tmp_path / "shifted.onnx"))
    lm = load_model(tmp_path / "shifted.onnx")
    np.testing.assert_array_equal(lm.class_labels, np.arange(10, 20))
    sess = ort.InferenceSession(lm.source.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = sess.run([lm.output_name], {"input": x[:100]})[0]
    np.testing.assert_allclose(scores, [[p[c] for c in range(10)] for p in _ort(SK_ZIPMAP, x[:100],
                                                                                  "output_probability")], rtol=1e-6)
    np.testing.assert_array_equal(lm.predicted_labels(scores), scores.argmax(1) + 10)


def test_loading_reads_no_more_than_the_file(tmp_path):
    """A 100 KB model under a 1 GiB limit: the read buffer is the file's size, not the limit."""
    tracemalloc.start()
    try:
        load_onnx(SK, max_bytes=1 << 30, check=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_every_verb_says_which_output_it_scores(tmp_path):
    """A model with several outputs: the verb says which one holds the class scores, once."""
    r = CliRunner().invoke(cli, ["capture", str(SK), "--data", str(DATA), "--split", "validation", "--limit", "50",
                                 "--out", str(tmp_path / "a.h5")])
    assert r.exit_code == 0, r.output
    said = [line for line in r.output.splitlines() if "class scores" in line]
    assert said == ["sk_mlp.onnx: class scores: output 'probabilities' float [N, 10] (the float output named like "
                    "class scores); other outputs: 'label' int64 [N] (--output NAME to choose)"]
