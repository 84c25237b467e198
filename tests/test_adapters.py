"""PyTorch and Keras adapters: stores exported from the framework agree with ``infoprobe capture``
of the adapter's ONNX export. Skipped where the framework is missing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infoprobe.analyses.capture import capture
from infoprobe.data import Dataset
from infoprobe.errors import ModelError, OutputExistsError
from infoprobe.model import load_model, module_map
from infoprobe.store import Store

ATOL = 1e-5


def _dataset(x, y):
    return Dataset(x=x, y=y, index=np.arange(len(x)), path=Path("arrays.npz"), split="all", sha256="0" * 64)


def _assert_stores_agree(a_path, b_path, atol=ATOL):
    with Store(a_path) as a, Store(b_path) as b:
        assert a.layer_names == b.layer_names
        np.testing.assert_array_equal(a.labels, b.labels)
        for name in a.layer_names:
            ia, ib = a.layer_info(name), b.layer_info(name)
            for key in ("kind", "activation", "depth", "units", "inputs", "is_output", "fan_in"):
                assert ia[key] == ib[key], (name, key)
            for which in ("pre", "post", "weight", "bias"):
                np.testing.assert_allclose(a._group(name)[which][:], b._group(name)[which][:],
                                           atol=atol, rtol=0, err_msg=f"{name}/{which}")
        np.testing.assert_allclose(a.file["outputs/logits"][:], b.file["outputs/logits"][:], atol=atol, rtol=0)


def test_core_never_imports_a_framework():
    code = ("import sys, infoprobe, infoprobe.adapters, infoprobe.cli.main, infoprobe.analyses.demo;"
            "bad = [m for m in ('torch', 'keras', 'tensorflow', 'jax') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- PyTorch

@pytest.fixture(scope="module")
def torch_net():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    nn = torch.nn

    class Net(nn.Module):
        """Conv+BN+ReLU module, a conv with a functional tanh, an in-place ReLU, a bare Linear."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, stride=2))
            self.fc1 = nn.Linear(216, 16)
            self.act = nn.ReLU(inplace=True)
            self.fc2 = nn.Linear(16, 12)
            self.out = nn.Linear(12, 10)

        def forward(self, x):
            x = torch.tanh(self.features(x))
            x = self.act(self.fc1(x.flatten(1)))
            x = self.fc2(x).sigmoid()
            return self.out(x)

    torch.manual_seed(0)
    net = Net()
    bn = net.features[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    x = torch.rand(300, 1, 28, 28)
    y = np.arange(300) % 10
    return torch, net, x, y


def test_torch_store_agrees_with_capture_of_exported_onnx(torch_net, tmp_path):
    from infoprobe.adapters.torch import MODULE_MAP_KEY, export_activations, export_onnx

    torch, net, x, y = torch_net
    net.train()  # exported in eval mode, left in training mode
    mapping = export_onnx(net, x[:1], tmp_path / "net.onnx")
    assert net.training and net.features[1].training
    assert mapping == {"features.0": "features.0", "features.4": "features.4", "fc1": "fc1",
                       "fc2": "fc2", "out": "out"}
    assert module_map(tmp_path / "net.onnx") == mapping
    lm = load_model(tmp_path / "net.onnx")
    assert MODULE_MAP_KEY in lm.ir_model.metadata_props
    assert [(lay.name, lay.activation) for lay in lm.layers] == [
        ("features.0", "relu"), ("features.4", "tanh"), ("fc1", "relu"), ("fc2", "sigmoid"), ("out", "none")]

    export_activations(net, (x, y), tmp_path / "torch.h5", batch_size=64, progress=False)
    assert net.training and net.features[1].training
    capture(lm, _dataset(x.numpy(), y), tmp_path / "onnx.h5", scale=1.0, batch_size=100, progress=False,
            positions="full")
    _assert_stores_agree(tmp_path / "torch.h5", tmp_path / "onnx.h5")
    with Store(tmp_path / "torch.h5") as s:
        assert s.attrs["source"] == "torch"
        assert s.layer_info("features.0")["op"] == "Conv2d+BatchNorm2d"
        # the in-place ReLU did not overwrite the stored pre-activation
        assert (s.read("fc1", "pre") < 0).any() and (s.read("fc1", "post") >= 0).all()
        # pre-activation equals weight . input + bias, by hand
        post4 = s.read("features.4", "post").reshape(300, -1)
        np.testing.assert_allclose(s.read("fc1", "pre"),
                                   post4 @ s._group("fc1")["weight"][:].T + s._group("fc1")["bias"][:],
                                   atol=1e-5)


def test_torch_dataloader_and_layer_subset(torch_net, tmp_path):
    from infoprobe.adapters.torch import export_activations

    torch, net, x, y = torch_net
    ds = torch.utils.data.TensorDataset(x[:70], torch.as_tensor(y[:70]))
    loader = torch.utils.data.DataLoader(ds, batch_size=32)
    export_activations(net, loader, tmp_path / "a.h5", layers=["fc2", "fc1"], progress=False)
    export_activations(net, x[:70], tmp_path / "b.h5", labels=y[:70], batch_size=7, progress=False)
    with Store(tmp_path / "a.h5") as a, Store(tmp_path / "b.h5") as b:
        assert a.layer_names == ["fc1", "fc2"] and a.layer_info("fc2")["inputs"] == ["fc1"]
        np.testing.assert_array_equal(a.labels, y[:70])
        np.testing.assert_allclose(a.read("fc2", "post"), b.read("fc2", "post"), atol=1e-6)
    with pytest.raises(OutputExistsError):
        export_activations(net, x[:5], tmp_path / "a.h5", progress=False)
    with pytest.raises(ModelError, match="unknown layers"):
        export_activations(net, x[:5], tmp_path / "c.h5", layers=["nope"], progress=False)
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.partial").exists()


def test_torch_shared_module_is_refused(torch_net, tmp_path):
    from infoprobe.adapters.torch import export_activations

    torch = torch_net[0]

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    with pytest.raises(ModelError, match="twice"):
        export_activations(Twice(), torch.zeros(3, 4), tmp_path / "t.h5", progress=False)


# --------------------------------------------------------------------------- Keras

@pytest.fixture(scope="module")
def keras_net():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3"):
        pytest.skip("Keras 3 needed")
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((28, 28, 1))
    h = L.Conv2D(4, 3, name="conv")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(6, 3, strides=2, activation="tanh", name="conv2")(h)
    h = L.Flatten()(h)
    h = L.Dense(16, activation="relu", name="fc1")(h)
    h = L.Dense(12, name="fc2")(h)
    h = L.Activation("sigmoid")(h)
    out = L.Dense(10, name="out")(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.uniform(-0.5, 0.5, 4))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 4))
    x = rng.random((200, 28, 28, 1), dtype=np.float32)
    model.predict(x[:2], verbose=0)
    return keras, model, x, np.arange(200) % 10


