"""``infoprobe frivolous``: prunable and redundant units of a model or a width family."""
from __future__ import annotations

from pathlib import Path

import click

from infoprobe.analyses.frivolous import FrivolousConfig

from .options import (config_option, csv_list, data_options, max_size_option, numbers, out_dir_option, progress_option, read_data,
                      result_options, size, with_options, wrote)


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option
@with_options(data_options(required=False, help="Test samples the units are measured on (needed for models; "
                                                "labels are not: predictions are compared with the intact "
                                                "network's)."))
@click.option("--sweep", is_flag=True,
              help="SOURCES are one architecture at several widths: add sweep tables, gains and plots.")
@click.option("--widths", default=None,
              help="Width factors of the swept models, e.g. 0.25,0.5,1,2,4 (default: hidden units / median).")
@click.option("--layers", default=None, help="Comma-separated hidden layers (default: all).")
@config_option(FrivolousConfig, "prune_tolerance", "--tolerance")
@config_option(FrivolousConfig, "agreement", "--agreement", type=float, show_default=False)
@config_option(FrivolousConfig, "redundancy_tolerance", "--redundancy-tolerance")
@click.option("--steps", default=7, show_default=True, type=int,
              help="Ablated fractions 0, 1/(steps-1), ..., 1 per curve.")
@config_option(FrivolousConfig, "n_permutations", "--permutations")
@click.option("--mode", type=click.Choice(["layer", "network", "both"]), default="both", show_default=True,
              help="Ablate one layer at a time, all layers at once, or both.")
@config_option(FrivolousConfig, "conv_units", "--conv-units")
@config_option(FrivolousConfig, "max_rows", "--max-rows")
@config_option(FrivolousConfig, "device", "--device")
@click.option("--plan-prunable", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a plan removing the prunable units (network mode, replaced by 0), for infoprobe prune.")
@click.option("--plan-redundant", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a plan removing the redundant units, refactored into the kept ones by least squares.")
@click.option("--thin", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the refactored thinner ONNX and check it against the original on --data.")
@with_options(result_options)
@click.option("--json", "as_json", is_flag=True, help="Print the tables as JSON.")
@max_size_option
@progress_option
def frivolous(sources, out, data_path, split, scale, x_key, y_key, limit, sweep, widths, layers, prune_tolerance,
              agreement, redundancy_tolerance, steps, n_permutations, mode, conv_units, max_rows, device, plan_prunable,
              plan_redundant, thin, seed, plot, overwrite, as_json, max_model_size, progress):
    """Frivolous units: how many units are prunable and how many redundant, per layer.

    Prunability (ONNX models, needs --data): a random permutation of a layer's units is
    ablated cumulatively (post-activations times 0) at the fractions 0, 1/6, ..., 1, and the
    fraction of predictions that stay unchanged is recorded; the prunable fraction is where
    that curve crosses 1 - --tolerance (linear interpolation; 1.0 when it never does), the
    largest over --permutations. Conv units are channel x position. For a model whose output
    is not class logits (a detector, a segmenter, an embedding model), a prediction is
    unchanged while its output moves by at most --agreement of its norm. Redundancy (models with
    --data, or activation stores): PCA of each layer's activations (conv: positions are
    samples); units beyond the components that leave --redundancy-tolerance of the variance
    unexplained are redundant. With --sweep, SOURCES are one architecture at several widths:
    counts normalised by the widest model, and the gain g (growth factor per doubling of the
    width; g > 2: frivolous units grow faster than the network). Method: Casper, Boix et al.,
    "Frivolous Units" (AAAI 2021).

    Memory: redundancy holds every chosen layer's U x U covariance sums (8 U^2 bytes each) and
    the unit-to-unit correlations of one layer at a time (4 U^2 bytes); over --max-memory the
    run is refused before any sample is read (choose fewer layers with --layers). The
    correlation violins keep at most a million pairs per layer, drawn at random; the table's
    mean and quantiles of |r| are those of every pair.

    \b
    Examples:
      infoprobe frivolous model.onnx --data test.npz --split test --out friv/
      infoprobe frivolous acts.h5 --out friv/                        # redundancy only
      infoprobe frivolous acts.h5 --layers fc1,fc2 --max-memory 2G --out friv/
      infoprobe frivolous model.onnx --data mnist.npz --split test --thin thin.onnx --out friv/
      infoprobe frivolous --sweep m_0.25.onnx m_0.5.onnx m_1.onnx m_2.onnx m_4.onnx \\
          --data synthetic_10d.npz --split test --out sweep/
    """
    from infoprobe.analyses.frivolous.family import frivolous_family
    from infoprobe.store import is_store_path

    if len(sources) > 1 and not sweep:
        raise click.UsageError("several SOURCES are analysed as a width family: pass --sweep")
    if sweep and len(sources) < 2:
        raise click.UsageError("--sweep needs at least two models")
    is_store = [is_store_path(s) for s in sources]
    if (plan_prunable or plan_redundant or thin) and (len(sources) > 1 or is_store[0] or not data_path):
        raise click.UsageError("--plan-prunable, --plan-redundant and --thin need one ONNX model and --data")
    if not all(is_store) and not data_path:
        raise click.UsageError("ONNX models need --data (or pass activation stores for redundancy only)")
    if steps < 2:
        raise click.BadParameter("--steps must be at least 2", param_hint="--steps")
    fam = frivolous_family(
        sources, read_data(data_path, split, x_key, y_key, limit), out=out, sweep=sweep,
        widths=numbers(widths, "--widths"), layers=csv_list(layers), prune_tolerance=prune_tolerance,
        agreement=agreement, redundancy_tolerance=redundancy_tolerance, fractions=[i / (steps - 1) for i in range(steps)],
        n_permutations=n_permutations, modes=("layer", "network") if mode == "both" else (mode,),
        conv_units=conv_units, max_rows=max_rows, device=device, seed=seed, scale=scale,
        plan_prunable=plan_prunable, plan_redundant=plan_redundant, thin=thin, overwrite=overwrite, plot=plot,
        max_model_bytes=size(max_model_size), progress=progress)
    if as_json:
        click.echo(fam.to_json())
        return
    click.echo(fam.summary())
    wrote(fam.files)
