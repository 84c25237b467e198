"""``infoprobe modules``: modules of networks from their weights, tested by lesions."""
from __future__ import annotations

from pathlib import Path

import click

from infoprobe.analyses.modules import ModulesConfig

from .options import (config_option, data_options, max_size_option, out_dir_option, progress_option, read_data, result_options,
                      size, with_options, wrote)


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option
@with_options(data_options(required=False, help="Labelled test data for the lesion tests (without it: clustering "
                                                "and clusterability only)."))
@config_option(ModulesConfig, "n_clusters", "--clusters")
@config_option(ModulesConfig, "kind", "--graph")
@config_option(ModulesConfig, "eigen_solver", "--eigen-solver")
@config_option(ModulesConfig, "n_random", "--random")
@config_option(ModulesConfig, "n_shuffles", "--shuffles")
@click.option("--shuffle", "variant", type=click.Choice(["all", "nonzero", "both"]), default="all", show_default=True,
              help="Permute every weight of each layer, only the non-zero ones (keeps a pruned network's "
                   "sparsity), or both.")
@config_option(ModulesConfig, "lesion", "--lesion")
@config_option(ModulesConfig, "n_double", "--double-random")
@config_option(ModulesConfig, "alpha", "--alpha")
@config_option(ModulesConfig, "min_drop", "--min-drop")
@config_option(ModulesConfig, "small_fraction", "--small-fraction")
@config_option(ModulesConfig, "small_units", "--small-units")
@config_option(ModulesConfig, "visualise", "--visualise/--no-visualise")
@click.option("--plan", "plan_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a pruning plan removing the units of 'prunable' sub-clusters (one model only).")
@with_options(result_options)
@click.option("--json", "as_json", is_flag=True, help="Print the network-level results as JSON.")
@max_size_option
@progress_option
def modules(sources, out, data_path, split, scale, x_key, y_key, limit, variant, plan_out, seed, plot, overwrite,
            as_json, max_model_size, progress, **params):
    """Modules of a network from its weights: spectral clustering, clusterability, lesion tests.

    Graphifies each SOURCE (an ONNX model, or an activation store's saved weights), splits it
    into --clusters clusters by normalised spectral clustering and compares its n-cut with
    --shuffles networks whose layer weights are shuffled. With --data, lesions every
    sub-cluster (the units of one cluster in one hidden layer) and --random random
    sub-clusters of the same size and layer: importance (change of the mean per-class test
    accuracy, left-sided p) and output coherence (class-wise range, right-sided p), combined
    over the network by Fisher's method and a chi-squared test of p-value ranks; a taxonomy;
    double lesions of important sub-clusters and their dependency graph; correlation-based
    visualisations. Several SOURCES get one folder each under --out and a networks table
    with Benjamini-Hochberg and Holm-Bonferroni adjusted p values.

    \b
    Examples:
      infoprobe modules model.onnx --out modules/ --shuffles 20
      infoprobe modules model.onnx --data fashion.npz --split test --out modules/
      infoprobe modules pruned.onnx --data fashion.npz --split test --shuffle both --plan prunable.json --out m/
      infoprobe modules net1.onnx net2.onnx net3.onnx --data fashion.npz --split test --out modules/
    """
    from infoprobe.analyses.modules.family import modules_family
    from infoprobe.store import is_store_path

    if plan_out and (len(sources) > 1 or not data_path or is_store_path(sources[0])):
        raise click.UsageError("--plan needs --data and a single ONNX model")
    fam = modules_family(
        sources, read_data(data_path, split, x_key, y_key, limit), out=out, plan=plan_out, overwrite=overwrite,
        plot=plot, max_model_bytes=size(max_model_size), progress=progress,
        variants=("all", "nonzero") if variant == "both" else (variant,), seed=seed, scale=scale, **params)
    if as_json:
        click.echo(fam.to_json())
        return
    click.echo(fam.summary())
    wrote(fam.files)
