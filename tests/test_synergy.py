"""infoprobe synergy: layer analysis, plans and multi-unit importance on the ReLU fixtures."""
import json
from math import comb

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FIX, mlp_forward

from infoprobe.errors import DataError
from infoprobe.estimators.oinfo import copula_model, search_multiplets


@pytest.fixture(scope="module")
def relu_stores(tmp_path_factory):
    """Test-split stores of two seeds of the 784-20-20-20-10 ReLU MLP."""
    from infoprobe.analyses.capture import capture
    from infoprobe.data import load_data

    d = tmp_path_factory.mktemp("relu")
    data = load_data(FIX / "mnist_demo.npz", split="test")
    return [capture(FIX / f"{n}.onnx", data, d / f"{n}.h5", progress=False) for n in ("mlp_relu", "mlp_relu_s2")]


@pytest.fixture(scope="module")
def result(relu_stores):
    from infoprobe.analyses.synergy import synergy

    return synergy(relu_stores, max_size=6, exhaustive_up_to=4, progress=False)


def test_layers_match_the_estimator_on_raw_activations(relu_stores, result):
    assert result.layers() == ["fc1_matmul", "fc2_matmul", "fc3_matmul"]
    for net, path in enumerate(relu_stores):
        with h5py.File(path) as f:                        # read independently of infoprobe's Store
            y = f["samples/labels"][()]
            x = f["layers/fc2_matmul/pre"][()]
        ref = search_multiplets(copula_model(x, y), max_size=6, exhaustive_up_to=4)
        got = [r for r in result.rows if r["network"] == net and r["layer"] == "fc2_matmul"]
        assert [(r["size"], r["direction"], r["units"]) for r in got] == \
            [(r["size"], r["direction"], r["units"]) for r in ref]
        np.testing.assert_allclose([r["omega"] for r in got], [r["omega"] for r in ref], atol=1e-12)
    prof = {(p["layer"], p["size"], p["direction"]): p for p in result.profiles}
    for lay in result.layers():
        for k in range(2, 7):
            vals = [r["omega"] for r in result.rows if (r["layer"], r["size"], r["direction"]) == (lay, k, "synergy")]
            assert prof[(lay, k, "synergy")]["mean"] == pytest.approx(np.mean(vals))
            assert prof[(lay, k, "synergy")]["networks"] == 2
            assert prof[(lay, k, "synergy")]["mean"] < 0 < prof[(lay, k, "redundancy")]["mean"]


def test_plan_keeps_the_synergistic_multiplet(result):
    from infoprobe.analyses.synergy import synergy_plan
    from infoprobe.model import load_model

    plan = synergy_plan(FIX / "mlp_relu.onnx", result, size=5)
    for lay, lp in plan.layers.items():
        assert sorted(lp.kept.tolist()) == sorted(result.best(lay, size=5)["units"])
        assert lp.is_constant and len(lp.remove) == 15
    plan.check_model(load_model(FIX / "mlp_relu.onnx"))
    with pytest.raises(DataError, match="captured from"):
        synergy_plan(FIX / "mlp_sigmoid.onnx", result)


def test_multiunit_importance_matches_a_numpy_forward_pass(relu_stores, result):
    from infoprobe.analyses.synergy import multiunit_importance
    from infoprobe.data import load_data

    data = load_data(FIX / "mnist_demo.npz", split="test")
    rows = multiunit_importance(FIX / "mlp_relu.onnx", relu_stores[0], data, result, size=4, random_repeats=3)
    x = data.x.reshape(len(data.x), -1) / 255.0
    relu = (lambda z: np.maximum(z, 0))
    _, logits = mlp_forward(FIX / "mlp_relu.onnx", x, relu)
    assert rows[0]["selection"] == "none" and rows[0]["accuracy"] == pytest.approx((logits.argmax(1) == data.y).mean())
    for i, lay in enumerate(result.layers()):
        units = np.array(result.best(lay, size=4)["units"])
        for mode, target in (("ablate", units), ("keep", np.setdiff1d(np.arange(20), units))):
            _, lg = mlp_forward(FIX / "mlp_relu.onnx", x, relu, ablate={i: (target, np.zeros(20))})
            row = next(r for r in rows if (r["layer"], r["selection"], r["mode"]) == (lay, "synergy", mode))
            assert row["accuracy"] == pytest.approx((lg.argmax(1) == data.y).mean(), abs=1e-12)
        rnd = next(r for r in rows if (r["layer"], r["selection"], r["mode"]) == (lay, "random", "ablate"))
        assert rnd["repeats"] == 3 and rnd["k"] == 4


