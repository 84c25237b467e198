"""Cumulative ablation against a NumPy reference of the same ablations."""
import numpy as np
import pytest

from conftest import FIX, mlp_forward, sigmoid
from infoprobe.analyses.ablation import cumulative_ablation, parse_hybrid, rank_units
from infoprobe.analyses.importance import importance
from infoprobe.data import load_data
from infoprobe.errors import ConfigError, DataError
from infoprobe.interventions import replacement
from infoprobe.model import load_model
from infoprobe.store import Store


@pytest.fixture(scope="module")
def test_data():
    return load_data(FIX / "mnist_demo.npz", split="test")  # 2,000 images, all classes


@pytest.fixture(scope="module")
def imp(sigmoid_store):
    return importance(sigmoid_store, progress=False)


def reference_accuracy(data, layer_idx, units, consts):
    x = data.x.reshape(len(data), -1).astype(np.float64) / 255
    _, logits = mlp_forward(FIX / "mlp_sigmoid.onnx", x, sigmoid, ablate={layer_idx: (units, consts)})
    return float((logits.argmax(1) == data.y).mean())


def test_rank_units_is_stable():
    v = np.array([0.3, 0.1, 0.3, 0.0])
    assert rank_units(v, "low").tolist() == [3, 1, 0, 2]
    assert rank_units(v, "high").tolist() == [0, 2, 1, 3]


def test_bias_balancing_constant_is_validation_mean(sigmoid_store):
    with Store(sigmoid_store) as st:
        lm = load_model(FIX / "mlp_sigmoid.onnx")
        np.testing.assert_allclose(replacement(lm, "fc1", "mean", store=st), st.read("fc1").astype(np.float64).mean(0),
                                   rtol=1e-12)
        assert not replacement(lm, "fc1", "zero").any()


def test_layer_curves_match_numpy(sigmoid_store, test_data, imp):
    res = cumulative_ablation(FIX / "mlp_sigmoid.onnx", sigmoid_store, test_data, importance=imp,
                              measures=("mutual_information",), orders=("low", "high"), n_steps=5,
                              random_repeats=0, progress=False)
    with Store(sigmoid_store) as st:
        means = {n: st.read(n).astype(np.float64).mean(0) for n in ("fc1", "fc2")}
    for idx, layer in enumerate(("fc1", "fc2")):
        for order in ("low", "high"):
            ranking = rank_units(imp.measure(layer, "mutual_information"), order)
            for value in ("zero", "mean"):
                ks, acc = res.curve(layer=layer, ranking="mutual_information", order=order, value=value)
                assert ks.tolist() == [0, 25, 50, 75, 100]
                c = means[layer] if value == "mean" else np.zeros(100)
                for k, a in zip(ks, acc):
                    assert a == pytest.approx(reference_accuracy(test_data, idx, ranking[:k], c), abs=1 / 2000 + 1e-9)
    row = next(r for r in res.rows if r["n_ablated"] == 50)
    assert {f"class_{c}_accuracy" for c in range(10)} <= set(row)


def test_network_scope_and_random_are_reproducible(sigmoid_store, test_data, imp):
    kw = dict(importance=imp, measures=("kl_selectivity",), scopes=("network",), n_steps=4, random_repeats=3,
              progress=False, seed=7)
    a = cumulative_ablation(FIX / "mlp_sigmoid.onnx", sigmoid_store, test_data, **kw)
    b = cumulative_ablation(FIX / "mlp_sigmoid.onnx", sigmoid_store, test_data, **kw)
    assert [r["accuracy"] for r in a.rows] == [r["accuracy"] for r in b.rows]
    rand = [r for r in a.rows if r["ranking"] == "random"]
    assert rand and all(r["repeats"] == 3 for r in rand)
    assert any(r["accuracy_std"] > 0 for r in rand)
    # ranking across layers: the k lowest-KL units of fc1+fc2 together
    allv = np.concatenate([imp.measure("fc1", "kl_selectivity"), imp.measure("fc2", "kl_selectivity")])
    ks, acc = a.curve(scope="network", ranking="kl_selectivity", order="low", value="zero")
    assert ks.tolist() == [0, 67, 133, 200]
    x = test_data.x.reshape(len(test_data), -1).astype(np.float64) / 255
    sel = rank_units(allv, "low")[:67]
    abl = {0: (sel[sel < 100], np.zeros(100)), 1: (sel[sel >= 100] - 100, np.zeros(100))}
    _, logits = mlp_forward(FIX / "mlp_sigmoid.onnx", x, sigmoid, ablate=abl)
    assert acc[1] == pytest.approx((logits.argmax(1) == test_data.y).mean(), abs=1 / 2000 + 1e-9)


