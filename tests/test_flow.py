"""Information flow (Goldfeld et al., ICML 2019): Gaussian-mixture entropy by Monte Carlo,
the sample-propagation estimator on the Section 4 toy, binned entropies, distances, noise."""
from __future__ import annotations

import glob
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import integrate, stats

from conftest import FIX, initializers
from infoprobe.analyses import flow as flow_mod
from infoprobe.analyses.flow import PARTIAL_DIR, _pairwise_histograms, flow_series, information_flow
from infoprobe.data import load_data
from infoprobe.errors import ConfigError
from infoprobe.estimators.mixture import binned_entropy, gaussian_entropy_isotropic, mixture_entropy
from infoprobe.model import load_model
from infoprobe.runner import Runner


def _mixture_entropy_1d(centres, beta):
    """-int p log p of the 1-d mixture by adaptive quadrature (an independent reference)."""
    f = lambda t: np.mean(stats.norm.pdf(t, centres, beta))  # noqa: E731
    lo, hi = min(centres) - 10 * beta, max(centres) + 10 * beta
    return integrate.quad(lambda t: -f(t) * np.log(f(t)) if f(t) > 0 else 0.0, lo, hi,
                          points=sorted(centres), limit=500)[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixture_entropy_matches_quadrature_in_one_dimension(dtype):
    c = np.array([-1.0, 0.2, 0.5, 3.0])
    h, se = mixture_entropy(c[:, None], 0.3, n_mc=100_000, seed=1, dtype=dtype)
    ref = _mixture_entropy_1d(c, 0.3)
    assert abs(h - ref) < 4 * se + 1e-4 and se < 0.01


def test_mixture_entropy_matches_a_grid_integral_in_two_dimensions():
    rng = np.random.default_rng(2)
    c, beta = rng.normal(size=(6, 2)), 0.4
    g = np.linspace(-5, 5, 801)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    dens = np.mean([stats.multivariate_normal.pdf(np.dstack([xx, yy]), m, beta ** 2) for m in c], axis=0)
    ref = -integrate.trapezoid(integrate.trapezoid(dens * np.log(np.maximum(dens, 1e-300)), g, axis=1), g)
    h, se = mixture_entropy(c, beta, n_mc=200_000, seed=3)
    assert abs(h - ref) < 4 * se + 1e-3


def test_mixture_entropy_limits_coincident_and_far_apart_centres():
    h, se = mixture_entropy(np.full((30, 4), 0.7), 0.05, n_mc=20_000)
    # all draws are exactly Gaussian: the estimate is the Gaussian entropy up to MC error
    assert abs(h - gaussian_entropy_isotropic(4, 0.05)) < 4 * se
    far = np.arange(8)[:, None] * np.array([[100.0, -50.0]])
    h, se = mixture_entropy(far, 0.1, n_mc=20_000)
    assert abs(h - (math.log(8) + gaussian_entropy_isotropic(2, 0.1))) < 4 * se + 1e-9
    # a batch of mixtures gives each one's entropy
    far4 = np.arange(30)[:, None] * np.array([[100.0, -50.0, 30.0, 10.0]])
    hb, seb = mixture_entropy(np.stack([np.full((30, 4), 0.7), far4]), 0.05, n_mc=20_000)
    want = np.array([0.0, math.log(30)]) + gaussian_entropy_isotropic(4, 0.05)
    assert np.all(np.abs(hb - want) < 4 * seb + 1e-9)
    with pytest.raises(ConfigError):
        mixture_entropy(far, 0.0)


def test_binned_entropy_matches_a_direct_count():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(500, 3)) * [1, 0.2, 3]
    size = 0.5
    counts = {}
    for row in t:
        key = tuple(math.floor(v / size) for v in row)
        counts[key] = counts.get(key, 0) + 1
    p = np.array(list(counts.values())) / len(t)
    assert binned_entropy(t, size) == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-12)
    for j in range(3):
        cj = {}
        for v in t[:, j]:
            cj[math.floor(v / size)] = cj.get(math.floor(v / size), 0) + 1
        q = np.array(list(cj.values())) / len(t)
        assert binned_entropy(t, size, per_unit=True)[j] == pytest.approx(-(q * np.log2(q)).sum(), abs=1e-12)


