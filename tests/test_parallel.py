"""Independent work on Dask (infoprobe.parallel): a two-worker LocalCluster started by the tests
gives, bit for bit, the serial run's numbers made with the workers' thread count; data travel
as the recipe that loaded them; the caller's budgets reach the workers; errors and warnings
come back as the serial run raises them; the cluster speaks TLS on 127.0.0.1 only and survives
a lost worker. Hostile and silent schedulers: tests/test_workers_security.py."""
from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest

from conftest import FIX
from infoprobe import parallel
from infoprobe.data import load_data
from infoprobe.errors import DataError

pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def cluster():
    """One two-worker LocalCluster (one thread each) for the module, used where a test says so."""
    eng = parallel.Engine("local", workers=2, threads=1)
    eng.client()
    yield eng
    eng.close()


@pytest.fixture
def one_thread(monkeypatch):
    """The serial reference under the workers' thread count (BLAS and onnxruntime)."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setenv("INFOPROBE_THREADS", "1")
    with threadpool_limits(1, user_api="blas"):
        yield


class _On:
    """Run the block on an existing engine."""

    def __init__(self, eng):
        self.eng = eng

    def __enter__(self):
        self.token = parallel._ENGINE.set(self.eng)

    def __exit__(self, *exc):
        parallel._ENGINE.reset(self.token)


def _tables(folder) -> dict:
    """Every JSON table under ``folder`` without its creation time and timings."""
    out = {}
    for p in sorted(folder.rglob("*.json")):
        doc = json.loads(p.read_text())
        doc.pop("meta", None)
        out[str(p.relative_to(folder))] = doc
    return out


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN (as JSON text)."""
    return json.dumps(a, sort_keys=True, default=float) == json.dumps(b, sort_keys=True, default=float)


def _task_budget():
    from infoprobe.limits import max_memory

    return max_memory()


def _task_fails(kind):
    if kind == "data":
        raise DataError("task 1 cannot read its file")
    warnings.warn("a task's own warning")
    return kind


def test_width_sweep_on_two_workers_equals_the_serial_sweep(cluster, one_thread, tmp_path):
    from infoprobe.analyses.frivolous.family import frivolous_family

    data = load_data(FIX / "synthetic_10d.npz", split="test", limit=300)
    models = [FIX / f"synth_mlp_w{w}.onnx" for w in ("0.25", "0.5", "1")] + \
        [FIX / f"synth_rep_w{w}_s1.onnx" for w in ("0.25", "0.5", "1")]
    kw = dict(sweep=True, n_permutations=1, fractions=[0, 0.25, 0.5], plot=False, progress=False, seed=4)
    serial = frivolous_family(models, data, out=tmp_path / "serial", **kw)
    with _On(cluster):
        dist = frivolous_family(models, data, out=tmp_path / "dask", **kw)
    assert _tables(tmp_path / "serial") == _tables(tmp_path / "dask")
    assert [r.layers for r in serial.results] == [r.layers for r in dist.results]
    assert len(serial.sweep.across) > 0


def test_flow_checkpoints_and_replicate_ablation_on_two_workers(cluster, one_thread):
    from infoprobe.analyses.ablation import cumulative_ablation, replicate_ablation
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.flow import flow_series

    toy = load_data(FIX / "toy_tanh.npz")
    models = [FIX / f"toy_tanh_k{k:06d}.onnx" for k in (0, 27, 2157)]
    kw = dict(beta=0.05, n_samples=6, n_mc=3000, n_mc_conditional=100, closed_form_first=False, seed=3,
              progress=False)
    serial = flow_series(models, toy, **kw)
    with _On(cluster):
        dist = flow_series(models, toy, **kw)
    assert serial.trajectory == dist.trajectory and serial.unit_trends == dist.unit_trends

    val = load_data(FIX / "mnist_demo.npz", split="validation", limit=200)
    test = load_data(FIX / "mnist_demo.npz", split="test", limit=200)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        pairs = [(FIX / f"{n}.onnx", capture(FIX / f"{n}.onnx", val, Path(d) / f"{n}.h5", progress=False))
                 for n in ("mlp_sigmoid", "mlp_sigmoid_s2")]
        akw = dict(n_steps=3, random_repeats=1, values=("mean",), progress=False)
        serial = replicate_ablation(pairs, test, **akw)
        with _On(cluster):
            dist = replicate_ablation(pairs, test, **akw)
        assert serial.rows == dist.rows and serial.replicate_rows == dist.replicate_rows
        # and each network's rows are its own single run's
        assert [r for r in dist.replicate_rows if r["replicate"] == 1] == \
            [dict({"replicate": 1, "model": str(pairs[1][0])}, **r)
             for r in cumulative_ablation(*pairs[1], test, **akw).rows]


