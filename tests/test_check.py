"""The CI gate: metrics against a NumPy reference, thresholds, exit statuses, JUnit XML."""
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from junitparser import JUnitXml

from conftest import FIX
from infoprobe.analyses.check import check, load_thresholds
from infoprobe.cli.main import cli
from infoprobe.data import load_data
from infoprobe.errors import ConfigError, DataError, ModelError

REF = FIX / "mlp_sigmoid.onnx"
DATA = FIX / "mnist_demo.npz"


@pytest.fixture(scope="module")
def test_data():
    return load_data(DATA, split="test")


@pytest.fixture(scope="module")
def broken_class(tmp_path_factory):
    """The sigmoid MLP with class 3's output bias pushed down: class 3 is never predicted."""
    m = onnx.load(str(REF))
    for t in m.graph.initializer:
        if t.name == "fc3.bias":
            b = onnx.numpy_helper.to_array(t).copy()
            b[3] -= 100.0
            t.CopyFrom(onnx.numpy_helper.from_array(b, t.name))
    path = tmp_path_factory.mktemp("cand") / "broken.onnx"
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def balanced_candidate(tmp_path_factory, sigmoid_store):
    """30% of the hidden units merged (Srinivas & Babu, with surgery) and bias-balanced, pruned."""
    from infoprobe.analyses.plans import make_plan
    from infoprobe.model import load_model
    from infoprobe.prune import apply_plan, save_model
    from infoprobe.store import Store

    lm = load_model(REF)
    with Store(sigmoid_store) as st:
        plan = make_plan(lm, "merge", 0.3, store=st, replace="mean")
    return save_model(apply_plan(lm, plan), tmp_path_factory.mktemp("cand") / "merged.onnx")


def _outputs(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0].astype(np.float64)