def test_cli_synergy(tmp_path, relu_stores):
    from infoprobe.cli.main import cli

    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["synergy", str(relu_stores[0]), "--out", str(out), "--max-size", "5",
                                 "--exhaustive-up-to", "4", "--labels", "ordinal", "--json", "--progress",
                                 "--model", str(FIX / "mlp_relu.onnx"), "--plan", str(tmp_path / "plan.json"),
                                 "--data", str(FIX / "mnist_demo.npz"), "--split", "test", "--random-repeats", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)                        # the search estimate goes to stderr
    assert "O-information search: exhaustive size 4 (asked)" in r.stderr
    assert {p["size"] for p in summary["profiles"]} == {2, 3, 4, 5}
    assert {"synergy", "gcmi_model", "gcmi_mixture", "random"} <= {i["selection"] for i in summary["importance"]}
    for f in ("synergy.csv", "synergy_profile.json", "synergy.png", "multiunit_importance.csv"):
        assert (out / f).stat().st_size > 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert all(len(lp["remove"]) == 15 for lp in plan["layers"])
    again = CliRunner().invoke(cli, ["synergy", str(relu_stores[0]), "--out", str(out), "--no-progress"])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = CliRunner().invoke(cli, ["synergy", str(relu_stores[0]), "--plan", str(tmp_path / "p.json")])
    assert bad.exit_code == 2 and "--model" in bad.output


def test_auto_exhaustive_size_follows_the_budget(relu_stores):
    from infoprobe.analyses.synergy import SynergyEstimate, synergy

    # 10^4 multiplets/s: a 20-unit search up to 5 takes 2.2 s, up to 6 takes 6.0 s; 3 layers x 2
    # networks share 20 s, 3.3 s per search
    seen = []
    res = synergy(relu_stores, max_size=6, budget=20, throughput=1e4, on_estimate=seen.append, progress=False)
    assert len(seen) == 1 and isinstance(seen[0], SynergyEstimate)
    assert seen[0].sizes == res.meta["parameters"]["exhaustive_sizes"] == dict.fromkeys(res.layers(), 5)
    assert res.meta["parameters"]["exhaustive_up_to"] == "auto" and res.meta["parameters"]["budget_s"] == 20
    est = res.meta["estimate"]["layers"]
    assert [r["exhaustive"] for r in est] == [2 * sum(comb(20, k) for k in range(1, 6))] * 3
    assert all(r["actual"] >= 0 for r in est)
    for r in res.rows:
        assert r["exhaustive_up_to"] == 5 and r["method"] == ("greedy" if r["size"] == 6 else "exhaustive")
    assert seen[0].warning() is None
    assert "up to 5" in "\n".join(seen[0].lines())


def test_explicit_exhaustive_size_is_honoured_over_budget(relu_stores):
    from infoprobe.analyses.synergy import synergy, synergy_estimate

    est = synergy_estimate(relu_stores[0], max_size=6, exhaustive_up_to=5, budget=1, throughput=1e3)
    assert est.sizes == {"fc1_matmul": 5, "fc2_matmul": 5, "fc3_matmul": 5}
    assert est.over_budget > 10 and "running it as asked" in est.warning()
    res = synergy(relu_stores[0], max_size=6, exhaustive_up_to=5, budget=1, throughput=1e3, progress=False)
    assert {r["method"] for r in res.rows if r["size"] == 5} == {"exhaustive"}
    assert res.meta["parameters"]["exhaustive_sizes"] == est.sizes


