"""``infoprobe importance``: single-unit information measures of a store's units."""
from __future__ import annotations

from pathlib import Path

import click

from infoprobe.analyses.importance import PER_CLASS_ROWS
from infoprobe.estimators.discrete import JS_TOP, MAX_JS_TOP

from .options import csv_list, echo_json, progress_option, wrote


@click.command()
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", default="infoprobe-results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--layers", default=None, help="Comma-separated layers (default: hidden layers).")
@click.option("--which", type=click.Choice(["post", "pre"]), default="post", show_default=True)
@click.option("--quantizer", type=click.Choice(["threshold", "uniform", "quantile"]), default="threshold",
              show_default=True, help="One bit at a threshold, or equal-width / quantile bins.")
@click.option("--bins", default=2, show_default=True, type=int, help="Bins for uniform/quantile.")
@click.option("--threshold", type=float, default=None,
              help="One-bit threshold (default by activation: 0.5 sigmoid, 0 ReLU/tanh).")
@click.option("--js/--no-js", default=True, show_default=True,
              help="JS subset separation. One-bit codes: exact at any number of classes (the C-1 splits of the "
                   "classes ordered by P(T=1|Y)); more bins: exact up to --js-top + 1 classes, a lower bound above.")
@click.option("--js-top", default=JS_TOP, show_default=True, type=click.IntRange(1, MAX_JS_TOP),
              help="With more than two bins and more than K+1 classes, JS searches the 2^K - 1 splits of the K "
                   "most frequent classes and one group of all the others (a lower bound; the meta lists the "
                   "classes kept); each step doubles the time: e.g. --quantizer quantile --bins 4 --js-top 19 "
                   "(exact up to 20 classes).")
@click.option("--per-class/--no-per-class", default=None,
              help="Write specific_information (a row per unit and class) and the js_subset lists. Default: "
                   f"when units x classes <= {PER_CLASS_ROWS:,} (e.g. 10 classes x 20,000 units) and it fits in "
                   "--max-memory; --per-class forces it, within --max-memory (e.g. 1,000 classes x 4,000 units need "
                   "about 8G).")
@click.option("--positions", type=click.Choice(["mean", "max", "first", "last"]), default="mean", show_default=True,
              help="One value per unit and sample from a conv or token site: the mean or max over positions, or "
                   "the first ([CLS]) or last real token; padding tokens left out. Stores captured without "
                   "--full-maps hold the mean.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--plot/--no-plot", default=True, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing result files in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print per-layer means as JSON.")
@progress_option
def importance(store, out, layers, which, quantizer, bins, threshold, js, js_top, per_class, positions, device, plot,
               overwrite, as_json, progress):
    """Entropy, MI, KL selectivity, JS subset separation and labeled MI of every unit (bits).

    Writes importance.csv/json (one row per unit), specific_information.csv/json (one row
    per unit and class; no rows above 200,000 rows or --max-memory unless --per-class) and
    importance.png to --out. The classes are the distinct labels of the store; class columns
    keep the labels (a store labelled 0, 3, 882 has classes 0, 3 and 882) and the meta lists
    them, with how JS subset separation was searched.

    \b
    Examples:
      infoprobe importance acts.h5 --out results/ --quantizer quantile --bins 4
      infoprobe importance encoder_full_maps.h5 --positions first --out results/   # the [CLS] token
      infoprobe importance imagenet_acts.h5 --max-memory 2G --out results/       # 1,000 classes
    """
    from infoprobe.analyses.importance import Quantizer, importance as run

    res = run(store, layers=csv_list(layers), which=which, js=js, js_top=js_top, per_class=per_class, device=device,
              progress=progress, conv_reduce=positions,
              quantizer=Quantizer(method=quantizer, bins=bins, threshold=threshold))
    files = res.save(out, overwrite=overwrite)
    if plot:
        files += res.plot(out)
    if as_json:
        echo_json({"files": [str(f) for f in files], "mean_bits": res.mean_bits()})
        return
    click.echo(res.summary())
    wrote(files)
