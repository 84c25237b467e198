"""Physical pruning against the mask-ablated original and against NumPy references."""
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from conftest import FIX, initializers, sigmoid
from infoprobe.analyses.plans import (hybrid_plan, magnitude_plan, merge_order, merge_plan,
                                      parse_fractions, random_plan)
from infoprobe.data import load_data, model_inputs, prepare_inputs
from infoprobe.errors import ConfigError, PlanError
from infoprobe.model import load_model
from infoprobe.plan import LayerPlan, PruningPlan
from infoprobe.prune import apply_plan, outgoing_weights, save_model
from infoprobe.rewrite import io_name
from infoprobe.runner import Runner, make_session

FIXTURES = ["mlp_sigmoid", "mlp_relu", "cnn_small", "cnn_pad"]


@pytest.fixture(scope="module")
def test_x():
    return load_data(FIX / "mnist_demo.npz", split="test")


def _inputs(lm, data, n=600):
    idx = np.linspace(0, len(data) - 1, n).astype(int)  # every class: the split is sorted by class
    return prepare_inputs(data.x[idx], lm.input_shape, 1 / 255)


def _posts(lm, x):
    r = Runner(lm, expose=True)
    return r.run(x, outputs=[io_name(lay.name, "post") for lay in lm.hidden_layers])