def test_synergy_and_modules_of_several_networks_on_two_workers(cluster, one_thread, tmp_path):
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.modules.family import modules_family
    from infoprobe.analyses.synergy import synergy

    val = load_data(FIX / "mnist_demo.npz", split="validation", limit=300)
    stores = [capture(FIX / f"{n}.onnx", val, tmp_path / f"{n}.h5", progress=False)
              for n in ("mlp_relu", "mlp_relu_s2", "mlp_relu_s3")]
    kw = dict(max_size=4, exhaustive_up_to=3, progress=False)
    serial = synergy(stores, **kw)
    with _On(cluster):
        dist = synergy(stores, **kw)
    assert serial.rows == dist.rows and serial.profiles == dist.profiles
    assert {p["networks"] for p in dist.profiles} == {3}

    test = load_data(FIX / "mnist_demo.npz", split="test", limit=200)
    models = [FIX / "mlp_relu.onnx", FIX / "mlp_relu_s2.onnx"]
    mkw = dict(n_clusters=4, n_random=3, n_shuffles=3, n_double=0, plot=False, progress=False, seed=1)
    a = modules_family(models, test, out=tmp_path / "m_serial", **mkw)
    with _On(cluster):
        b = modules_family(models, test, out=tmp_path / "m_dask", **mkw)
    assert _same(a.table, b.table) and _same(a.across, b.across)
    assert _tables(tmp_path / "m_serial") == _tables(tmp_path / "m_dask")


def test_data_travel_as_their_recipe_and_budgets_reach_the_workers(cluster, tmp_path):
    import shutil

    from infoprobe.limits import budgets

    src = tmp_path / "d.npz"
    shutil.copy(FIX / "mnist_demo.npz", src)
    data = load_data(src, split="test", limit=500)
    blob = pickle.dumps(data)
    assert len(blob) < 1000 < data.x.nbytes                      # the recipe, not the samples
    back = pickle.loads(blob)
    assert np.array_equal(back.x, data.x) and np.array_equal(back.y, data.y) and back.split == "test"
    np.savez(src, x=np.zeros((900, 2)), y=np.zeros(900, int), split=np.full(900, 2))   # the file changes: refused
    with pytest.raises(DataError, match="changed since it was read"):
        pickle.loads(blob)

    from infoprobe.errors import ModelError
    from infoprobe.model import load_model

    shutil.copy(FIX / "mlp_relu.onnx", tmp_path / "m.onnx")       # a model travels as its load_model call
    lm = load_model(tmp_path / "m.onnx", max_bytes=10**6, select=["fc2*"])
    blob = pickle.dumps(lm)
    assert len(blob) < 1000
    back = pickle.loads(blob)
    assert len(lm.layers) < len(load_model(FIX / "mlp_relu.onnx").layers)        # --sites kept a subset
    assert back.max_bytes == 10**6 and [x.name for x in back.layers] == [x.name for x in lm.layers]
    assert back.sha256 == lm.sha256
    shutil.copy(FIX / "mlp_relu_s2.onnx", tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="changed since it was read"):
        pickle.loads(blob)

    with _On(cluster), budgets(memory="123M"):
        assert parallel.map_tasks(_task_budget, [((), {}), ((), {})]) == [123 * 1024**2] * 2


