"""``infoprobe analyze`` and ``infoprobe report``: every analysis that applies, within a
budget, and the one page a person opens first."""
from __future__ import annotations

from pathlib import Path

import click

from .options import data_options, echo_json, max_size_option, progress_option, read_data, size, with_options


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@with_options(data_options(help="Labelled samples the model is evaluated on (.npz with x, y, optional split; "
                                ".npy; .h5)."))
@click.option("--fit-split", default=None,
              help="Split of the same file the measures are estimated on (e.g. validation; default: --split).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Result folder: the analyses' tables and figures, and report.html.")
@click.option("--budget", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True,
              help="Minutes of work in all, the calibration included. Each analysis is first timed on its own first "
                   "units of work (samples captured, intervention sets, a clustering) and gets a share and the largest "
                   "setting whose estimate fits it; before each starts, what is left is planned again, and one that "
                   "would overrun is cut or skipped, never started and abandoned (e.g. --budget 15).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Run the plan of an earlier run (its analyze.json) instead of planning within --budget: the same "
                   "analyses, settings and synergy search sizes, so the same inputs give the same numbers.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the estimators of importance, synergy and frivolous units compute (NumPy or CuPy).")
@click.option("--overwrite", is_flag=True, help="Replace results already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and timings as JSON at the end.")
@max_size_option
@progress_option
def analyze(model, data_path, split, scale, x_key, y_key, limit, fit_split, out, budget, plan_path, device, overwrite,
            as_json, max_model_size, progress):
    """Run every analysis that applies to MODEL on --data within --budget minutes, then write
    the report.

    Importance of each unit (with its activation store), cumulative ablation, synergy and
    redundancy, modules, and frivolous units. The plan (each analysis' share of the budget,
    its settings, its estimate and what was cut to fit) is printed before any work; then each
    analysis's seconds against its estimate, the total against the budget ("within the
    budget" or "over the budget by ..."), and the report's path last. The activation store
    (acts.h5) stays in --out for reuse even when analyses that read it did not run.
    Everything appears in --out together when the run ends, or nothing does
    (one analyze at a time writes a folder). Exit status 0: every planned analysis ran or was
    cut by the budget (stated in the plan); 1: the results are written, but an analysis did
    not run because of an error (named on stderr, in analyze.csv and on the page); 2: nothing
    was written.

    The plan is chosen from timings on this machine, so two runs may choose different settings;
    --plan OUT/analyze.json runs an earlier run's plan again, for the same numbers.

    \b
    Examples:
      infoprobe analyze model.onnx --data mnist.npz --split test --out analysis/
      infoprobe analyze model.onnx --data mnist.npz --split test --fit-split validation \\
          --budget 15 --out analysis/
      infoprobe analyze model.onnx --data mnist.npz --split test --plan analysis/analyze.json --out again/
    """
    from infoprobe.analyses.analyze import analyze as run
    from infoprobe.model import load_model

    data = read_data(data_path, split, x_key, y_key, limit)
    fit = read_data(data_path, fit_split, x_key, y_key, limit) if fit_split else None
    lm = load_model(model, max_bytes=size(max_model_size))
    res = run(lm, data, out, fit_data=fit, budget=budget, plan=plan_path, scale=scale, device=device,
              overwrite=overwrite, progress=progress, echo=click.echo)
    if as_json:
        echo_json(res)
    click.echo(f"report: {res['report']} (open it in a browser)")
    if res["failed"]:
        click.echo(f"infoprobe: error: {len(res['failed'])} planned analys{'is' if len(res['failed']) == 1 else 'es'} "
                   f"did not run: " + "; ".join(f"{k}: {v}" for k, v in res["failed"].items()), err=True)
        raise SystemExit(1)


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The HTML file to write.")
@click.option("--title", default=None, help="The page's title (default: the folders' names).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def report(results, out, title, overwrite):
    """One self-contained HTML page of the RESULTS folders of any analyses.

    Per analysis found: a headline in words, the figures, sortable tables (units in the
    headers) and provenance (inputs and their SHA-256, parameters, versions). The page has no
    network access (figures, styles and script inline) and never opens a model.

    \b
    Examples:
      infoprobe report results/ modules/ --out report.html
      infoprobe check ref.onnx small.onnx --data test.npz --json > gate/check.json; \\
          infoprobe report results/ gate/ --out report.html
    """
    from infoprobe.htmlreport import write_report

    path = write_report(list(results), out, title=title, overwrite=overwrite)
    click.echo(f"report: {path} (open it in a browser)")
