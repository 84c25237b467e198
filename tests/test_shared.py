"""Checks against the full data sets in ../shared/data (skipped when absent)."""
import numpy as np
import pytest

from conftest import FIX, SHARED

pytestmark = [pytest.mark.shared,
              pytest.mark.skipif(not (SHARED / "mnist_10k.npz").exists(), reason="../shared/data is absent")]


def test_fixture_images_are_the_shared_validation_and_test_splits():
    full = np.load(SHARED / "mnist_10k.npz")
    demo = np.load(FIX / "mnist_demo.npz")
    idx = demo["index"]
    np.testing.assert_array_equal(np.flatnonzero(full["split"] > 0), idx)
    for k in ("x", "y", "split"):
        np.testing.assert_array_equal(full[k][idx], demo[k])


def test_relu_mlp_measures_on_full_validation_split(tmp_path):
    """Whole-pipeline check on the shared file: accuracy, the ordering of eq. 19 per unit."""
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.importance import importance
    from infoprobe.data import load_data

    data = load_data(SHARED / "mnist_10k.npz", split="validation")
    store = capture(FIX / "mlp_relu.onnx", data, tmp_path / "a.h5", progress=False)
    res = importance(store, progress=False)
    for r in res.units:
        assert r["entropy"] + 1e-12 >= r["mutual_information"] >= r["js_subset_separation"] - 1e-12
        assert r["js_subset_separation"] + 1e-12 >= r["labeled_mi"]
    import h5py

    with h5py.File(store) as f:
        acc = (f["outputs/logits"][()].argmax(1) == data.y).mean()
    assert acc > 0.88