def test_cli_prints_the_estimate_before_searching(tmp_path, relu_stores, monkeypatch):
    import click

    import infoprobe.analyses.synergy as mod
    from infoprobe.cli.main import cli

    search = mod.search_multiplets

    def noisy(*args, **kwargs):
        click.echo("searching", err=True)
        return search(*args, **kwargs)

    monkeypatch.setattr(mod, "search_multiplets", noisy)
    r = CliRunner().invoke(cli, ["synergy", str(relu_stores[0]), "--out", str(tmp_path / "a"), "--max-size", "4",
                                 "--progress", "--no-plot"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines[0].startswith("O-information search: exhaustive size auto, budget 60 s")
    for lay in ("fc1_matmul", "fc2_matmul", "fc3_matmul"):   # 20 units: every multiplet up to 4 fits
        row = next(line.split() for line in lines if line.split()[:1] == [lay])
        assert row[1:5] == ["20", "up", "to", "4"] and row[5:8] == ["6.2k", "+", "0"]
    total = next(line for line in lines if line.split()[:1] == ["total"])
    assert r.stderr.index("searching") > r.stderr.index(total)   # (the progress bar shares its line)
    assert "WARNING" not in r.stderr
    rows = (tmp_path / "a" / "synergy.csv").read_text().splitlines()
    assert rows[0].split(",")[:7] == ["network", "store", "layer", "size", "direction", "method", "exhaustive_up_to"]
    assert all(row.split(",")[6] == "4" for row in rows[1:])
    # an explicit size far over the budget runs, with a warning; a tiny budget picks the smallest size
    r = CliRunner().invoke(cli, ["synergy", str(relu_stores[0]), "--out", str(tmp_path / "b"), "--max-size", "4",
                                 "--exhaustive-up-to", "4", "--budget", "1e-9", "--no-progress", "--no-plot"])
    # without the progress bars only the warning is announced, on one line
    warning = "infoprobe: warning: exhaustive search up to 4 units is estimated at"
    assert r.exit_code == 0 and warning in r.stderr and "O-information search:" not in r.stderr
    assert r.stderr.index(warning) < r.stderr.index("searching")
    r = CliRunner().invoke(cli, ["synergy", str(relu_stores[0]), "--out", str(tmp_path / "c"), "--max-size", "4",
                                 "--budget", "1e-9", "--no-progress", "--no-plot"])
    assert r.exit_code == 0 and "even the smallest exhaustive size" in r.stderr
    assert json.loads((tmp_path / "c" / "synergy.json").read_text())["meta"]["parameters"]["exhaustive_sizes"] == \
        dict.fromkeys(["fc1_matmul", "fc2_matmul", "fc3_matmul"], 2)
    bad = CliRunner().invoke(cli, ["synergy", str(relu_stores[0]), "--exhaustive-up-to", "six"])
    assert bad.exit_code == 2 and "six" in bad.output


def test_a_size_whose_multiplets_are_all_degenerate_has_no_mean_and_no_bar(tmp_path):
    """Every multiplet of size 3 degenerate (omega None, as on a layer of near-constant units):
    its profile has no mean; the table says n/a and the plot leaves the bar out instead of
    failing."""
    from infoprobe.analyses.synergy import SynergyResult, profiles

    rows = []
    for net in (0, 1):
        for size, omega in ((2, -0.5 - 0.1 * net), (3, None)):
            for d in ("synergy", "redundancy"):
                rows.append({"network": net, "store": f"s{net}.h5", "layer": "conv", "size": size, "direction": d,
                             "method": "exhaustive", "exhaustive_up_to": 3,
                             "omega": omega if d == "synergy" or omega is None else 0.3,
                             "units": [0, 1, 2][:size], "evaluated": 3, "degenerate": 3 if omega is None else 0})
    prof = profiles(rows)
    three = [p for p in prof if p["size"] == 3]
    assert len(three) == 2 and all(p["mean"] is None for p in three)
    two = next(p for p in prof if p["size"] == 2 and p["direction"] == "synergy")
    assert two["mean"] == pytest.approx(-0.55)
    res = SynergyResult(rows, prof, {}, {"parameters": {"labels": "exact", "which": "pre"}})
    lines = res.summary().splitlines()
    assert any(line.split()[:2] == ["conv", "3"] and line.split()[2:4] == ["n/a", "n/a"] for line in lines)
    assert any(line.split()[:3] == ["conv", "2", "-0.550"] for line in lines)
    files = res.plot(tmp_path)
    assert any(str(f).endswith("synergy.png") and f.stat().st_size > 0 for f in files)
