"""Per-site divergence of a candidate from its reference: statistics against plain NumPy on
values read from hand-edited graphs, the site that a perturbed layer diverges at, kept units of
pruned models, and the matching of sites."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import FIX
from infoprobe.analyses.divergence import match_sites, site_divergence
from infoprobe.data import load_data, prepare_inputs
from infoprobe.model import load_model

RESNET = FIX / "zoo_resnet.onnx"


@pytest.fixture(scope="module")
def inputs():
    d = load_data(FIX / "mnist_demo.npz", split="test", limit=64)
    return prepare_inputs(d.x, (None, 1, 28, 28), 1 / 255, input_name="input")


def _perturbed(tmp_path, init="block2_conv1.weight", scale=0.3, seed=0):
    m = onnx.load(str(RESNET))
    for t in m.graph.initializer:
        if t.name == init:
            w = onnx.numpy_helper.to_array(t)
            w = w + scale * w.std() * np.random.default_rng(seed).standard_normal(w.shape).astype(w.dtype)
            t.CopyFrom(onnx.numpy_helper.from_array(w, t.name))
    path = tmp_path / "perturbed.onnx"
    onnx.save(m, str(path))
    return path


def _read(path, value, x):
    """A site's value, read from a copy of the graph with that value added as an output."""
    m = onnx.load(str(path))
    m.graph.output.append(onnx.helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run([value], {"input": x})[0].astype(np.float64)


def _cka_gram(x, y):
    """Linear CKA in its sample-space form: HSIC of the centred Gram matrices (Kornblith et al.
    2019, eqs. 2-3), a second route to the feature-space form the module uses."""
    h = np.eye(len(x)) - 1.0 / len(x)
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_))


def test_a_perturbed_layer_is_the_first_diverging_site_and_statistics_match_numpy(tmp_path, inputs):
    cand_path = _perturbed(tmp_path)
    ref, cand = load_model(RESNET), load_model(cand_path)
    res = site_divergence(ref, cand, inputs[:8], tolerance=0.05, batch_size=3)
    rows = {r["reference"]: r for r in res["sites"]}
    assert res["first_diverging"] == "block2_conv1"
    order = [r["reference"] for r in res["sites"]]
    downstream = {"block2_conv1", "block2_conv2", "block2_add", "block3_conv1", "block3_conv2", "block3_add", "fc"}
    for name in order:
        if name not in downstream:   # upstream or beside it (block2_proj): identical arithmetic
            assert rows[name]["relative_error"] == 0.0 and not rows[name]["diverged"], name
    assert all(r["matched_by"] == "name" and r["compared_on"] == "all units" for r in res["sites"])
    # the statistics of the perturbed site against plain NumPy on values read from the graph
    lay = ref.layer("block2_conv1")
    a = _read(RESNET, lay.post_value, inputs[:8])
    b = _read(cand_path, lay.post_value, inputs[:8])
    ra, rb = np.moveaxis(a, 1, -1).reshape(-1, 32), np.moveaxis(b, 1, -1).reshape(-1, 32)
    r = rows["block2_conv1"]
    assert r["relative_error"] == pytest.approx(np.linalg.norm(rb - ra) / np.linalg.norm(ra), rel=1e-6)
    corr = [np.corrcoef(ra[:, u], rb[:, u])[0, 1] for u in range(32) if ra[:, u].std() > 0 and rb[:, u].std() > 0]
    assert r["correlation_mean"] == pytest.approx(np.mean(corr), rel=1e-6)
    assert r["correlation_min"] == pytest.approx(np.min(corr), rel=1e-6)
    assert r["cka"] == pytest.approx(_cka_gram(ra, rb), rel=1e-6)
    moved = np.sqrt(((rb - ra) ** 2).mean(0)) / np.sqrt((ra ** 2).mean())
    assert [u["unit"] for u in r["moved_units"]] == list(np.argsort(-moved)[:5])
    assert r["moved_units"][0]["moved"] == pytest.approx(moved.max(), rel=1e-6)


def test_an_identical_copy_diverges_nowhere(tmp_path, inputs):
    ref = load_model(RESNET)
    res = site_divergence(ref, load_model(RESNET), inputs[:16])
    assert res["first_diverging"] is None and not res["unmatched"]
    assert all(r["relative_error"] == 0 and r["cka"] == pytest.approx(1.0) for r in res["sites"])


def test_quantized_and_renamed_sites_are_matched_and_say_how(tmp_path):
    ref = load_model(RESNET)
    pairs, unmatched = match_sites(ref, load_model(FIX / "zoo_resnet_dyn.onnx"))
    got = {p["reference"]: (p["candidate"], p["matched_by"]) for p in pairs}
    assert not unmatched and len(pairs) == 12
    assert got["fc"] == ("fc_MatMul_quant", "name prefix") and got["block1_add"] == ("block1_add", "name")
    assert got["block2_proj"] == ("block2_proj_quant", "name prefix")
    # a copy whose nodes are all renamed: paired in graph order by kind and positions
    m = onnx.load(str(RESNET))
    for i, n in enumerate(m.graph.node):
        n.name = f"n{i}"
    onnx.save(m, str(tmp_path / "renamed.onnx"))
    renamed = load_model(tmp_path / "renamed.onnx")
    pairs, unmatched = match_sites(ref, renamed)
    assert not unmatched and {p["matched_by"] for p in pairs} == {"position and shape"}
    by_cand = {lay.name: lay for lay in renamed.layers}
    for p in pairs:   # the same value of the same graph: the pairing is the identity
        assert by_cand[p["candidate"]].post_value == ref.layer(p["reference"]).post_value


