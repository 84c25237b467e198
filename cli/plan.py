"""``infoprobe plan``: which units a pruning removes, and what replaces them."""
from __future__ import annotations

from pathlib import Path

import click

from infoprobe.analyses.plans import ALIASES, REPLACEMENTS

from .options import csv_list, echo_json, load, max_size_option


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--method", type=click.Choice(["measure", "hybrid", "random", "magnitude", "merge"]),
              default="measure", show_default=True, help="How units are chosen (see below).")
@click.option("--fraction", default="0.5", show_default=True,
              help="Fraction of units removed per layer (0.5 or fc1=0.3,fc2=0.6); hybrid: of all listed units.")
@click.option("--measure", default="mutual_information", show_default=True,
              help="Ranking for --method measure: entropy, mutual_information, kl_selectivity, "
                   "js_subset_separation, labeled_mi.")
@click.option("--hybrid", default="", help="For --method hybrid: e.g. 'fc1=mutual_information:1,fc2=kl_selectivity:2'.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Activation store (validation split) for information measures and --replace mean.")
@click.option("--replace", type=click.Choice([*REPLACEMENTS, *ALIASES]), default=None,
              help="Constant replacing a removed unit: zero, mean (bias balancing), activation_of_bias "
                   "(sigma(b); alias bias) or activation_of_zero (sigma(0)). "
                   "Default: mean for measure/hybrid, zero otherwise.")
@click.option("--surgery/--no-surgery", default=True, show_default=True,
              help="merge: add a removed unit's outgoing weights to its partner's.")
@click.option("--order", type=click.Choice(["low", "high"]), default="low", show_default=True,
              help="measure: remove lowest- or highest-ranked units.")
@click.option("--layers", default=None, help="Comma-separated hidden layers (default: all).")
@click.option("--seed", default=0, show_default=True, type=int, help="random: the seed.")
@click.option("--round-to", default=1, show_default=True, type=click.IntRange(min=1),
              help="Keep a multiple of this many units per layer (8 or 16: CPU kernels work in blocks of "
                   "channels, and a layer left with 12 or 24 can run slower than the original).")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Plan to write (.json); required unless --groups.")
@click.option("--groups", "show_groups", is_flag=True,
              help="List the model's dependency groups (sites whose units are removed together) and why each is "
                   "coupled or cannot be pruned; write no plan.")
@click.option("--overwrite", is_flag=True, help="Replace an existing plan file.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan's summary as JSON.")
@max_size_option
def plan(model, method, fraction, measure, hybrid, store, replace, surgery, order, layers, seed, round_to, out,
         show_groups, overwrite, as_json, max_model_size):
    """Write a pruning plan for MODEL: units to remove and what replaces each.

    \b
    Methods:
      measure    lowest values of an information measure per layer (needs --store)
      hybrid     a measure per layer, removal counts in a ratio (Liu et al. 2018, Sec. 6)
      random     a seeded random choice (the baseline)
      magnitude  smallest L1 norm of incoming weights (data-free)
      merge      data-free neuron merging of Srinivas & Babu 2015 (--no-surgery: no weight update)

    The plan is JSON (format infoprobe-pruning-plan, version 1; see the README) and is
    applied by `infoprobe prune`. Sites whose units are coupled -- the branches of a residual
    sum and the sum, a depthwise conv and the site it reads -- form a dependency group: the
    plan ranks the group's units by the sum over members of each member's scores divided by
    their mean, and removes the same units from every member (--groups lists the groups).

    \b
    Examples:
      infoprobe plan model.onnx --method measure --measure kl_selectivity --fraction 0.3 \\
          --store acts.h5 --out plan.json
      infoprobe plan model.onnx --method hybrid --hybrid fc1=mutual_information:1,fc2=kl_selectivity:2 \\
          --fraction 0.5 --store acts.h5 --out plan.json
      infoprobe plan model.onnx --method merge --fraction 0.5 --out plan.json
      infoprobe plan resnet.onnx --method magnitude --fraction 0.5 --round-to 8 --out plan.json
      infoprobe plan resnet.onnx --groups
    """
    from infoprobe.analyses.plans import make_plan
    from infoprobe.prune import dependency_groups

    if show_groups:
        groups = dependency_groups(load(model, max_model_size))
        if as_json:
            echo_json({"groups": [g.to_dict() for g in groups]})
            return
        for g in groups:
            state = f"refused: {g.refused}" if g.refused else "prunable"
            click.echo(f"{', '.join(g.sites)}  ({g.units} units each; {state})")
            for link in g.links:
                click.echo(f"    {link}")
        return
    if out is None:
        raise click.UsageError("--out is required (or pass --groups to list the dependency groups)")
    res = make_plan(load(model, max_model_size), method, fraction, store=store, measure=measure,
                    hybrid=hybrid or None, replace=replace, surgery=surgery, order=order, seed=seed,
                    layers=csv_list(layers), round_to=round_to)
    res.save(out, overwrite=overwrite)
    if as_json:
        echo_json({"out": str(out), **res.describe()})
        return
    if res.layers:
        click.echo(res.summary())
    click.echo(f"wrote {out}")
