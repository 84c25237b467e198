"""The ``infoprobe`` command group."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from infoprobe import __version__
from infoprobe.errors import InfoprobeError
from infoprobe.model import DEFAULT_MAX_BYTES

SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _size(value: str) -> int:
    v = value.strip().upper().removesuffix("B").removesuffix("I")
    unit = v[-1] if v and v[-1] in "KMG" else ""
    try:
        return int(float(v[: len(v) - len(unit)]) * SIZE_UNITS[unit])
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 2G or 500M") from None


class Group(click.Group):
    """Prints an InfoprobeError's message on one line and exits with status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InfoprobeError as exc:
            click.echo(f"infoprobe: error: {exc}", err=True)
            sys.exit(2)


def _csv_list(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


max_size_option = click.option("--max-model-size", default=str(DEFAULT_MAX_BYTES // 1024**3) + "G",
                               show_default=True, help="Refuse models (with external data) larger than this.")
progress_option = click.option("--progress/--no-progress", default=True, help="Show progress bars (on stderr).")


def _load(path, max_model_size):
    from infoprobe.model import load_model

    return load_model(path, max_bytes=_size(max_model_size))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="infoprobe")
def cli():
    """Information-theoretic analysis of trained neural networks from ONNX and HDF5.

    \b
    A typical session:
      infoprobe inspect model.onnx
      infoprobe capture model.onnx --data mnist.npz --split validation --out acts.h5
      infoprobe importance acts.h5 --out results/
      infoprobe ablate model.onnx acts.h5 --data mnist.npz --split test --out results/

    Errors caused by inputs print one line and exit with status 2.
    """


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@max_size_option
def inspect(model, as_json, max_model_size):
    """List the unit layers of MODEL (name, kind, units, activation, fan-in, depth, inputs).

    \b
    Example:
      infoprobe inspect fixtures/mlp_sigmoid.onnx --json
    """
    lm = _load(model, max_model_size)
    if as_json:
        click.echo(json.dumps({"model": str(model), "sha256": lm.sha256, "input": lm.input_name,
                               "input_shape": list(lm.input_shape), "output": lm.output_name,
                               "layers": [lay.to_dict() for lay in lm.layers],
                               "unsupported": lm.unsupported}, indent=1))
        return
    click.echo(f"{model}  input {lm.input_name} {list(lm.input_shape)}  output {lm.output_name}")
    head = f"{'layer':<24} {'kind':<6} {'op':<24} {'units':>6} {'activation':<11} {'fan-in':>7} {'depth':>5}  inputs"
    click.echo(head)
    click.echo("-" * len(head))
    for lay in lm.layers:
        click.echo(f"{lay.name:<24} {lay.kind:<6} {lay.op:<24} {lay.units:>6} {lay.activation:<11} "
                   f"{lay.fan_in:>7} {lay.depth:>5}  {','.join(lay.inputs) or '(input)'}"
                   + ("  [output]" if lay.is_output else ""))
    for u in lm.unsupported:
        click.echo(f"not interpreted: {u['node']} ({u['op']}): {u['reason']}")


data_options = [
    click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                 help=".npz (x, y, optional split), .npy or .h5 file of samples."),
    click.option("--split", default=None, help="Split of the data file: all, train, validation, test or a number."),
    click.option("--scale", default="auto", show_default=True,
                 help="Input multiplier; auto = 1/255 for uint8 data, else 1."),
    click.option("--x-key", default="x", show_default=True, help="Array of samples in the data file."),
    click.option("--y-key", default="y", show_default=True, help="Array of labels in the data file."),
    click.option("--limit", type=int, default=None, help="Use only the first N samples of the split."),
]


