"""Modules: graphification, n-cut, spectral clustering, p values, lesions and the taxonomy."""
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from scipy import stats

from conftest import FIX, initializers
from infoprobe.analyses.modules import (Lesioner, Partition, UnreachableAlphaWarning, align_signs, classify,
                                        clusterability, double_lesions, draws_needed, image_shape, lesion_tests,
                                        modules, network_table, partition, prunable_plan)
from infoprobe.cli.main import cli
from infoprobe.data import load_data, prepare_inputs
from infoprobe.errors import ConfigError, ModelError
from infoprobe.estimators.graphcut import ncut, spectral_partition
from infoprobe.graph import graph_from_model, graph_from_store
from infoprobe.model import load_model
from infoprobe.stats import adjust, chi2_ranks, fisher_combined, percentile_p

RNG = np.random.default_rng(0)


def _save(tmp_path, name, nodes, inits, in_shape, out_dim):
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_dim])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def fashion():
    return load_data(FIX / "fashion_demo.npz", split="test")


# --------------------------------------------------------------------------- graphification

def test_mlp_graph_is_the_absolute_weights(tmp_path):
    w1, b1 = RNG.normal(size=(3, 4)), RNG.normal(size=3)   # Gemm, transB
    w2, b2 = RNG.normal(size=(2, 3)), RNG.normal(size=2)   # MatMul + Add
    w1[1, 2] = 0.0
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="l1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="r1"),
             helper.make_node("MatMul", ["r", "w2t"], ["m"], name="l2_mm"),
             helper.make_node("Add", ["m", "b2"], ["logits"], name="l2")]
    path = _save(tmp_path, "mlp", nodes, {"w1": w1, "b1": b1, "w2t": w2.T, "b2": b2}, [4], 2)
    g = graph_from_model(load_model(path))
    assert g.kind == "mlp" and g.layers == ["input", "l1", "l2_mm"] and g.units == [4, 3, 2] and g.hidden == ["l1"]
    want = np.zeros((9, 9))
    want[4:7, 0:4] = np.abs(w1)
    want[7:9, 4:7] = np.abs(w2)
    want = want + want.T
    np.testing.assert_allclose(g.adjacency().toarray(), want, rtol=1e-6)
    assert g.adjacency().nnz == 2 * (11 + 6)  # the zero weight is no edge


def test_cnn_graph_folds_batch_norm_into_kernel_l1_norms(tmp_path):
    k1 = RNG.normal(size=(2, 1, 3, 3))
    k2 = RNG.normal(size=(3, 2, 3, 3))
    gamma, beta, mean, var = np.array([0.5, -2.0, 1.5]), RNG.normal(size=3), RNG.normal(size=3), np.array([0.3, 1.0, 4.0])
    nodes = [helper.make_node("Conv", ["input", "k1", "c1b"], ["c1"], name="conv1", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "k2", "c2b"], ["c2"], name="conv2", kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c2", "g", "be", "mu", "var"], ["b2"], name="bn2", epsilon=1e-3),
             helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1)]
    inits = {"k1": k1, "c1b": np.zeros(2), "k2": k2, "c2b": np.zeros(3), "g": gamma, "be": beta, "mu": mean,
             "var": var, "fw": RNG.normal(size=(2, 3 * 4 * 4)), "fb": np.zeros(2)}
    path = _save(tmp_path, "cnn", nodes, inits, [1, 8, 8], 2)
    g = graph_from_model(load_model(path))
    assert g.kind == "cnn" and g.layers == ["conv1", "conv2"] and g.units == [2, 3]  # no input, no dense
    block = np.abs(k2 * (gamma / np.sqrt(var + 1e-3))[:, None, None, None]).sum(axis=(2, 3))
    np.testing.assert_allclose(g.adjacency().toarray()[2:, :2], block, rtol=1e-5)
    with pytest.raises(ModelError, match="conv layers"):
        graph_from_model(load_model(path), "mlp")


