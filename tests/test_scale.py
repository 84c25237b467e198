"""Estimators over stores larger than memory: the copula transform a block of units at a time
(spilled to a scratch file), covariances a block of samples at a time, and ``importance``,
``synergy`` and ``frivolous`` run on a store three times larger than the address space they
are given (``prlimit --as``), with the numbers of an unlimited run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import FIX
from infoprobe.data import load_data
from infoprobe.estimators.oinfo import copula_model, search_multiplets
from infoprobe.limits import budgets


def _layer(rng, n, u, y):
    """Activations with label-dependent means, ReLU units that are 0 on whole classes, and a
    constant unit."""
    x = rng.standard_normal((n, u)) + 0.8 * np.sin(np.arange(u)[None, :] + y[:, None])
    x[:, 1] = np.where(y == 0, 0.0, np.abs(x[:, 1]))     # constant on class 0: handled by untie
    x[:, 2] = 3.0                                         # constant everywhere: excluded
    x[:, 3] = np.round(x[:, 3])                           # ties
    return x


@pytest.mark.parametrize("labels", ["exact", "ordinal", "none"])
def test_copula_in_blocks_of_units_and_samples_equals_one_block(labels, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n, u = 3000, 40
    y = rng.integers(0, 4, n)
    x = _layer(rng, n, u, y)
    one = copula_model(x, y, labels=labels)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with budgets(memory="2M"):                 # 3 units per block; copula values spilled to disk
        from infoprobe.estimators import oinfo

        assert oinfo.rows_within(n * 8 * oinfo.COPULA_COPIES, u, share=0.25) == 3
        blocked = copula_model(x, y, labels=labels)
        with h5py.File(tmp_path / "x.h5", "w") as f:        # and read from a dataset, a block at a time
            f["x"] = x
            from_file = copula_model(f["x"], y, labels=labels)
    assert list(tmp_path.glob("infoprobe-*")) == []           # the scratch files are gone
    for m in (blocked, from_file):
        np.testing.assert_allclose(m.cov, one.cov, rtol=1e-12, atol=1e-13)
        assert np.array_equal(m.units, one.units) and np.array_equal(m.constant, [2])
        assert np.array_equal(m.class_constant, one.class_constant)
        assert np.array_equal(m.counts, one.counts)
    if labels == "exact":
        assert 1 in one.class_constant
    a = search_multiplets(one, max_size=4, exhaustive_up_to=3)
    b = search_multiplets(blocked, max_size=4, exhaustive_up_to=3)
    assert [r["units"] for r in a] == [r["units"] for r in b]
    np.testing.assert_allclose([r["omega"] for r in a], [r["omega"] for r in b], rtol=1e-10)


def test_copula_refuses_a_unit_larger_than_the_budget():
    from infoprobe.errors import BudgetError

    x = np.random.default_rng(1).standard_normal((20_000, 5))
    with budgets(memory="1M"), pytest.raises(BudgetError, match="one unit's 20,000 samples"):
        copula_model(x, labels="none")


# --- a store three times the address space -----------------------------------------------------

N, C, SIDE, U = 25_000, 16, 32, 128          # conv pre + post: 2 x 1.64 GB
LIMIT = 1024**3                              # prlimit --as: the whole process, libraries included


def _write_big_store(path):
    from infoprobe.store import StoreWriter

    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, N)
    offset = rng.standard_normal((4, C)).astype(np.float32)
    proj = rng.standard_normal((C, U)).astype(np.float32) / 4
    layers = [dict(name="conv", kind="conv", shape=(C, SIDE, SIDE), units=C, activation="relu", depth=1, inputs=[],
                   is_output=False),
              dict(name="fc", kind="dense", shape=(U,), units=U, activation="relu", depth=2, inputs=["conv"],
                   is_output=False),
              dict(name="out", kind="dense", shape=(4,), units=4, activation="none", depth=3, inputs=["fc"],
                   is_output=True)]
    w = StoreWriter(path, n_rows=N, layers=layers, n_outputs=4, labels=y)
    step = 1000
    for s in range(0, N, step):
        yb = y[s:s + step]
        pre = rng.standard_normal((len(yb), C, SIDE, SIDE), dtype=np.float32) + offset[yb][:, :, None, None]
        post = np.maximum(pre, 0)
        fc = post.mean(axis=(2, 3)) @ proj + 0.3 * rng.standard_normal((len(yb), U), dtype=np.float32)
        out = np.zeros((len(yb), 4), np.float32)
        w.write(s, {"layers/conv/pre": pre, "layers/conv/post": post, "layers/fc/pre": fc,
                    "layers/fc/post": np.maximum(fc, 0), "layers/out/pre": out, "layers/out/post": out,
                    "outputs/logits": out})
    w.finish()
    w.close()
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("prlimit") is None,
                    reason="needs Linux's prlimit")
def test_verbs_on_a_store_three_times_the_address_space(tmp_path):
    from infoprobe.analyses.frivolous import frivolous
    from infoprobe.analyses.importance import Quantizer, importance
    from infoprobe.analyses.synergy import synergy

    store = _write_big_store(tmp_path / "big.h5")
    assert store.stat().st_size > 3 * LIMIT
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", INFOPROBE_THREADS="1",
               TMPDIR=str(tmp_path), INFOPROBE_MAX_MEMORY="64M")
    runs = {"importance": ["--quantizer", "quantile", "--no-js"],
            "synergy": ["--max-size", "3", "--exhaustive-up-to", "3"],
            "frivolous": []}
    for verb, extra in runs.items():
        cmd = ["prlimit", f"--as={LIMIT}", sys.executable, "-m", "infoprobe.cli.main", verb, str(store),
               "--out", str(tmp_path / verb), "--no-plot", "--no-progress", *extra]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (verb, r.stderr[-2000:])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("infoprobe-")] == []

    # the same analyses in this process, without limits (the synergy values in memory, one block)
    def rows(verb, table):
        return json.loads((tmp_path / verb / f"{table}.json").read_text())["rows"]

    imp = importance(store, quantizer=Quantizer("quantile"), js=False, progress=False)
    got = rows("importance", "importance")
    assert len(got) == C + U
    for g, w in zip(got, imp.units):
        for key in ("entropy", "mutual_information", "kl_selectivity", "labeled_mi"):
            assert g[key] == pytest.approx(w[key], rel=1e-12, abs=1e-15), (g["layer"], g["unit"], key)

    syn = synergy(store, max_size=3, exhaustive_up_to=3, progress=False)
    got = rows("synergy", "synergy")
    assert [(r["layer"], r["size"], r["direction"], r["units"]) for r in got] == \
        [(r["layer"], r["size"], r["direction"], r["units"]) for r in syn.rows]
    np.testing.assert_allclose([r["omega"] for r in got], [r["omega"] for r in syn.rows], rtol=1e-9)
    with h5py.File(store) as f:         # and the fc search against one read by h5py, whole
        x = f["layers/fc/pre"][()].astype(np.float64)
        y = f["samples/labels"][()]
    ref = search_multiplets(copula_model(x, y), max_size=3, exhaustive_up_to=3)
    np.testing.assert_allclose([r["omega"] for r in got if r["layer"] == "fc"], [r["omega"] for r in ref],
                               rtol=1e-9)

    fri = frivolous(store, progress=False)
    got = rows("frivolous", "frivolous")
    for g, w in zip(got, fri.layers):
        assert g["non_redundant"] == w["non_redundant"] and g["rows"] == w["rows"]
        assert g["unexplained"] == pytest.approx(w["unexplained"], rel=1e-9)
        assert g["corr_mean"] == pytest.approx(w["corr_mean"], rel=1e-9)
    fc = next(g for g in got if g["layer"] == "fc")
    post = np.maximum(x, 0)
    spec = np.sort(np.linalg.eigvalsh(np.cov(post, rowvar=False, bias=True)))[::-1]
    k = fc["non_redundant"]
    assert fc["rows"] == N and spec[k:].sum() / spec.sum() == pytest.approx(fc["unexplained"], rel=1e-9)


def test_redundancy_refuses_covariance_sums_over_the_budget(tmp_path):
    """The moments of every layer are held at once: layers whose U x U sums (with the widest
    layer's pair correlations) exceed the budget are refused in one line before any sample
    is read, and fit once the budget allows."""
    from infoprobe.analyses.frivolous import redundancy
    from infoprobe.errors import BudgetError

    data = load_data(FIX / "mnist_demo.npz", split="test", limit=50)
    with budgets(memory="150K"), pytest.raises(BudgetError, match="covariance sums of 2 layers"):
        redundancy(FIX / "mlp_sigmoid.onnx", data, progress=False)
    rows, _ = redundancy(FIX / "mlp_sigmoid.onnx", data, progress=False)
    assert [r["units"] for r in rows] == [100, 100]