def test_keras_store_agrees_with_capture_of_exported_onnx(keras_net, tmp_path):
    from infoprobe.adapters.keras import export_activations, export_onnx

    keras, model, x, y = keras_net
    mapping = export_onnx(model, tmp_path / "k.onnx")
    assert mapping == {n: n for n in ("conv", "conv2", "fc1", "fc2", "out")}
    lm = load_model(tmp_path / "k.onnx")
    # bias and batch norm folded back into the conv, activations found
    assert [(lay.name, lay.op, lay.activation) for lay in lm.layers] == [
        ("conv", "Conv", "relu"), ("conv2", "Conv", "tanh"), ("fc1", "MatMul+Add", "relu"),
        ("fc2", "MatMul+Add", "sigmoid"), ("out", "MatMul+Add", "none")]
    export_activations(model, (x, y), tmp_path / "keras.h5", batch_size=64, progress=False)
    capture(lm, _dataset(x, y), tmp_path / "onnx.h5", scale=1.0, progress=False, positions="full")
    _assert_stores_agree(tmp_path / "keras.h5", tmp_path / "onnx.h5")
    with Store(tmp_path / "keras.h5") as s:
        assert s.attrs["source"] == "keras"
        assert s.read("conv", "pre").shape == (200, 4, 26, 26)  # channels first
        np.testing.assert_allclose(s.read("out", "post"), model.predict(x, verbose=0), atol=1e-5)