def test_store_graph_equals_model_graph(tmp_path):
    from infoprobe.analyses.capture import capture
    from infoprobe.store import Store

    small = load_data(FIX / "fashion_demo.npz", split="test", limit=20)
    for name in ("fashion_mlp.onnx", "cnn_small.onnx"):
        store = capture(FIX / name, small if "fashion" in name else load_data(FIX / "mnist_demo.npz", limit=20),
                        tmp_path / f"{name}.h5", progress=False)
        with Store(store) as st:
            a, b = graph_from_model(load_model(FIX / name)), graph_from_store(st)
        assert a.layers == b.layers and a.hidden == b.hidden
        assert abs(a.adjacency() - b.adjacency()).max() < 1e-5


def test_shuffles_permute_within_blocks():
    g = graph_from_model(load_model(FIX / "fashion_mlp_pruned.onnx"))
    for nz in (False, True):
        sb = g.shuffled_blocks(np.random.default_rng(1), nonzero_only=nz)
        for (_, _, w), (_, _, s) in zip(g.blocks, sb):
            np.testing.assert_array_equal(np.sort(w.ravel()), np.sort(s.ravel()))
            assert not np.array_equal(w, s)
            if nz:
                np.testing.assert_array_equal(w != 0, s != 0)


# --------------------------------------------------------------------------- n-cut, clustering

def _ncut_brute(a, labels):
    total = 0.0
    for c in set(labels) - {-1}:
        cut = sum(a[i, j] for i in range(len(a)) for j in range(len(a)) if labels[i] == c and labels[j] != c
                  and labels[j] != -1)
        vol = sum(a[i, j] for i in range(len(a)) for j in range(len(a)) if labels[i] == c and labels[j] != -1)
        total += cut / vol if vol else 0.0
    return total


@pytest.mark.parametrize("seed", range(5))
def test_ncut_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((8, 8)) * (rng.random((8, 8)) < 0.6)
    a = a + a.T
    np.fill_diagonal(a, 0)
    labels = rng.integers(-1, 3, size=8)
    assert ncut(a, labels) == pytest.approx(_ncut_brute(a, labels), rel=1e-12)


def test_clustering_equals_scikit_learn_and_drops_isolated_vertices():
    from sklearn.cluster import SpectralClustering

    rng = np.random.default_rng(3)
    a = rng.random((40, 40)) ** 4
    a = a + a.T
    a[7, :] = a[:, 7] = 0.0  # isolated vertex
    labels = spectral_partition(a, 4, seed=5)
    keep = np.arange(40) != 7
    ref = SpectralClustering(4, affinity="precomputed", eigen_solver="arpack", assign_labels="kmeans",
                             random_state=5).fit_predict(a[keep][:, keep])
    assert labels[7] == -1
    np.testing.assert_array_equal(labels[keep], ref)


def test_planted_modules_are_found_and_clusterable():
    """Two disjoint chains of a block-diagonal MLP: the partition cuts nothing (n-cut 0) and
    every shuffle is worse, so p = 1/(n+1)."""
    from infoprobe.graph import WeightGraph

    blocks = []
    for i in range(3):
        w = np.zeros((10, 10))
        w[:5, :5] = 1.0 + np.random.default_rng(i).random((5, 5))
        w[5:, 5:] = 1.0 + np.random.default_rng(i + 9).random((5, 5))
        blocks.append((i, i + 1, w))
    g = WeightGraph("mlp", ["input", "a", "b", "c"], [10] * 4, blocks, ["a", "b"])
    p = partition(g, 2, seed=0)
    assert p.ncut == pytest.approx(0.0, abs=1e-12)
    assert len(set(p.labels[:5]) | set(p.labels[10:15])) == 1
    c = clusterability(g, p.ncut, n_clusters=2, n_shuffles=9, seed=0, progress=False)
    assert c["p"] == pytest.approx(0.1) and min(c["shuffled"]) > 0 and c["z"] < 0


# --------------------------------------------------------------------------- statistics

def test_percentile_p_counts_ties_against_significance():
    null = np.array([0.1, 0.2, 0.2, 0.5, np.nan])
    for true in (0.0, 0.1, 0.2, 0.3, 0.6):
        left = (sum(v <= true for v in null[:4]) + 1) / 5
        right = (sum(v >= true for v in null[:4]) + 1) / 5
        assert percentile_p(true, null, "left") == left and percentile_p(true, null, "right") == right
    assert np.isnan(percentile_p(np.nan, null))


