"""Data larger than memory: HDF5 and .npy samples read a selection of rows at a time, .npz
members refused with the way out, folders of images read with Pillow."""
from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import FIX
from infoprobe.data import Rows, load_data
from infoprobe.errors import BudgetError, DataError
from infoprobe.limits import budgets


@pytest.fixture(scope="module")
def mnist():
    return np.load(FIX / "mnist_demo.npz")


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_samples_over_a_quarter_of_the_budget_are_read_on_demand(fmt, mnist, tmp_path):
    x = mnist["x"]
    if fmt == "h5":
        path = tmp_path / "d.h5"
        with h5py.File(path, "w") as f:
            for k in ("x", "y", "split"):
                f[k] = mnist[k]
        split, want = "test", x[mnist["split"] == 2]
    else:
        path = tmp_path / "d.npy"
        np.save(path, x)
        split, want = "all", x
    assert isinstance(load_data(path, split=split).x, np.ndarray)        # small enough: in memory
    with budgets(memory=f"{want.nbytes // 3}"):
        d = load_data(path, split=split)
        assert isinstance(d.x, Rows) and d.x.shape == want.shape and d.x.dtype == np.uint8
        assert np.array_equal(d.x[:7], want[:7]) and np.array_equal(d.x[5:400:13], want[5:400:13])
        assert np.array_equal(d.x[[9, 2, 2, -1]], want[[9, 2, 2, -1]]) and np.array_equal(d.x[3], want[3])
        with pytest.raises(BudgetError, match="capture, take any number"):
            np.asarray(d.x)
    assert np.array_equal(np.asarray(d.x), want)                     # within the budget: whole


def test_capture_streams_an_hdf5_file_larger_than_the_budget(mnist, tmp_path):
    from infoprobe.analyses.capture import capture
    from infoprobe.store import Store

    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        for k in ("x", "y", "split"):
            f[k] = mnist[k]
    ref = capture(FIX / "mlp_relu.onnx", load_data(FIX / "mnist_demo.npz", split="test"), tmp_path / "a.h5",
                  progress=False)
    with budgets(memory="1M"):           # the split's 1.5 MiB of samples stay in the file
        data = load_data(path, split="test")
        assert isinstance(data.x, Rows)
        got = capture(FIX / "mlp_relu.onnx", data, tmp_path / "b.h5", progress=False)
    with Store(ref) as a, Store(got) as b:
        for layer in a.layer_names:
            assert np.array_equal(a.read(layer), b.read(layer))
        assert np.array_equal(a.labels, b.labels)


def test_an_npz_member_over_the_budget_is_refused_with_the_way_out():
    with budgets(memory="1M"), pytest.raises(BudgetError, match=r"can only be read whole: save the array as \.npy"):
        load_data(FIX / "mnist_demo.npz")


# --- folders of images ---------------------------------------------------------------------------

def _folder(root, mnist, n=30, rgb=False):
    x, y = mnist["x"][:n], mnist["y"][:n]
    for i in range(n):
        d = root / f"class_{y[i]}"
        d.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(x[i])
        (img.convert("RGB") if rgb else img).save(d / f"{i:03d}.png")
    return x, y


def test_an_image_folder_gives_pixels_and_labels_by_class_folder(mnist, tmp_path):
    x, y = _folder(tmp_path / "imgs", mnist)
    (tmp_path / "imgs" / "class_0" / "notes.txt").write_text("not an image")      # ignored
    d = load_data(tmp_path / "imgs")
    classes = sorted({f"class_{c}" for c in y})
    assert d.classes == classes
    order = sorted(range(len(y)), key=lambda i: (f"class_{y[i]}", f"{i:03d}"))       # folder, then file name
    assert np.array_equal(d.y, [classes.index(f"class_{y[i]}") for i in order])
    assert d.x.shape == (len(y), 1, 28, 28) and d.x.dtype == np.uint8
    assert np.array_equal(np.asarray(d.x)[:, 0], x[order])
    back = pickle.loads(pickle.dumps(d))                                             # to a Dask worker
    assert len(pickle.dumps(d)) < 1000 and np.array_equal(np.asarray(back.x), np.asarray(d.x))