def test_metrics_match_numpy(test_data, broken_class):
    res = check(REF, broken_class, test_data, thresholds={"max_class_drop": None})
    x = test_data.x.reshape(len(test_data), -1).astype(np.float32) / 255
    a, b = _outputs(REF, x), _outputs(broken_class, x)
    pa, pb = a.argmax(1), b.argmax(1)
    y = test_data.y
    m = res.metrics
    assert m["label_change"] == pytest.approx(np.mean(pa != pb))
    assert m["accuracy_reference"] == pytest.approx(np.mean(pa == y))
    assert m["accuracy_drop"] == pytest.approx(np.mean(pa == y) - np.mean(pb == y))
    drops = [np.mean(pa[y == c] == c) - np.mean(pb[y == c] == c) for c in range(10)]
    assert m["worst_class"] == 3 and m["max_class_drop"] == pytest.approx(max(drops))
    # KL(p || q) in bits from a plain softmax
    p = np.exp(a - a.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    q = np.exp(b - b.max(1, keepdims=True)); q /= q.sum(1, keepdims=True)
    kl = np.mean(np.sum(p * np.log2(p / np.maximum(q, 1e-300)), axis=1))
    assert m["kl_mean_bits"] == pytest.approx(kl, rel=1e-6)
    assert m["max_abs_logit_diff"] == pytest.approx(np.abs(a - b).max(), rel=1e-6)
    assert res.models["reference"]["sha256"] != res.models["candidate"]["sha256"]


def test_identical_candidate_passes(test_data, tmp_path):
    cand = tmp_path / "copy.onnx"
    shutil.copy(REF, cand)
    res = check(REF, cand, test_data, thresholds={"max_kl": 0.0, "max_logit_diff": 0.0})
    assert res.passed and len(res.checks) == 5
    assert res.metrics["label_change"] == 0 and res.metrics["kl_mean_bits"] == 0


def test_destroyed_class_fails_only_on_class_drop(test_data, broken_class, tmp_path):
    runner = CliRunner()
    junit = tmp_path / "report.xml"
    md = tmp_path / "summary.md"
    r = runner.invoke(cli, ["check", str(REF), str(broken_class), "--data", str(DATA), "--split", "test",
                            "--max-accuracy-drop", "0.15", "--max-label-change", "0.15", "--max-class-drop", "0.02",
                            "--junit", str(junit), "--markdown", str(md), "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "FAIL] max_class_drop" in r.output and "ok  ] max_accuracy_drop" in r.output
    xml = JUnitXml.fromfile(str(junit))
    cases = {c.name: c for suite in xml for c in suite}
    assert set(cases) == {"max_label_change", "max_accuracy_drop", "max_class_drop"}
    assert cases["max_class_drop"].result and not cases["max_accuracy_drop"].result
    assert cases["max_class_drop"].result[0].type == "threshold"
    assert "❌" in md.read_text() and "Worst class: **3**" in md.read_text()
    # the reports are not overwritten without --overwrite
    r = runner.invoke(cli, ["check", str(REF), str(broken_class), "--data", str(DATA), "--junit", str(junit)])
    assert r.exit_code == 2 and "already exists" in r.output


def test_bias_balanced_pruned_candidate_passes(test_data, balanced_candidate, tmp_path):
    """Merging 30% of the hidden units (with surgery and bias balancing) keeps the model within
    a 3% label change and 1% accuracy drop."""
    cfg = tmp_path / "gate.toml"
    cfg.write_text("[check]\nmax-label-change = 0.03\nmax_accuracy_drop = 0.01\nmax_class_drop = 0.05\n")
    r = CliRunner().invoke(cli, ["check", str(REF), str(balanced_candidate), "--data", str(DATA),
                                 "--split", "test", "--config", str(cfg), "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["passed"] and {c["name"]: c["threshold"] for c in doc["checks"]} == {
        "max_label_change": 0.03, "max_accuracy_drop": 0.01, "max_class_drop": 0.05}
    assert doc["models"]["candidate"]["parameters"] < doc["models"]["reference"]["parameters"]
    # an option overrides the file; 'off' disables a threshold
    r = CliRunner().invoke(cli, ["check", str(REF), str(balanced_candidate), "--data", str(DATA), "--split", "test",
                                 "--config", str(cfg), "--max-label-change", "0", "--max-class-drop", "off",
                                 "--json", "--no-progress"])
    assert r.exit_code == 1
    assert {c["name"] for c in json.loads(r.output)["checks"]} == {"max_label_change", "max_accuracy_drop"}


def test_usage_and_input_errors_exit_2(tmp_path, test_data):
    runner = CliRunner()
    cnn = FIX / "cnn_small.onnx"
    r = runner.invoke(cli, ["check", str(REF), str(cnn), "--data", str(DATA), "--no-progress"])
    assert r.exit_code == 2
    assert "input 'input': shape ['N', 784] (reference) vs ['N', 1, 28, 28] (candidate)" in r.output
    r = runner.invoke(cli, ["check", str(REF), str(tmp_path / "missing.onnx"), "--data", str(DATA)])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(cli, ["check", str(REF), str(REF), "--data", str(DATA), "--max-kl", "abc"])
    assert r.exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("max_label_chnage = 0.1\n")
    with pytest.raises(ConfigError, match="unknown threshold"):
        load_thresholds(bad)
    r = runner.invoke(cli, ["check", str(REF), str(REF), "--data", str(DATA), "--config", str(bad)])
    assert r.exit_code == 2 and "max_label_chnage" in r.output
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, test_data.x[:50])
    with pytest.raises(DataError, match="no labels"):
        check(REF, REF, load_data(unlabelled))
    res = check(REF, REF, load_data(unlabelled), thresholds={"max_accuracy_drop": None, "max_class_drop": None})
    assert res.passed and res.metrics["accuracy_reference"] is None


def test_output_names_must_match(tmp_path, test_data):
    m = onnx.load(str(REF))
    m.graph.output[0].name = "scores"
    m.graph.node[-1].output[0] = "scores"
    path = tmp_path / "renamed.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelError, match=r"output names differ: reference has \['logits'\], candidate has \['scores'\]"):
        check(REF, path, test_data)


def _binary_classifier(path, sigmoid: bool):
    """4 -> 8 (ReLU) -> 1 logit (optionally through a Sigmoid): a binary classifier with one output."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w1, b1 = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    w2, b2 = rng.normal(size=(1, 8)).astype(np.float32), np.array([-0.3], np.float32)
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["z" if sigmoid else "out"], name="fc2", transB=1)]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["out"], name="prob"))
    g = helper.make_graph(nodes, "binary", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
                          [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return lambda x: np.maximum(x @ w1.T + b1, 0) @ w2.T + b2   # the logit, in NumPy


@pytest.mark.parametrize("sigmoid", [False, True])
def test_one_output_classifiers_label_by_the_logit_sign(tmp_path, sigmoid):
    """One rule for every command: a single logit is class 1 where it is positive (a single
    probability where it exceeds 0.5) -- never argmax, which is always class 0."""
    from infoprobe.analyses.compress import prune_model
    from infoprobe.data import Dataset
    from infoprobe.model import load_model
    from infoprobe.plan import LayerPlan, PruningPlan

    logit = _binary_classifier(tmp_path / "b.onnx", sigmoid)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    truth = (logit(x)[:, 0] > 0).astype(np.int64)
    y = np.where(rng.random(400) < 0.1, 1 - truth, truth)           # 10% label noise
    assert 0.2 < truth.mean() < 0.8
    data = Dataset(x=x, y=y, index=np.arange(400), split="all", path=tmp_path / "d.npz", sha256="0")
    res = check(tmp_path / "b.onnx", tmp_path / "b.onnx", data)
    assert res.metrics["accuracy_reference"] == pytest.approx((truth == y).mean())
    lm = load_model(tmp_path / "b.onnx")
    plan = PruningPlan({"fc1": LayerPlan.build("fc1", 8, [0])}, model_sha256=lm.sha256)
    rep = prune_model(lm, plan, tmp_path / "small.onnx", data=data, repeats=1)
    assert rep["verification"]["accuracy_original"] == pytest.approx((truth == y).mean())


def test_min_speedup_is_a_lower_bound_on_the_measured_speedup(test_data):
    """``min_speedup`` fails when reference / candidate latency falls short of it (a bound
    no machine reaches fails, a bound of 0 passes); latency is reported at batch 1 and at
    the batch size, from the interleaved measurement."""
    model = FIX / "mlp_sigmoid.onnx"
    res = check(model, model, test_data, thresholds={"min_speedup": 0.0}, latency_repeats=3)
    (ch,) = [c for c in res.checks if c["name"] == "min_speedup"]
    assert ch["passed"] and ch["value"] == pytest.approx(res.metrics["speedup"])
    assert res.metrics["speedup"] == pytest.approx(res.models["reference"]["latency_ms"] /
                                                   res.models["candidate"]["latency_ms"])
    assert [r["batch"] for r in res.models["candidate"]["latency"]] == [1, res.params["batch_size"]]
    res = check(model, model, test_data, thresholds={"min_speedup": 1e9}, latency_repeats=3)
    assert not [c for c in res.checks if c["name"] == "min_speedup"][0]["passed"]
    r = CliRunner().invoke(cli, ["check", str(model), str(model), "--data", str(FIX / "mnist_demo.npz"),
                                 "--split", "test", "--min-speedup", "1e9"])
    assert r.exit_code == 1 and "min_speedup" in r.output
