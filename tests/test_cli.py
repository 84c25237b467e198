"""The command line: results, machine-readable output, one-line errors with exit status 2."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FIX
from infoprobe.cli.main import cli


def run(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return res


def assert_one_line_error(res, match):
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("infoprobe: error:"), res.output
    assert match in lines[0], lines[0]
    assert "Traceback" not in res.output


def test_inspect_json():
    res = run("inspect", FIX / "cnn_small.onnx", "--json")
    assert res.exit_code == 0
    info = json.loads(res.output)
    assert [(l["name"], l["units"], l["activation"]) for l in info["layers"]] == \
        [("conv1", 4, "relu"), ("conv2", 6, "relu"), ("fc", 10, "none")]
    assert "fc1" in run("inspect", FIX / "mlp_sigmoid.onnx").output


def test_help_has_examples():
    for cmd in ("inspect", "capture", "importance", "ablate", "synergy", "modules", "frivolous", "synthetic", "flow",
                "plan", "prune", "check", "demo"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Example" in res.output


def test_capture_importance_ablate(tmp_path):
    acts = tmp_path / "acts.h5"
    res = run("capture", FIX / "mlp_relu.onnx", "--data", FIX / "mnist_demo.npz", "--split", "validation",
              "--out", acts, "--no-progress")
    assert res.exit_code == 0, res.output
    res = run("importance", acts, "--out", tmp_path / "r", "--quantizer", "quantile", "--bins", "3", "--json",
              "--no-progress")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out["mean_bits"]) == {"fc1_matmul", "fc2_matmul", "fc3_matmul"}
    rows = json.loads((tmp_path / "r" / "importance.json").read_text())
    assert rows["meta"]["parameters"]["quantizer"] == "quantile" and len(rows["rows"]) == 60
    assert rows["meta"]["inputs"]["store"]["sha256"]
    res = run("ablate", FIX / "mlp_relu.onnx", acts, "--data", FIX / "mnist_demo.npz", "--split", "test",
              "--out", tmp_path / "r", "--steps", "5", "--random-repeats", "2", "--scope", "both", "--json",
              "--no-progress")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert 0.85 < out["baseline_accuracy"] < 1
    assert (tmp_path / "r" / "ablation_layer.png").stat().st_size > 1000
    assert (tmp_path / "r" / "ablation_network.png").exists()
    # results are not overwritten silently
    res = run("importance", acts, "--out", tmp_path / "r", "--no-progress")
    assert_one_line_error(res, "--overwrite")


def test_truncated_model(tmp_path):
    data = (FIX / "mlp_sigmoid.onnx").read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[:5000])
    assert_one_line_error(run("inspect", tmp_path / "t.onnx"), "t.onnx")


def test_external_data_outside_folder(tmp_path):
    from test_model import _external

    (tmp_path / "secret.bin").write_bytes(b"\0" * 48)
    assert_one_line_error(run("inspect", _external(tmp_path, "../secret.bin")), "'..'")


def test_data_that_does_not_fit_leaves_nothing(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 20, 20), np.uint8), y=np.zeros(10, np.int64))
    res = run("capture", FIX / "mlp_sigmoid.onnx", "--data", tmp_path / "d.npz", "--out", tmp_path / "a.h5",
              "--no-progress")
    assert_one_line_error(res, "expects [784]")
    assert list(tmp_path.iterdir()) == [tmp_path / "d.npz"]


def test_missing_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 28, 28), np.uint8))
    res = run("capture", FIX / "mlp_sigmoid.onnx", "--data", tmp_path / "d.npz", "--out", tmp_path / "a.h5",
              "--no-progress")
    assert res.exit_code == 0
    assert_one_line_error(run("importance", tmp_path / "a.h5", "--out", tmp_path / "r", "--no-progress"), "no labels")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_nan_activations(tmp_path, sigmoid_store):
    import h5py

    p = tmp_path / "nan.h5"
    shutil.copy(sigmoid_store, p)
    with h5py.File(p, "r+") as f:
        f["layers/fc1/post"][5, 0] = np.nan
    assert_one_line_error(run("importance", p, "--out", tmp_path / "r", "--no-progress"), "NaN")
    assert not (tmp_path / "r" / "importance.json").exists()


def test_incomplete_store(tmp_path, sigmoid_store):
    import h5py

    p = tmp_path / "inc.h5"
    shutil.copy(sigmoid_store, p)
    with h5py.File(p, "r+") as f:
        f.attrs["complete"] = False
    assert_one_line_error(run("importance", p, "--out", tmp_path / "r", "--no-progress"), "incomplete")


def test_demo(tmp_path):
    out = tmp_path / "demo"
    res = run("demo", "--out", out, "--steps", "6", "--random-repeats", "2", "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["baseline_accuracy"] > 0.9
    for f in ("acts.h5", "importance.csv", "ablation.json", "importance.png", "ablation_layer.png",
              "ablation_network.png", "ablation_hybrid.png", "summary.json", "plan.json", "pruned.onnx",
              "check.md", "check.xml"):
        assert (out / f).exists(), f
    assert s["pruned"]["check_passed"] and s["pruned"]["parameters"][1] < 0.75 * s["pruned"]["parameters"][0]
    # information-ordered ablation is at least as good as random in the second layer (Section 5.3)
    fifty = {(r["layer"], r["ranking"]): r for r in s["accuracy_at_50_percent_ablated"]}
    assert fifty[("fc2", "mutual_information")]["accuracy_mean"] > 0.85
    # the pruned Fashion MLP's sub-clusters matter more than random ones (Hod et al., Table 1)
    md = s["modules"]
    assert md["fisher_importance"] < 0.01 and md["chi2_importance"] < 0.01 and md["categories"]["important"] > 0
    assert (out / "modules" / "subclusters.csv").exists() and (out / "modules" / "visualisations.png").exists()
    # frivolous units grow faster than the width (Casper et al., g > 2); the thinner sigmoid
    # MLP keeps most labels with far fewer units
    fr = s["frivolous"]
    assert fr["g"]["prunable"][0] > 2 and fr["g"]["redundant"][0] > 2
    assert all(kept < units for units, kept in fr["units"]) and fr["label_agreement"] > 0.9
    assert (out / "frivolous" / "thin.onnx").exists() and (out / "frivolous" / "sweep.png").exists()
    # the Section 4 toy neuron: I(X;T) rises to log2 4 = 2 bits, then falls as its Gaussians merge
    toy = s["flow"]["toy_mi_bits"]
    assert max(toy) > 1.9 and toy[-1] < 1.44 and (out / "flow" / "flow.png").exists()
    # summary.json is rounded for reading; the report is written last and names every analysis
    assert s["baseline_accuracy"] == float(f"{s['baseline_accuracy']:.4g}") and s["report"].endswith("report.html")
    page = (out / "report.html").read_text()
    assert all(f'id="{sid}"' in page for sid in ("check", "importance", "ablation", "synergy", "modules",
                                                  "frivolous", "flow"))
    # the terminal's synergy and flow sentences are the report's, and summary.json quotes the
    # profile rows they quote (the largest multiplets)
    from infoprobe.htmlreport import headlines, plain_text
    assert s["headlines"] == {k: v for k, v in headlines([out]).items() if k in ("synergy", "flow")}
    assert all(h in plain_text(page) for h in s["headlines"]["synergy"] + s["headlines"]["flow"])
    assert {r["size"] for r in s["synergy"]["largest_multiplets"]} == {8}
    assert all(f" of {r['size']} units" in h for r, h in zip(s["synergy"]["largest_multiplets"],
                                                              s["headlines"]["synergy"]))
    assert s["flow"]["axis"] == "step" and s["flow"]["positions"][-1] == 300000
    # rerunning into the demo's own folder works; a foreign folder is refused
    assert run("demo", "--out", out, "--steps", "3", "--random-repeats", "0", "--no-progress").exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert_one_line_error(run("demo", "--out", tmp_path / "mine", "--no-progress"), "not written by")


@pytest.mark.parametrize("value", ["zero", "mean"])
def test_ablate_with_one_ablation_value(tmp_path, sigmoid_store, value):
    res = run("ablate", FIX / "mlp_sigmoid.onnx", sigmoid_store, "--data", FIX / "mnist_demo.npz", "--split", "test",
              "--out", tmp_path, "--value", value, "--steps", "3", "--random-repeats", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "ablation.json").read_text())["rows"]
    assert {r["value"] for r in rows} == {value}
    line = next(l for l in res.output.splitlines() if "fc2" in l and "mutual_information" in l)
    missing, present = (-1, -2) if value == "zero" else (-2, -1)  # columns: to zero, bias balancing
    assert line.split()[missing] == "-" and float(line.split()[present]) > 0.8


def test_is_store_path_sniffs_the_hdf5_signature(tmp_path, sigmoid_store):
    import h5py

    from infoprobe.store import is_store_path

    renamed = tmp_path / "acts.onnx"                     # an HDF5 file, whatever its name
    shutil.copy(sigmoid_store, renamed)
    assert is_store_path(sigmoid_store) and is_store_path(renamed)
    with h5py.File(tmp_path / "block.bin", "w", userblock_size=512) as f:   # after a user block
        f["x"] = np.zeros(3)
    assert is_store_path(tmp_path / "block.bin")
    assert not is_store_path(FIX / "mlp_sigmoid.onnx") and not is_store_path(FIX / "mnist_demo.npz")
    (tmp_path / "text.h5").write_text("not HDF5")        # no signature: the suffix decides
    assert is_store_path(tmp_path / "text.h5") and is_store_path(tmp_path / "missing.HDF5")
    assert not is_store_path(tmp_path / "missing.onnx") and not is_store_path(tmp_path)


def test_commands_are_thin_modules():
    """One module per command, none over ~300 lines; the library decides, the CLI parses and prints."""
    from pathlib import Path

    import infoprobe.cli.main as main

    folder = Path(main.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert max(sizes.values()) <= 300, sizes
    for name, cmd in main.cli.commands.items():
        assert cmd.callback.__module__.startswith("infoprobe.cli."), name


def test_errors_speak_the_terms_of_the_caller(tmp_path):
    """The library names its parameters (overwrite=True, out); the CLI says --overwrite, --out."""
    from infoprobe.errors import OutputExistsError
    from infoprobe.results import check_outputs

    (tmp_path / "a.csv").write_text("")
    with pytest.raises(OutputExistsError, match=r"choose another out or pass overwrite=True$") as info:
        check_outputs([tmp_path / "a.csv"], overwrite=False)
    assert info.value.cli_message().endswith("choose another --out or pass --overwrite")


def test_families_run_without_the_cli(tmp_path, sigmoid_store):
    """The multi-source workflows are library functions; their results summarise themselves."""
    from infoprobe.analyses.frivolous.family import frivolous_family
    from infoprobe.analyses.modules.family import modules_family
    from infoprobe.errors import ConfigError

    fam = frivolous_family([sigmoid_store], out=tmp_path / "f", plot=False, progress=False)
    assert [r["layer"] for r in fam.results[0].layers] == ["fc1", "fc2"]
    assert fam.summary().splitlines()[0] == f"{sigmoid_store}:" and "fc2" in fam.summary()
    assert json.loads(fam.to_json())["files"] == [str(f) for f in fam.files]
    with pytest.raises(ConfigError, match="sweep=True"):
        frivolous_family([sigmoid_store, sigmoid_store], out=tmp_path / "g", progress=False)
    mod = modules_family([sigmoid_store], out=tmp_path / "m", n_shuffles=0, plot=False, progress=False)
    assert mod.summary().startswith(f"{sigmoid_store}: mlp graph") and (tmp_path / "m" / "network.json").exists()
    with pytest.raises(ConfigError, match="single ONNX model"):
        modules_family([sigmoid_store], out=tmp_path / "m2", plan=tmp_path / "p.json", progress=False)


def test_every_verb_that_runs_a_model_takes_provider(tmp_path):
    """--provider on every command that runs onnxruntime; cuda without onnxruntime-gpu is one
    line and exit 2; the sessions built inside run on the provider asked for."""
    import onnxruntime as ort

    import infoprobe.cli.main as main
    from infoprobe.model import load_model
    from infoprobe.runner import execution, make_session

    no_runtime = {"importance", "synthetic", "report", "plan", "inspect"}
    for name, cmd in main.cli.commands.items():
        has = any(p.name == "provider" for p in cmd.params)
        assert has == (name not in no_runtime), name
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        res = run("capture", FIX / "mlp_sigmoid.onnx", "--data", FIX / "mnist_demo.npz", "--limit", "10",
                  "--out", tmp_path / "a.h5", "--provider", "cuda", "--no-progress")
        assert_one_line_error(res, "onnxruntime-gpu")
        assert not (tmp_path / "a.h5").exists()
    with execution("cpu") as providers:
        sess = make_session(load_model(FIX / "mlp_sigmoid.onnx").fresh_ir())
        assert providers == ["CPUExecutionProvider"] and sess.get_providers() == ["CPUExecutionProvider"]


def test_device_workers_and_image_options_are_where_they_apply(tmp_path, sigmoid_store):
    """--device on every verb with CuPy estimators; --workers/--scheduler on every verb with
    independent models or networks; --image-size/--mean/--std wherever --data is; --device cuda
    without CuPy is one line and exit 2."""
    import importlib.util

    import infoprobe.cli.main as main

    with_device = {"importance", "ablate", "synergy", "frivolous", "flow", "analyze"}
    parallel = {"ablate", "flow", "frivolous", "modules", "synergy"}
    for name, cmd in main.cli.commands.items():
        params = {p.name for p in cmd.params}
        assert ("device" in params) == (name in with_device), name
        assert ({"workers", "scheduler"} <= params) == (name in parallel), name
        assert ({"image_size", "mean", "std"} <= params) == ("data_path" in params), name
    if importlib.util.find_spec("cupy") is None:
        res = run("ablate", FIX / "mlp_sigmoid.onnx", sigmoid_store, "--data", FIX / "mnist_demo.npz",
                  "--limit", "10", "--out", tmp_path / "a", "--device", "cuda", "--no-progress")
        assert_one_line_error(res, "device='cuda'")
        assert not (tmp_path / "a").exists()


def test_cuda_provider_gives_the_cpu_results(tmp_path):
    import onnxruntime as ort

    from infoprobe.store import Store

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA execution provider (onnxruntime-gpu)")
    for provider in ("cpu", "cuda"):
        res = run("capture", FIX / "mlp_sigmoid.onnx", "--data", FIX / "mnist_demo.npz", "--limit", "200",
                  "--out", tmp_path / f"{provider}.h5", "--provider", provider, "--no-progress")
        assert res.exit_code == 0, res.output
    with Store(tmp_path / "cpu.h5") as a, Store(tmp_path / "cuda.h5") as b:
        np.testing.assert_allclose(a.read("fc2"), b.read("fc2"), atol=1e-5)