def test_an_image_folder_resized_and_normalised_per_channel(mnist, tmp_path):
    x, _ = _folder(tmp_path / "rgb", mnist, n=6, rgb=True)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    d = load_data(tmp_path / "rgb", image_size=20, mean=",".join(map(str, mean)), std=std)
    files = sorted((tmp_path / "rgb").glob("*/*.png"))
    want = np.stack([np.asarray(Image.open(f).convert("RGB").resize((20, 20), Image.Resampling.BILINEAR))
                     for f in files]).transpose(0, 3, 1, 2) / 255.0
    want = (want - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert d.x.shape == (6, 3, 20, 20) and d.x.dtype == np.float32
    np.testing.assert_allclose(np.asarray(d.x), want, rtol=1e-5, atol=1e-5)


def test_hostile_image_folders_are_refused_in_one_line(mnist, tmp_path):
    root = tmp_path / "sizes"
    _folder(root, mnist, n=4)
    first = sorted(root.glob("*/*.png"))[-1]
    Image.new("L", (30, 28)).save(first)
    with pytest.raises(DataError, match="pass --image-size"):
        np.asarray(load_data(root).x)
    assert load_data(root, image_size=28).x[:].shape == (4, 1, 28, 28)

    link = tmp_path / "link"
    _folder(link, mnist, n=2)
    (tmp_path / "outside.png").write_bytes(first.read_bytes())
    (next(link.iterdir()) / "x.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(DataError, match="is a link"):
        load_data(link)

    broken = tmp_path / "broken"
    _folder(broken, mnist, n=2)
    sorted(broken.glob("*/*.png"))[0].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="is not a readable image"):
        load_data(broken)

    mixed = tmp_path / "mixed"
    _folder(mixed, mnist, n=2)
    Image.new("L", (28, 28)).save(mixed / "loose.png")
    with pytest.raises(DataError, match="holds images and subfolders"):
        load_data(mixed)

    bomb = tmp_path / "bomb"
    bomb.mkdir()
    Image.new("1", (9000, 9000)).save(bomb / "big.png")          # 81 M pixels in a few kB
    assert (bomb / "big.png").stat().st_size < 200_000
    with pytest.raises(DataError, match="decompression bomb"):
        load_data(bomb)
    with pytest.raises(DataError, match="--std of these greyscale images needs one value, finite and above 0"):
        load_data(link.parent / "sizes", mean="0.5", std="0")
    with pytest.raises(DataError, match="one split"):
        load_data(root, split="test")


def test_cli_reads_an_image_folder_and_refuses_a_broken_image_in_one_line(mnist, tmp_path):
    from infoprobe.cli.main import cli

    _folder(tmp_path / "imgs", mnist, n=40)
    r = CliRunner().invoke(cli, ["capture", str(FIX / "mlp_relu.onnx"), "--data", str(tmp_path / "imgs"),
                                 "--out", str(tmp_path / "a.h5"), "--no-progress"])
    assert r.exit_code == 0, r.output
    sorted((tmp_path / "imgs").glob("*/*.png"))[-1].write_bytes(b"GIF89a broken")
    r = CliRunner().invoke(cli, ["capture", str(FIX / "mlp_relu.onnx"), "--data", str(tmp_path / "imgs"),
                                 "--out", str(tmp_path / "b.h5"), "--no-progress"])
    assert r.exit_code == 2 and "is not a readable image" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "b.h5").exists()


def _classes(root, mnist, *names):
    for k, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(mnist["x"][2 * k + i]).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("fill", ["empty", "no image", "hidden files only", "a FIFO named like an image"])