def test_fisher_and_chi2_against_hand_computation():
    n = 20
    p = np.array([1, 1, 2, 5, 7, 10, 21, 21, 3, 1]) / (n + 1)
    shifted = p - 1 / (2 * (n + 1))
    x = -2 * np.log(shifted).sum()
    assert fisher_combined(p, n) == pytest.approx(stats.chi2.sf(x, 2 * len(p)), rel=1e-12)
    assert fisher_combined(p, n) == pytest.approx(stats.combine_pvalues(shifted, method="fisher").pvalue)
    counts = np.zeros(n + 1)
    for v in np.rint(p * (n + 1)).astype(int):
        counts[v - 1] += 1
    mu = len(p) / (n + 1)
    chi = ((counts - mu) ** 2 / mu).sum()
    assert chi2_ranks(p, n) == pytest.approx(stats.chi2.sf(chi, n), rel=1e-12)
    # uniform p values: neither test rejects
    uniform = np.repeat(np.arange(1, n + 2) / (n + 1), 3)
    assert fisher_combined(uniform, n) > 0.3 and chi2_ranks(uniform, n) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="percentiles"):
        chi2_ranks([0.33], n)


def test_bh_and_holm_against_hand_computation():
    p = np.array([0.001, 0.02, 0.03, 0.04, 0.2, np.nan])
    m = 5
    order = np.argsort(p[:m])
    holm = np.maximum.accumulate(np.minimum(1, (m - np.arange(m)) * p[:m][order]))
    want_holm = np.empty(m)
    want_holm[order] = holm
    bh = np.minimum.accumulate((m / np.arange(m, 0, -1) * p[:m][order][::-1]))[::-1]
    want_bh = np.empty(m)
    want_bh[order] = np.minimum(bh, 1)
    rej, adj = adjust(p, "holm")
    np.testing.assert_allclose(adj[:m], want_holm)
    assert np.isnan(adj[m]) and list(rej) == [True, False, False, False, False, False]
    rej, adj = adjust(p, "bh")
    np.testing.assert_allclose(adj[:m], want_bh)
    assert list(rej[:m]) == [True, True, True, True, False]  # BH: the largest k with p_(k) <= k alpha / m is 4
    table = network_table([{"fisher_importance": 0.001, "chi2_importance": 0.04},
                           {"fisher_importance": 0.03, "chi2_importance": 0.2}])
    assert table[0]["fisher_importance_bh"] == pytest.approx(0.002)
    assert table[1]["chi2_importance_holm"] == pytest.approx(min(1, 0.2))  # largest of 4: factor 1, monotone
    assert table[0]["fisher_importance_holm"] == pytest.approx(0.004)


@pytest.mark.parametrize("row,want", [
    (dict(size=10, in_graph=10, accuracy_change=-0.5, p_importance=0.04, p_prunable=1.0), "complete"),
    (dict(size=4, in_graph=90, accuracy_change=-0.5, p_importance=0.04, p_prunable=1.0), "small"),
    (dict(size=30, in_graph=90, accuracy_change=-0.02, p_importance=0.04, p_prunable=1.0), "important"),
    (dict(size=30, in_graph=90, accuracy_change=0.001, p_importance=1.0, p_prunable=0.04), "prunable"),
    (dict(size=30, in_graph=90, accuracy_change=-0.005, p_importance=0.04, p_prunable=1.0), "sig-but-not-diff"),
    (dict(size=30, in_graph=90, accuracy_change=-0.02, p_importance=0.3, p_prunable=0.8), "diff-but-not-sig"),
    (dict(size=30, in_graph=90, accuracy_change=-0.005, p_importance=0.3, p_prunable=0.8), "other"),
])
def test_taxonomy_order(row, want):
    assert classify(dict(row, layer_units=100)) == want
    if want == "important":
        assert classify(dict(row, layer_units=100), small_units=31) == "small"
        assert classify(dict(row, layer_units=100), min_drop=0.05) == "sig-but-not-diff"