def test_noise_inputs_make_the_noisy_network():
    lm = load_model(FIX / "szt_e2000.onnx")
    r = Runner(lm, expose=True, noise=True)
    x = load_data(FIX / "szt_12bit.npz").x[:50]
    feeds = r.noise_feeds(np.random.default_rng(0), len(x), 0.1)
    assert set(feeds) == {f"fc{i}:noise" for i in range(1, 6)}      # every hidden layer, not the output
    out = r.run(x, feeds=feeds)
    w = initializers(FIX / "szt_e2000.onnx")
    t = x.astype(np.float64)
    for i in range(1, 7):
        s = t @ w[f"fc{i}.weight"].T + w[f"fc{i}.bias"]
        if i < 6:
            s = np.tanh(s)
            np.testing.assert_allclose(out[f"fc{i}:post"], s, atol=1e-5)          # S_l, before the noise
            t = s + feeds[f"fc{i}:noise"]
        else:
            np.testing.assert_allclose(out["logits"], s, atol=1e-4)
    assert r.noise_feeds(np.random.default_rng(0), 5, 0.0) == {}


def _toy(k):
    return FIX / f"toy_tanh_k{k:06d}.onnx"


@pytest.mark.parametrize("k", [1247, 300000])
def test_sample_propagation_on_the_section_4_toy_matches_numerical_integration(k):
    """With the 4 inputs equally likely, I(X;T) = I(S;S+Z) for the 4-point constellation
    S = tanh(w x + b): h of the mixture by quadrature minus h(Z)."""
    d = load_data(FIX / "toy_tanh.npz")
    res = information_flow(_toy(k), d, beta=0.01, n_mc=100_000, unit="nats", progress=False)
    w = initializers(_toy(k))
    s = np.tanh(d.x[:, 0].astype(np.float64) * w["fc1.weight"][0, 0] + w["fc1.bias"][0])
    ref = _mixture_entropy_1d(s, 0.01) - 0.5 * math.log(2 * math.pi * math.e * 0.01 ** 2)
    row = res.layers[0]
    assert row["conditional"] == "closed form"
    assert abs(row["mi"] - ref) < 4 * row["mi_se"] + 1e-4
    # bits are nats / ln 2
    bits = information_flow(_toy(k), d, beta=0.01, n_mc=100_000, progress=False).layers[0]
    assert bits["mi"] == pytest.approx(row["mi"] / math.log(2), rel=1e-9)


def test_first_layer_closed_form_agrees_with_the_sampled_conditional_entropy():
    d = load_data(FIX / "szt_12bit.npz", limit=64)
    kw = dict(beta=0.05, n_samples=20, n_mc=2000, n_mc_conditional=300, layers=["fc1", "fc2"], progress=False)
    closed = information_flow(FIX / "szt_e0400.onnx", d, **kw)
    sampled = information_flow(FIX / "szt_e0400.onnx", d, closed_form_first=False, **kw)
    c, s = closed.layers[0], sampled.layers[0]
    assert c["conditional"] == "closed form" and s["conditional"] == "sampled"
    assert c["h_t_given_x"] == pytest.approx(gaussian_entropy_isotropic(10, 0.05) / math.log(2))
    assert abs(s["h_t_given_x"] - c["h_t_given_x"]) < 4 * s["h_t_given_x_se"]
    # deeper layers are always sampled, and I(X;T) <= H(X) = log2(64) up to MC error
    assert sampled.layers[1]["conditional"] == "sampled"
    assert all(r["mi"] <= 6 + 4 * r["mi_se"] for r in closed.layers)


def test_pairwise_histograms_count_within_and_between_class_pairs():
    rng = np.random.default_rng(5)
    t = rng.normal(size=(40, 3))
    y = rng.integers(0, 3, 40)
    rows = _pairwise_histograms(t, y, "L", max_points=100, bins=10, rng=rng)
    within = sum(1 for i in range(40) for j in range(i + 1, 40) if y[i] == y[j])
    by = {r["kind"]: r for r in rows}
    assert by["within"]["pairs"] == within and by["between"]["pairs"] == 40 * 39 // 2 - within
    width = rows[0]["hi"] - rows[0]["lo"]
    assert sum(r["density"] for r in rows if r["kind"] == "within") * width == pytest.approx(1.0)
    dmax = max(np.linalg.norm(t[i] - t[j]) for i in range(40) for j in range(i + 1, 40))
    assert max(r["hi"] for r in rows) == pytest.approx(dmax)