def _realistic_plan(lm, x, kind, rng):
    """Half of every hidden layer removed, with constants = the units' means (bias balancing)
    and terms fitted to the activations: one-hot (best single non-negative partner) or least
    squares over all kept units (dense layers)."""
    posts = _posts(lm, x)
    layers = {}
    for lay in lm.hidden_layers:
        t = posts[io_name(lay.name, "post")].astype(np.float64)
        t = t.reshape(len(t), lay.units, -1).transpose(0, 2, 1).reshape(-1, lay.units)  # positions as samples
        remove = np.sort(rng.choice(lay.units, lay.units // 2, replace=False))
        kept = np.setdiff1d(np.arange(lay.units), remove)
        mean = t.mean(0)
        if kind == "constant":
            layers[lay.name] = LayerPlan.build(lay.name, lay.units, remove, mean[remove])
            continue
        if kind == "onehot":
            corr = np.corrcoef(t.T + 1e-9 * rng.normal(size=t.T.shape))[np.ix_(remove, kept)]
            partner = np.argmax(corr, axis=1)
            coef = np.zeros((len(remove), len(kept)))
            coef[np.arange(len(remove)), partner] = 1.0
            layers[lay.name] = LayerPlan.build(lay.name, lay.units, remove, np.zeros(len(remove)), coef)
            continue
        design = np.column_stack([t[:, kept], np.ones(len(t))])
        sol, *_ = np.linalg.lstsq(design, t[:, remove], rcond=None)
        layers[lay.name] = LayerPlan.build(lay.name, lay.units, remove, sol[-1], sol[:-1].T)
    return PruningPlan(layers, lm.sha256, {"method": "test", "kind": kind})


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("kind", ["constant", "onehot", "lstsq"])
def test_pruned_equals_mask_ablated(fixture, kind, test_x):
    lm = load_model(FIX / f"{fixture}.onnx")
    x = _inputs(lm, test_x)
    plan = _realistic_plan(lm, x, kind, np.random.default_rng(0))
    if kind == "lstsq" and fixture == "cnn_small":
        with pytest.raises(PlanError, match="pool1"):   # a combination of channels through MaxPool
            apply_plan(lm, plan)
        return
    pruned = apply_plan(lm, plan)
    ref = Runner(lm, mix=True)
    expected = ref.run(x, feeds=ref.plan_feeds(plan), outputs=[lm.output_name])[lm.output_name]
    got = make_session(pruned).run([lm.output_name], {lm.input_name: x})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    # the ablation really changes the function, so the comparison is not vacuous
    intact = ref.run(x, outputs=[lm.output_name])[lm.output_name]
    assert np.abs(intact - expected).max() > 1e-3
    # the pruned model is smaller, valid, and its layers have the kept unit counts
    proto = ir.to_proto(pruned)
    onnx.checker.check_model(proto, full_check=True)
    n_before = sum(v.const_value.size for v in lm.ir_model.graph.initializers.values())
    n_after = sum(v.const_value.size for v in pruned.graph.initializers.values())
    assert n_after < n_before


def test_pruned_mlp_matches_numpy_forward(test_x, tmp_path):
    """Independent of the mask mechanism: a NumPy forward pass with the affine replacements."""
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    x = _inputs(lm, test_x, 300)
    plan = _realistic_plan(lm, x, "lstsq", np.random.default_rng(1))
    w = initializers(FIX / "mlp_sigmoid.onnx")
    h = x.astype(np.float64)
    for name in ("fc1", "fc2", "fc3"):
        h = h @ w[f"{name}.weight"].T.astype(np.float64) + w[f"{name}.bias"]
        if name != "fc3":
            h = sigmoid(h)
            lp = plan.layers[name]
            h[:, lp.remove] = h[:, lp.kept] @ lp.coef.T + lp.constant
    out = tmp_path / "pruned.onnx"
    save_model(apply_plan(lm, plan), out)
    got = make_session(ir.load(out)).run(None, {lm.input_name: x})[0]
    np.testing.assert_allclose(got, h, atol=1e-4, rtol=1e-5)
    pruned = load_model(out)
    assert [lay.units for lay in pruned.layers] == [50, 50, 10]
    assert pruned.ir_model.metadata_props["infoprobe.pruned_from_sha256"] == lm.sha256


def test_zero_padding_border_is_corrected_exactly(test_x):
    """conv2 of cnn_pad zero-pads its input: a constant folded into its bias alone is wrong at
    the borders, so the surgery adds an exact border correction."""
    lm = load_model(FIX / "cnn_pad.onnx")
    x = _inputs(lm, test_x, 200)
    c = np.array([0.7, 1.3])
    plan = PruningPlan({"conv1": LayerPlan.build("conv1", 4, [0, 2], c)}, lm.sha256)
    pruned = apply_plan(lm, plan)
    ref = Runner(lm)
    expected = ref.run(x, feeds=ref.plan_feeds(plan))[lm.output_name]
    got = make_session(pruned).run(None, {lm.input_name: x})[0]
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    corr = pruned.graph.initializers["conv2.border_correction"].const_value.numpy()
    assert corr.shape == (1, 6, 7, 7)
    assert np.abs(corr[0, :, 1:, 1:]).max() < 1e-5       # interior (and the unpadded far side) is 0
    assert np.abs(corr[0, :, 0, :]).max() > 1e-2          # the top border is not
    # without the correction the pruned model would be wrong: check that it matters
    pruned.graph.initializers["conv2.border_correction"].const_value = ir.tensor(np.zeros_like(corr))
    wrong = make_session(pruned).run(None, {lm.input_name: x})[0]
    assert np.abs(wrong - expected).max() > 1e-2


def test_flatten_blocks_and_batch_norm_are_removed():
    lm = load_model(FIX / "cnn_small.onnx")
    plan = PruningPlan({"conv1": LayerPlan.build("conv1", 4, [1], [0.0]),
                        "conv2": LayerPlan.build("conv2", 6, [0, 5], [0.0, 0.0])}, lm.sha256)
    pruned = apply_plan(lm, plan)
    inits = {k: v.const_value.numpy() for k, v in pruned.graph.initializers.items()}
    orig = initializers(FIX / "cnn_small.onnx")
    np.testing.assert_array_equal(inits["bn1.var"], orig["bn1.var"][[0, 2, 3]])
    np.testing.assert_array_equal(inits["conv2.weight"], orig["conv2.weight"][1:5][:, [0, 2, 3]])
    blocks = orig["fc.weight"].reshape(10, 6, 36)[:, 1:5].reshape(10, -1)
    np.testing.assert_array_equal(inits["fc.weight"], blocks)


def test_refusals():
    lm = load_model(FIX / "mlp_sigmoid.onnx")
    with pytest.raises(PlanError, match="output layer"):
        apply_plan(lm, PruningPlan({"fc3": LayerPlan.build("fc3", 10, [1])}))
    with pytest.raises(PlanError, match="another model"):
        apply_plan(lm, PruningPlan({"fc1": LayerPlan.build("fc1", 100, [1])}, "0" * 64))
    with pytest.raises(PlanError, match="100 units in the model but 99"):
        apply_plan(lm, PruningPlan({"fc1": LayerPlan.build("fc1", 99, [1])}))
    with pytest.raises(PlanError, match="does not have"):
        apply_plan(lm, PruningPlan({"nope": LayerPlan.build("nope", 3, [1])}))
    lm = load_model(FIX / "cnn_small.onnx")
    # a negative merge coefficient cannot pass the max pooling after conv1
    bad = PruningPlan({"conv1": LayerPlan.build("conv1", 4, [0], [0.0], [[-1.0, 0.0, 0.0]])})
    with pytest.raises(PlanError, match="pool1"):
        apply_plan(lm, bad)


# ---------------------------------------------------------------- plan file format

def test_plan_round_trip(tmp_path):
    lp = LayerPlan.build("fc1", 5, [3, 1], [0.5, -1.0], [[0.0, 2.0, 0.0], [1.0, 0.0, 0.25]])
    plan = PruningPlan({"fc1": lp}, "a" * 64, {"method": "test"})
    path = plan.save(tmp_path / "plan.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "infoprobe-pruning-plan" and doc["version"] == 1
    # sorted by unit, terms name kept units by their index in the layer
    assert doc["layers"][0]["remove"] == [{"unit": 1, "constant": -1.0, "terms": [[0, 1.0], [4, 0.25]]},
                                          {"unit": 3, "constant": 0.5, "terms": [[2, 2.0]]}]
    back = PruningPlan.load(path)
    np.testing.assert_array_equal(back.layers["fc1"].coef, plan.layers["fc1"].coef)
    np.testing.assert_array_equal(back.layers["fc1"].replacement_matrix(), lp.replacement_matrix())
    with pytest.raises(Exception, match="already exists"):
        plan.save(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.update(format="x"), "not a pruning plan"),
    (lambda d: d["layers"][0]["remove"].append({"unit": 1, "constant": 0}), "twice"),
    (lambda d: d["layers"][0]["remove"][0].update(terms=[[3, 1.0]]), "not a kept unit"),
    (lambda d: d["layers"][0]["remove"][0].update(unit=7), "out of range"),
    (lambda d: d["layers"][0]["remove"][0].update(unit=True), "integer"),
    (lambda d: d["layers"][0]["remove"][0].update(constant="1"), "finite number"),
    (lambda d: d["layers"][0].update(remove=[{"unit": i} for i in range(5)]), "keep at least one"),
])
def test_plan_validation(tmp_path, mutate, message):
    doc = {"format": "infoprobe-pruning-plan", "version": 1, "model_sha256": None, "generator": {},
           "layers": [{"layer": "fc1", "units": 5, "remove": [{"unit": 1, "constant": 0.5},
                                                            {"unit": 3, "constant": 0.0}]}]}
    mutate(doc)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError, match=message):
        PruningPlan.load(path)