def test_sign_alignment_and_image_shape():
    base = np.random.default_rng(0).normal(size=50)
    v = np.stack([base, -base + 0.1, base * 2, -base])
    out = align_signs(v)
    assert np.all(out @ out[0] > 0) and np.all(np.abs(out) == np.abs(v))
    assert image_shape((None, 784)) == (28, 28) and image_shape((None, 3, 32, 30)) == (32, 30)
    assert image_shape((None, 10)) is None and image_shape((None, "n")) is None


# --------------------------------------------------------------------------- lesions

def _rebuilt_accuracy(path, x, y, zero):
    """Per-class accuracy of the model file with the incoming weights (and biases, where
    listed) of some units set to zero in the initializers: the physical lesion."""
    m = onnx.load(str(path))
    w = initializers(path)
    for name, rows in zero.items():
        arr = w[name].copy()
        if name.endswith("weight_t"):
            arr[:, rows] = 0
        else:
            arr[rows] = 0
        for t in m.graph.initializer:
            if t.name == name:
                t.CopyFrom(numpy_helper.from_array(arr, name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {"input": x})[0].argmax(1)
    return np.array([(pred[y == c] == c).mean() for c in range(10)])


def test_lesions_equal_physically_rebuilt_models(fashion):
    lm = load_model(FIX / "fashion_mlp.onnx")
    les = Lesioner(lm, fashion, ["fc1", "fc2", "fc3", "fc4"])
    x = prepare_inputs(fashion.x, lm.input_shape, 1 / 255)
    u1, u3 = np.arange(0, 256, 3), np.arange(5, 200, 2)
    np.testing.assert_array_equal(les({"fc2": u1}),
                                  _rebuilt_accuracy(FIX / "fashion_mlp.onnx", x, fashion.y,
                                                    {"fc2.weight": u1, "fc2.bias": u1}))
    np.testing.assert_array_equal(les({"fc1": u1, "fc3": u3}),
                                  _rebuilt_accuracy(FIX / "fashion_mlp.onnx", x, fashion.y,
                                                    {"fc1.weight": u1, "fc1.bias": u1, "fc3.weight": u3, "fc3.bias": u3}))
    # lesion "activation_of_bias" on a conv with batch norm: weights zeroed, bias (through the batch norm) kept
    mn = load_data(FIX / "mnist_demo.npz", split="test")
    cm = load_model(FIX / "cnn_small.onnx")
    les = Lesioner(cm, mn, ["conv1", "conv2"], lesion="activation_of_bias")
    xc = prepare_inputs(mn.x, cm.input_shape, 1 / 255)
    np.testing.assert_array_equal(les({"conv1": [0, 2]}),
                                  _rebuilt_accuracy(FIX / "cnn_small.onnx", xc, mn.y, {"conv1.weight": [0, 2]}))
    assert les.base.mean() > 0.9 and les({"conv1": [0, 2]}).mean() < les.base.mean()


class _FakeLesioner:
    """Per-class accuracy from an additive damage model with one interaction."""

    layers = ["a", "b"]
    classes = np.array([0, 3, 4, 9])       # the labels present: columns are named by them

    def __init__(self, damage, interaction=0.0):
        self.damage, self.interaction = damage, interaction
        self.base = np.full(4, 0.9)

    def many(self, lesions):
        return np.array([self(les) for les in lesions])

    def __call__(self, lesions):
        loss = sum(self.damage[lay][np.asarray(u)].sum() for lay, u in lesions.items())
        if {"a", "b"} <= set(lesions):
            loss -= self.interaction * min(self.damage["a"][np.asarray(lesions["a"])].sum(),
                                           self.damage["b"][np.asarray(lesions["b"])].sum())
        return self.base - loss


def _fake_partition():
    from infoprobe.graph import WeightGraph

    g = WeightGraph("mlp", ["input", "a", "b", "out"], [2, 20, 20, 2], [], ["a", "b"])
    labels = np.concatenate([[0, 0], np.repeat([0, 1], 10), np.repeat([0, 1], 10), [0, 0]])
    return Partition(g, labels, 2, 0.0, 0)


@pytest.mark.parametrize("interaction,relation", [(0.0, "no conclusion"), (1.0, "exclusive")])
def test_lesion_tests_and_double_lesions_on_a_known_damage_model(interaction, relation):
    dmg = {"a": np.r_[np.full(10, 0.006), np.full(10, 0.0001)], "b": np.r_[np.full(10, 0.005), np.full(10, 0.0001)]}
    les = _FakeLesioner(dmg, interaction)
    part = _fake_partition()
    rows, rand = lesion_tests(les, part, n_random=20, seed=0, progress=False)
    cats = {(r["layer"], r["cluster"]): r["category"] for r in rows}
    assert cats == {("a", 0): "important", ("a", 1): "prunable", ("b", 0): "important", ("b", 1): "prunable"}
    first = rows[0]
    nulls = [q["accuracy_change"] for q in rand if (q["layer"], q["cluster"]) == ("a", 0)]
    assert len(nulls) == 20 and first["p_importance"] == percentile_p(first["accuracy_change"], nulls) == 1 / 21
    assert first["accuracy_change"] == pytest.approx(-0.06)
    assert first["coherence"] == 0.0  # every class loses the same
    assert [k for k in first if k.startswith("class_")] == ["class_0_change", "class_3_change", "class_4_change",
                                                            "class_9_change"]   # named by the labels present
    pairs, edges = double_lesions(les, part, rows, n_random=20, seed=0, progress=False)
    assert len(pairs) == 1 and pairs[0]["relation"] == relation
    assert pairs[0]["delta_y_given_x"] == pytest.approx(0.05 * (1 - interaction))
    assert len(edges) == (0 if relation == "no conclusion" else 1)


def test_too_few_random_draws_warn_that_alpha_is_unreachable():
    assert [draws_needed(a) for a in (0.05, 0.01, 0.1, 0.3, 1.0)] == [20, 100, 10, 3, 1]
    dmg = {"a": np.r_[np.full(10, 0.006), np.full(10, 0.0001)], "b": np.r_[np.full(10, 0.005), np.full(10, 0.0001)]}
    les, part = _FakeLesioner(dmg), _fake_partition()
    with pytest.warns(UnreachableAlphaWarning, match=r"1/11 = 0\.0909.*alpha = 0\.05.*at least 20 random draws"):
        rows, _ = lesion_tests(les, part, n_random=10, seed=0, progress=False)
    assert min(r["p_importance"] for r in rows) == pytest.approx(1 / 11)
    assert not any(r["category"] in ("important", "prunable") for r in rows)   # what the warning says
    with pytest.warns(UnreachableAlphaWarning, match="1/20 = 0.05"):           # p < alpha is strict
        lesion_tests(les, part, n_random=19, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows, _ = lesion_tests(les, part, n_random=20, seed=0, progress=False)
        assert sum(r["category"] == "important" for r in rows) == 2
        with pytest.warns(UnreachableAlphaWarning, match=r"double lesions.*--double-random"):
            double_lesions(les, part, rows, n_random=5, seed=0, progress=False)


def test_prunable_plan_reproduces_the_lesion(fashion, tmp_path):
    from infoprobe.prune import apply_plan
    from infoprobe.runner import make_session

    lm = load_model(FIX / "fashion_mlp.onnx")
    part = partition(graph_from_model(lm), 12, seed=0)
    res = modules(lm, None, n_shuffles=0)
    sub = [s for s in part.sub_clusters() if s["layer"] == "fc3"][0]
    res.subclusters = [{"layer": "fc3", "units": sub["units"].tolist(), "category": "prunable"}]
    plan = prunable_plan(lm, res)
    assert list(plan.layers["fc3"].remove) == sub["units"].tolist() and not plan.layers["fc3"].constant.any()
    les = Lesioner(lm, fashion, ["fc3"])
    x = prepare_inputs(fashion.x, lm.input_shape, 1 / 255)
    pred = make_session(apply_plan(lm, plan)).run(None, {"input": x})[0].argmax(1)
    np.testing.assert_array_equal(les({"fc3": sub["units"]}),
                                  [(pred[fashion.y == c] == c).mean() for c in range(10)])
    res.subclusters[0]["category"] = "other"
    with pytest.raises(ConfigError, match="prunable"):
        prunable_plan(lm, res)


# --------------------------------------------------------------------------- end to end

def test_pruned_fashion_mlp_is_clusterable():
    """The companion paper: pruned MLPs are more clusterable than their shuffles."""
    g = graph_from_model(load_model(FIX / "fashion_mlp_pruned.onnx"))
    p = partition(g, 12, seed=0)
    c = clusterability(g, p.ncut, n_shuffles=4, seed=0, progress=False)
    assert p.ncut < min(c["shuffled"]) and c["p"] == pytest.approx(0.2)


def test_cli_modules(tmp_path):
    out = tmp_path / "m"
    args = ["modules", str(FIX / "fashion_mlp.onnx"), "--data", str(FIX / "fashion_demo.npz"), "--split", "test",
            "--out", str(out), "--shuffles", "2", "--random", "9", "--double-random", "4", "--no-progress", "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)              # stderr may carry the warning that 9 draws cannot reach 0.05
    net = doc["networks"][0]
    rows = json.loads((out / "subclusters.json").read_text())["rows"]
    p = np.array([q["p_importance"] for q in rows if q["p_importance"] is not None])
    assert net["n_importance"] == len(p) and np.allclose(p * 10, np.rint(p * 10))
    assert net["fisher_importance"] == pytest.approx(fisher_combined(p, 9))
    for f in ("partition.csv", "network.json", "subclusters.png", "class_profiles.png", "clusterability.png",
              "visualisations.png", "random_lesions.csv"):
        assert (out / f).exists(), f
    parts = json.loads((out / "partition.json").read_text())["rows"]
    assert len(parts) == 784 + 4 * 256 + 10
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(cli, ["modules", str(FIX / "fashion_mlp.onnx"), "--out", str(out), "--plan",
                                 str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "--plan needs --data" in r.output
    r = CliRunner().invoke(cli, ["modules", str(FIX / "fashion_mlp.onnx"), "--out", str(out), "--clusters", "5000",
                                 "--overwrite"])
    assert r.exit_code == 2 and "cannot make 5000 clusters" in r.output


def test_cli_several_networks_table(tmp_path):
    out = tmp_path / "m"
    r = CliRunner().invoke(cli, ["modules", str(FIX / "fashion_mlp.onnx"), str(FIX / "fashion_mlp_pruned.onnx"),
                                 "--out", str(out), "--shuffles", "3", "--shuffle", "both", "--no-progress",
                                 "--no-plot"])
    assert r.exit_code == 0, r.output
    table = json.loads((out / "networks.json").read_text())["rows"]
    assert [Path(t["network"]).name for t in table] == ["fashion_mlp.onnx", "fashion_mlp_pruned.onnx"]
    p = [t["clusterability_p_all"] for t in table] + [t["clusterability_p_nonzero"] for t in table]
    _, adj = adjust(p, "bh")
    assert table[1]["clusterability_p_all_bh"] == pytest.approx(adj[1])
    assert (out / "fashion_mlp_pruned" / "partition.csv").exists()
    # the statistics over networks, against NumPy on the table
    across = {r["measure"]: r for r in json.loads((out / "networks_summary.json").read_text())["rows"]}
    ncut = np.array([t["ncut"] for t in table])
    assert across["ncut"]["n"] == 2 and across["ncut"]["median"] == pytest.approx(np.median(ncut))
    assert across["ncut"]["std"] == pytest.approx(ncut.std(ddof=1))
    half = 12.706204736 * ncut.std(ddof=1) / np.sqrt(2)                  # t_0.975 with 1 degree of freedom
    assert across["ncut"]["ci_high"] == pytest.approx(ncut.mean() + half, rel=1e-8)
    assert "over 2 networks (median [min, max]): ncut" in r.output



