"""synergy's plans: exhaustive sizes from counts and a fixed cost model (never timed), written
with the results and replayed exactly; every layer's model checked against the memory budget
before any activation is read."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from math import comb

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from infoprobe.errors import BudgetError
from infoprobe.estimators import oinfo
from infoprobe.estimators.oinfo import CostModel, copula_model, search_multiplets
from infoprobe.limits import budgets


def write_store(path, widths: dict, *, n: int = 600, classes: int = 3, seed: int = 0):
    """A store of hidden dense layers ``{name: units}`` (pre-activations with class-dependent
    means) and a 3-unit output layer, written by infoprobe's StoreWriter."""
    from infoprobe.store import StoreWriter

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    layers = [dict(name=name, kind="dense", shape=(u,), units=u, activation="relu", depth=i + 1,
                   inputs=[] if i == 0 else [list(widths)[i - 1]], is_output=False)
              for i, (name, u) in enumerate(widths.items())]
    layers.append(dict(name="out", kind="dense", shape=(3,), units=3, activation="none", depth=len(widths) + 1,
                       inputs=[list(widths)[-1]], is_output=True))
    blocks = {}
    for name, u in widths.items():
        pre = (rng.standard_normal((n, u)) + np.sin(np.arange(u)[None, :] * (y[:, None] + 1))).astype(np.float32)
        blocks[f"layers/{name}/pre"], blocks[f"layers/{name}/post"] = pre, np.maximum(pre, 0)
    out = rng.standard_normal((n, 3)).astype(np.float32)
    blocks.update({"layers/out/pre": out, "layers/out/post": out, "outputs/logits": out})
    w = StoreWriter(path, n_rows=n, layers=layers, n_outputs=3, labels=y)
    w.write(0, blocks)
    w.finish()
    w.close()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("plan") / "acts.h5", {"h1": 24, "h2": 16})