def test_pruned_models_are_compared_on_their_kept_units(tmp_path, inputs):
    """A pruned model records the units it kept (twice pruned: in the first original's
    numbering); the first pruned site reads the same input, so its kept units equal the
    reference's."""
    from infoprobe.plan import LayerPlan, PruningPlan
    from infoprobe.prune import KEPT_FROM_KEY, KEPT_UNITS_KEY, apply_plan, save_model

    mlp = FIX / "mlp_sigmoid.onnx"
    lm = load_model(mlp)
    plan = PruningPlan({"fc1": LayerPlan.build("fc1", lm.layer("fc1").units, [0, 3, 5, 9])}, model_sha256=lm.sha256)
    once = save_model(apply_plan(lm, plan), tmp_path / "once.onnx")
    lm1 = load_model(once)
    plan2 = PruningPlan({"fc1": LayerPlan.build("fc1", lm1.layer("fc1").units, [0, 1])}, model_sha256=lm1.sha256)
    twice = save_model(apply_plan(lm1, plan2), tmp_path / "twice.onnx")
    meta = {p.key: p.value for p in onnx.load(str(twice)).metadata_props}
    kept = np.delete(np.arange(lm.layer("fc1").units), [0, 3, 5, 9])[2:]
    assert json.loads(meta[KEPT_UNITS_KEY]) == {"fc1": kept.tolist()} and meta[KEPT_FROM_KEY] == lm.sha256
    d = load_data(FIX / "mnist_demo.npz", split="test", limit=200)
    x = prepare_inputs(d.x, lm.input_shape, 1 / 255, input_name=lm.input_name)
    res = site_divergence(lm, load_model(twice), x)
    fc1 = res["sites"][0]
    assert fc1["reference"] == "fc1" and fc1["compared_on"] == "kept units" and fc1["units"] == [100, 94]
    assert fc1["relative_error"] < 1e-6 and fc1["cka"] == pytest.approx(1.0, abs=1e-6)
    assert res["sites"][1]["compared_on"] == "all units" and res["sites"][1]["relative_error"] > 0
    # against the once-pruned model, the record is of another model: CKA only, and said so
    res = site_divergence(lm1, load_model(twice), x)
    assert res["sites"][0]["compared_on"] == "CKA only" and res["sites"][0]["relative_error"] is None
    assert any("another model" in n for n in res["notes"])


def test_the_gate_reports_the_first_diverging_site(tmp_path):
    from infoprobe.analyses.check import gate

    md = tmp_path / "summary.md"
    data = load_data(FIX / "mnist_demo.npz", split="test", limit=300)
    res = gate(RESNET, _perturbed(tmp_path, scale=1.0), data, markdown=md, divergence_samples=100,
               latency_repeats=2)
    assert res.divergence["first_diverging"] == "block2_conv1" and res.divergence["n_samples"] == 100
    assert "first diverging site block2_conv1" in res.summary()
    text = md.read_text()
    assert "First diverging site: **block2_conv1**" in text and "| **block2_conv1** | block2_conv1 | name |" in text
    assert res.to_dict()["divergence"]["sites"][0]["reference"] == "stem"


def test_memory_stays_within_the_budget_whatever_the_number_of_sites():
    """The CKA sums of all sites share a quarter of the budget: under 1 MiB the MLP's fc1
    (3 x 100 x 100 float64) fits and fc2 is compared without CKA, said in a note; the other
    statistics do not change, and batches shrink to fit."""
    from infoprobe.limits import budgets

    mlp = load_model(FIX / "mlp_sigmoid.onnx")
    d = load_data(FIX / "mnist_demo.npz", split="test", limit=200)
    x = prepare_inputs(d.x, mlp.input_shape, 1 / 255, input_name=mlp.input_name)
    cand = load_model(FIX / "mlp_sigmoid_s2.onnx")
    free = site_divergence(mlp, cand, x)
    with budgets(memory=1 << 20):
        tight = site_divergence(mlp, cand, x)
    rows = {r["reference"]: r for r in tight["sites"]}
    assert rows["fc1"]["cka"] is not None and rows["fc2"]["cka"] is None and rows["fc3"]["cka"] is not None
    assert any(n.startswith("fc2: linear CKA left out") for n in tight["notes"])
    for a, b in zip(free["sites"], tight["sites"]):
        assert a["relative_error"] == pytest.approx(b["relative_error"], rel=1e-9)
        assert a["correlation_mean"] == pytest.approx(b["correlation_mean"], rel=1e-9)
