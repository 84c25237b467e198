"""The end-to-end demo: capture -> importance -> cumulative ablation -> prune -> check on the
bundled sigmoid MLP, synergy profiles of the bundled ReLU MLPs, the modules of the bundled
pruned Fashion-MNIST MLP, and the frivolous units of a width family and of the sigmoid MLP."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..data import load_data
from ..errors import OutputExistsError
from ..htmlreport import headlines, largest_multiplets, write_report
from ..model import load_model
from ..report import plot_ablation, plot_importance, plot_synergy
from ..results import atomic_write_bytes, plain
from ..store import Store
from .ablation import cumulative_ablation
from .capture import capture
from .check import check
from .compress import prune_model
from .flow import flow_series
from .frivolous import frivolous, refactor_plan, width_sweep
from .importance import importance
from .modules import modules
from .plans import make_plan
from .synergy import synergy

#: Width factors of the bundled synthetic-data family (frivolous-units paper, 128 units at 1x).
WIDTHS = ("0.25", "0.5", "1", "2", "4")

#: The 784-20-20-20-10 ReLU MLP trained from five seeds (O-information paper's architecture).
RELU_NETWORKS = ("mlp_relu", "mlp_relu_s2", "mlp_relu_s3", "mlp_relu_s4", "mlp_relu_s5")

MARKER = ".infoprobe-demo"


def fixture_path(name: str) -> Path:
    """Path of a bundled fixture file (``infoprobe.fixtures``)."""
    return Path(str(resources.files("infoprobe.fixtures") / name))


def run_demo(out="infoprobe-demo", *, n_steps: int | None = None, random_repeats: int = 5,
             progress: bool = True) -> dict:
    """Run the demo on the bundled sigmoid MLP and MNIST images; write results to ``out``.

    Steps: capture the validation split (2,000 images) of ``mnist_demo.npz`` through
    ``mlp_sigmoid.onnx``; compute single-unit measures (one-bit quantizer, bits); ablate
    units cumulatively per layer and over the whole network (lowest MI / KL selectivity
    first, and random), with and without bias balancing, on the test split; the hybrid
    scheme of Section 6 (fc1 by MI, fc2 by KL selectivity, ratio 1:2); then a physically
    pruned model (30% of the hidden units merged data-free, with bias balancing) checked
    against the original by the CI gate (``check.md``, ``check.xml``). Finally the synergy and
    redundancy profiles (O-information with the label, exhaustive up to 6 units, greedy to 8)
    of the five bundled ReLU MLPs on the test split (``synergy*.csv``, ``synergy.png``). Last,
    the modules of the 90%-pruned 4x256 Fashion-MNIST MLP: 12 spectral clusters, n-cut against
    10 shuffled networks, lesion tests of every sub-cluster against 20 random ones on 2,000
    Fashion-MNIST test images, double lesions and visualisations (``modules/``). Then the
    frivolous units of the five bundled synthetic-data MLPs of widths 1/4x ... 4x (prunable
    and redundant units per width and the gain g, ``frivolous/``), and the sigmoid MLP
    refactored into a thinner ONNX without its redundant units (tolerance 0.05,
    ``frivolous/thin.onnx``), fitted on the validation split and checked against the original
    on the test split. Last, the information flow of the single noisy tanh neuron of Goldfeld et
    al. (Section 4) over its 25 training checkpoints, gradient-descent steps 0 to 300,000 read
    from the file names (beta = 0.01, ``flow/``).

    ``out`` may be reused only if it is absent, empty, or an earlier demo's folder.

    Returns
    -------
    dict
        The summary also written to ``out/summary.json``. Its ``synergy`` entry holds the
        profile rows the report's synergy headline quotes
        (:func:`infoprobe.htmlreport.largest_multiplets`: mean O-information in bits of the
        largest multiplets), and ``headlines`` the report's synergy and flow sentences
        (:func:`infoprobe.htmlreport.headlines`), from the same result files.

    Raises
    ------
    OutputExistsError
        ``out`` holds files that a demo did not write.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise OutputExistsError(f"{out} exists and was not written by the demo; choose another out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    lm = load_model(fixture_path("mlp_sigmoid.onnx"))
    data_file = fixture_path("mnist_demo.npz")
    val = load_data(data_file, split="validation")
    test = load_data(data_file, split="test")
    with Store(capture(lm, val, out / "acts.h5", overwrite=True, progress=progress)) as store:
        imp = importance(store, progress=progress)
        imp.save(out, overwrite=True)
        abl = cumulative_ablation(lm, store, test, importance=imp,
                                  measures=("mutual_information", "kl_selectivity"), orders=("low",),
                                  values=("zero", "mean"), scopes=("layer", "network"),
                                  hybrid={"fc1": ("mutual_information", 1.0), "fc2": ("kl_selectivity", 2.0)},
                                  n_steps=n_steps, random_repeats=random_repeats, progress=progress)
        plan = make_plan(lm, "merge", 0.3, store=store, replace="mean")
    plan.save(out / "plan.json", overwrite=True)
    pruned = prune_model(lm, plan, out / "pruned.onnx", data=test, overwrite=True, repeats=10)
    gate = check(lm.path, out / "pruned.onnx", test, thresholds={"max_label_change": 0.03,
                                                                 "max_accuracy_drop": 0.01, "max_class_drop": 0.05})
    atomic_write_bytes(out / "check.md", gate.markdown().encode())
    atomic_write_bytes(out / "check.xml", gate.junit_xml())
    atomic_write_bytes(out / "check.json", json.dumps(plain(gate.to_dict()), indent=1, allow_nan=False).encode())
    relu_stores = [capture(fixture_path(f"{n}.onnx"), test, out / f"acts_{n}.h5", overwrite=True, progress=False)
                   for n in RELU_NETWORKS]
    syn = synergy(relu_stores, max_size=8, exhaustive_up_to=6, progress=progress)
    syn.save(out, overwrite=True)
    plot_synergy(syn.profiles, out / "synergy.png")
    fashion = load_data(fixture_path("fashion_demo.npz"), split="test")
    mod = modules(fixture_path("fashion_mlp_pruned.onnx"), fashion, n_shuffles=10, n_double=20, progress=progress)
    mod.save(out / "modules", overwrite=True)
    mod.plot(out / "modules")
    synth = load_data(fixture_path("synthetic_10d.npz"), split="test")
    family = [frivolous(fixture_path(f"synth_mlp_w{w}.onnx"), synth, seed=0, progress=progress) for w in WIDTHS]
    for w, res in zip(WIDTHS, family):
        res.save(out / "frivolous" / f"w{w}", overwrite=True)
    sweep = width_sweep(family)
    sweep.save(out / "frivolous", overwrite=True)
    sweep.plot(out / "frivolous")
    thin_plan, thin_rows = refactor_plan(lm, val, tolerance=0.05, progress=progress)
    thin_plan.save(out / "frivolous" / "refactor_plan.json", overwrite=True)
    thin = prune_model(lm, thin_plan, out / "frivolous" / "thin.onnx", data=test, overwrite=True, repeats=10)
    toy_files = sorted(Path(str(p)) for p in resources.files("infoprobe.fixtures").iterdir()
                       if p.name.startswith("toy_tanh_k") and p.name.endswith(".onnx"))
    toy = flow_series(toy_files, load_data(fixture_path("toy_tanh.npz")), beta=0.01, n_mc=20_000, unit="bits",
                      progress=False)                  # steps from the names: toy_tanh_k000046 is step 46
    toy.save(out / "flow", overwrite=True)
    toy.plot(out / "flow")
    abl.save(out, overwrite=True)
    plot_importance(imp.units, out / "importance.png")
    for scope in ("layer", "network", "hybrid"):
        plot_ablation(abl.rows, out / f"ablation_{scope}.png", scope=scope)
    summary = {
        "model": lm.path.name, "baseline_accuracy": abl.params["baseline_accuracy"],
        "n_validation": len(val), "n_test": len(test),
        "mean_importance_bits": {lay: {m: float(imp.measure(lay, m).mean())
                                       for m in ("entropy", "mutual_information", "kl_selectivity")}
                                 for lay in imp.layers()},
        "accuracy_at_50_percent_ablated": abl.layer_table(0.5),
        "pruned": {"plan": "merge 30% of hidden units, bias balanced",
                   "parameters": [pruned["original"]["parameters"], pruned["pruned"]["parameters"]],
                   "accuracy": [pruned["verification"]["accuracy_original"], pruned["verification"]["accuracy_pruned"]],
                   "label_agreement": pruned["verification"]["label_agreement_with_original"],
                   "latency_ratio": pruned["ratios"]["latency"], "check_passed": gate.passed},
        "synergy": {"networks": list(RELU_NETWORKS), "largest_multiplets": [
            {k: r[k] for k in ("layer", "direction", "size", "method", "mean")}
            for _, r in largest_multiplets(syn.profiles)]},
        "modules": {"model": "fashion_mlp_pruned.onnx", **{k: mod.network[k] for k in (
            "ncut", "clusterability_p_all", "clusterability_z_all", "fisher_importance", "chi2_importance",
            "fisher_coherence", "chi2_coherence", "categories")}},
        "frivolous": {
            "widths": [float(w) for w in WIDTHS],
            "prunable_normalised": [r["prunable_norm"] for r in sweep.rows if r["layer"] == "all"],
            "redundant_normalised": [r["redundant_norm"] for r in sweep.rows if r["layer"] == "all"],
            "g": {m: list(v) for m, v in sweep.g_range.items() if m in ("prunable", "redundant")},
            "refactored_model": lm.path.name,
            "units": [[r["units"], r["kept"]] for r in thin_rows],
            "label_agreement": thin["verification"]["label_agreement_with_original"],
            "max_abs_logit_diff": thin["verification"]["max_abs_diff_original"]},
        "flow": {"model": "toy_tanh_k*.onnx", "beta": 0.01, "axis": toy.axis, "positions": toy.positions,
                 "toy_mi_bits": [r["mi"] for r in toy.trajectory]},
        "headlines": {sid: lines for sid, lines in headlines([out]).items() if sid in ("synergy", "flow")},
        "files": sorted({p.name for p in out.iterdir() if not p.name.startswith(".")} | {"summary.json", "report.html"}),
    }
    summary = _rounded(summary)            # for reading: the result tables keep every digit
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
    write_report([out], out / "report.html", title="infoprobe demo", overwrite=True)
    summary["report"] = str(out / "report.html")
    return summary


def _rounded(v, digits: int = 4):
    """``v`` with every float rounded to ``digits`` significant digits (lists and dicts too)."""
    if isinstance(v, float):
        return float(f"{v:.{digits}g}")
    if isinstance(v, dict):
        return {k: _rounded(x, digits) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x, digits) for x in v]
    return v