def test_hybrid_prunes_in_ratio(sigmoid_store, test_data, imp):
    hyb = parse_hybrid("fc1=mutual_information:1, fc2=kl_selectivity:2")
    assert hyb == {"fc1": ("mutual_information", 1.0), "fc2": ("kl_selectivity", 2.0)}
    res = cumulative_ablation(FIX / "mlp_sigmoid.onnx", sigmoid_store, test_data, importance=imp, measures=(),
                              scopes=(), random_repeats=0, hybrid=hyb, values=("mean",), n_steps=4,
                              progress=False)
    rows = [r for r in res.rows if r["scope"] == "hybrid"]
    assert [r["n_ablated"] for r in rows] == [0, 50, 100, 150]  # fc2 is full at 100 = 2/3 of 150
    with Store(sigmoid_store) as st:
        m1, m2 = st.read("fc1").astype(np.float64).mean(0), st.read("fc2").astype(np.float64).mean(0)
    x = test_data.x.reshape(len(test_data), -1).astype(np.float64) / 255
    r1 = rank_units(imp.measure("fc1", "mutual_information"), "low")[:17]
    r2 = rank_units(imp.measure("fc2", "kl_selectivity"), "low")[:33]
    _, logits = mlp_forward(FIX / "mlp_sigmoid.onnx", x, sigmoid, ablate={0: (r1, m1), 1: (r2, m2)})
    assert rows[1]["accuracy"] == pytest.approx((logits.argmax(1) == test_data.y).mean(), abs=1 / 2000 + 1e-9)
    with pytest.raises(ConfigError):
        parse_hybrid("fc1")


