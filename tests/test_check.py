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


# --- the paired statistics, against statsmodels and scipy ---------------------------------------

def _pairs(b, c, same_right, same_wrong, classes=None):
    """Hand-built predictions: b samples only the reference gets right, c only the candidate,
    then both right, then both wrong (labels all 0 unless ``classes`` gives them)."""
    n = b + c + same_right + same_wrong
    y = np.zeros(n, np.int64) if classes is None else np.asarray(classes)
    ref = y.copy()
    cand = y.copy()
    cand[:b] = y[:b] + 1                                   # candidate wrong
    ref[b:b + c] = y[b:b + c] + 1                          # reference wrong
    ref[n - same_wrong:] = y[n - same_wrong:] + 1
    cand[n - same_wrong:] = y[n - same_wrong:] + 2
    return y, ref, cand


@pytest.mark.parametrize("b,c", [(8, 3), (0, 5), (20, 20), (100, 0), (0, 0), (37, 61)])
def test_mcnemar_and_label_change_bound_match_statsmodels(b, c):
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import proportion_confint

    from infoprobe.analyses.check import paired_statistics

    y, ref, cand = _pairs(b, c, 900, 70)
    st = paired_statistics(ref, cand, y, confidence=0.95)
    ok_r, ok_c = ref == y, cand == y
    table = [[np.sum(ok_r & ok_c), np.sum(ok_r & ~ok_c)], [np.sum(~ok_r & ok_c), np.sum(~ok_r & ~ok_c)]]
    assert (st["reference_only"], st["candidate_only"]) == (b, c)
    if b + c:
        assert st["mcnemar_p"] == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    else:
        assert st["mcnemar_p"] == 1.0
    changed = int(np.sum(ref != cand))
    # one-sided upper Clopper-Pearson bound at 95% = the upper end of the two-sided 90% interval
    assert st["label_change_upper"] == pytest.approx(
        proportion_confint(changed, len(y), alpha=0.10, method="beta")[1] if changed else 1 - 0.05 ** (1 / len(y)),
        rel=1e-9)
    assert st["accuracy_drop"] == pytest.approx((b - c) / len(y))


def test_drop_interval_agrees_with_scipy_bootstrap_and_covers_exactly():
    """Bonett-Price's interval equals scipy's paired bootstrap where both are accurate (many
    discordant pairs), and its exact coverage, summed over every outcome of a small paired
    experiment with scipy's multinomial pmf, is close to nominal."""
    from scipy import stats

    from infoprobe.stats import drop_interval

    y, ref, cand = _pairs(60, 30, 1800, 110)
    boot = stats.bootstrap((ref == y, cand == y), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), paired=True,
                           vectorized=True, method="percentile", n_resamples=20000, random_state=3).confidence_interval
    lo, hi = drop_interval(60, 30, len(y))
    assert lo == pytest.approx(boot.low, abs=0.001) and hi == pytest.approx(boot.high, abs=0.001)
    for n, p12, p21 in [(30, 0.1, 0.05), (40, 0.2, 0.02)]:
        two = upper = 0.0
        for b in range(n + 1):
            for c in range(n + 1 - b):
                pr = stats.multinomial.pmf([b, c, n - b - c], n, [p12, p21, 1 - p12 - p21])
                lo, hi = drop_interval(b, c, n, 0.95)
                two += pr * (lo <= p12 - p21 <= hi)
                upper += pr * (p12 - p21 <= drop_interval(b, c, n, 0.95, side="upper")[1])
        assert 0.93 < two < 0.99 and 0.92 < upper < 0.99, (n, two, upper)
    # no discordant pair: the bound does not collapse to 0
    assert 0 < drop_interval(0, 0, 2000, 0.95, side="upper")[1] < 0.002


