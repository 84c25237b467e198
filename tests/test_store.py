"""Activation store: capture round trip, resume, validation."""
import os

import h5py
import numpy as np
import pytest

from conftest import FIX, mlp_forward, sigmoid
from infoprobe.analyses.capture import capture
from infoprobe.data import load_data, prepare_inputs
from infoprobe.errors import DataError, OutputExistsError, StoreError
from infoprobe.store import Store, StoreWriter, partial_path


def test_capture_round_trip(sigmoid_store, demo_data):
    val = demo_data["split"] == 1
    x = demo_data["x"][val].reshape(-1, 784).astype(np.float64) / 255
    posts, logits = mlp_forward(FIX / "mlp_sigmoid.onnx", x, sigmoid)
    with Store(sigmoid_store) as st:
        assert st.layer_names == ["fc1", "fc2", "fc3"] and st.hidden_layers() == ["fc1", "fc2"]
        np.testing.assert_allclose(st.read("fc1"), posts[0], atol=1e-5)
        np.testing.assert_allclose(st.read("fc2"), posts[1], atol=1e-5)
        np.testing.assert_allclose(st.file["outputs/logits"][()], logits, atol=1e-4)
        np.testing.assert_array_equal(st.labels, demo_data["y"][val])
        np.testing.assert_array_equal(st.file["samples/index"][()], np.flatnonzero(val))
        info = st.layer_info("fc2")
        assert (info["kind"], info["activation"], info["depth"], info["units"], info["inputs"]) == \
            ("dense", "sigmoid", 2, 100, ["fc1"])
        w = st.dataset("fc2", "weight")[()]
        np.testing.assert_allclose(sigmoid(st.read("fc1") @ w.T + st.dataset("fc2", "bias")[()]),
                                   st.read("fc2"), atol=1e-5)
        assert st.attrs["complete"] and st.attrs["schema_version"] == 1


def test_conv_capture_values(tmp_path):
    """Stored conv activations, weights and logits against the ONNX file run by onnxruntime."""
    import onnxruntime as ort

    from conftest import initializers

    data = load_data(FIX / "mnist_demo.npz", split="test", limit=64)
    p = capture(FIX / "cnn_small.onnx", data, tmp_path / "c.h5", batch_size=20, progress=False, positions="full")
    x = data.x[:, None].astype(np.float32) / 255
    logits = ort.InferenceSession(str(FIX / "cnn_small.onnx")).run(None, {"input": x})[0]
    with Store(p) as st:
        np.testing.assert_allclose(st.file["outputs/logits"][()], logits, atol=1e-5)
        for layer in ("conv1", "conv2"):
            np.testing.assert_array_equal(st.read(layer), np.maximum(st.read(layer, "pre"), 0))
        np.testing.assert_array_equal(st.dataset("conv2", "weight")[()], initializers(FIX / "cnn_small.onnx")["conv2.weight"])
        assert st.read("conv1").shape == (64, 4, 28, 28)


def test_interrupted_capture_resumes_without_rewriting(tmp_path, monkeypatch):
    data = load_data(FIX / "mnist_demo.npz", split="test", limit=300)
    out = tmp_path / "a.h5"
    calls = {"n": 0}
    real = StoreWriter.write

    def failing(self, start, blocks):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, start, blocks)

    monkeypatch.setattr(StoreWriter, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        capture(FIX / "mlp_sigmoid.onnx", data, out, batch_size=100, progress=False)
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out)) as f:
        assert f.attrs["rows_written"] == 200 and not f.attrs["complete"]
    with pytest.raises(StoreError, match="unfinished capture"):
        Store(out)
    monkeypatch.setattr(StoreWriter, "write", real)
    seen = []
    monkeypatch.setattr(StoreWriter, "write", lambda self, s, b: (seen.append(s), real(self, s, b)))
    capture(FIX / "mlp_sigmoid.onnx", data, out, batch_size=100, progress=False)
    assert seen == [200]  # only the missing rows
    with Store(out) as st:
        x = prepare_inputs(data.x, (None, 784), 1 / 255)
        np.testing.assert_allclose(st.read("fc1"), mlp_forward(FIX / "mlp_sigmoid.onnx", x, sigmoid)[0][0], atol=1e-5)