def test_a_class_folder_without_images_is_refused_not_renumbered(mnist, tmp_path, fill):
    """Every subfolder is a class numbered by sorted name: one that cannot be used is refused
    in one line naming it (leaving it out would shift the labels of the classes after it)."""
    import os

    from infoprobe.cli.main import cli

    root = _classes(tmp_path / "imgs", mnist, "a_cat", "c_dog")
    bad = root / "b_bird"
    bad.mkdir()
    if fill == "no image":
        (bad / "notes.txt").write_text("not an image")
    elif fill == "hidden files only":
        (bad / ".DS_Store").write_bytes(b"\0")
        Image.fromarray(mnist["x"][0]).save(bad / ".hidden.png")
    elif fill == "a FIFO named like an image":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        os.mkfifo(bad / "0.png")
    with pytest.raises(DataError, match=r"the class folder .*b_bird holds no images .* \(class 1 here\)"):
        load_data(root)
    r = CliRunner().invoke(cli, ["capture", str(FIX / "mlp_relu.onnx"), "--data", str(root),
                                 "--out", str(tmp_path / "a.h5"), "--no-progress"])
    assert r.exit_code == 2 and "b_bird holds no images" in r.output and len(r.output.strip().splitlines()) == 1


def test_hidden_folders_are_not_classes_and_links_are_refused(mnist, tmp_path):
    """Hidden folders (.git, .ipynb_checkpoints) are skipped, as stated in the docstring; a
    linked class folder is refused, not followed."""
    import os

    root = _classes(tmp_path / "imgs", mnist, "a_cat", "c_dog", ".ipynb_checkpoints")
    d = load_data(root)
    assert d.classes == ["a_cat", "c_dog"] and d.y.tolist() == [0, 0, 1, 1]
    os.symlink(root / "a_cat", root / "b_bird")
    with pytest.raises(DataError, match="b_bird is a link"):
        load_data(root)
    os.unlink(root / "b_bird")
    if hasattr(os, "geteuid") and os.geteuid() != 0:          # root reads any folder
        os.mkdir(root / "b_bird")
        os.chmod(root / "b_bird", 0)
        try:
            with pytest.raises(DataError, match="the class folder .*b_bird cannot be read"):
                load_data(root)
        finally:
            os.chmod(root / "b_bird", 0o700)


def test_a_transformer_with_two_inputs_captures_from_streamed_token_arrays(tmp_path):
    """The BERT-style encoder of the zoo (input_ids and attention_mask) captured from an HDF5
    file read a batch at a time stores what the in-memory capture stores, its mask included."""
    from infoprobe.analyses.capture import capture
    from infoprobe.data import Inputs
    from infoprobe.store import Store

    d = np.load(FIX / "tokens_demo.npz")
    with h5py.File(tmp_path / "tok.h5", "w") as f:
        for k in d.files:
            f[k] = d[k]
    keys = "input_ids,attention_mask"
    ref = capture(FIX / "zoo_encoder.onnx", load_data(FIX / "tokens_demo.npz", x_key=keys, split="test"),
                  tmp_path / "a.h5", progress=False)
    with budgets(memory="1500K"):
        data = load_data(tmp_path / "tok.h5", x_key=keys, split="test")
        assert isinstance(data.x, Inputs) and all(isinstance(v, Rows) for v in data.x.arrays.values())
        got = capture(FIX / "zoo_encoder.onnx", data, tmp_path / "b.h5", progress=False)
    with Store(ref) as a, Store(got) as b:
        assert a.layer_names == b.layer_names and len(a.layer_names) > 10
        for layer in a.layer_names:
            assert np.array_equal(a.read(layer), b.read(layer)), layer
        assert np.array_equal(a.position_mask(a.layer_names[0]), b.position_mask(b.layer_names[0]))


def test_an_image_swapped_for_a_fifo_or_link_after_listing_is_refused_not_followed(mnist, tmp_path):
    """Images larger than the budget are decoded as they are read, long after the folder was
    listed: a file swapped for a FIFO then must not block, nor a link be followed."""
    _folder(tmp_path / "imgs", mnist, n=12)
    with budgets(memory="4K"):
        d = load_data(tmp_path / "imgs")
        names = sorted((tmp_path / "imgs").rglob("*.png"))
        names[0].unlink()
        os.mkfifo(names[0])
        with pytest.raises(DataError, match="not a regular file"):
            np.asarray(d.x[:2])
        names[0].unlink()
        names[0].symlink_to(names[1])
        with pytest.raises(DataError, match="symbolic link"):
            np.asarray(d.x[:2])