def test_task_errors_and_warnings_come_back_as_in_a_serial_run(cluster):
    with _On(cluster):
        with pytest.warns(UserWarning, match="a task's own warning"):
            assert parallel.map_tasks(_task_fails, [(("a",), {}), (("b",), {})]) == ["a", "b"]
        with pytest.raises(DataError, match="task 1 cannot read its file"):
            parallel.map_tasks(_task_fails, [(("a",), {}), (("data",), {})])
    with pytest.raises(DataError, match="task 1"):               # serial: the same error, raised directly
        parallel.map_tasks(_task_fails, [(("data",), {})])


def test_engine_refuses_what_it_cannot_use():
    """Before anything is started or contacted; an unreachable TLS scheduler is in
    tests/test_workers_security.py."""
    from infoprobe.errors import ConfigError

    with pytest.raises(ConfigError, match="workers must be at least 1"):
        with parallel.engine("local", workers=0):
            pass
    with pytest.raises(ConfigError, match="tcp:// is refused; infoprobe unpickles"):
        with parallel.engine("tcp://127.0.0.1:9", workers=1):
            pass


def _http_port(dask_worker):
    """The port of a Dask server's HTTP server (run on the workers as ``client.run``)."""
    return next(iter(dask_worker.http_server._sockets.values())).getsockname()[1]


def test_the_local_cluster_speaks_tls_on_127_0_0_1_only(cluster):
    """Its scheduler and workers listen on 127.0.0.1 with TLS and the run's own certificate:
    a plain TCP client, or one with another certificate, cannot talk to it; its HTTP
    servers serve nothing."""
    import urllib.error
    import urllib.request

    import dask
    from distributed import Client
    from distributed.security import Security

    address = cluster.client().scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    assert len(cluster.nthreads()) == 2 and all(w.startswith("tls://127.0.0.1:") for w in cluster.nthreads())
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        for target, security in ((address.replace("tls://", "tcp://"), None), (address, Security.temporary())):
            with pytest.raises(Exception):
                Client(target, security=security, timeout=2, set_as_default=False).close()
    ports = [_http_port(cluster._cluster.scheduler), *cluster.client().run(_http_port).values()]
    assert len(ports) == 3
    for port, path in zip(ports, ("/info/main/workers.html", "/health", "/metrics")):
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)


def _task_slow_square(x):
    import time

    time.sleep(0.4)
    return x * x


def test_a_lost_worker_is_survived_with_the_same_results(cluster):
    """One of the two workers killed while tasks run: the scheduler runs its tasks again on
    the other (or on its restarted self), and the results are the serial ones."""
    import signal
    import threading

    client = cluster.client()
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    timer = threading.Timer(0.6, os.kill, (victim, signal.SIGKILL))
    timer.start()
    try:
        with _On(cluster):
            assert parallel.map_tasks(_task_slow_square, [((i,), {}) for i in range(8)]) == [i * i for i in range(8)]
    finally:
        timer.cancel()
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()


def test_an_exhaustive_search_split_into_tasks_finds_the_serial_multiplets(cluster, monkeypatch):
    from infoprobe.estimators import oinfo

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 600)
    x = rng.standard_normal((600, 24)) + np.sin(np.arange(24)[None, :] * y[:, None])
    model = oinfo.copula_model(x, y)
    back = pickle.loads(pickle.dumps(model))                      # travels without its namespace
    assert np.array_equal(back.cov, model.cov) and back.xp is model.xp
    serial = oinfo.search_multiplets(model, max_size=6, exhaustive_up_to=4, keep=3, threads=1)
    monkeypatch.setattr(oinfo, "DASK_WORK", 0)                    # split even this small search
    seen = []
    with _On(cluster):
        dist = oinfo.search_multiplets(model, max_size=6, exhaustive_up_to=4, keep=3, progress=seen.append)
    assert dist == serial
    exhaustive = sum(r["evaluated"] for r in serial if r["direction"] == "synergy" and r["method"] == "exhaustive")
    greedy = sum(r["evaluated"] for r in serial if r["method"] == "greedy")
    assert sum(seen) == 24 + exhaustive + greedy                  # progress reported as the tasks finish