def test_plan_rejects_nan_and_garbage(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"format": "infoprobe-pruning-plan", "version": 1, "layers": '
                    '[{"layer": "a", "units": 3, "remove": [{"unit": 0, "constant": NaN}]}]}')
    with pytest.raises(PlanError, match="JSON"):
        PruningPlan.load(path)
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(PlanError, match="JSON"):
        PruningPlan.load(path)


# ---------------------------------------------------------------- generators

def _merge_reference(w_in, w_out, n, surgery):
    """Srinivas & Babu, recomputing every saliency s_ij = <a_j^2> ||w_i - w_j||^2 each step."""
    alive = list(range(len(w_in)))
    out = [row.copy() for row in np.asarray(w_out, np.float64)]
    merges = []
    for _ in range(n):
        best = None
        for j in alive:
            for i in alive:
                if i != j:
                    s = np.mean(out[j] ** 2) * np.sum((w_in[i] - w_in[j]) ** 2)
                    if best is None or s < best[0]:
                        best = (s, j, i)
        _, j, i = best
        merges.append((j, i))
        alive.remove(j)
        if surgery:
            out[i] = out[i] + out[j]
    return merges


@pytest.mark.parametrize("surgery", [True, False])
def test_merge_order_matches_brute_force(surgery):
    rng = np.random.default_rng(3)
    w_in = rng.normal(size=(14, 5))
    w_in[7] = w_in[2] + 0.01          # near twins are merged first
    w_out = rng.normal(size=(14, 4))
    got = merge_order(w_in, w_out, 10, surgery=surgery)
    assert got == _merge_reference(w_in, w_out, 10, surgery)
    assert set(got[0]) == {2, 7}


def test_merge_plan_is_one_hot_to_surviving_partner(sigmoid_store):
    from infoprobe.store import Store

    lm = load_model(FIX / "mlp_sigmoid.onnx")
    with Store(sigmoid_store) as st:
        plan = merge_plan(lm, 0.4, replace="mean", store=st)
        means = st.read("fc1").astype(np.float64).mean(0)
    lp = plan.layers["fc1"]
    assert len(lp.remove) == 40
    assert np.all((lp.coef != 0).sum(1) == 1) and np.all(lp.coef.max(1) == 1.0)
    partner = lp.kept[lp.coef.argmax(1)]
    np.testing.assert_allclose(lp.constant, means[lp.remove] - means[partner], rtol=1e-9, atol=1e-12)
    # outgoing weights of fc1 are the columns of fc2's weight
    np.testing.assert_array_equal(outgoing_weights(lm, "fc1"), initializers(FIX / "mlp_sigmoid.onnx")["fc2.weight"].T)
    plain = merge_plan(lm, 0.4, surgery=False)
    assert plain.layers["fc1"].is_constant and not plain.layers["fc1"].constant.any()


