"""``infoprobe ablate``: cumulative ablation of units ranked by information measures."""
from __future__ import annotations

from pathlib import Path

import click

from infoprobe.analyses.ablation import AblationConfig

from .options import (config_option, csv_list, data_options, echo_json, load, max_size_option, progress_option, read_data,
                      with_options, wrote)


def _both(value, pair):
    return pair if value == "both" else (value,)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@with_options(data_options())
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
@config_option(AblationConfig, "random_repeats", "--random-repeats")
@config_option(AblationConfig, "n_steps", "--steps", type=int, show_default=False)
@click.option("--hybrid", default=None,
              help="Hybrid scheme, e.g. 'fc1=mutual_information:1,fc2=kl_selectivity:2'.")
@click.option("--seed", default=0, show_default=True, type=int)
@config_option(AblationConfig, "batch_size", "--batch-size")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the information measures that rank the units are computed (NumPy or CuPy).")
@click.option("--replicate", "replicates", multiple=True, metavar="MODEL STORE",
              type=(click.Path(dir_okay=False, path_type=Path), click.Path(dir_okay=False, path_type=Path)),
              help="Another network of the same architecture and its store (repeat the option): the curves are "
                   "averaged over all networks, with sd, median and a 95% interval; the plots draw the spread.")
@click.option("--plot/--no-plot", default=True, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing result files in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the accuracies with 50 percent of the units ablated as JSON.")
@max_size_option
@progress_option
def ablate(model, store, data_path, split, scale, x_key, y_key, limit, out, measures, order, value, scope,
           layers, random_repeats, n_steps, hybrid, seed, batch_size, device, replicates, plot, overwrite, as_json,
           max_model_size, progress):
    """Cumulatively ablate units of MODEL ranked by the measures from STORE; record accuracy.

    Measures (and bias-balancing means) come from STORE (e.g. the validation split);
    accuracy is measured on --data (e.g. the test split). One onnxruntime session serves
    the whole sweep. Writes ablation.csv/json and ablation_<scope>.png to --out.

    With --replicate, every network is ablated alike (one seed) and ablation.csv/json hold
    the mean, standard deviation, median and 95% interval across networks per curve point;
    ablation_replicates.csv/json each network's own rows.

    \b
    Examples:
      infoprobe ablate model.onnx acts.h5 --data mnist.npz --split test --scope both \\
          --hybrid 'fc1=mutual_information:1,fc2=kl_selectivity:2' --out results/
      infoprobe ablate net1.onnx acts1.h5 --replicate net2.onnx acts2.h5 \\
          --replicate net3.onnx acts3.h5 --data mnist.npz --split test --out replicates/
    """
    from infoprobe.analyses.ablation import cumulative_ablation, parse_hybrid, replicate_ablation

    data = read_data(data_path, split, x_key, y_key, limit)
    lm = load(model, max_model_size)
    kw = dict(measures=csv_list(measures) or [], orders=_both(order, ("low", "high")),
              values=_both(value, ("zero", "mean")), scopes=_both(scope, ("layer", "network")), layers=csv_list(layers),
              n_steps=n_steps, random_repeats=random_repeats, seed=seed,
              hybrid=parse_hybrid(hybrid) if hybrid else None, scale=scale, batch_size=batch_size, device=device,
              progress=progress)
    if replicates:
        pairs = [(lm, store)] + [(load(m, max_model_size), st) for m, st in replicates]
        res = replicate_ablation(pairs, data, **kw)
    else:
        res = cumulative_ablation(lm, store, data, **kw)
    files = res.save(out, overwrite=overwrite)
    if plot:
        files += res.plot(out)
    table = res.layer_table(0.5)
    if as_json:
        echo_json({"files": [str(f) for f in files], "baseline_accuracy": res.params["baseline_accuracy"],
                   "accuracy_at_50_percent_ablated": table})
        return
    click.echo(res.summary(0.5))
    wrote(files)
