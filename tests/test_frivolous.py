"""Frivolous units (Casper et al., AAAI 2021): prunability crossings, PCA redundancy,
correlations, gains, the paper's constructive examples, refactoring into a thinner ONNX,
plans, the synthetic data generator and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import FIX
from infoprobe.analyses.frivolous import (
    FrivolousResult, frivolous, prunability, prunable_plan, redundancy, refactor_plan, width_sweep,
)
from infoprobe.data import Dataset, load_data
from infoprobe.errors import ConfigError, DataError, PlanError
from infoprobe.estimators.frivolous import (
    Moments, abs_correlations, components_needed, gain, independent_units, pca_spectrum, prunable_fraction,
    refactor,
)
from infoprobe.model import load_model
from infoprobe.prune import apply_plan, save_model
from infoprobe.synthetic import teacher_data

SYNTH = FIX / "synthetic_10d.npz"


def _data(x):
    return Dataset(np.asarray(x, np.float32), None, np.arange(len(x)), "all", Path("memory"), "0" * 64)


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0]


# --------------------------------------------------------------------------- estimators

def test_crossing_is_interpolated_between_the_two_fractions_around_it():
    f = np.arange(7) / 6
    u = [1.0, 0.95, 0.9, 0.7, 0.5, 0.3, 0.1]
    # crosses 0.8 between 2/6 (0.9) and 3/6 (0.7): halfway
    assert prunable_fraction(f, u, 0.2) == (pytest.approx(2.5 / 6), True)
    # tolerance 0.5: 0.5 at 4/6 is not below the level; the crossing lies at 4/6 itself
    assert prunable_fraction(f, u, 0.5) == (pytest.approx(4 / 6), True)
    assert prunable_fraction(f, u, 0.4) == (pytest.approx(3 / 6 + (0.7 - 0.6) / (0.7 - 0.5) / 6), True)
    # never crosses: every unit can go
    assert prunable_fraction(f, [1, 1, 0.99, 0.97, 0.95, 0.9, 0.85], 0.2) == (1.0, False)
    # dips below and rises again: the first crossing counts
    frac, crossed = prunable_fraction(f, [1, 0.7, 0.9, 0.9, 0.9, 0.9, 0.9], 0.2)
    assert crossed and frac == pytest.approx((1 - 0.8) / (1 - 0.7) / 6)
    # tolerance 0: the first change of any label
    assert prunable_fraction([0, 0.5, 1], [1, 1, 0.99], 0.0) == (0.5, True)
    assert prunable_fraction([0, 0.5, 1], [0.7, 0.7, 0.7], 0.2) == (0.0, True)
    with pytest.raises(ConfigError):
        prunable_fraction([0, 0.5], [1, 0.5, 0.2])
    with pytest.raises(ConfigError):
        prunable_fraction([0, 0.5, 0.4], [1, 0.5, 0.2])
    with pytest.raises(ConfigError):
        prunable_fraction(f, u, 1.0)


def test_moments_match_numpy_covariance_over_chunks_and_large_means():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 6)) * [1, 2, 3, 0.1, 1, 1] + 1e4
    m = Moments()
    for s in range(0, 5000, 777):
        m.update(x[s:s + 777])
    np.testing.assert_allclose(m.covariance(), np.cov(x.T, bias=True), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12)
    with pytest.raises(DataError):
        Moments().update(np.array([[np.nan, 1.0]]))


def test_moments_in_slices_and_released_in_place_equal_numpy():
    """Under a tiny budget the rows go through float64 a few at a time and the covariance is
    built (and symmetrised) a few rows at a time, in the memory of the sums."""
    from infoprobe.limits import budgets

    rng = np.random.default_rng(4)
    x = (rng.normal(size=(700, 40)) @ rng.normal(size=(40, 40)) + 50).astype(np.float32)
    want = np.cov(x.astype(np.float64).T, bias=True)
    with budgets(memory="16K"):                    # 1/16: 1 KiB, two float64 rows of 40 units
        m = Moments()
        for s in range(0, 700, 300):
            m.update(x[s:s + 300])
        copy = m.covariance()
        sums = m.s2
        cov = m.covariance(release=True)
    assert np.shares_memory(cov, sums) and not np.shares_memory(copy, sums)
    for c in (copy, cov):
        np.testing.assert_allclose(c, want, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(c, c.T)
    with pytest.raises(DataError, match="released"):
        m.update(x)
    spec = pca_spectrum(cov, overwrite=True)
    np.testing.assert_allclose(spec, np.linalg.eigvalsh(want)[::-1].clip(0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_pca_count_recovers_the_rank_of_low_rank_plus_noise(rank):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(rank)
    n, u = 3000, 20
    # rank orthogonal directions of equal variance (each 1/rank of the signal) plus noise
    q = np.linalg.qr(rng.normal(size=(u, rank)))[0].T
    x = rng.normal(size=(n, rank)) @ q * 3 + 0.01 * rng.normal(size=(n, u))
    m = Moments()
    m.update(x)
    spec = pca_spectrum(m.covariance())
    # same explained-variance ratios as scikit-learn's PCA (a second implementation)
    np.testing.assert_allclose(spec / spec.sum(), PCA().fit(x).explained_variance_ratio_, atol=1e-10)
    assert components_needed(spec, 0.05) == rank
    assert components_needed(spec, 0.0) == u          # noise makes every unit count at tolerance 0
    # by hand: smallest k whose leftover variance is <= tolerance
    tail = [spec[k:].sum() / spec.sum() for k in range(u + 1)]
    for tol in (0.3, 0.01, 1e-4):
        assert components_needed(spec, tol) == next(k for k, t in enumerate(tail) if t <= tol)
    assert components_needed(np.zeros(5), 0.05) == 0


def test_abs_correlations_match_corrcoef_and_skip_constant_units():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    x[:, 2] = 3.0
    x[:, 4] = -2 * x[:, 0] + 0.1 * x[:, 1]
    m = Moments()
    m.update(x)
    r = abs_correlations(m.covariance())
    live = [0, 1, 3, 4]
    c = np.corrcoef(x[:, live].T)
    want = [abs(c[i, j]) for i in range(4) for j in range(i + 1, 4)]
    np.testing.assert_allclose(r, want, atol=1e-12)


def test_gain_is_the_growth_per_doubling():
    w = [0.25, 0.5, 1, 2, 4]
    assert gain(w, [3 * v ** 1.5 for v in w]) == pytest.approx(2 ** 1.5)
    assert gain(w, [5 * v for v in w]) == pytest.approx(2.0)
    # geometric mean of the per-doubling factors, zero counts skipped
    c = [0, 1, 3, 6, 24]
    assert gain(w, c) == pytest.approx((3 * 2 * 4) ** (1 / 3))
    # widths that are not doublings: growth per doubling
    assert gain([1, 4], [1, 9]) == pytest.approx(3.0)
    assert np.isnan(gain(w, [0, 0, 0, 0, 1]))
    with pytest.raises(ConfigError):
        gain([1, 1], [1, 2])


def test_pivoted_qr_keeps_one_of_each_duplicate_and_least_squares_is_exact():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(500, 4))
    # units: 4 independent, then duplicates and an affine combination
    x = np.column_stack([base, base[:, 1], 2 * base[:, 0] - base[:, 3] + 5, base[:, 2]])
    m = Moments()
    m.update(x)
    k = components_needed(pca_spectrum(m.covariance()), 1e-9)
    assert k == 4
    kept = independent_units(x, k)
    assert len(kept) == 4 and np.linalg.matrix_rank(x[:, kept] - x[:, kept].mean(0)) == 4
    removed, coef, const = refactor(x, kept)
    np.testing.assert_allclose(x[:, kept] @ coef.T + const, x[:, removed], atol=1e-9)


# --------------------------------------------------------------------------- constructions

def _dense_model(path, layers, in_dim):
    """Gemm MLP from [(W [out, in], b, activation or None), ...] (plain onnx.helper)."""
    nodes, inits, x = [], [], "input"
    for i, (w, b, act) in enumerate(layers, 1):
        out = "logits" if i == len(layers) else f"z{i}"
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"w{i}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], name=f"fc{i}", transB=1))
        if act:
            nodes.append(helper.make_node(act, [out], [f"a{i}"], name=f"act{i}"))
            x = f"a{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_dim])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             ["N", np.shape(layers[-1][0])[0]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def constructions(tmp_path_factory):
    """The paper's examples (Section 3, "Relating Prunable and Redundant Units"): a narrow
    N and wide versions computing exactly the same function."""
    tmp = tmp_path_factory.mktemp("cons")
    rng = np.random.default_rng(0)
    d, h, c = 16, 8, 3
    w1, b1 = rng.normal(size=(h, d)) / np.sqrt(d), 0.1 * rng.normal(size=h)
    th, z = 2 * rng.normal(size=(c, h)), np.zeros((c, h))
    v = rng.normal(size=(h, d)) / np.sqrt(d)
    big = 20 * rng.normal(size=(c, h))
    nets = {
        "narrow": [(w1, b1, "Tanh"), (th, np.zeros(c), None)],
        # duplicate the layer, output weights [theta, 0]: more prunable and more redundant
        "both": [(np.vstack([w1, w1]), np.r_[b1, b1], "Tanh"), (np.hstack([th, z]), np.zeros(c), None)],
        # [u, v] with v independent and zero outgoing weights: more prunable only
        "prunable": [(np.vstack([w1, v]), np.r_[b1, b1], "Tanh"), (np.hstack([th, z]), np.zeros(c), None)],
        # duplicate, weight balancing 1/2 [theta + b, theta - b]: more redundant only
        "balanced": [(np.vstack([w1, w1]), np.r_[b1, b1], "Tanh"),
                     (np.hstack([(th + big) / 2, (th - big) / 2]), np.zeros(c), None)],
    }
    x = rng.normal(size=(2000, d)).astype(np.float32)
    paths = {k: _dense_model(tmp / f"{k}.onnx", layers, d) for k, layers in nets.items()}
    return paths, x


def test_constructions_compute_the_same_function(constructions):
    paths, x = constructions
    ref = _run(paths["narrow"], x)
    for k in ("both", "prunable", "balanced"):
        np.testing.assert_allclose(_run(paths[k], x), ref, atol=2e-4)


def test_constructions_are_recognised(constructions):
    paths, x = constructions
    res = {k: frivolous(p, _data(x), modes=("layer",), progress=False).layers[0] for k, p in paths.items()}
    n = res["narrow"]
    # duplicating the layer makes exactly its copies redundant
    assert res["both"]["redundant"] == n["redundant"] + 8
    assert res["balanced"]["redundant"] == res["both"]["redundant"]
    assert res["prunable"]["redundant"] < res["both"]["redundant"]
    # zero outgoing weights: more prunable units than the narrow network, a larger fraction too
    for k in ("both", "prunable"):
        assert res[k]["prunable_units"] > n["prunable_units"] + 2
        assert res[k]["prunable_fraction"] > n["prunable_fraction"]
    # weight balancing: redundant but not prunable
    assert res["balanced"]["prunable_fraction"] < n["prunable_fraction"]
    assert res["balanced"]["prunable_units"] < res["both"]["prunable_units"] / 2


def test_refactoring_an_exactly_redundant_network_gives_a_thinner_equal_onnx(tmp_path):
    rng = np.random.default_rng(3)
    d = 10
    w1, b1 = rng.normal(size=(4, d)) / 3, 0.1 * rng.normal(size=4)
    w2, b2 = rng.normal(size=(3, 4)), 0.1 * rng.normal(size=3)
    th = rng.normal(size=(2, 3))
    # every layer duplicated, deeper layers reading one copy, output weights [theta, 0]
    layers = [(np.vstack([w1, w1]), np.r_[b1, b1], "Tanh"),
              (np.vstack([np.hstack([w2, 0 * w2]), np.hstack([w2, 0 * w2])]), np.r_[b2, b2], "Sigmoid"),
              (np.hstack([th, 0 * th]), np.zeros(2), None)]
    path = _dense_model(tmp_path / "dup.onnx", layers, d)
    x = rng.normal(size=(1500, d)).astype(np.float32)
    plan, rows = refactor_plan(path, _data(x), tolerance=1e-9, progress=False)
    assert [(r["units"], r["kept"]) for r in rows] == [(8, 4), (6, 3)]
    for lp in plan.layers.values():
        # each removed unit is its twin: one term with coefficient 1 and no constant
        assert all(np.count_nonzero(np.abs(row) > 1e-6) == 1 for row in lp.coef)
        np.testing.assert_allclose(np.abs(lp.coef).max(axis=1), 1.0, atol=1e-6)
    lm = load_model(path)
    out = save_model(apply_plan(lm, plan), tmp_path / "thin.onnx")
    thin = load_model(out)
    assert [lay.units for lay in thin.layers] == [4, 3, 2]
    np.testing.assert_allclose(_run(out, x), _run(path, x), atol=1e-4)


def _conv_dup_model(path):
    """Conv(1->2)+Relu duplicated to 4 channels, Conv(4->3, pad 1)+Relu reading both copies
    with split weights, Flatten, Gemm: exactly redundant channels of a conv layer."""
    rng = np.random.default_rng(4)
    k1 = rng.normal(size=(2, 1, 3, 3)).astype(np.float32)
    k2 = rng.normal(size=(3, 2, 3, 3)).astype(np.float32) / 3
    inits = [numpy_helper.from_array(np.concatenate([k1, k1]), "k1"),
             numpy_helper.from_array(np.float32([0.1, -0.2, 0.1, -0.2]), "c1"),
             numpy_helper.from_array(np.concatenate([0.3 * k2, 0.7 * k2], axis=1), "k2"),
             numpy_helper.from_array(np.zeros(3, np.float32), "c2"),
             numpy_helper.from_array(rng.normal(size=(4, 3 * 8 * 8)).astype(np.float32) / 10, "fw"),
             numpy_helper.from_array(np.zeros(4, np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["input", "k1", "c1"], ["z1"], name="conv1", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["z1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "k2", "c2"], ["z2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 10, 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_conv_channels_are_refactored_with_positions_as_samples(tmp_path):
    path = _conv_dup_model(tmp_path / "conv.onnx")
    x = np.random.default_rng(5).normal(size=(300, 1, 10, 10)).astype(np.float32)
    rows, _ = redundancy(path, _data(x), layers=["conv1"], tolerance=1e-9, max_rows=5000, progress=False)
    assert rows[0]["redundant"] == 2 and rows[0]["rows"] == 5000      # 300 x 64 positions, subsampled
    plan, rrows = refactor_plan(path, _data(x), layers=["conv1"], tolerance=1e-9, progress=False)
    assert rrows[0]["kept"] == 2
    out = save_model(apply_plan(load_model(path), plan), tmp_path / "thin.onnx")
    assert load_model(out).layer("conv1").units == 2
    np.testing.assert_allclose(_run(out, x), _run(path, x), atol=1e-4)


# --------------------------------------------------------------------------- prunability

def _masked_outputs(path, x, masks):
    """Run ``path`` with each ``value name -> mask`` multiplied in by an inserted Mul node
    (plain onnx editing, independent of infoprobe's rewrite)."""
    m = onnx.load(str(path))
    g = m.graph
    for name, mask in masks.items():
        new = f"{name}__masked"
        for node in g.node:
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = new
        g.initializer.append(numpy_helper.from_array(mask.astype(np.float32)[None], f"{name}__mask"))
        idx = next(i for i, n in enumerate(g.node) if name in n.output)
        g.node.insert(idx + 1, helper.make_node("Mul", [name, f"{name}__mask"], [new]))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("model,mode,conv_units", [("cnn_small.onnx", "layer", "position"),
                                                    ("cnn_small.onnx", "network", "channel"),
                                                    ("mlp_sigmoid.onnx", "network", "position")])
def test_ablation_curves_match_masks_inserted_by_hand(model, mode, conv_units):
    d = load_data(FIX / "mnist_demo.npz", split="test", limit=300)
    lm = load_model(FIX / model)
    x = d.x.astype(np.float32) / 255
    x = x.reshape(len(x), *lm.input_shape[1:])
    res = prunability(lm, d, modes=(mode,), conv_units=conv_units, n_permutations=2, seed=7, progress=False,
                      rows_per_run=1000)
    intact = _run(FIX / model, x).argmax(1)
    names = res.layers
    shapes = {n: ((lm.layer(n).units,) if lm.layer(n).kind == "dense" else
                  lm.layer(n).shape if conv_units == "position" else (lm.layer(n).units, 1, 1)) for n in names}
    for key, perms in res.permutations.items():
        members = names if key[0] == "network" else [key[1]]
        sizes = [int(np.prod(shapes[n])) for n in members]
        offsets = np.cumsum([0] + sizes)
        for p, order in enumerate(perms):
            rows = [r for r in res.curves if (r["mode"], r["layer"]) == key and r["permutation"] == p]
            for r in rows[1::2]:
                flat = np.ones(offsets[-1], np.float32)
                flat[order[:r["ablated"]]] = 0
                masks = {lm.layer(n).post_value: np.broadcast_to(flat[offsets[j]:offsets[j + 1]].reshape(shapes[n]),
                                                                 lm.layer(n).shape)
                         for j, n in enumerate(members)}
                got = (_masked_outputs(FIX / model, x, masks).argmax(1) == intact).mean()
                assert abs(got - r["unchanged"]) <= 1 / len(x), (key, p, r)
    assert res.curves[0]["unchanged"] == 1.0
    s = res.summary[0]
    curve = [r for r in res.curves if (r["mode"], r["layer"]) == (s["mode"], s["layer"])
             and r["permutation"] == s["best_permutation"]]
    assert s["prunable_fraction"] == pytest.approx(
        prunable_fraction([r["fraction"] for r in curve], [r["unchanged"] for r in curve], 0.2)[0])
    assert s["prunable_fraction"] == pytest.approx(max(s["per_permutation"]))


def test_prunable_plan_removes_the_measured_set_and_prune_applies_it(tmp_path):
    d = load_data(SYNTH, split="test")
    lm = load_model(FIX / "synth_mlp_w1.onnx")
    res = prunability(lm, d, seed=1, progress=False)
    plan = prunable_plan(lm, res)
    r = res.row("all", "network")
    order = res.permutations[("network", "all")][r["best_permutation"]]
    n = int(np.floor(r["prunable_fraction"] * r["units"]))
    np.testing.assert_array_equal(plan.layers["fc1"].remove, np.sort(order[:n]))
    assert not plan.layers["fc1"].constant.any()
    plan.save(tmp_path / "p.json")
    from infoprobe.analyses.compress import prune_model

    rep = prune_model(lm, tmp_path / "p.json", tmp_path / "small.onnx", data=d, repeats=2)
    assert rep["verification"]["exact"]
    assert load_model(tmp_path / "small.onnx").layer("fc1").units == 128 - n
    # the removed set is the curve's ablation: predictions kept match the mask evaluation
    x = d.x.astype(np.float32)
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(FIX / "synth_mlp_w1.onnx")).graph.initializer}
    h = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0)
    h[:, order[:n]] = 0
    kept = ((h @ w["fc2.weight"].T + w["fc2.bias"]).argmax(1) == _run(FIX / "synth_mlp_w1.onnx", x).argmax(1)).mean()
    assert rep["verification"]["label_agreement_with_original"] == pytest.approx(kept)
    # channel x position units cannot be removed
    cnn = prunability(load_model(FIX / "cnn_small.onnx"), load_data(FIX / "mnist_demo.npz", split="test", limit=50),
                      n_permutations=1, modes=("network",), progress=False)
    with pytest.raises(PlanError, match="channel"):
        prunable_plan(FIX / "cnn_small.onnx", cnn)


