"""``infoprobe synergy``: synergistic and redundant multiplets of units (O-information)."""
from __future__ import annotations

from pathlib import Path

import click

from infoprobe.analyses.plans import ALIASES, REPLACEMENTS

from .options import (csv_list, data_options, echo_json, max_size_option, progress_option, read_data,
                      result_options, size, to_stderr, with_options, wrote)


def _exhaustive(ctx, param, value):
    """--exhaustive-up-to: "auto", a size, sizes per layer (LAYER=K,...) or a synergy.json."""
    from infoprobe.analyses.synergy import recorded_sizes
    from infoprobe.errors import InfoprobeError

    text = str(value).strip()
    if text.lower() == "auto":
        return "auto"
    if text.isdigit():
        return int(text)
    if "=" in text:
        sizes = {}
        for item in csv_list(text):
            name, _, k = item.rpartition("=")
            if not name.strip() or not k.strip().isdigit():
                raise click.BadParameter(f"{item!r} is not LAYER=SIZE (e.g. fc1=4)", ctx, param)
            sizes[name.strip()] = int(k)
        return sizes
    try:
        return recorded_sizes(text)
    except InfoprobeError as exc:
        raise click.BadParameter(f"{text!r} is not auto, a size, LAYER=SIZE,... or a synergy.json: {exc}",
                                 ctx, param) from None


def _announce_estimate(est, progress: bool) -> None:
    """The synergy search plan with the progress bars; its warning (far over budget) always."""
    if progress:
        to_stderr("\n".join(est.lines()))
    elif est.warning():
        to_stderr(f"infoprobe: warning: {est.warning().removeprefix('WARNING: ')}")


@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", default="infoprobe-results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--layers", default=None, help="Comma-separated layers (default: hidden layers common to all stores).")
@click.option("--which", type=click.Choice(["pre", "post"]), default="pre", show_default=True,
              help="Pre-activations (the paper's choice: post-ReLU values tie at 0) or post-activations.")
@click.option("--labels", type=click.Choice(["exact", "ordinal", "none"]), default="exact", show_default=True,
              help="The label in every multiplet: exact mixed discrete/continuous entropies, ordinal "
                   "(copula-normalised like a unit, as hoi), or none.")
@click.option("--max-size", default=10, show_default=True, type=int, help="Largest multiplet (units).")
@click.option("--exhaustive-up-to", default="auto", show_default=True, metavar="auto|K|LAYER=K,...|SYNERGY.JSON",
              callback=_exhaustive,
              help="Search every multiplet up to this size, greedy beyond. auto: per layer, the largest "
                   "size whose estimated time fits --budget (estimated from counts and a fixed cost model, "
                   "never timed: the same inputs give the same sizes). K: every layer; LAYER=K,...: each "
                   "layer (e.g. fc1=4,fc2=3); a synergy.json: the sizes an earlier run used, to replay it "
                   "exactly (e.g. --exhaustive-up-to results/synergy.json).")
@click.option("--budget", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Time for the whole search (every layer and store) as the cost model "
                                      "estimates it, from which --exhaustive-up-to auto picks the sizes; a "
                                      "layer whose next size would exceed its share stops below it (e.g. "
                                      "--budget 600).")
@click.option("--keep", default=1, show_default=True, type=int, help="Multiplets kept per size and direction.")
@click.option("--ties", type=click.Choice(["average", "ordinal"]), default="average", show_default=True,
              help="Copula ranks of tied activations: average (order-free) or by order of appearance (hoi).")
@click.option("--bias-correct/--no-bias-correct", default=True, show_default=True,
              help="Ince et al.'s analytic bias correction of each Gaussian entropy.")
@click.option("--max-samples", type=int, default=None,
              help="Use a seeded random subset of the samples; also what shrinks a layer whose samples do not "
                   "fit in --max-memory (e.g. --max-samples 20000).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None,
              help="CPU threads for the search (default: all cores). The plan counts this many threads, or "
                   "one when not given, so that it does not depend on the machine (e.g. --threads 8).")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The network of the first store: needed by --plan and --data.")