def test_magnitude_random_hybrid_generators(sigmoid_store):
    from infoprobe.analyses.importance import importance
    from infoprobe.store import Store

    lm = load_model(FIX / "mlp_sigmoid.onnx")
    w = initializers(FIX / "mlp_sigmoid.onnx")
    plan = magnitude_plan(lm, 0.3, replace="bias")
    l1 = np.abs(w["fc2.weight"]).sum(1)
    assert set(plan.layers["fc2"].remove) == set(np.argsort(l1)[:30])
    np.testing.assert_allclose(plan.layers["fc2"].constant, sigmoid(w["fc2.bias"][plan.layers["fc2"].remove]),
                               rtol=1e-6)
    a, b = random_plan(lm, 0.5, seed=4), random_plan(lm, 0.5, seed=4)
    assert a.layers["fc1"].remove.tolist() == b.layers["fc1"].remove.tolist()
    assert random_plan(lm, 0.5, seed=5).layers["fc1"].remove.tolist() != a.layers["fc1"].remove.tolist()
    with Store(sigmoid_store) as st:
        imp = importance(st, progress=False)
        plan = hybrid_plan(lm, st, "fc1=mutual_information:1,fc2=kl_selectivity:2", 0.3, importance=imp)
        assert {n: len(p.remove) for n, p in plan.layers.items()} == {"fc1": 20, "fc2": 40}
        mi = imp.measure("fc1", "mutual_information")
        assert set(plan.layers["fc1"].remove) == set(np.argsort(mi, kind="stable")[:20])
        means = st.read("fc2").astype(np.float64).mean(0)
        np.testing.assert_allclose(plan.layers["fc2"].constant, means[plan.layers["fc2"].remove], rtol=1e-9)


def test_fraction_parsing():
    assert parse_fractions("0.25", ["a", "b"]) == {"a": 0.25, "b": 0.25}
    assert parse_fractions("a=0.1, b=0.5", ["a", "b"]) == {"a": 0.1, "b": 0.5}
    with pytest.raises(ConfigError):
        parse_fractions("1.0", ["a"])
    with pytest.raises(ConfigError):
        parse_fractions("a=x", ["a"])


# ---------------------------------------------------------------- command line