# --------------------------------------------------------------------------- stores, sweeps, data

def test_redundancy_from_a_store_equals_redundancy_from_the_model(sigmoid_store):
    d = load_data(FIX / "mnist_demo.npz", split="validation")
    a, ca = redundancy(FIX / "mlp_sigmoid.onnx", d, progress=False)
    b, cb = redundancy(sigmoid_store, progress=False)
    for ra, rb in zip(a, b):
        assert ra["layer"] == rb["layer"] and ra["non_redundant"] == rb["non_redundant"]
        assert ra["corr_mean"] == pytest.approx(rb["corr_mean"], abs=1e-6)
    # against scikit-learn's PCA on the raw activations of the store
    from sklearn.decomposition import PCA

    import h5py

    with h5py.File(sigmoid_store, "r") as f:
        x = f["layers/fc2/post"][:].astype(np.float64)
    ratio = np.cumsum(PCA().fit(x).explained_variance_ratio_)
    assert b[1]["non_redundant"] == int(np.flatnonzero(ratio >= 0.95 - 1e-12)[0]) + 1


def test_redundancy_row_against_numpy_with_constant_units_and_kept_pairs(tmp_path, monkeypatch):
    """Every number of a layer's row against NumPy on the whole matrix, computed in blocks
    under a small budget; the violins keep KEPT_PAIRS pairs drawn from all of them."""
    import importlib

    from infoprobe.limits import budgets
    from infoprobe.store import StoreWriter

    rng = np.random.default_rng(8)
    n, u = 500, 60
    x = (rng.normal(size=(n, 8)) @ rng.normal(size=(8, u)) + 0.05 * rng.normal(size=(n, u))).astype(np.float32)
    x[:, 7], x[:, 30] = 2.0, -1.0                      # constant units: no correlation
    lay = [dict(name="fc", kind="dense", shape=(u,), units=u, activation="none", depth=1, inputs=[], is_output=False),
           dict(name="out", kind="dense", shape=(2,), units=2, activation="none", depth=2, inputs=["fc"],
                is_output=True)]
    w = StoreWriter(tmp_path / "s.h5", n_rows=n, layers=lay, n_outputs=2, labels=np.zeros(n, np.int64))
    zeros = np.zeros((n, 2), np.float32)
    w.write(0, {"layers/fc/pre": x, "layers/fc/post": x, "layers/out/pre": zeros, "layers/out/post": zeros,
                "outputs/logits": zeros})
    w.finish()
    w.close()
    monkeypatch.setattr(importlib.import_module("infoprobe.analyses.frivolous.redundancy"), "KEPT_PAIRS", 100)
    with budgets(memory="64K"):
        rows, corrs = redundancy(tmp_path / "s.h5", layers=["fc"], progress=False)
    row = rows[0]
    cov = np.cov(x.astype(np.float64).T, bias=True)
    spec = np.linalg.eigvalsh(cov)[::-1].clip(0)
    k = int(np.flatnonzero([spec[j:].sum() / spec.sum() <= 0.05 for j in range(u + 1)])[0])
    live = [j for j in range(u) if j not in (7, 30)]
    ref = np.abs(np.corrcoef(x[:, live].astype(np.float64).T))[np.triu_indices(len(live), 1)]
    assert (row["rows"], row["units"], row["non_redundant"], row["constant_units"]) == (n, u, k, 2)
    assert row["unexplained"] == pytest.approx(spec[k:].sum() / spec.sum(), rel=1e-9)
    assert row["corr_mean"] == pytest.approx(ref.mean(), rel=1e-9)
    for q in (5, 25, 50, 75, 95):
        assert row[f"corr_q{q:02d}"] == pytest.approx(np.quantile(ref, q / 100), rel=1e-9)
    kept = corrs["fc"]
    pos = [int(np.argmin(np.abs(ref - v))) for v in kept]    # each kept value is a pair's, in pair order
    assert len(kept) == 100 and len(set(pos)) == 100 and pos == sorted(pos)
    np.testing.assert_allclose(kept, ref[pos], atol=1e-12)