def test_blocks_of_ablations_and_lesions_on_workers_give_the_serial_counts(cluster, monkeypatch):
    """One network's ablation curves, prunability and lesion tests, their intervention sets
    sent to the workers in blocks, count exactly what the serial run counts."""
    from infoprobe import interventions
    from infoprobe.analyses.ablation import cumulative_ablation

    monkeypatch.setattr(interventions, "DASK_SETS", 2)            # blocks of these small runs too
    sent = []
    real = parallel.map_tasks

    def counting(fn, tasks, **kw):
        if fn is interventions._evaluate_block:
            sent.append(sum(len(a[-1]) for a, _ in tasks))
        return real(fn, tasks, **kw)

    monkeypatch.setattr(parallel, "map_tasks", counting)
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.frivolous import prunability
    from infoprobe.analyses.modules import modules
    import tempfile
    from pathlib import Path

    val = load_data(FIX / "mnist_demo.npz", split="validation", limit=200)
    test = load_data(FIX / "mnist_demo.npz", split="test", limit=300)
    with tempfile.TemporaryDirectory() as d:
        store = capture(FIX / "mlp_sigmoid.onnx", val, Path(d) / "s.h5", progress=False)
        kw = dict(n_steps=6, random_repeats=3, scopes=("layer", "network"), progress=False)
        serial = cumulative_ablation(FIX / "mlp_sigmoid.onnx", store, test, **kw)
        with _On(cluster):
            dist = cumulative_ablation(FIX / "mlp_sigmoid.onnx", store, test, **kw)
    assert serial.rows == dist.rows and len(serial.rows) > 2 * 32

    a = prunability(FIX / "mlp_sigmoid.onnx", test, n_permutations=3, progress=False)
    with _On(cluster):
        b = prunability(FIX / "mlp_sigmoid.onnx", test, n_permutations=3, progress=False)
    assert a.curves == b.curves and a.summary == b.summary

    mkw = dict(n_clusters=4, n_random=8, n_shuffles=2, n_double=0, progress=False, seed=2)
    a = modules(FIX / "mlp_relu.onnx", test, **mkw)
    with _On(cluster):
        b = modules(FIX / "mlp_relu.onnx", test, **mkw)
    assert _same(a.subclusters, b.subclusters) and _same(a.random_lesions, b.random_lesions)
    assert len(sent) >= 3 and sum(sent) > 100                     # the workers did count them


def test_a_residual_networks_ablation_blocks_on_workers(cluster, monkeypatch, tmp_path):
    """The zoo ResNet (skip connections, conv sites): its ablation curves with the intervention
    sets on the workers equal the serial curves."""
    from infoprobe import interventions
    from infoprobe.analyses.ablation import cumulative_ablation
    from infoprobe.analyses.capture import capture

    monkeypatch.setattr(interventions, "DASK_SETS", 2)
    val = load_data(FIX / "mnist_demo.npz", split="validation", limit=150)
    test = load_data(FIX / "mnist_demo.npz", split="test", limit=150)
    store = capture(FIX / "zoo_resnet.onnx", val, tmp_path / "r.h5", progress=False)
    kw = dict(layers=["stem", "block2_conv1"], n_steps=4, random_repeats=2, values=("zero",), progress=False)
    serial = cumulative_ablation(FIX / "zoo_resnet.onnx", store, test, **kw)
    with _On(cluster):
        dist = cumulative_ablation(FIX / "zoo_resnet.onnx", store, test, **kw)
    assert serial.rows == dist.rows
    assert min(r["accuracy"] for r in serial.rows) < serial.params["baseline_accuracy"] - 0.05   # curves move