def test_plan_and_prune_commands(tmp_path, sigmoid_store):
    from click.testing import CliRunner

    from infoprobe.cli.main import cli

    runner = CliRunner()
    model, data = FIX / "mlp_sigmoid.onnx", FIX / "mnist_demo.npz"
    plan_path = tmp_path / "plan.json"
    r = runner.invoke(cli, ["plan", str(model), "--method", "hybrid", "--fraction", "0.3", "--store",
                            str(sigmoid_store), "--hybrid", "fc1=mutual_information:1,fc2=kl_selectivity:2",
                            "--out", str(plan_path), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert {n: d["removed"] for n, d in summary["layers"].items()} == {"fc1": 20, "fc2": 40}
    plan = PruningPlan.load(plan_path)
    assert plan.generator["method"] == "hybrid" and plan.generator["replace"] == "mean"
    out = tmp_path / "small.onnx"
    r = runner.invoke(cli, ["prune", str(model), str(plan_path), "--out", str(out), "--data", str(data),
                            "--split", "test", "--limit", "500", "--repeats", "3", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["verification"]["exact"] and rep["verification"]["n_samples"] == 500
    assert rep["pruned"]["parameters"] == 784 * 80 + 80 + 80 * 60 + 60 + 60 * 10 + 10
    assert rep["original"]["macs"] == 784 * 100 + 100 * 100 + 100 * 10
    assert rep["pruned"]["macs"] == 784 * 80 + 80 * 60 + 60 * 10
    assert rep["pruned"]["bytes"] == out.stat().st_size
    # refusals: existing output, the input itself, a store-less measure plan, a plan of another model
    r = runner.invoke(cli, ["prune", str(model), str(plan_path), "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(cli, ["plan", str(model), "--method", "measure", "--out", str(tmp_path / "p2.json")])
    assert r.exit_code == 2 and "--store" in r.output
    r = runner.invoke(cli, ["prune", str(FIX / "mlp_relu.onnx"), str(plan_path), "--out", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "another model" in r.output
    assert not (tmp_path / "x.onnx").exists()


def test_plan_and_threshold_files_nested_beyond_recursion_are_one_error(tmp_path):
    from infoprobe.analyses.check import load_thresholds

    (tmp_path / "p.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PlanError, match="not valid JSON"):
        PruningPlan.load(tmp_path / "p.json")
    (tmp_path / "t.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_thresholds(tmp_path / "t.toml")


# ---------------------------------------------------------------- dependency groups

def test_dependency_groups_of_the_resnet_follow_its_residual_stream():
    from infoprobe.prune import dependency_groups

    groups = {g.sites: g for g in dependency_groups(load_model(FIX / "zoo_resnet.onnx"))}
    # by hand from build_zoo.py: block1's identity skip ties the stem to block1's conv2 and sum;
    # block2's projection starts a new stream that block3's identity skip continues
    assert set(groups) == {("stem", "block1_conv2", "block1_add"), ("block1_conv1",),
                           ("block2_proj", "block2_conv2", "block2_add", "block3_conv2", "block3_add"),
                           ("block2_conv1",), ("block3_conv1",)}
    assert not any(g.refused for g in groups.values())
    mob = {g.sites: g for g in dependency_groups(load_model(FIX / "zoo_mobilenetv2.onnx"))}
    assert ("block1_expand", "block1_dw") in mob and "depthwise" in mob[("block1_expand", "block1_dw")].links[0]
    vit = {g.sites: g for g in dependency_groups(load_model(FIX / "zoo_vit.onnx"))}
    assert vit[("block1_mlp_fc1_matmul",)].refused is None
    assert "normalises over the units" in vit[("block1_mlp_fc2_matmul", "block1_mlp_residual")].refused


def _assert_equals_masked(lm, plan, pruned, name):
    """The pruned model's outputs equal the plan applied by masks (1e-4 of the output scale),
    and the plan changed them."""
    from infoprobe.data import feeds

    x = _zoo_inputs(name, lm)
    ref = Runner(lm, mix=not all(lp.is_constant for lp in plan.layers.values()))
    want = ref.run(x, feeds=ref.plan_feeds(plan), outputs=[lm.output_name])[lm.output_name]
    got = make_session(pruned).run([lm.output_name], feeds(lm.input_name, x))[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert np.abs(want - ref.run(x, outputs=[lm.output_name])[lm.output_name]).max() > 1e-2  # the plan did act


def _zoo_inputs(name, lm, n=200):
    if name == "zoo_encoder.onnx":
        d = load_data(FIX / "tokens_demo.npz", split="test", x_key="input_ids,attention_mask", limit=n)
        return model_inputs(lm, d.x, 1.0)
    return model_inputs(lm, load_data(FIX / "mnist_demo.npz", split="test", limit=n).x, 1 / 255)


@pytest.mark.parametrize("name", ["zoo_resnet.onnx", "zoo_mobilenetv2.onnx", "zoo_vit.onnx", "zoo_encoder.onnx"])
@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_zoo_models_pruned_by_groups_equal_the_plan_applied_by_masks(name, fraction):
    """Magnitude ranking over dependency groups, with non-zero constants (folded into every
    consumer of the group, padding borders included): the smaller model equals the masked
    plan; residual-coupled channels, depthwise channels and transformer MLP neurons go."""
    from infoprobe.analyses.compress import prunable_part
    from infoprobe.analyses.plans import plan_from_scores, plannable_layers

    lm = load_model(FIX / name)
    rng = np.random.default_rng(7)
    names = plannable_layers(lm)
    scores = {n: np.abs(lm.weights(n)[0].astype(np.float64)).reshape(lm.layer(n).units, -1).sum(1) for n in names}
    counts = {n: int(round(fraction * lm.layer(n).units)) for n in names}
    plan = plan_from_scores(lm, scores, counts)
    plan = PruningPlan({n: LayerPlan.build(n, lp.units, lp.remove, rng.normal(0, 0.2, len(lp.remove)))
                        for n, lp in plan.layers.items()}, lm.sha256, plan.generator)
    plan, _ = prunable_part(lm, plan)
    pruned = apply_plan(lm, plan)
    _assert_equals_masked(lm, plan, pruned, name)
    removed = {n for n, lp in plan.layers.items() if len(lp.remove)}
    expect = {"zoo_resnet.onnx": {"block1_add", "block3_add", "stem"}, "zoo_mobilenetv2.onnx": {"block1_dw", "block3_add"},
              "zoo_vit.onnx": {"block1_mlp_fc1_matmul"}, "zoo_encoder.onnx": {"layer2_ff_fc1_matmul"}}[name]
    assert expect <= removed
    dims = {v.name: v for v in pruned.graph.initializers.values()}
    assert sum(v.const_value.size for v in dims.values()) < sum(
        v.const_value.size for v in lm.fresh_ir().graph.initializers.values() if v.const_value is not None)


def test_a_plan_that_splits_a_dependency_group_is_refused():
    lm = load_model(FIX / "zoo_resnet.onnx")
    plan = PruningPlan({"stem": LayerPlan.build("stem", 16, [1, 2]), "block1_conv2": LayerPlan.build("block1_conv2", 16, [1]),
                        "block1_add": LayerPlan.build("block1_add", 16, [1, 2])})
    with pytest.raises(PlanError, match="dependency group"):
        apply_plan(lm, plan)
    lm = load_model(FIX / "zoo_mlp_ln_gelu.onnx")
    with pytest.raises(PlanError, match="normalises over the units"):
        apply_plan(lm, PruningPlan({"fc1": LayerPlan.build("fc1", 64, [1])}))


def test_a_pruned_padded_cnn_is_rediscovered_and_pruned_again(tmp_path):
    """Constants folded past zero padding leave a border correction after the conv; the pruned
    model's sites are found as before (conv, batch norm, activation) and a second plan prunes
    it again exactly, adding to the corrections."""

    lm = load_model(FIX / "zoo_resnet.onnx")
    rng = np.random.default_rng(3)

    def constants(model, plan):
        return PruningPlan({n: LayerPlan.build(n, lp.units, lp.remove, rng.normal(0.5, 0.2, len(lp.remove)))
                            for n, lp in plan.layers.items()}, model.sha256, {})

    first = constants(lm, magnitude_plan(lm, 0.25))
    path = save_model(apply_plan(lm, first), tmp_path / "p1.onnx")
    small = load_model(path)
    for name in ("block1_conv1", "block2_conv1", "block3_conv1"):
        lay = small.layer(name)
        assert (lay.op, lay.activation) == ("Conv+Add(positions)+BatchNormalization", "relu"), name
    assert [lay.name for lay in small.layers] == [lay.name for lay in lm.layers]
    second = constants(small, magnitude_plan(small, 0.25))
    pruned = apply_plan(small, second)
    _assert_equals_masked(small, second, pruned, "zoo_resnet.onnx")
    assert sum(n.op_type == "Add" for n in pruned.graph) == sum(n.op_type == "Add" for n in ir.load(path).graph)


def _save_graph(path, nodes, inits, in_shape, out_shape):
    """Write a hand-built opset-17 graph from input ``x`` to output ``logits``."""
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _np_conv(x, w, b=None, pad=0, groups=1):
    """Plain NumPy 2-D convolution (stride 1): x [N, C, H, W], w [O, C/groups, k, k]."""
    n, c, h, wd = x.shape
    o, per, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((n, o, ho, wo))
    for g in range(groups):
        rows = slice(g * o // groups, (g + 1) * o // groups)
        xs = xp[:, g * per:(g + 1) * per]
        for i in range(k):
            for j in range(k):
                out[:, rows] += np.einsum("nchw,oc->nohw", xs[:, :, i:i + ho, j:j + wo], w[rows, :, i, j])
    return out + (0 if b is None else b[None, :, None, None])


def test_concat_split_and_a_grouped_conv_pruned_as_numpy_computes_the_plan(tmp_path):
    """A graph by hand: two convs concatenated, split 4/6, a grouped conv on the first part and
    a 1x1 conv on the second, concatenated again, pooled, Gemm. Units removed from every site
    (balanced over the grouped conv's groups), replaced by constants: the pruned model equals
    a NumPy forward pass of the original with those constants, and the shapes shrink."""
    from onnx import helper

    from infoprobe.data import feeds

    rng = np.random.default_rng(11)
    p = {"wa": rng.normal(0, .5, (6, 2, 3, 3)), "ba": rng.normal(0, .1, 6), "wb": rng.normal(0, .5, (4, 2, 1, 1)),
         "bb": rng.normal(0, .1, 4), "wc": rng.normal(0, .5, (4, 2, 3, 3)), "bc": rng.normal(0, .1, 4),
         "wd": rng.normal(0, .5, (4, 6, 1, 1)), "bd": rng.normal(0, .1, 4), "wf": rng.normal(0, .5, (3, 8)),
         "bf": rng.normal(0, .1, 3)}
    inits = [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in p.items()]
    inits.append(onnx.numpy_helper.from_array(np.array([4, 6], np.int64), "sizes"))
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["x", "wb", "bb"], ["b"], name="conv_b"),
             helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("Concat", ["ra", "rb"], ["ab"], name="cat1", axis=1),
             helper.make_node("Split", ["ab", "sizes"], ["s1", "s2"], name="split", axis=1),
             helper.make_node("Conv", ["s1", "wc", "bc"], ["c"], name="conv_c", pads=[1, 1, 1, 1], group=2),
             helper.make_node("Relu", ["c"], ["rc"], name="relu_c"),
             helper.make_node("Conv", ["s2", "wd", "bd"], ["d"], name="conv_d"),
             helper.make_node("Relu", ["d"], ["rd"], name="relu_d"),
             helper.make_node("Concat", ["rc", "rd"], ["cd"], name="cat2", axis=1),
             helper.make_node("GlobalAveragePool", ["cd"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
             helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1)]
    lm = load_model(_save_graph(tmp_path / "cs.onnx", nodes, inits, ["N", 2, 6, 6], ["N", 3]))
    assert [lay.name for lay in lm.hidden_layers] == ["conv_a", "conv_b", "conv_c", "conv_d"]
    remove = {"conv_a": [0, 3, 5], "conv_b": [2], "conv_c": [1, 2], "conv_d": [0]}
    consts = {n: rng.normal(0.3, 0.2, len(r)) for n, r in remove.items()}
    plan = PruningPlan({n: LayerPlan.build(n, lm.layer(n).units, r, consts[n]) for n, r in remove.items()}, lm.sha256)
    pruned = apply_plan(lm, plan)

    x = rng.normal(0, 1, (16, 2, 6, 6))

    def replaced(t, name):
        t = t.copy()
        t[:, remove[name]] = consts[name][None, :, None, None]
        return t

    ra = replaced(np.maximum(_np_conv(x, p["wa"], p["ba"], pad=1), 0), "conv_a")
    rb = replaced(np.maximum(_np_conv(x, p["wb"], p["bb"]), 0), "conv_b")
    ab = np.concatenate([ra, rb], axis=1)
    rc = replaced(np.maximum(_np_conv(ab[:, :4], p["wc"], p["bc"], pad=1, groups=2), 0), "conv_c")
    rd = replaced(np.maximum(_np_conv(ab[:, 4:], p["wd"], p["bd"]), 0), "conv_d")
    want = np.concatenate([rc, rd], axis=1).mean(axis=(2, 3)) @ p["wf"].T + p["bf"]
    got = make_session(pruned).run(["logits"], feeds("x", x.astype(np.float32)))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    w = {v.name: v.const_value.numpy() for v in pruned.graph.initializers.values()}
    # part 1 (a0..a3) loses a0, a3; part 2 (a4, a5, b0..b3) loses a5 and b2
    assert w["sizes"].tolist() == [2, 4]
    assert w["wc"].shape == (2, 1, 3, 3) and w["wd"].shape == (3, 4, 1, 1) and w["wf"].shape == (3, 5)
    # conv_a's outgoing weights: a0..a3 through the grouped conv_c (block-diagonal), a4, a5 to conv_d
    wc_full = np.zeros((4, 4, 3, 3))
    wc_full[:2, :2], wc_full[2:, 2:] = p["wc"][:2], p["wc"][2:]
    hand = np.zeros((6, 4 * 9 + 4))
    hand[:4, :36] = np.moveaxis(wc_full, 1, 0).reshape(4, -1)
    hand[4:, 36:] = np.moveaxis(p["wd"][:, :2], 1, 0).reshape(2, -1)
    np.testing.assert_allclose(outgoing_weights(lm, "conv_a"), hand, rtol=1e-6)
    with pytest.raises(PlanError, match="same number of channels from every group"):   # 0 and 1: one group
        apply_plan(lm, PruningPlan({"conv_a": LayerPlan.build("conv_a", 6, [0, 1])}, lm.sha256))


@pytest.mark.parametrize("name,unit", [("zoo_vit.onnx", "block2_attn_proj_matmul_heads"),
                                       ("zoo_encoder.onnx", "layer1_attn_proj_matmul_heads")])
def test_attention_heads_are_removed_whole(name, unit):
    """A plan over an attention site removes whole heads (ranked by their units' summed
    scores); the pruned model, with fewer query, key and value columns and the heads' Reshapes
    updated, equals the plan applied by masks. Part of a head is refused."""
    from infoprobe.analyses.plans import plan_from_scores

    lm = load_model(FIX / name)
    lay = lm.layer(unit)
    assert lay.heads == 4
    scores = np.arange(32, dtype=np.float64)[::-1].copy()          # head 3 has the lowest sum, then head 2
    plan = plan_from_scores(lm, {unit: scores}, {unit: 13})         # 13 units: round(13 / 8) = 2 heads
    assert plan.layers[unit].remove.tolist() == list(range(16, 32))
    plan = PruningPlan({unit: LayerPlan.build(unit, 32, plan.layers[unit].remove, np.linspace(-.5, .5, 16))},
                       lm.sha256)
    pruned = apply_plan(lm, plan)
    _assert_equals_masked(lm, plan, pruned, name)
    shapes = sorted(v.const_value.numpy().shape for v in pruned.graph.initializers.values()
                    if v.name.endswith((".weight_t", "q.weight_t")) and v.const_value.numpy().ndim == 2)
    assert (32, 16) in shapes and (16, 32) in shapes              # Q/K/V lose 16 columns; the output projection 16 rows
    with pytest.raises(PlanError, match="part of a head"):
        apply_plan(lm, PruningPlan({unit: LayerPlan.build(unit, 32, [0, 1, 2])}, lm.sha256))


def test_plan_groups_command_lists_the_groups_and_why():
    from click.testing import CliRunner

    from infoprobe.cli.main import cli

    r = CliRunner().invoke(cli, ["plan", str(FIX / "zoo_mobilenetv2.onnx"), "--groups", "--json"])
    assert r.exit_code == 0, r.output
    groups = {tuple(g["sites"]): g for g in json.loads(r.output)["groups"]}
    assert groups[("block1_expand", "block1_dw")]["links"] == ["block1_expand -> depthwise Conv block1_dw"]
    assert all(g["refused"] is None for g in groups.values())
    r = CliRunner().invoke(cli, ["plan", str(FIX / "zoo_mlp_ln_gelu.onnx"), "--groups"])
    assert r.exit_code == 0 and "fc1  (64 units each; refused: cannot prune layer 'fc1': it reaches ln1" in r.output
    r = CliRunner().invoke(cli, ["plan", str(FIX / "zoo_mlp_ln_gelu.onnx")])
    assert r.exit_code == 2 and "--out is required" in r.output


def test_round_to_keeps_a_multiple_of_the_block_of_units():
    from infoprobe.analyses.plans import kept_multiple

    # (units, removed, multiple) -> removed, by hand
    for args, want in [((16, 4, 8), 0), ((32, 8, 8), 8), ((32, 8, 16), 0), ((32, 20, 16), 16), ((5, 2, 8), 2),
                       ((16, 15, 8), 8), ((64, 10, 1), 10)]:
        assert kept_multiple(*args) == want, args
    lm = load_model(FIX / "zoo_mobilenetv2.onnx")
    plan = magnitude_plan(lm, 0.5, round_to=16)
    kept = {n: lp.units - len(lp.remove) for n, lp in plan.layers.items()}
    assert all(k % 16 == 0 for n, k in kept.items() if lm.layer(n).units >= 16) and plan.generator["round_to"] == 16


def test_site_by_site_generators_leave_dependency_groups_out():
    """refactor (least squares within one site) cannot keep a residual group whole: it plans
    the uncoupled sites only, says so, and the plan prunes exactly."""
    from infoprobe.analyses.frivolous.plans import refactor_plan
    from infoprobe.analyses.plans import uncoupled

    lm = load_model(FIX / "zoo_resnet.onnx")
    with pytest.warns(UserWarning, match="dependency groups"):
        assert uncoupled(lm, [lay.name for lay in lm.hidden_layers], "x") == ["block1_conv1", "block2_conv1",
                                                                              "block3_conv1"]
    data = load_data(FIX / "mnist_demo.npz", split="validation", limit=300)
    with pytest.warns(UserWarning, match="refactor leaves out stem"):
        plan, rows = refactor_plan(lm, data, tolerance=0.05)
    assert set(plan.layers) <= {"block1_conv1", "block2_conv1", "block3_conv1"} and plan.layers
    _assert_equals_masked(lm, plan, apply_plan(lm, plan), "zoo_resnet.onnx")


def test_per_unit_constants_between_sites_are_carried_and_sliced(tmp_path):
    """Between two convs: a per-channel Mul, a standalone BatchNormalization, a per-channel
    PRelu and a Clip. Removed channels replaced by constants pass them exactly and their
    per-channel constants lose the removed channels; the result equals NumPy's forward pass."""
    from onnx import helper

    from infoprobe.data import feeds

    rng = np.random.default_rng(4)
    p = {"w1": rng.normal(0, .5, (5, 1, 3, 3)), "b1": rng.normal(0, .1, 5), "scale": rng.uniform(.5, 2, (1, 5, 1, 1)),
         "g": rng.uniform(.5, 2, 5), "be": rng.normal(0, .2, 5), "mu": rng.normal(0, .2, 5), "var": rng.uniform(.5, 2, 5),
         "slope": rng.uniform(0, .3, (5, 1, 1)), "w2": rng.normal(0, .5, (3, 5, 3, 3)), "b2": rng.normal(0, .1, 3)}
    inits = [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in p.items()]
    inits += [onnx.numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("lo", -1.0), ("hi", 1.5))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["a"], ["t"], name="tanh1"),
             helper.make_node("Mul", ["t", "scale"], ["m"], name="scale_mul"),
             helper.make_node("BatchNormalization", ["m", "g", "be", "mu", "var"], ["n"], name="bn"),
             helper.make_node("PRelu", ["n", "slope"], ["pr"], name="prelu"),
             helper.make_node("Clip", ["pr", "lo", "hi"], ["cl"], name="clip"),
             helper.make_node("Conv", ["cl", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["y"], ["ty"], name="tanh2"),
             helper.make_node("GlobalAveragePool", ["ty"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["logits"], name="flat")]
    lm = load_model(_save_graph(tmp_path / "cw.onnx", nodes, inits, ["N", 1, 6, 6], ["N", 3]))
    assert lm.layer("conv1").activation == "tanh" and lm.layer("conv1").post_value == "t"
    remove, consts = [1, 3], np.array([0.4, -0.7])
    pruned = apply_plan(lm, PruningPlan({"conv1": LayerPlan.build("conv1", 5, remove, consts)}, lm.sha256))

    x = rng.normal(0, 1, (8, 1, 6, 6))
    t = np.tanh(_np_conv(x, p["w1"], p["b1"], pad=1))
    t[:, remove] = consts[None, :, None, None]
    n = (t * p["scale"] - p["mu"][None, :, None, None]) / np.sqrt(p["var"][None, :, None, None] + 1e-5) \
        * p["g"][None, :, None, None] + p["be"][None, :, None, None]
    cl = np.clip(np.where(n >= 0, n, p["slope"][None] * n), -1.0, 1.5)
    want = np.tanh(_np_conv(cl, p["w2"], p["b2"], pad=1)).mean(axis=(2, 3))
    got = make_session(pruned).run(["logits"], feeds("x", x.astype(np.float32)))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    w = {v.name: v.const_value.numpy() for v in pruned.graph.initializers.values()}
    assert w["scale"].shape == (1, 3, 1, 1) and w["g"].shape == (3,) and w["slope"].shape == (3, 1, 1)
    assert w["w2"].shape == (3, 3, 3, 3)