def test_conv_redundancy_from_a_store_subsamples_the_same_positions(tmp_path):
    from infoprobe.analyses.capture import capture

    d = load_data(FIX / "mnist_demo.npz", split="test", limit=300)
    store = capture(FIX / "cnn_small.onnx", d, tmp_path / "c.h5", batch_size=64, progress=False, positions="full")
    # layers of different sizes are stored in different chunks; blocks must stay in step
    a, ca = redundancy(FIX / "cnn_small.onnx", d, max_rows=7000, seed=3, batch_size=128, progress=False)
    b, cb = redundancy(store, max_rows=7000, seed=3, batch_size=128, progress=False)
    assert [r["rows"] for r in a] == [7000, 7000]
    for ra, rb in zip(a, b):
        assert ra["non_redundant"] == rb["non_redundant"]
        np.testing.assert_allclose(ca[ra["layer"]], cb[rb["layer"]], atol=1e-6)


def test_store_layers_of_different_widths_are_read_in_step(tmp_path):
    """A 5-unit and a 300-unit layer are chunked differently in a store of 5,000 samples:
    every row of both must reach the PCA."""
    import h5py
    from sklearn.decomposition import PCA

    from infoprobe.analyses.capture import capture

    rng = np.random.default_rng(6)
    layers = [(rng.normal(size=(5, 10)), np.zeros(5), "Tanh"), (rng.normal(size=(300, 5)), np.zeros(300), "Tanh"),
              (rng.normal(size=(2, 300)), np.zeros(2), None)]
    path = _dense_model(tmp_path / "m.onnx", layers, 10)
    store = capture(path, _data(rng.normal(size=(5000, 10))), tmp_path / "s.h5", progress=False)
    rows, _ = redundancy(store, max_rows=10**6, progress=False)
    assert [r["rows"] for r in rows] == [5000, 5000]
    with h5py.File(store, "r") as f:
        for r in rows:
            ratio = np.cumsum(PCA().fit(f[f"layers/{r['layer']}/post"][:].astype(np.float64)).explained_variance_ratio_)
            assert r["non_redundant"] == int(np.flatnonzero(ratio >= 0.95 - 1e-12)[0]) + 1