def test_per_class_p_values_are_holm_adjusted_mcnemar():
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.multitest import multipletests

    from infoprobe.analyses.check import paired_statistics

    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 1200)
    ref = np.where(rng.random(1200) < 0.9, y, (y + 1) % 4)
    cand = np.where((y == 2) & (rng.random(1200) < 0.3), (y + 1) % 4, ref)   # class 2 degraded
    cand = np.where(rng.random(1200) < 0.02, (cand + 2) % 4, cand)
    st = paired_statistics(ref, cand, y, confidence=0.95)
    ps = []
    for k in range(4):
        m = y == k
        r, c = ref[m] == k, cand[m] == k
        ps.append(mcnemar([[np.sum(r & c), np.sum(r & ~c)], [np.sum(~r & c), np.sum(~r & ~c)]], exact=True).pvalue)
    rej, adj, _, _ = multipletests(ps, alpha=0.05, method="holm")
    rows = st["classes"]
    assert [r["class"] for r in rows] == [0, 1, 2, 3]
    np.testing.assert_allclose([r["mcnemar_p"] for r in rows], ps, rtol=1e-12)
    np.testing.assert_allclose([r["p_adjusted"] for r in rows], adj, rtol=1e-12)
    assert [r["significant"] for r in rows] == list(rej) and rows[2]["significant"]
    # the per-class upper bounds are simultaneous: each at 1 - 0.05 / 4
    from infoprobe.stats import drop_interval
    r2 = rows[2]
    assert r2["drop_upper"] == pytest.approx(drop_interval(r2["reference_only"], r2["candidate_only"], r2["n"],
                                                           1 - 0.05 / 4, side="upper")[1])
    assert st["max_class_drop_upper"] == max(r["drop_upper"] for r in rows)


def test_detectable_drop_has_the_stated_power():
    """At the smallest detectable drop, statsmodels' exact McNemar test rejects in about 80%
    of simulated paired experiments (Connor's formula is an approximation: +-0.06)."""
    from statsmodels.stats.contingency_tables import mcnemar

    from infoprobe.stats import detectable_drop, samples_needed

    n, pd = 2000, 0.03
    d = detectable_drop(n, pd, alpha=0.05, power=0.8)
    assert 0 < d < pd
    assert samples_needed(d, pd, 0.05, 0.8) == pytest.approx(n, rel=0.002)
    rng = np.random.default_rng(0)
    p12, p21 = (pd + d) / 2, (pd - d) / 2
    counts = rng.multinomial(n, [p12, p21, 1 - pd], size=1000)
    hits = [mcnemar([[0, b], [c, 0]], exact=True).pvalue < 0.05 for b, c, _ in counts]
    assert abs(np.mean(hits) - 0.8) < 0.06
    # no discordant pair at all: about (z_0.975 + z_0.8)^2 / n
    assert detectable_drop(n, 0.0) == pytest.approx((1.959964 + 0.841621) ** 2 / n, rel=0.01)