# --------------------------------------------------------------------------- image measures (no torch)

def test_total_variation_against_loops():
    from infoprobe.estimators.images import fourier_total_variation, total_variation

    rng = np.random.default_rng(0)
    imgs = rng.random((3, 2, 5, 4))
    ref = []
    for b in range(3):
        s = 0.0
        for c in range(2):
            for i in range(5):
                for j in range(4):
                    if i + 1 < 5:
                        s += abs(imgs[b, c, i + 1, j] - imgs[b, c, i, j])
                    if j + 1 < 4:
                        s += abs(imgs[b, c, i, j + 1] - imgs[b, c, i, j])
        ref.append(s)
    np.testing.assert_allclose(total_variation(imgs), ref)
    assert total_variation(np.ones((1, 6, 6)))[0] == 0
    # a constant image has all its Fourier mass at the centre: TV = 2 * 2 * magnitude
    mag = 6.0  # sqrt(36 pixels) with norm="ortho"
    np.testing.assert_allclose(fourier_total_variation(np.ones((1, 6, 6))), [4 * mag])


def test_softmax_entropy_and_dispersion():
    from scipy.special import softmax
    from scipy.stats import entropy

    from infoprobe.estimators.images import set_dispersion, softmax_entropy

    z = np.random.default_rng(1).normal(size=(4, 10)) * 3
    np.testing.assert_allclose(softmax_entropy(z), entropy(softmax(z, axis=1), base=2, axis=1))
    np.testing.assert_allclose(softmax_entropy(np.zeros((1, 8))), [3.0])
    var, cv = set_dispersion([[1.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(var, [1.0, 0.0])
    assert cv[0] == pytest.approx(0.5) and np.isnan(cv[1])


# --------------------------------------------------------------------------- retraining, ONNX in torch

def test_retrain_subnetwork_freezes_everything_else(torch_net):
    from infoprobe.adapters.torch import accuracy, retrain_subnetwork

    torch = torch_net[0]
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    init = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(400, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    keep = {"0": [1, 5]}
    reset = retrain_subnetwork(net, init, keep, (x, y), (x, y), epochs=0, progress=False)
    w = reset["model"].state_dict()
    np.testing.assert_array_equal(w["0.weight"][[1, 5]], init["0.weight"][[1, 5]])
    res = retrain_subnetwork(net, init, keep, (x, y), (x, y), epochs=3, weight_decay=0.1, batch_size=32,
                             progress=False)
    w = res["model"].state_dict()
    frozen = [0, 2, 3, 4, 6, 7]
    # every entry outside the kept rows is exactly the trained value, weight decay or not
    np.testing.assert_array_equal(w["0.weight"][frozen], trained["0.weight"][frozen])
    np.testing.assert_array_equal(w["0.bias"][frozen], trained["0.bias"][frozen])
    for k in ("2.weight", "2.bias"):
        np.testing.assert_array_equal(w[k], trained[k])
    assert not torch.equal(w["0.weight"][[1, 5]], init["0.weight"][[1, 5]])
    assert res["n_trainable"] == 2 * 6 + 2 and len(res["history"]) == 3
    assert res["accuracy_trained"] == accuracy(net, (x, y))
    assert res["accuracy_retrained"] == pytest.approx(accuracy(res["model"], (x, y)))
    assert torch.equal(net.state_dict()["0.weight"], trained["0.weight"])  # the caller's model untouched
    from infoprobe.errors import ConfigError
    with pytest.raises(ConfigError, match="units"):
        retrain_subnetwork(net, init, {"0": [8]}, (x, y), (x, y), progress=False)
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        retrain_subnetwork(net, init, {"1": [0]}, (x, y), (x, y), progress=False)


@pytest.mark.parametrize("name", ["fashion_cnn", "cnn_pad", "mlp_relu", "mlp_sigmoid"])
def test_onnx_in_torch_matches_onnxruntime(name):
    pytest.importorskip("torch")
    from infoprobe.adapters.onnx_torch import from_onnx
    from infoprobe.runner import Runner

    root = Path(__file__).resolve().parents[1] / "fixtures"
    m = from_onnx(root / f"{name}.onnx")
    lm = m.loaded
    x = np.random.default_rng(0).random((7, *lm.input_shape[1:]), dtype=np.float32)
    import torch

    lay = lm.layers[0]
    got = m(torch.as_tensor(x), outputs=[lay.post_value, lm.output_name])
    ref = Runner(lm, expose=True).run(x)
    np.testing.assert_allclose(got[lm.output_name].detach().numpy(), ref[lm.output_name], atol=2e-5)
    from infoprobe.rewrite import io_name
    np.testing.assert_allclose(got[lay.post_value].detach().numpy(), ref[io_name(lay.name, "post")], atol=2e-5)


def test_visualise_raises_its_objective_and_coherence_p_values(tmp_path):
    pytest.importorskip("torch")
    from infoprobe.adapters.torch import coherence, visualise
    from infoprobe.analyses.modules import partition
    from infoprobe.graph import graph_from_model
    from infoprobe.stats import chi2_ranks, fisher_combined, percentile_p

    model = Path(__file__).resolve().parents[1] / "fixtures" / "mlp_relu.onnx"
    sets = [[0, 1, 2], list(range(20))]
    before = visualise(model, "fc1_matmul", sets, steps=0, progress=False)
    after = visualise(model, "fc1_matmul", sets, steps=40, progress=False)
    assert (before["score"] > 0).all() and (after["score"] > before["score"] + 0.5).all()
    assert after["images"].shape == (2, 1, 28, 28) and after["images"].min() >= 0 and after["images"].max() <= 1
    fashion = model.with_name("fashion_mlp.onnx")
    part = partition(graph_from_model(load_model(fashion)), 12)
    res = coherence(fashion, partition=part, n_random=4, layers=["fc1"], steps=5, progress=False)
    tested = [sc for sc in part.sub_clusters() if sc["layer"] == "fc1" and 3 <= sc["size"] <= 0.8 * sc["in_graph"]]
    assert [(r["cluster"], r["size"]) for r in res.rows] == [(sc["cluster"], sc["size"]) for sc in tested]
    assert res.rows
    for r in res.rows:
        assert r["p_score"] in {k / 5 for k in range(1, 6)}
    p = [r["p_score"] for r in res.rows]
    summ = {s["measure"]: s for s in res.summary}
    assert summ["score"]["fisher_p"] == pytest.approx(fisher_combined(p, 4))
    assert summ["score"]["chi2_p"] == pytest.approx(chi2_ranks(p, 4))
    # the stored p value is the percentile of the true set among its random ones
    r0 = res.rows[0]
    assert percentile_p(r0["score"], [r0["score"] + 1] * 4, "right") == 1.0
    res.save(tmp_path)
    assert res.plot(tmp_path)[0].stat().st_size > 1000
    from infoprobe.results import read_table
    cv_row = [r for r in read_table(tmp_path / "coherence_summary.json") if r["measure"] == "cv"][0]
    assert cv_row["median"] == pytest.approx(summ["cv"]["median"])
    import csv
    with open(tmp_path / "coherence_summary.csv") as f:
        assert {"fisher_p", "chi2_p", "q1", "median", "q3"} <= set(next(csv.DictReader(f)))


def test_visualise_plain_torch_module(torch_net):
    from infoprobe.adapters.torch import visualise

    torch = torch_net[0]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        net[0].bias.fill_(2.0)  # every unit active on the starting image
    before = visualise(net, "1", [[0, 1], [2, 3, 4]], input_shape=(64,), steps=0, progress=False)
    after = visualise(net, "1", [[0, 1], [2, 3, 4]], input_shape=(64,), steps=30, progress=False)
    assert after["images"].shape == (2, 1, 8, 8)
    assert (after["score"] > before["score"]).all()
    # the score is the set's mean post-activation on the final image, by hand
    x = torch.as_tensor(after["images"].reshape(2, 64), dtype=torch.float32)
    post = torch.relu(net[0](x)).detach().numpy()
    np.testing.assert_allclose(after["score"], [post[0, [0, 1]].mean(), post[1, [2, 3, 4]].mean()], rtol=1e-5)