def test_existing_store_is_never_clobbered(tmp_path):
    data = load_data(FIX / "mnist_demo.npz", split="test", limit=10)
    out = capture(FIX / "mlp_sigmoid.onnx", data, tmp_path / "a.h5", progress=False)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        capture(FIX / "mlp_sigmoid.onnx", data, out, progress=False)
    assert out.read_bytes() == before
    other = load_data(FIX / "mnist_demo.npz", split="validation", limit=10)
    capture(FIX / "mlp_sigmoid.onnx", other, tmp_path / "b.h5", progress=False)
    os.replace(tmp_path / "b.h5", partial_path(tmp_path / "c.h5"))   # a partial file of other inputs
    with pytest.raises(StoreError, match="other inputs"):
        capture(FIX / "mlp_sigmoid.onnx", data, tmp_path / "c.h5", progress=False)
    # a damaged partial file (killed in the middle of a flush) is nobody's work: started again
    partial_path(tmp_path / "d.h5").write_bytes(b"")
    with Store(capture(FIX / "mlp_sigmoid.onnx", data, tmp_path / "d.h5", progress=False)) as st:
        assert st.n_rows == 10


def test_malformed_stores(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        Store(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="not an infoprobe"):
        Store(tmp_path / "y.h5")
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "none.h5")


def test_nan_activations_are_reported(tmp_path, sigmoid_store):
    import shutil

    p = tmp_path / "nan.h5"
    shutil.copy(sigmoid_store, p)
    with h5py.File(p, "r+") as f:
        f["layers/fc2/post"][17, 3] = np.nan
    with Store(p) as st:
        with pytest.raises(DataError, match="NaN.*sample 17"):
            st.read("fc2")


def test_data_errors(tmp_path):
    np.savez(tmp_path / "nosplit.npz", x=np.zeros((4, 784), np.uint8))
    with pytest.raises(DataError, match="split"):
        load_data(tmp_path / "nosplit.npz", split="test")
    with pytest.raises(DataError, match="expects"):
        prepare_inputs(np.zeros((2, 27, 27)), (None, 784), 1.0)
    with pytest.raises(DataError, match="NaN"):
        prepare_inputs(np.full((2, 784), np.nan), (None, 784), 1.0)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError):  # never unpickled
        load_data(tmp_path / "obj.npy")


@pytest.mark.parametrize("script,match", [("sleep 30", "did not finish"), ("kill -SEGV $$", "failed reading"),
                                          ("echo 'x.h5: /a is an external link'; exit 2", "external link")])
def test_hdf5_metadata_is_read_in_a_child_first(tmp_path, monkeypatch, script, match):
    """libhdf5 can spin forever or crash on damaged metadata (a fuzzed global heap made it
    loop): the first reading of a file happens in a child, whose hang, crash or refusal
    becomes one error here."""
    from infoprobe import hdf5

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(hdf5.sys, "executable", str(fake))
    monkeypatch.setattr(hdf5, "PROBE_SECONDS", 2)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = np.zeros(3)
    with pytest.raises(StoreError, match=match):
        hdf5.open_file(tmp_path / "x.h5", StoreError)
    ino = os.stat(tmp_path / "x.h5").st_ino
    assert not any(k[1] == ino for k in hdf5._PROBED)   # a refused file is probed again next time


def test_a_store_read_otherwise_than_the_model_is_refused(sigmoid_store, tmp_path):
    """A store whose layer was captured with another activation (an infoprobe that read the
    model otherwise) holds another tensor as "post": analyses that pair it with the model refuse."""
    import shutil

    from infoprobe.model import load_model

    lm = load_model(FIX / "mlp_sigmoid.onnx")
    with Store(sigmoid_store) as st:
        st.check_model(lm)                                   # as captured: accepted
    old = tmp_path / "old.h5"
    shutil.copy(sigmoid_store, old)
    with h5py.File(old, "r+") as f:
        grp = next(g for name, g in f["layers"].items() if name == "fc1")
        grp.attrs["activation"] = "none"
    with Store(old) as st, pytest.raises(DataError, match="captured with activation 'none'.*'sigmoid'"):
        st.check_model(lm)
    with Store(sigmoid_store) as st, pytest.raises(DataError, match="another model"):
        st.check_model(load_model(FIX / "mlp_relu.onnx"))