def _fake(source, units, prunable, redundant, network_prunable):
    rows = [{"layer": f"l{i}", "units": u, "ablation_units": u, "prunable_units": p, "redundant": r,
             "non_redundant": u - r} for i, (u, p, r) in enumerate(zip(units, prunable, redundant))]
    total = sum(units)
    rows.append({"layer": "all", "units": total, "ablation_units": total, "prunable_units": network_prunable,
                 "redundant": sum(redundant), "non_redundant": total - sum(redundant)})
    meta = {"inputs": {"source": {"path": source, "sha256": "0" * 64}}, "parameters": {"prune_tolerance": 0.2}}
    return FrivolousResult(source, rows, None, [], {}, meta)


def test_width_sweep_normalises_by_the_widest_model_and_computes_gains():
    res = [_fake("a", [10, 20], [1, 2], [2, 4], 3), _fake("b", [20, 40], [4, 8], [4, 8], 12),
           _fake("c", [40, 80], [16, 32], [8, 16], 48)]
    sw = width_sweep(res)
    assert [r["width"] for r in sw.rows if r["layer"] == "all"] == [0.5, 1.0, 2.0]
    l0 = [r for r in sw.rows if r["layer"] == "l0"]
    assert [r["prunable_norm"] for r in l0] == [1 / 40, 4 / 40, 16 / 40]
    net = [r for r in sw.rows if r["layer"] == "all"]
    assert [r["prunable_norm"] for r in net] == [3 / 120, 12 / 120, 48 / 120]
    # network redundancy: mean of the layers' normalised counts
    assert net[0]["redundant_norm"] == pytest.approx((2 / 40 + 4 / 80) / 2)
    g = {(x["measure"], x["layer"]): x["g"] for x in sw.gains}
    assert g[("prunable", "l0")] == pytest.approx(4.0) and g[("redundant", "l1")] == pytest.approx(2.0)
    assert sw.g_range["prunable"] == (pytest.approx(4.0), pytest.approx(4.0))
    sw2 = width_sweep(res, widths=[1, 2, 4])
    assert [r["width"] for r in sw2.rows if r["layer"] == "all"] == [1, 2, 4]
    with pytest.raises(ConfigError):
        width_sweep(res[:1])
    with pytest.raises(ConfigError):
        width_sweep(res, widths=[1, 2])