@click.option("--plan", "plan_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a pruning plan keeping only each layer's most synergistic multiplet.")
@click.option("--plan-size", type=int, default=None, help="Multiplet size kept by --plan and tested by --data "
                                                          "(default: --max-size).")
@click.option("--replace", type=click.Choice([*REPLACEMENTS, *ALIASES]), default="zero", show_default=True,
              help="Constants for removed or ablated units (mean: bias balancing from the store).")
@with_options(data_options(required=False, help="Labelled test data: compare ablating the synergistic multiplet "
                                                "with GC-MI-ranked and random units (writes "
                                                "multiunit_importance.csv)."))
@click.option("--random-repeats", default=20, show_default=True, type=int, help="Random selections per layer.")
@with_options(result_options)
@click.option("--json", "as_json", is_flag=True, help="Print the profiles (and importance) as JSON.")
@max_size_option
@progress_option
def synergy(stores, out, layers, which, labels, max_size, exhaustive_up_to, budget, keep, ties, bias_correct,
            max_samples, device, threads, model, plan_out, plan_size, replace, data_path, split, scale, x_key, y_key,
            limit, random_repeats, seed, plot, overwrite, as_json, max_model_size, progress):
    """Synergy and redundancy of multiplets of units: Gaussian-copula O-information (bits).

    For every layer of every STORE, finds the most synergistic (lowest O-information) and
    most redundant (highest) multiplet of k units together with the class label, for
    k = 2..--max-size: exhaustively up to --exhaustive-up-to, greedily beyond. By default
    the exhaustive size of each layer is the largest whose estimated time fits --budget,
    estimated from counts (units, classes, multiplets) and a fixed cost model, never timed:
    the same inputs give the same sizes and tables under any load. The sizes, multiplets,
    estimated times and why each size stops there are printed on stderr before the search
    starts (--progress) and written to synergy.json (meta.estimate), whose sizes replay the
    run (--exhaustive-up-to synergy.json). Every layer's model is checked against
    --max-memory before any activation is read. Several
    stores (e.g. one network trained from several seeds) give profiles averaged over
    networks. Writes synergy.csv/json (best multiplets), synergy_profile.csv/json and
    synergy.png (bars per layer and size) to --out.

    \b
    Examples:
      infoprobe synergy acts.h5 --out results/
      infoprobe synergy acts.h5 --budget 600 --out results/
      infoprobe synergy acts.h5 --exhaustive-up-to 6 --out results/
      infoprobe synergy acts.h5 --exhaustive-up-to results/synergy.json --out again/
      infoprobe synergy wide.h5 --layers fc1 --max-samples 20000 --max-memory 8G
      infoprobe synergy seed1.h5 seed2.h5 seed3.h5 --max-size 8 --labels ordinal
      infoprobe synergy acts.h5 --model model.onnx --plan keep_synergy.json --plan-size 10
      infoprobe synergy acts.h5 --model model.onnx --data mnist.npz --split test
    """
    from infoprobe.analyses.synergy import synergy_study

    if (plan_out or data_path) and model is None:
        raise click.UsageError("--plan and --data need --model (the network of the first store)")
    study = synergy_study(
        list(stores), out=out, model=model, data=read_data(data_path, split, x_key, y_key, limit), plan=plan_out,
        plan_size=plan_size, replace=replace, random_repeats=random_repeats, seed=seed, scale=scale,
        overwrite=overwrite, plot=plot, max_model_bytes=size(max_model_size), layers=csv_list(layers), which=which,
        labels=labels, max_size=max_size, exhaustive_up_to=exhaustive_up_to, budget=budget, keep=keep, ties=ties,
        biascorrect=bias_correct, max_samples=max_samples, device=device, threads=threads, progress=progress,
        on_estimate=lambda est: _announce_estimate(est, progress))
    if as_json:
        echo_json(study.to_dict())
        return
    click.echo(study.summary())
    wrote(study.files)