def test_checkpoint_trends_are_least_squares_slopes():
    d = load_data(FIX / "szt_12bit.npz", limit=200)
    models = [FIX / f"szt_e{e:04d}.onnx" for e in (10, 150, 2000)]
    s = flow_series(models, d, epochs=[10, 150, 2000], beta=0.0, progress=False)
    assert [r["epoch"] for r in s.trajectory if r["layer"] == "fc1"] == [10, 150, 2000]
    assert all(r["mi"] is None for r in s.trajectory)
    ent = np.array([[u["binned_entropy"] for u in res.units if u["layer"] == "fc3"] for res in s.results])
    for trend in (t for t in s.unit_trends if t["layer"] == "fc3"):
        want = stats.linregress([10, 150, 2000], ent[:, trend["unit"]]).slope
        assert trend["slope"] == pytest.approx(want, abs=1e-12)
    with pytest.raises(ConfigError):
        flow_series(models, d, epochs=[1, 2], beta=0.0, progress=False)
    with pytest.raises(ConfigError, match="n_samples"):
        information_flow(models[0], d, beta=0.1, n_samples=1, progress=False)


def test_cli_checkpoints_and_deterministic_note(tmp_path):
    from infoprobe.cli.main import cli

    toys = sorted(glob.glob(str(FIX / "toy_tanh_k*.onnx")))[::6]
    r = CliRunner().invoke(cli, ["flow", "--checkpoints", *toys, "--data", str(FIX / "toy_tanh.npz"), "--beta", "0.01",
                                 "--mc", "5000", "--out", str(tmp_path / "f"), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    table = json.loads((tmp_path / "f" / "flow.json").read_text())["rows"]
    assert [x["mi"] for x in doc["trajectory"]] == [x["mi"] for x in table] and len(table) == len(toys)
    assert (tmp_path / "f" / "flow.png").stat().st_size > 0 and (tmp_path / "f" / "distances.png").exists()
    r = CliRunner().invoke(cli, ["flow", str(FIX / "szt_e0050.onnx"), "--data", str(FIX / "szt_12bit.npz"),
                                 "--beta", "0", "--out", str(tmp_path / "g"), "--no-progress"])
    assert r.exit_code == 0 and "does not depend on the weights" in r.output
    table = json.loads((tmp_path / "g" / "flow.json").read_text())["rows"]
    assert all(x["mi"] is None for x in table) and len(table) == 5
    r = CliRunner().invoke(cli, ["flow", *toys[:2], "--data", str(FIX / "toy_tanh.npz"), "--beta", "0.01",
                                 "--out", str(tmp_path / "h")])
    assert r.exit_code == 2


RESUME_TOYS = [_toy(k) for k in (0, 27, 2157)]
#: Small but complete: sampled conditional entropies (closed_form_first=False) use the seed stream.
RESUME_KW = dict(beta=0.05, n_samples=6, n_mc=3000, n_mc_conditional=100, closed_form_first=False, seed=3)


class _Interrupted(Exception):
    pass


def _counting(monkeypatch, fail_on=None, error=_Interrupted):
    """Replace information_flow by a wrapper that records the models it computes and raises
    ``error`` when it reaches ``fail_on``."""
    computed = []

    def wrapper(model, data, **kw):
        path = str(getattr(model, "path", model))        # the command line passes LoadedModels
        if fail_on is not None and path == str(fail_on):
            raise error(path)
        computed.append(path)
        return information_flow(model, data, **kw)

    monkeypatch.setattr(flow_mod, "information_flow", wrapper)
    return computed


def _same_series(a, b):
    assert a.trajectory == b.trajectory
    assert a.unit_trends == b.unit_trends and a.trend_summary == b.trend_summary
    assert [r.units for r in a.results] == [r.units for r in b.results]
    assert [r.distances for r in a.results] == [r.distances for r in b.results]


def test_interrupted_series_resumes_with_identical_numbers(tmp_path, monkeypatch):
    d = load_data(FIX / "toy_tanh.npz")
    part = tmp_path / PARTIAL_DIR
    full = flow_series(RESUME_TOYS, d, progress=False, **RESUME_KW)
    assert not part.exists()                                  # nothing written without resume_dir
    assert full.trajectory[0]["conditional"] == "sampled"
    # interrupted while computing the second checkpoint: the first is on disk
    computed = _counting(monkeypatch, fail_on=RESUME_TOYS[1])
    with pytest.raises(_Interrupted):
        flow_series(RESUME_TOYS, d, progress=False, resume_dir=part, **RESUME_KW)
    assert computed == [str(RESUME_TOYS[0])]
    files = sorted(f.name for f in part.iterdir())
    sha = load_model(RESUME_TOYS[0]).sha256
    assert files == [f"0000-{sha[:16]}.json"]
    doc = json.loads((part / files[0]).read_text())
    fp = doc["fingerprint"]
    assert fp["model_sha256"] == sha and fp["data_sha256"] == d.sha256 and fp["data_split"] == "all"
    assert fp["index"] == 0 and fp["epoch"] == 0
    assert {k: fp["parameters"][k] for k in RESUME_KW} == RESUME_KW
    # the rerun reads the first checkpoint and computes only the others
    computed = _counting(monkeypatch)
    lines = []
    resumed = flow_series(RESUME_TOYS, d, progress=False, resume_dir=part, notify=lines.append, **RESUME_KW)
    assert computed == [str(m) for m in RESUME_TOYS[1:]]
    assert lines == [f"resuming: 1 of 3 checkpoints already done in {part}"]
    _same_series(resumed, full)
    assert len(list(part.glob("*.json"))) == 3
    # everything on disk now: nothing is computed
    computed = _counting(monkeypatch)
    again = flow_series(RESUME_TOYS, d, progress=False, resume_dir=part, **RESUME_KW)
    assert computed == []
    _same_series(again, full)


def test_resume_files_of_other_parameters_are_recomputed(tmp_path, monkeypatch):
    d = load_data(FIX / "toy_tanh.npz")
    part = tmp_path / PARTIAL_DIR
    flow_series(RESUME_TOYS, d, progress=False, resume_dir=part, **RESUME_KW)
    names = sorted(f.name for f in part.iterdir())
    changed = [dict(RESUME_KW, beta=0.08), dict(RESUME_KW, n_mc=3001), dict(RESUME_KW, seed=4),
               dict(RESUME_KW, max_points=3)]
    for kw in changed:
        computed = _counting(monkeypatch)
        lines = []
        s = flow_series(RESUME_TOYS, d, progress=False, resume_dir=part, notify=lines.append, **kw)
        assert computed == [str(m) for m in RESUME_TOYS] and lines == [], kw
        assert sorted(f.name for f in part.iterdir()) == names                      # overwritten
        assert json.loads((part / names[0]).read_text())["fingerprint"]["parameters"]["beta"] == kw["beta"]
        _same_series(s, flow_series(RESUME_TOYS, d, progress=False, **kw))
    # other data (a subset), other epochs, a checkpoint at another position, a damaged file
    computed = _counting(monkeypatch)
    flow_series(RESUME_TOYS, load_data(FIX / "toy_tanh.npz", limit=3), progress=False, resume_dir=part, **RESUME_KW)
    assert len(computed) == 3
    flow_series(RESUME_TOYS, d, progress=False, resume_dir=part, **RESUME_KW)
    computed.clear()
    flow_series(RESUME_TOYS, d, epochs=[1, 5, 9], progress=False, resume_dir=part, **RESUME_KW)
    assert len(computed) == 3
    computed.clear()
    flow_series(RESUME_TOYS[::-1], d, epochs=[1, 5, 9], progress=False, resume_dir=part, **RESUME_KW)
    assert computed == [str(RESUME_TOYS[2]), str(RESUME_TOYS[0])]   # the middle one kept its position
    computed.clear()
    first = part / f"0000-{load_model(RESUME_TOYS[2]).sha256[:16]}.json"
    first.write_text(first.read_text()[:100])
    flow_series(RESUME_TOYS[::-1], d, epochs=[1, 5, 9], progress=False, resume_dir=part, **RESUME_KW)
    assert computed == [str(RESUME_TOYS[2])]


def test_cli_flow_resumes_and_removes_the_partial_folder(tmp_path, monkeypatch):
    from infoprobe.cli.main import cli

    toys = [str(m) for m in RESUME_TOYS]
    args = ["flow", "--checkpoints", *toys, "--data", str(FIX / "toy_tanh.npz"), "--beta", "0.05", "--samples", "6",
            "--mc", "3000", "--mc-conditional", "100", "--seed", "3", "--no-plot", "--no-progress"]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "ref")])
    assert r.exit_code == 0, r.output
    assert "resuming" not in r.output and not (tmp_path / "ref" / PARTIAL_DIR).exists()
    out = tmp_path / "f"
    computed = _counting(monkeypatch, fail_on=toys[2], error=KeyboardInterrupt)      # Ctrl-C in the third
    r = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert r.exit_code == 130 and computed == toys[:2]
    assert f"2 finished checkpoints kept in {out / PARTIAL_DIR}" in r.output
    assert len(list((out / PARTIAL_DIR).glob("*.json"))) == 2 and not (out / "flow.json").exists()
    computed = _counting(monkeypatch)
    r = CliRunner().invoke(cli, [*args[:-1], "--progress", "--out", str(out)])   # announced with the bars
    assert r.exit_code == 0, r.output
    assert computed == toys[2:]
    assert f"resuming: 2 of 3 checkpoints already done in {out / PARTIAL_DIR}" in r.output
    assert not (out / PARTIAL_DIR).exists()
    for table in ("flow", "units", "distances", "unit_trends", "trend_summary"):
        assert ((out / f"{table}.csv").read_text() == (tmp_path / "ref" / f"{table}.csv").read_text()), table
    # existing results are refused before any work is done
    computed = _counting(monkeypatch)
    r = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output and computed == []