def test_confidence_gate_passes_an_identical_candidate_and_fails_a_destroyed_class(test_data, broken_class, tmp_path):
    cand = tmp_path / "copy.onnx"
    shutil.copy(REF, cand)
    # ~200 samples per class cannot bound a class's drop under the default 0.02 at 95%
    # simultaneous confidence, even for an identical copy: the gate fails and says why
    res = check(REF, cand, test_data, confidence=0.95, divergence_samples=0)
    assert [c["name"] for c in res.checks if not c["passed"]] == ["max_class_drop"]
    assert any("max_class_drop = 0.02 cannot pass at confidence 0.95" in n for n in res.notes)
    res = check(REF, cand, test_data, confidence=0.95, divergence_samples=0, thresholds={"max_class_drop": 0.05})
    assert res.passed and not any("cannot pass" in n for n in res.notes)
    assert {c["metric"] for c in res.checks} == {"label_change_upper", "accuracy_drop_upper", "max_class_drop_upper"}
    assert all(0 < c["value"] < c["threshold"] for c in res.checks)
    r = CliRunner().invoke(cli, ["check", str(REF), str(broken_class), "--data", str(DATA), "--split", "test",
                                 "--confidence", "0.95", "--max-accuracy-drop", "0.2", "--max-label-change", "0.2",
                                 "--max-class-drop", "0.05", "--divergence-samples", "0", "--json", "--no-progress"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    failed = {c["name"] for c in doc["checks"] if not c["passed"]}
    assert failed == {"max_class_drop"}
    cls3 = [row for row in doc["metrics"]["class_accuracy"] if row["class"] == 3][0]
    assert cls3["significant"] and cls3["p_adjusted"] < 1e-30
    assert any("3 (accuracy" in n for n in doc["notes"])


def test_small_data_set_is_called_out(tmp_path):
    """50 samples cannot test a 0.5-point drop: the gate says so (and passes, saying why a pass
    says little)."""
    data = load_data(DATA, split="test", limit=50)
    cand = tmp_path / "copy.onnx"
    shutil.copy(REF, cand)
    res = check(REF, cand, data, divergence_samples=0)
    assert res.passed
    assert any("too few to test max_accuracy_drop" in n for n in res.notes)
    assert any("classes have too few samples" in n for n in res.notes)


def test_confusion_difference_and_changed_samples_match_numpy(test_data, broken_class, tmp_path):
    out = tmp_path / "changed.csv"
    r = CliRunner().invoke(cli, ["check", str(REF), str(broken_class), "--data", str(DATA), "--split", "test",
                                 "--changed-samples", str(out), "--divergence-samples", "0", "--json", "--no-progress"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    x = test_data.x.reshape(len(test_data), -1).astype(np.float32) / 255
    pa, pb = _outputs(REF, x).argmax(1), _outputs(broken_class, x).argmax(1)
    y = test_data.y
    diff = np.zeros((10, 10), np.int64)
    np.add.at(diff, (y, pb), 1)
    np.add.at(diff, (y, pa), -1)
    conf = doc["confusions"]
    assert conf["classes"] == list(range(10)) and np.array_equal(conf["difference"], diff)
    assert conf["n_changed"] == int(np.sum(pa != pb))
    top = conf["moves"][0]
    m = (y == top["true"]) & (pa == top["reference"]) & (pb == top["candidate"])
    assert top["true"] == 3 and top["count"] == int(m.sum())
    assert sum(mv["count"] for mv in conf["moves"]) == conf["n_changed"]
    rows = np.loadtxt(out, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    changed = np.flatnonzero(pa != pb)
    assert np.array_equal(rows[:, 0], changed) and np.array_equal(rows[:, 1], test_data.index[changed])
    assert np.array_equal(rows[:, 2], y[changed]) and np.array_equal(rows[:, 3], pa[changed])
    assert np.array_equal(rows[:, 4], pb[changed])


def test_a_slower_candidate_is_called_out():
    """The rule: slower by over 10% and beyond the runs' spread (p10 of the candidate above p90
    of the reference), at either batch size."""
    from infoprobe.analyses.check import _notes

    def model(med, p10, p90, dtypes=("float32",)):
        return {"latency": [{"batch": 1, "median_ms": med, "p10_ms": p10, "p90_ms": p90}] * 2,
                "bytes_by_dtype": dict.fromkeys(dtypes, 1)}

    st = {"alpha": 0.05, "power": 0.8, "n": 100}
    slow = _notes(st, {}, {"reference": model(1.0, 0.9, 1.1), "candidate": model(4.3, 4.0, 4.6, ("int8",))}, 64)
    assert len(slow) == 2 and "4.30x slower" in slow[0] and "integer kernels" in slow[0]
    assert not _notes(st, {}, {"reference": model(1.0, 0.8, 1.3), "candidate": model(1.2, 1.05, 1.4)}, 64)
    assert not _notes(st, {}, {"reference": model(1.0, 0.9, 1.1), "candidate": model(1.05, 1.0, 1.1)}, 64)


def test_across_replicates_against_numpy_and_scipy():
    """Groups in first-seen order, non-numeric and missing values left out of the count, the
    Student t interval from scipy, no spread from a single value."""
    from scipy import stats

    from infoprobe.stats import across_replicates

    rows = [{"layer": "b", "acc": 0.9, "name": "x"}, {"layer": "a", "acc": 0.5, "name": "y"},
            {"layer": "b", "acc": 0.7, "name": "z"}, {"layer": "b", "acc": None, "name": "w"},
            {"layer": "b", "acc": 0.8, "name": "v"}]
    out = across_replicates(rows, by=("layer",), values=("acc",), confidence=0.9)
    assert [(r["layer"], r["n"]) for r in out] == [("b", 3), ("a", 1)]
    b = np.array([0.9, 0.7, 0.8])
    lo, hi = stats.t.interval(0.9, 2, loc=b.mean(), scale=stats.sem(b))
    assert out[0]["mean"] == pytest.approx(b.mean()) and out[0]["std"] == pytest.approx(b.std(ddof=1))
    assert (out[0]["ci_low"], out[0]["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
    assert out[1]["std"] is None and out[1]["ci_low"] is None and out[1]["median"] == 0.5
    # default columns: the numeric ones
    assert {r["measure"] for r in across_replicates([{"a": 1, "b": "s"}, {"a": 2, "b": "t"}])} == {"a"}


@pytest.fixture(scope="module")
def pruned_candidate(tmp_path_factory):
    """The sigmoid MLP with 4 units of fc1 removed by infoprobe prune (its metadata records the
    96 units kept and the reference's SHA-256)."""
    from infoprobe.model import load_model
    from infoprobe.plan import LayerPlan, PruningPlan
    from infoprobe.prune import apply_plan, save_model

    lm = load_model(REF)
    plan = PruningPlan({"fc1": LayerPlan.build("fc1", lm.layer("fc1").units, [0, 3, 5, 9])}, model_sha256=lm.sha256)
    return save_model(apply_plan(lm, plan), tmp_path_factory.mktemp("cand") / "pruned.onnx")


_KEPT = [u for u in range(100) if u not in (0, 3, 5, 9)]
#: (how the pruned model's metadata is changed: key -> new value, None removes it; why it is ignored)
MALFORMED_KEPT = [
    ({"infoprobe.kept_units": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
    ({"infoprobe.kept_units": json.dumps({"fc1": [True] * 96})}, "are not a list of integers"),
    ({"infoprobe.kept_units_from_sha256": None}, "infoprobe.kept_units is there without infoprobe.kept_units_from_sha256"),
    ({"infoprobe.kept_units": None}, "infoprobe.kept_units_from_sha256 is there without infoprobe.kept_units"),
    ({"infoprobe.kept_units": json.dumps({"fc1": [1] + _KEPT[:-1]})}, "listed twice"),
    ({"infoprobe.kept_units": json.dumps({"fc1": _KEPT[1:] + [100]})}, "beyond the 100 units of the original"),
    ({"infoprobe.kept_units": json.dumps({"fc1": _KEPT[::-1]})}, "not in increasing order"),
    ({"infoprobe.kept_units": json.dumps({"fc1": _KEPT[:50]})}, "lists 50 units but has 96"),
    ({"infoprobe.kept_units": json.dumps({"fc1": [-1] + _KEPT[1:]})}, "lists a negative unit"),
    ({"infoprobe.kept_units": json.dumps([_KEPT])}, "not a JSON object of sites"),
    ({"infoprobe.kept_units": "{not json"}, "is not valid JSON"),
    ({"infoprobe.kept_units_from_sha256": "z" * 64}, "is not a SHA-256"),
]


def _with_metadata(src, path, changes):
    m = onnx.load(str(src))
    props = {p.key: p.value for p in m.metadata_props}
    for k, v in changes.items():
        if v is None:
            props.pop(k, None)
        else:
            props[k] = v
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))
    return path


def _gate_json(cand):
    return CliRunner().invoke(cli, ["check", str(REF), str(cand), "--data", str(DATA), "--split", "test",
                                    "--limit", "300", "--divergence-samples", "100", "--json", "--no-progress"])


@pytest.mark.parametrize("changes,why", MALFORMED_KEPT, ids=[w.split()[-1] for _, w in MALFORMED_KEPT])
def test_malformed_kept_units_metadata_is_ignored_with_a_note(tmp_path, pruned_candidate, changes, why):
    """A candidate's record of the units it kept is read against its schema: anything else is
    ignored, said in a warning and a note, and the gate decides as for a model without it."""
    cand = _with_metadata(pruned_candidate, tmp_path / "cand.onnx", changes)
    r = _gate_json(cand)
    assert r.exit_code in (0, 1), (r.output, r.exception)
    assert "infoprobe: warning: cand.onnx: its metadata of the units it kept was ignored" in r.stderr
    assert why in r.stderr
    doc = json.loads(r.stdout)
    assert any("was ignored" in n and why in n for n in doc["notes"]), doc["notes"]
    fc1 = doc["divergence"]["sites"][0]
    assert fc1["reference"] == "fc1" and fc1["compared_on"] == "CKA only" and fc1["units"] == [100, 96]


def test_well_formed_kept_units_compare_the_kept_units(pruned_candidate):
    r = _gate_json(pruned_candidate)
    assert r.exit_code in (0, 1), (r.output, r.exception)
    doc = json.loads(r.stdout)
    assert doc["divergence"]["sites"][0]["compared_on"] == "kept units" and "ignored" not in r.output
    assert not any("ignored" in n for n in doc["notes"])
