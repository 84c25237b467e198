"""``infoprobe check``: the CI gate comparing a compressed model with its reference."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import data_options, echo_json, max_size_option, progress_option, read_data, size, with_options


def _threshold(value):
    if value is None:
        return None
    if str(value).lower() in ("off", "none"):
        return "off"
    try:
        v = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or 'off'") from None
    if v < 0:
        raise click.BadParameter("thresholds are non-negative")
    return v


_THRESHOLD_HELP = {
    "max_label_change": "Largest fraction of changed predicted labels [default 0.01].",
    "max_accuracy_drop": "Largest top-1 accuracy drop [default 0.005].",
    "max_class_drop": "Largest accuracy drop of any class [default 0.02].",
    "max_kl": "Largest mean KL(reference || candidate) in bits [default off].",
    "max_logit_diff": "Largest |output difference| [default off].",
    "max_latency_ratio": "Largest candidate/reference latency [default off].",
    "max_size_ratio": "Largest candidate/reference file size [default off].",
    "min_speedup": "Smallest reference/candidate latency at the batch size, measured interleaved after warm-up "
                   "(e.g. 1.5: the candidate must be 1.5x faster) [default off].",
}


def _threshold_options(f):
    for name in reversed(list(_THRESHOLD_HELP)):
        f = click.option("--" + name.replace("_", "-"), name, default=None, callback=lambda c, p, v: _threshold(v),
                         help=_THRESHOLD_HELP[name] + " 'off' disables it.")(f)
    return f


@click.command()
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@with_options(data_options(help="Labelled samples both models run on (.npz with x, y, optional split; .npy; .h5)."))
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file of thresholds (keys as the options below, top level or in [check]).")
@_threshold_options
@click.option("--confidence", type=click.FloatRange(0.5, 1.0, min_open=True, max_open=True), default=None,
              help="Apply --max-label-change, --max-accuracy-drop and --max-class-drop to upper confidence bounds "
                   "at this level (e.g. 0.95) instead of the measured values: the gate fails unless the data show "
                   "the drop is below the threshold. Intervals are reported at 0.95 either way.")
@click.option("--power", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.8,
              show_default=True, help="Power of the smallest detectable drop; thresholds the data set is too "
                                      "small to test are called out.")
@click.option("--divergence-samples", type=click.IntRange(0), default=1000, show_default=True,
              help="Samples on which both models' unit sites are compared, evenly spaced over the data (0: off).")
@click.option("--tolerance", type=click.FloatRange(0.0), default=0.05, show_default=True,
              help="Relative error of a site's activations beyond which the models have diverged there.")
@click.option("--changed-samples", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a CSV of the samples whose predicted label changed (row, index, true, reference, "
                   "candidate).")
@click.option("--output", "output", default=None, metavar="NAME",
              help="The output that holds the class scores (logits or probabilities [N, classes]). Default: the "
                   "float output named like class scores, else the first float output; an integer label output "
                   "(skl2onnx's 'label') is never taken. E.g. --output probabilities.")
@click.option("--batch-size", default=1024, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON instead of the summary.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a JUnit XML report (one test case per threshold).")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a Markdown summary for a pull-request comment.")
@click.option("--overwrite", is_flag=True, help="Replace existing --junit/--markdown/--changed-samples files.")
@max_size_option
@progress_option
def check(reference, candidate, data_path, split, scale, x_key, y_key, limit, config, confidence, power,
          divergence_samples, tolerance, changed_samples, output, batch_size, as_json, junit, markdown, overwrite,
          max_model_size, progress, **thresholds):
    """CI gate: compare a compressed CANDIDATE with its REFERENCE on labelled data.

    Reports the fraction of changed predicted labels, top-1 accuracy of each model and its
    drop, per-class drops (worst class named), mean KL divergence between output
    distributions, max |output difference|, sizes and latencies. Thresholds come from
    the defaults, then --config, then options.

    The drop is paired (both models see the same samples): McNemar's exact test, a
    Bonett-Price confidence interval, per-class tests with Holm's correction and the
    smallest drop the data can detect. Which true classes moved to which labels, and
    where in the network the two models part: per matched unit site, the relative
    error, unit correlation and linear CKA of the candidate's activations, and the first
    site beyond --tolerance (a pruned model is compared on the units it kept).

    \b
    Exit status: 0 every threshold holds, 1 a threshold fails, 2 usage or input error.

    \b
    Examples:
      infoprobe check model.onnx small.onnx --data test.npz
      infoprobe check model.onnx small.onnx --data mnist.npz --split test --config gate.toml \\
          --max-class-drop 0.05 --junit report.xml --markdown summary.md
      infoprobe check model.onnx int8.onnx --data test.npz --confidence 0.95 \\
          --max-accuracy-drop 0.005 --changed-samples changed.csv
    """
    from infoprobe.analyses.check import gate

    res = gate(reference, candidate, read_data(data_path, split, x_key, y_key, limit), config=config,
               thresholds={k: (None if v == "off" else v) for k, v in thresholds.items() if v is not None},
               junit=junit, markdown=markdown, changed_samples=changed_samples, overwrite=overwrite, scale=scale,
               batch_size=batch_size, max_bytes=size(max_model_size), progress=progress, confidence=confidence,
               power=power, divergence_samples=divergence_samples, tolerance=tolerance, output=output)
    if as_json:
        echo_json(res.to_dict())
    else:
        click.echo(res.summary())
    sys.exit(0 if res.passed else 1)
