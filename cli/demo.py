"""``infoprobe demo``: the whole tour on the bundled models."""
from __future__ import annotations

from pathlib import Path

import click

from .options import echo_json, progress_option
from infoprobe.analyses.ablation import layer_table_lines



def summary_lines(summary: dict, out) -> list:
    """The demo's summary (:func:`infoprobe.analyses.demo.run_demo`) as text; the synergy and
    flow sentences are the report's headlines (``summary["headlines"]``), word for word."""
    lines = [f"model {summary['model']}: baseline test accuracy {summary['baseline_accuracy']:.4f} "
             f"({summary['n_test']} test images; measures from {summary['n_validation']} validation images)",
             "mean single-unit measures (bits):"]
    for lay, m in summary["mean_importance_bits"].items():
        lines.append(f"  {lay:<6} H {m['entropy']:.3f}  I(T;Y) {m['mutual_information']:.3f}  "
                     f"KL selectivity {m['kl_selectivity']:.3f}")
    lines += layer_table_lines(summary["accuracy_at_50_percent_ablated"])
    pr = summary["pruned"]
    lines.append(f"pruned model ({pr['plan']}): {pr['parameters'][0]:,} -> {pr['parameters'][1]:,} parameters, "
                 f"accuracy {pr['accuracy'][0]:.4f} -> {pr['accuracy'][1]:.4f}, labels kept "
                 f"{pr['label_agreement']:.4f}, latency x{pr['latency_ratio']:.2f}; CI gate "
                 f"{'passed' if pr['check_passed'] else 'failed'} (check.md)")
    heads = summary.get("headlines", {})
    lines.append(f"synergy and redundancy of the {len(summary['synergy']['networks'])} ReLU MLPs, largest multiplets "
                 "(O-information with the label; < 0 synergy-dominated, > 0 redundancy-dominated):")
    lines += [f"  {s}" for s in heads.get("synergy", [])]
    md = summary["modules"]
    lines.append(f"modules of {md['model']} (k = 12): n-cut {md['ncut']:.3f}, shuffle p "
                 f"{md['clusterability_p_all']:.3g}; importance of sub-clusters against random ones: Fisher p "
                 f"{md['fisher_importance']:.2g}, chi-squared p {md['chi2_importance']:.2g}; "
                 + ", ".join(f"{k} {v}" for k, v in md["categories"].items() if v) + " (modules/)")
    lines.append("information flow of the noisy tanh neuron (flow/):")
    lines += [f"  {s}" for s in heads.get("flow", [])]
    lines.append(f"results in {out}/: " + ", ".join(summary["files"]))
    if summary.get("report"):
        lines.append(f"report: {summary['report']} (open it in a browser)")
    return lines


@click.command()
@click.option("--out", default="infoprobe-demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--steps", "n_steps", type=int, default=None, help="Points per ablation curve (default: all).")
@click.option("--random-repeats", default=5, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@progress_option
def demo(out, n_steps, random_repeats, as_json, progress):
    """Capture -> importance -> ablation -> prune -> check, then synergy, on bundled models.

    Uses fixtures/mlp_sigmoid.onnx (784-100-100-10) with 2,000 validation images for the
    measures and 2,000 test images for accuracy; writes tables, PNG plots, a pruning plan,
    the pruned model, the CI gate's report and summary.json to --out. Then the synergy and
    redundancy profiles of five seeds of the 784-20-20-20-10 ReLU MLP (synergy.png), the
    modules of the 90%-pruned 4x256 Fashion-MNIST MLP (modules/), the frivolous units of a
    width family (frivolous/) and the information flow of a noisy tanh neuron over its
    training steps (flow/). The synergy and flow lines printed are the headlines of
    report.html, word for word.

    \b
    Example:
      infoprobe demo --out infoprobe-demo
    """
    from infoprobe.analyses.demo import run_demo
    from infoprobe.results import keep_on_interrupt

    keep_on_interrupt(lambda: f"{out} holds the steps finished so far (each file complete); run the demo again "
                              "to redo them")
    summary = run_demo(out, n_steps=n_steps, random_repeats=random_repeats, progress=progress)
    if as_json:
        echo_json(summary)
        return
    click.echo("\n".join(summary_lines(summary, out)))