@pytest.mark.gpu
def test_mixture_entropy_on_cuda_matches_cpu(cupy):
    c = np.random.default_rng(6).normal(size=(200, 5))
    a = mixture_entropy(c, 0.2, n_mc=5000, seed=7)
    b = mixture_entropy(cupy.asarray(c), 0.2, n_mc=5000, seed=7)
    assert a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == pytest.approx(b[1], rel=1e-3)


def test_runs_of_one_configuration_give_each_runs_tables_and_their_spread(tmp_path):
    """Each run's folder holds its own series; flow_summary's mean, sd and interval equal
    NumPy and SciPy over the runs; runs of unequal length are refused."""
    from scipy import stats as st

    from infoprobe.analyses.flow import flow_study

    d = load_data(FIX / "toy_tanh.npz")
    runs = [[_toy(k) for k in (0, 27, 2157)], [_toy(k) for k in (1, 46, 3733)], [_toy(k) for k in (2, 80, 6459)]]
    study = flow_study(sum(runs, []), d, tmp_path, runs=3, progress=False, plot=False, **RESUME_KW)
    singles = [flow_series(r, d, progress=False, **RESUME_KW) for r in runs]
    assert [s.trajectory for s in study.runs] == [s.trajectory for s in singles]
    per = json.loads((tmp_path / "flow_runs.json").read_text())["rows"]
    assert [r["run"] for r in per] == [i for i in range(3) for _ in singles[i].trajectory]
    summary = json.loads((tmp_path / "flow_summary.json").read_text())["rows"]
    for g in summary:
        key = (g["checkpoint_index"], g["layer"])
        v = np.array([[r[g["measure"]] for r in s.trajectory if (r["checkpoint_index"], r["layer"]) == key]
                      for s in singles]).ravel()
        assert g["n"] == 3 and g["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert g["std"] == pytest.approx(v.std(ddof=1), rel=1e-12)
        half = st.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
        assert g["ci_high"] - g["mean"] == pytest.approx(half, rel=1e-9, abs=1e-15)
    assert {g["measure"] for g in summary} == {"mi", "binned_entropy"}
    # each run's steps come from its file names; they differ between runs, so the spread is
    # taken per checkpoint index and names no step
    assert [r["step"] for r in singles[1].trajectory] == [1, 46, 3733] and "step" not in summary[0]
    for i in range(3):
        assert json.loads((tmp_path / f"run{i}" / "flow.json").read_text())["rows"] == \
            json.loads(json.dumps(singles[i].trajectory))
    with pytest.raises(ConfigError, match="cannot be split into 2 runs"):
        flow_study(sum(runs, []), d, tmp_path / "bad", runs=2, progress=False, plot=False, **RESUME_KW)