def _with(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_with(data_options)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Store to write (.h5).")
@click.option("--layers", default=None, help="Comma-separated unit layers (default: all).")
@click.option("--batch-size", default=512, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace an existing store (kept until the new one is complete).")
@max_size_option
@progress_option
def capture(model, data_path, split, scale, x_key, y_key, limit, out, layers, batch_size, overwrite,
            max_model_size, progress):
    """Run MODEL over a data set and store every unit layer's activations in HDF5.

    Pre- and post-activations, labels, and each layer's incoming weights and bias are
    written. An interrupted capture resumes where it stopped when run again.

    \b
    Example:
      infoprobe capture model.onnx --data mnist.npz --split validation --out acts.h5
    """
    from infoprobe.analyses.capture import capture as run
    from infoprobe.data import load_data

    lm = _load(model, max_model_size)
    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit)
    path = run(lm, data, out, layers=_csv_list(layers), batch_size=batch_size, scale=scale,
               overwrite=overwrite, progress=progress)
    click.echo(f"wrote {path} ({len(data)} samples, {len(_csv_list(layers) or lm.layers)} layers)")


@cli.command()
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", default="infoprobe-results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--layers", default=None, help="Comma-separated layers (default: hidden layers).")
@click.option("--which", type=click.Choice(["post", "pre"]), default="post", show_default=True)
@click.option("--quantizer", type=click.Choice(["threshold", "uniform", "quantile"]), default="threshold",
              show_default=True, help="One bit at a threshold, or equal-width / quantile bins.")
@click.option("--bins", default=2, show_default=True, type=int, help="Bins for uniform/quantile.")
@click.option("--threshold", type=float, default=None,
              help="One-bit threshold (default by activation: 0.5 sigmoid, 0 ReLU/tanh).")
@click.option("--js/--no-js", default=True, show_default=True, help="JS subset separation (<= 20 classes).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--plot/--no-plot", default=True, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing result files in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print per-layer means as JSON.")
@progress_option
def importance(store, out, layers, which, quantizer, bins, threshold, js, device, plot, overwrite, as_json, progress):
    """Entropy, MI, KL selectivity, JS subset separation and labeled MI of every unit (bits).

    Writes importance.csv/json (one row per unit), specific_information.csv/json (one row
    per unit and class) and importance.png to --out.

    \b
    Example:
      infoprobe importance acts.h5 --out results/ --quantizer quantile --bins 4
    """
    from infoprobe.analyses.importance import Quantizer, importance as run
    from infoprobe.report import plot_importance

    res = run(store, layers=_csv_list(layers), which=which, js=js, device=device, progress=progress,
              quantizer=Quantizer(method=quantizer, bins=bins, threshold=threshold))
    files = res.save(out, overwrite=overwrite)
    if plot:
        files.append(plot_importance(res.units, out / "importance.png"))
    means = {lay: {m: float(res.measure(lay, m).mean()) for m in
                   ("entropy", "mutual_information", "kl_selectivity", "labeled_mi")} for lay in res.layers()}
    if as_json:
        click.echo(json.dumps({"files": [str(f) for f in files], "mean_bits": means}, indent=1))
        return
    click.echo(f"{'layer':<20} {'H':>7} {'I(T;Y)':>7} {'KL sel':>7} {'lab.MI':>7}   (means, bits)")
    for lay, m in means.items():
        click.echo(f"{lay:<20} {m['entropy']:7.3f} {m['mutual_information']:7.3f} "
                   f"{m['kl_selectivity']:7.3f} {m['labeled_mi']:7.3f}")
    click.echo("wrote " + ", ".join(str(f) for f in files))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@_with(data_options)
@click.option("--out", default="infoprobe-results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--measure", "measures", default="mutual_information,kl_selectivity", show_default=True,
              help="Comma-separated rankings: entropy, mutual_information, kl_selectivity, "
                   "js_subset_separation, labeled_mi.")
@click.option("--order", type=click.Choice(["low", "high", "both"]), default="low", show_default=True,
              help="Ablate lowest- or highest-ranked units first.")
@click.option("--value", type=click.Choice(["zero", "mean", "both"]), default="both", show_default=True,
              help="Ablate to zero, or bias balancing (to the unit's mean, eq. 7).")
@click.option("--scope", type=click.Choice(["layer", "network", "both"]), default="layer", show_default=True)
@click.option("--layers", default=None, help="Comma-separated hidden layers (default: all in the store).")
@click.option("--random-repeats", default=5, show_default=True, type=int, help="Random baseline repeats (0: none).")
@click.option("--steps", "n_steps", type=int, default=None, help="Points per curve (default: every unit count up to 100).")
@click.option("--hybrid", default=None,
              help="Hybrid scheme, e.g. 'fc1=mutual_information:1,fc2=kl_selectivity:2'.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--batch-size", default=4096, show_default=True, type=int)
@click.option("--plot/--no-plot", default=True, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing result files in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the 50%%-ablated accuracies as JSON.")
@max_size_option
@progress_option
def ablate(model, store, data_path, split, scale, x_key, y_key, limit, out, measures, order, value, scope,
           layers, random_repeats, n_steps, hybrid, seed, batch_size, plot, overwrite, as_json,
           max_model_size, progress):
    """Cumulatively ablate units of MODEL ranked by the measures from STORE; record accuracy.

    Measures (and bias-balancing means) come from STORE (e.g. the validation split);
    accuracy is measured on --data (e.g. the test split). One onnxruntime session serves
    the whole sweep. Writes ablation.csv/json and ablation_<scope>.png to --out.

    \b
    Example:
      infoprobe ablate model.onnx acts.h5 --data mnist.npz --split test --scope both \\
          --hybrid 'fc1=mutual_information:1,fc2=kl_selectivity:2' --out results/
    """
    from infoprobe.analyses.ablation import cumulative_ablation, parse_hybrid
    from infoprobe.data import load_data
    from infoprobe.report import plot_ablation

    lm = _load(model, max_model_size)
    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit)
    res = cumulative_ablation(
        lm, store, data, measures=_csv_list(measures) or [],
        orders=("low", "high") if order == "both" else (order,),
        values=("zero", "mean") if value == "both" else (value,),
        scopes=("layer", "network") if scope == "both" else (scope,), layers=_csv_list(layers),
        n_steps=n_steps, random_repeats=random_repeats, seed=seed,
        hybrid=parse_hybrid(hybrid) if hybrid else None, scale=scale, batch_size=batch_size, progress=progress)
    files = res.save(out, overwrite=overwrite)
    if plot:
        for s in ("layer", "network", "hybrid"):
            p = plot_ablation(res.rows, out / f"ablation_{s}.png", scope=s)
            if p:
                files.append(p)
    table = res.layer_table(0.5)
    if as_json:
        click.echo(json.dumps({"files": [str(f) for f in files], "baseline_accuracy": res.params["baseline_accuracy"],
                               "accuracy_at_50_percent_ablated": table}, indent=1))
        return
    click.echo(f"baseline test accuracy {res.params['baseline_accuracy']:.4f}")
    _print_fifty(table)
    click.echo("wrote " + ", ".join(str(f) for f in files))


def _print_fifty(table):
    click.echo("accuracy with 50% of a layer's units ablated:")
    click.echo(f"  {'layer':<14} {'ranking':<34} {'to zero':>8} {'bias bal.':>9}")
    for r in table:
        name = r["ranking"] if r["order"] == "-" else f"{r['ranking']} ({r['order']} first)"
        zero, mean = (f"{r[k]:.4f}" if k in r else "-" for k in ("accuracy_zero", "accuracy_mean"))
        click.echo(f"  {r['layer']:<14} {name:<34} {zero:>8} {mean:>9}")


@cli.command()
@click.option("--out", default="infoprobe-demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--steps", "n_steps", type=int, default=None, help="Points per ablation curve (default: all).")
@click.option("--random-repeats", default=5, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@progress_option
def demo(out, n_steps, random_repeats, as_json, progress):
    """Capture -> importance -> ablation on the bundled sigmoid MLP and MNIST images.

    Uses fixtures/mlp_sigmoid.onnx (784-100-100-10) with 2,000 validation images for the
    measures and 2,000 test images for accuracy; writes tables, PNG plots and
    summary.json to --out.

    \b
    Example:
      infoprobe demo --out infoprobe-demo
    """
    from infoprobe.analyses.demo import run_demo

    summary = run_demo(out, n_steps=n_steps, random_repeats=random_repeats, progress=progress)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"model {summary['model']}: baseline test accuracy {summary['baseline_accuracy']:.4f} "
               f"({summary['n_test']} test images; measures from {summary['n_validation']} validation images)")
    click.echo("mean single-unit measures (bits):")
    for lay, m in summary["mean_importance_bits"].items():
        click.echo(f"  {lay:<6} H {m['entropy']:.3f}  I(T;Y) {m['mutual_information']:.3f}  "
                   f"KL selectivity {m['kl_selectivity']:.3f}")
    _print_fifty(summary["accuracy_at_50_percent_ablated"])
    click.echo(f"results in {out}/: " + ", ".join(summary["files"]))


def main():
    """Console-script entry point."""
    cli(prog_name="infoprobe")


if __name__ == "__main__":
    main()