def step_clock(step: float):
    """A perf_counter that advances ``step`` seconds per call, whatever the machine does."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


def test_the_plan_and_tables_do_not_depend_on_the_clock(store, monkeypatch):
    import time

    from infoprobe.analyses.synergy import synergy

    runs = {}
    for name, clock in (("real", None), ("slow", step_clock(1e3)), ("fast", step_clock(1e-4))):
        if clock is not None:               # every timing 10^3 s, or 10^-4 s: absurd throughputs
            monkeypatch.setattr(time, "perf_counter", clock)
        runs[name] = synergy(store, max_size=6, budget=0.01, progress=False, threads=1)
        monkeypatch.undo()
    sizes = {name: r.meta["parameters"]["exhaustive_sizes"] for name, r in runs.items()}
    assert sizes["real"] == sizes["slow"] == sizes["fast"] == {"h1": 4, "h2": 5}     # within 2..6, not at an end
    for name in ("slow", "fast"):
        assert runs[name].rows == runs["real"].rows and runs[name].profiles == runs["real"].profiles
        assert runs[name].meta["estimate"]["cost_model"] == runs["real"].meta["estimate"]["cost_model"]
        assert [{k: v for k, v in r.items() if k != "actual"} for r in runs[name].meta["estimate"]["layers"]] == \
            [{k: v for k, v in r.items() if k != "actual"} for r in runs["real"].meta["estimate"]["layers"]]


def hand_seconds(n: int, e: int, groups: int, max_size: int, threads: int = 1) -> float:
    """The default cost model's seconds for one search, written out: every multiplet of 2..e
    units costs a + G (b + c k^2) (leaf constants on the last level), shared by the threads,
    then two greedy steps per larger size over n - k + 1 candidates each."""
    (la, lb, lc), (ia, ib, ic), step = oinfo.LEAF_COST, oinfo.INNER_COST, oinfo.STEP_COST
    s = sum(comb(n, k) * ((la + groups * (lb + lc * k * k)) if k == e else (ia + groups * (ib + ic * k * k)))
            for k in range(2, e + 1)) / threads
    return s + 2 * sum(step + (n - k + 1) * (ia + groups * (ib + ic * k * k)) for k in range(e + 1, max_size + 1))


def test_the_size_from_the_cost_model_matches_a_hand_computation(tmp_path):
    from infoprobe.analyses.synergy import synergy_estimate

    path = write_store(tmp_path / "one.h5", {"h": 60}, n=300, classes=5)     # exact labels: G = 1 + 5
    t = {e: hand_seconds(60, e, 6, 8) for e in range(2, 9)}
    assert t[3] < 0.05 < t[4]                          # 0.05 s: up to 3; the next size would exceed it
    for budget in (1e-4, 0.05, t[4] * 1.0001, t[5] * 0.999, 600.0):
        want = max([e for e in range(2, 9) if t[e] <= budget], default=2)
        est = synergy_estimate(path, max_size=8, budget=budget)
        assert est.sizes == {"h": want}, budget
        row = est.rows[0]
        assert row["seconds"] == pytest.approx(t[want], rel=1e-12)
        if want < 8 and t[want] <= budget:
            assert row["reason"] == "budget" and row["next_s"] == pytest.approx(t[want + 1], rel=1e-12)
            line = next(line for line in est.lines() if line.split()[:1] == ["h"])
            assert f"({want + 1} would take" in line and "over the layer's share" in line
    assert est.cost["groups"] == 6 and est.cost["threads"] == 1
    assert est.cost["leaf"] == list(oinfo.LEAF_COST) and est.cost["source"] == "benchmarks/oinfo_cost.py"
    # threads given: the exhaustive levels of a threaded search are shared by them
    t4 = {e: hand_seconds(60, e, 6, 8, threads=4) for e in (4, 5)}
    assert t4[4] < t[4] / 3 and t4[5] > 0.05
    assert synergy_estimate(path, max_size=8, budget=t4[4] * 1.0001, threads=4).sizes == {"h": 4}


def test_the_recorded_plan_replays_exactly(store, tmp_path):
    from infoprobe.analyses.synergy import recorded_sizes, synergy
    from infoprobe.cli.main import cli

    first = synergy(store, max_size=6, budget=0.01, progress=False)
    first.save(tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "synergy.json").read_text())
    assert doc["meta"]["estimate"]["cost_model"] == CostModel().for_search(labels="exact", classes=3).to_dict()
    assert [r["reason"] for r in doc["meta"]["estimate"]["layers"]] == ["budget", "budget"]
    sizes = recorded_sizes(tmp_path / "a" / "synergy.json")
    assert sizes == {"h1": 4, "h2": 5}
    # an absurd cost model and budget: the recorded sizes are searched as they are
    again = synergy(store, max_size=6, exhaustive_up_to=sizes, budget=1e-9, throughput=CostModel.flat(1e-3),
                    progress=False)
    assert again.rows == first.rows and again.meta["parameters"]["exhaustive_sizes"] == sizes
    # the command line replays a synergy.json, and takes sizes per layer
    for arg, out in ((str(tmp_path / "a" / "synergy.json"), "b"), ("h1=4,h2=5", "c")):
        r = CliRunner().invoke(cli, ["synergy", str(store), "--out", str(tmp_path / out), "--max-size", "6",
                                     "--budget", "1e-9", "--exhaustive-up-to", arg, "--no-progress", "--no-plot"])
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / out / "synergy.json").read_text())["rows"] == doc["rows"]
    bad = CliRunner().invoke(cli, ["synergy", str(store), "--exhaustive-up-to", str(tmp_path / "nothing.json")])
    assert bad.exit_code == 2 and "synergy.json" in bad.output


def test_a_wide_layer_over_the_memory_budget_is_refused_before_any_read(tmp_path, monkeypatch):
    import tracemalloc

    from infoprobe.analyses.synergy import synergy
    from infoprobe.cli.main import cli
    from infoprobe.store import Store

    # 1,500 units, 3 classes: 4 covariance sums and a block's product, 5 x 1,500^2 x 8 bytes = 85.8 MiB,
    # over the 64 MiB budget less a quarter (a block of samples) and 2 x 4.6 MiB (activations, copula values)
    path = write_store(tmp_path / "wide.h5", {"wide": 1500}, n=400)
    r = CliRunner().invoke(cli, ["synergy", str(path), "--out", str(tmp_path / "r"), "--max-memory", "64M",
                                 "--no-progress"])
    assert r.exit_code == 2
    msg = r.output.strip()
    assert len(msg.splitlines()) == 1 and "layer 'wide'" in msg and "1,500 units" in msg
    assert "the 4 covariance sums of 1,500 variables take 85.8 MiB, more than the 38.8 MiB" in msg
    assert "--max-memory" in msg and "--layers" in msg and "64.0 MiB" in msg

    def no_reading(*a, **k):
        raise AssertionError("activations read before the memory check")

    monkeypatch.setattr(Store, "iter_rows", no_reading)
    tracemalloc.start()
    try:
        with budgets(memory="64M"), pytest.raises(BudgetError, match="--layers"):
            synergy(path, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20                 # the labels, not the 4.6 MiB of activations


def test_samples_over_the_budget_are_refused_and_a_subset_fits(tmp_path):
    from infoprobe.analyses.synergy import synergy

    path = write_store(tmp_path / "long.h5", {"h": 4}, n=6000, classes=2)
    # one unit's copula: 6,000 x 8 x 6 bytes = 281 KiB, over a quarter of 1 MiB
    with budgets(memory="1M"), pytest.raises(BudgetError, match=r"6,000 samples take 281\.2 KiB.*--max-samples"):
        synergy(path, max_size=3, progress=False)
    with budgets(memory="1M"):
        res = synergy(path, max_size=3, max_samples=4000, seed=5, progress=False)
    rows = np.sort(np.random.default_rng(5).choice(6000, 4000, replace=False))
    with h5py.File(path) as f:
        x, y = f["layers/h/pre"][()][rows].astype(np.float64), f["samples/labels"][()][rows]
    ref = search_multiplets(copula_model(x, y), max_size=3,
                            exhaustive_up_to=res.meta["parameters"]["exhaustive_sizes"]["h"])
    assert [(r["size"], r["direction"], r["units"]) for r in res.rows] == \
        [(r["size"], r["direction"], r["units"]) for r in ref]
    np.testing.assert_allclose([r["omega"] for r in res.rows], [r["omega"] for r in ref], rtol=1e-10)


def test_a_wide_layer_within_the_budget_stays_within_it(tmp_path):
    """600 units and 200 samples under --max-memory 64M: the run's peak of traced allocations
    stays under 64 MiB (a timed probe of the search built 19,418 x 599 float64 draws and their
    argsort, about 280 MiB), and finds the multiplets of a search on the whole layer."""
    path = write_store(tmp_path / "w.h5", {"wide": 600}, n=200, classes=2)
    script = textwrap.dedent(f"""
        import tracemalloc
        from infoprobe.cli.main import cli
        tracemalloc.start()
        try:
            cli.main(["synergy", {str(path)!r}, "--out", {str(tmp_path / "out")!r}, "--max-memory", "64M",
                      "--max-size", "3", "--budget", "1", "--threads", "1", "--no-progress", "--no-plot"],
                     standalone_mode=False)
        finally:
            print("PEAK", tracemalloc.get_traced_memory()[1])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    peak = int(res.stdout.split("PEAK")[-1])
    assert peak < 64 << 20, peak
    doc = json.loads((tmp_path / "out" / "synergy.json").read_text())
    with h5py.File(path) as f:
        x, y = f["layers/wide/pre"][()].astype(np.float64), f["samples/labels"][()]
    ref = search_multiplets(copula_model(x, y), max_size=3,
                            exhaustive_up_to=doc["meta"]["parameters"]["exhaustive_sizes"]["wide"])
    assert [(r["size"], r["direction"], r["units"]) for r in doc["rows"]] == \
        [(r["size"], r["direction"], r["units"]) for r in ref]
    np.testing.assert_allclose([r["omega"] for r in doc["rows"]], [r["omega"] for r in ref], rtol=1e-10)


def test_multiplets_are_capped_at_what_the_smallest_class_can_estimate(tmp_path):
    """75 samples over 9 classes (8 or 9 each): class covariances of more than 7 variables are
    singular, so the search stops at the smallest class's size minus one, and says so; with
    ordinal labels (one covariance over every sample) it is not capped."""
    from infoprobe.analyses.synergy import synergy
    from infoprobe.errors import DataError

    path = write_store(tmp_path / "few.h5", {"h": 12}, n=75, classes=9, seed=3)
    with h5py.File(path) as f:
        smallest = int(np.bincount(f["samples/labels"][:]).min())
    with pytest.warns(UserWarning, match=f"at most {smallest - 1} units, not 10"):
        res = synergy(path, max_size=10, exhaustive_up_to=2, progress=False)
    assert max(r["size"] for r in res.rows) == smallest - 1
    assert max(r["size"] for r in synergy(path, max_size=10, exhaustive_up_to=2, labels="ordinal",
                                          progress=False).rows) == 10
    tiny = write_store(tmp_path / "tiny.h5", {"h": 6}, n=20, classes=9, seed=1)
    with pytest.raises(DataError, match="too few samples.*--labels ordinal"):
        synergy(tiny, max_size=4, exhaustive_up_to=2, progress=False)
