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
    nn, F = torch.nn, torch.nn.functional

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
    capture(lm, _dataset(x.numpy(), y), tmp_path / "onnx.h5", scale=1.0, batch_size=100, progress=False)
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
    capture(lm, _dataset(x, y), tmp_path / "onnx.h5", scale=1.0, progress=False)
    _assert_stores_agree(tmp_path / "keras.h5", tmp_path / "onnx.h5")
    with Store(tmp_path / "keras.h5") as s:
        assert s.attrs["source"] == "keras"
        assert s.read("conv", "pre").shape == (200, 4, 26, 26)  # channels first
        np.testing.assert_allclose(s.read("out", "post"), model.predict(x, verbose=0), atol=1e-5)