def test_width_sweep_with_several_networks_per_width(tmp_path):
    """Replicate networks share a width: their spread is reported per width, the gains are taken
    on the per-width means (here (48/4)^(1/2) = sqrt 12 for the network's prunable units), and
    the sweep plots error bars."""
    res = [_fake("a1", [10, 20], [1, 2], [2, 4], 3), _fake("a2", [10, 20], [2, 2], [2, 4], 5),
           _fake("b1", [20, 40], [4, 8], [4, 8], 12), _fake("b2", [20, 40], [6, 8], [4, 8], 14),
           _fake("c", [40, 80], [16, 32], [8, 16], 48)]
    sw = width_sweep(res)
    assert [r["width"] for r in sw.rows if r["layer"] == "all"] == [0.5, 0.5, 1.0, 1.0, 2.0]
    across = {(a["width"], a["layer"], a["measure"]): a for a in sw.across}
    a = across[(0.5, "all", "prunable_norm")]
    assert a["n"] == 2 and a["mean"] == pytest.approx(4 / 120) and a["std"] == pytest.approx(np.std([3, 5], ddof=1) / 120)
    assert across[(2.0, "all", "prunable_norm")]["n"] == 1 and across[(2.0, "all", "prunable_norm")]["std"] is None
    g = {(x["measure"], x["layer"]): x for x in sw.gains}
    assert g[("prunable", "all")]["widths"] == [0.5, 1.0, 2.0]
    assert g[("prunable", "all")]["normalised"] == pytest.approx([4 / 120, 13 / 120, 48 / 120])
    assert g[("prunable", "all")]["g"] == pytest.approx(np.sqrt(12))
    assert "mean +- sd over the networks of each width" in sw.summary()
    files = [f.name for f in sw.save(tmp_path)] + [f.name for f in sw.plot(tmp_path)]
    assert "sweep_summary.json" in files and (tmp_path / "sweep.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="at least two widths"):
        width_sweep(res[:2])


def test_teacher_data_is_balanced_reproducible_and_labelled_by_its_teacher():
    d = teacher_data(10, seed=3)
    x, y = d["x"].astype(np.float64), d["y"]
    assert x.shape == (2000, 10) and (d["split"] == 0).sum() == 1000 and (d["split"] == 2).sum() == 1000
    assert 0.4 <= y.mean() <= 0.6
    logits = np.maximum(x @ d["teacher_w1"].T.astype(np.float64), 0) @ d["teacher_w2"].T.astype(np.float64)
    assert (logits.argmax(1) == y).mean() > 0.999     # float32 storage of the teacher
    np.testing.assert_array_equal(teacher_data(10, seed=3)["y"], y)
    # inputs are uncorrelated standard normals
    assert np.abs(np.corrcoef(x.T) - np.eye(10)).max() < 0.1 and abs(x.std() - 1) < 0.05
    with pytest.raises(ConfigError):
        teacher_data(10, balance=(0.55, 0.6))
    with pytest.raises(DataError, match="no teacher"):
        teacher_data(10, balance=(0.5, 0.5), max_tries=2)


def test_the_fixture_family_has_frivolous_units_growing_faster_than_the_width():
    d = load_data(SYNTH, split="test")
    res = [frivolous(FIX / f"synth_mlp_w{w}.onnx", d, progress=False) for w in ("0.25", "0.5", "1", "2", "4")]
    sw = width_sweep(res)
    assert [r["units"] for r in sw.rows if r["layer"] == "all"] == [32, 64, 128, 256, 512]
    assert sw.g_range["prunable"][0] > 2 and sw.g_range["redundant"][0] > 2


# --------------------------------------------------------------------------- CLI

def test_cli_one_model_plans_and_thin_model(tmp_path):
    from infoprobe.cli.main import cli

    out = tmp_path / "f"
    args = ["frivolous", str(FIX / "synth_mlp_w1.onnx"), "--data", str(SYNTH), "--split", "test", "--out", str(out),
            "--no-progress", "--thin", str(tmp_path / "thin.onnx"), "--plan-redundant", str(tmp_path / "red.json"),
            "--plan-prunable", str(tmp_path / "pru.json"), "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    rows = {x["layer"]: x for x in doc["models"][0]["layers"]}
    table = json.loads((out / "frivolous.json").read_text())["rows"]
    assert {x["layer"]: x["redundant"] for x in table} == {k: v["redundant"] for k, v in rows.items()}
    assert doc["refactor"][0]["removed"] == rows["fc1"]["redundant"]
    ver = doc["thin"]["verification"]
    assert ver["exact"] and load_model(tmp_path / "thin.onnx").layer("fc1").units == rows["fc1"]["non_redundant"]
    assert (out / "prunability.png").stat().st_size > 0 and (out / "correlations.png").stat().st_size > 0
    # the redundant plan, applied by infoprobe prune, gives the same model
    r2 = CliRunner().invoke(cli, ["prune", str(FIX / "synth_mlp_w1.onnx"), str(tmp_path / "red.json"), "--out",
                                  str(tmp_path / "thin2.onnx"), "--data", str(SYNTH), "--split", "test", "--json"])
    assert r2.exit_code == 0, r2.output
    x = load_data(SYNTH, split="test").x
    np.testing.assert_allclose(_run(tmp_path / "thin2.onnx", x), _run(tmp_path / "thin.onnx", x), atol=1e-6)
    # refusals: existing results, several models without --sweep, a model without data
    assert CliRunner().invoke(cli, args).exit_code == 2
    assert CliRunner().invoke(cli, ["frivolous", str(FIX / "synth_mlp_w1.onnx"), str(FIX / "synth_mlp_w2.onnx"),
                                    "--data", str(SYNTH), "--out", str(tmp_path / "g")]).exit_code == 2
    assert CliRunner().invoke(cli, ["frivolous", str(FIX / "synth_mlp_w1.onnx"), "--out",
                                    str(tmp_path / "h")]).exit_code == 2
    r = CliRunner().invoke(cli, ["frivolous", str(FIX / "cnn_small.onnx"), "--data", str(FIX / "mnist_demo.npz"),
                                 "--out", str(tmp_path / "k"), "--plan-prunable", str(tmp_path / "k.json")])
    assert r.exit_code == 2 and "--conv-units channel" in r.output and not (tmp_path / "k").exists()


def test_cli_sweep_and_synthetic(tmp_path):
    from infoprobe.cli.main import cli

    r = CliRunner().invoke(cli, ["synthetic", "--dims", "5", "--train", "50", "--test", "60", "--out",
                                 str(tmp_path / "s.npz")])
    assert r.exit_code == 0, r.output
    s = np.load(tmp_path / "s.npz")
    assert s["x"].shape == (110, 5) and (s["split"] == 2).sum() == 60
    models = [str(FIX / f"synth_mlp_w{w}.onnx") for w in ("0.5", "1", "2")]
    r = CliRunner().invoke(cli, ["frivolous", "--sweep", *models, "--data", str(SYNTH), "--split", "test",
                                 "--out", str(tmp_path / "sw"), "--no-progress", "--widths", "0.5,1,2"])
    assert r.exit_code == 0, r.output
    gains = json.loads((tmp_path / "sw" / "gains.json").read_text())["rows"]
    sweep = json.loads((tmp_path / "sw" / "sweep.json").read_text())["rows"]
    net = [x for x in sweep if x["layer"] == "all"]
    g = next(x["g"] for x in gains if x["measure"] == "redundant" and x["layer"] == "fc1")
    assert g == pytest.approx((net[2]["redundant_norm"] / net[0]["redundant_norm"]) ** 0.5)
    assert "g prunable" in r.output
    for f in ("sweep.png", "sweep_prunability.png", "sweep_correlations.png"):
        assert (tmp_path / "sw" / f).stat().st_size > 0


# --------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_redundancy_on_cuda_matches_cpu(cupy):
    d = load_data(SYNTH, split="test")
    a, ca = redundancy(FIX / "synth_mlp_w2.onnx", d, progress=False)
    b, cb = redundancy(FIX / "synth_mlp_w2.onnx", d, device="cuda", progress=False)
    assert a[0]["non_redundant"] == b[0]["non_redundant"]
    np.testing.assert_allclose(ca["fc1"], cb["fc1"], atol=1e-9)


def test_sweep_over_three_bundled_networks_per_width(tmp_path):
    """The paper's three trials per width as one command on the bundled replicates: three
    networks at every width, their means grow faster than the width (g > 2) and the prunable
    counts spread over the networks."""
    from infoprobe.cli.main import cli

    models = sorted(FIX.glob("synth_mlp_w*.onnx")) + sorted(FIX.glob("synth_rep_w*_s*.onnx"))
    assert len(models) == 15
    r = CliRunner().invoke(cli, ["frivolous", "--sweep", *map(str, models), "--data", str(FIX / "synthetic_10d.npz"),
                                 "--split", "test", "--permutations", "1", "--mode", "network", "--no-plot",
                                 "--out", str(tmp_path), "--no-progress"])
    assert r.exit_code == 0, r.output
    across = json.loads((tmp_path / "sweep_summary.json").read_text())["rows"]
    net = {(a["width"], a["measure"]): a for a in across if a["layer"] == "all"}
    assert sorted({w for w, _ in net}) == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert all(a["n"] == 3 for a in net.values())
    assert net[(1.0, "prunable_norm")]["std"] > 0 and net[(4.0, "redundant_norm")]["std"] >= 0
    gains = {(g["measure"], g["layer"]): g["g"] for g in json.loads((tmp_path / "gains.json").read_text())["rows"]}
    assert gains[("prunable", "all")] > 2 and gains[("redundant", "all")] > 2