def test_errors(sigmoid_store, test_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown measure"):
        cumulative_ablation(FIX / "mlp_sigmoid.onnx", sigmoid_store, test_data, measures=("nope",), progress=False)
    np.savez(tmp_path / "nolabels.npz", x=test_data.x)
    with pytest.raises(DataError, match="labels"):
        cumulative_ablation(FIX / "mlp_sigmoid.onnx", sigmoid_store, load_data(tmp_path / "nolabels.npz"),
                            progress=False)
    with pytest.raises(DataError, match="another model"):
        cumulative_ablation(FIX / "mlp_relu.onnx", sigmoid_store, test_data, layers=["fc1_matmul"],
                            progress=False)


def test_provenance_hashes_the_store_once(sigmoid_store, test_data, imp, monkeypatch):
    import infoprobe.model

    from infoprobe.model import sha256_file

    calls = []
    monkeypatch.setattr(infoprobe.model, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    with Store(sigmoid_store) as st:
        a = importance(st, layers=["fc2"], js=False, progress=False)
        b = cumulative_ablation(FIX / "mlp_sigmoid.onnx", st, test_data, importance=a, measures=(),
                                random_repeats=1, n_steps=2, layers=["fc2"], progress=False)
    assert a.inputs["store"][1] == b.inputs["store"][1] == sha256_file(sigmoid_store)
    assert calls.count(st.path) == 1
    assert b.layer_table(0.5)[0]["ranking"] == "random"


# --- replicate networks ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def replicate_pairs(tmp_path_factory):
    """Three sigmoid MLPs of one architecture (seeds 0, 2, 3), each with its validation store."""
    from infoprobe.analyses.capture import capture

    val = load_data(FIX / "mnist_demo.npz", split="validation", limit=400)
    d = tmp_path_factory.mktemp("replicates")
    return [(FIX / f"{name}.onnx", capture(FIX / f"{name}.onnx", val, d / f"{name}.h5", progress=False))
            for name in ("mlp_sigmoid", "mlp_sigmoid_s2", "mlp_sigmoid_s3")]


def test_replicate_curves_are_each_networks_own_and_their_statistics(replicate_pairs):
    """Every network's rows equal its own single ablation; the mean, sd, median and Student t
    interval equal NumPy and SciPy on those rows."""
    from scipy import stats

    from infoprobe.analyses.ablation import replicate_ablation

    data = load_data(FIX / "mnist_demo.npz", split="test", limit=400)
    kw = dict(n_steps=4, random_repeats=2, values=("mean",), progress=False)
    res = replicate_ablation(replicate_pairs, data, **kw)
    singles = [cumulative_ablation(m, st, data, **kw) for m, st in replicate_pairs]
    for i, single in enumerate(singles):
        mine = [{k: v for k, v in r.items() if k not in ("replicate", "model")}
                for r in res.replicate_rows if r["replicate"] == i]
        assert mine == single.rows
    acc = np.array([[r["accuracy"] for r in s.rows] for s in singles])
    assert not np.allclose(acc[0], acc[1])                        # the networks differ
    half = stats.t.ppf(0.975, 2) * acc.std(0, ddof=1) / np.sqrt(3)
    np.testing.assert_allclose([r["accuracy"] for r in res.rows], acc.mean(0), rtol=1e-12)
    np.testing.assert_allclose([r["accuracy_std"] for r in res.rows], acc.std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose([r["accuracy_median"] for r in res.rows], np.median(acc, 0), rtol=1e-12)
    np.testing.assert_allclose([r["ci_high"] - r["accuracy"] for r in res.rows], half, rtol=1e-9, atol=1e-15)
    assert {r["replicates"] for r in res.rows} == {3}
    assert res.accuracy_at(0.5, layer="fc2", ranking="mutual_information", order="low", value="mean") == \
        pytest.approx(np.mean([s.accuracy_at(0.5, layer="fc2", ranking="mutual_information", order="low",
                                             value="mean") for s in singles]))
    assert repr(res) == f"<ReplicateAblation ablation: {len(res.rows)} rows, ablation_replicates: {3 * len(res.rows)} rows>"


def test_replicates_must_share_an_architecture(replicate_pairs, tmp_path):
    from infoprobe.analyses.ablation import replicate_ablation
    from infoprobe.analyses.capture import capture

    data = load_data(FIX / "mnist_demo.npz", split="test", limit=100)
    relu = capture(FIX / "mlp_relu.onnx", data, tmp_path / "relu.h5", progress=False)
    with pytest.raises(ConfigError, match="replicate 2 .*mlp_relu.onnx.* does not have the first network's curves"):
        replicate_ablation([replicate_pairs[0], (FIX / "mlp_relu.onnx", relu)], data, n_steps=3, random_repeats=0,
                           progress=False)
    with pytest.raises(ConfigError, match="at least two"):
        replicate_ablation(replicate_pairs[:1], data, progress=False)


def test_ablate_cli_with_replicates_writes_statistics_and_bands(replicate_pairs, tmp_path):
    import json

    from click.testing import CliRunner

    from infoprobe.cli.main import cli

    (m0, s0), (m1, s1), (m2, s2) = replicate_pairs
    r = CliRunner().invoke(cli, ["ablate", str(m0), str(s0), "--replicate", str(m1), str(s1), "--replicate", str(m2),
                                 str(s2), "--data", str(FIX / "mnist_demo.npz"), "--split", "test", "--limit", "200",
                                 "--steps", "3", "--random-repeats", "1", "--out", str(tmp_path), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("mean over 3 networks")
    rows = json.loads((tmp_path / "ablation.json").read_text())["rows"]
    per = json.loads((tmp_path / "ablation_replicates.json").read_text())["rows"]
    assert {row["replicates"] for row in rows} == {3} and len(per) == 3 * len(rows)
    assert (tmp_path / "ablation_layer.png").stat().st_size > 1000
