"""The ``infoprobe`` command group."""
from __future__ import annotations

import json
import signal
import sys
import warnings
from pathlib import Path

import click

from infoprobe import __version__
from infoprobe.errors import InfoprobeError, one_line
from infoprobe.model import DEFAULT_MAX_BYTES

#: Exit status of an interrupted command (128 + SIGINT), as shells report Ctrl-C.
EXIT_INTERRUPTED = 130
#: Exit status of a defect in infoprobe itself (never an input problem).
EXIT_INTERNAL = 3


def _size(value: str) -> int:
    from infoprobe.limits import parse_size

    try:
        return parse_size(value)
    except InfoprobeError as exc:
        raise click.BadParameter(str(exc)) from None


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that staged results are discarded on the way out."""


def _interrupt(exc_type):
    """A signal handler raising ``exc_type``, except where the exception would be lost or
    would break a file (a finalizer, an HDF5 write callback: see
    :func:`infoprobe.results.uninterruptible`): there the signal is delivered again 20 ms
    later (SIGALRM)."""
    from infoprobe.results import interruptible

    def handler(signum, frame):
        if not interruptible(frame):
            signal.signal(signal.SIGALRM, handler)
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        raise exc_type()
    return handler


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (e.g. too few random draws to reach alpha) as one line on stderr."""
    click.echo(f"infoprobe: warning: {' '.join(str(message).split())}", err=True)


class Group(click.Group):
    """Turns every failure into one line on stderr and an exit status CI can rely on.

    2: an error caused by input (:class:`InfoprobeError`), a full disk or another operating
    system error, memory exhausted; 130: interrupted (Ctrl-C or SIGTERM), with a line saying
    what was kept; 3: a defect in infoprobe (``INFOPROBE_DEBUG=1`` shows the traceback).
    """

    def invoke(self, ctx):
        import os

        from infoprobe.results import keep_on_interrupt, kept_on_interrupt

        keep_on_interrupt(None)
        warnings.showwarning = _show_warning
        try:
            previous = {sig: signal.signal(sig, _interrupt(exc)) for sig, exc in
                        ((signal.SIGTERM, _Terminated), (signal.SIGINT, KeyboardInterrupt))}
        except ValueError:   # not the main thread
            previous = {}
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except InfoprobeError as exc:
            click.echo(f"infoprobe: error: {one_line(exc, 10_000)}", err=True)
            sys.exit(2)
        except (KeyboardInterrupt, _Terminated):
            click.echo(f"infoprobe: interrupted; {kept_on_interrupt()}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except MemoryError:
            click.echo("infoprobe: error: out of memory; lower --max-memory (or --batch-size) so that infoprobe "
                       "works in smaller blocks", err=True)
            sys.exit(2)
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"infoprobe: error: {exc.strerror or one_line(exc, 10_000)}{where}; nothing was written "
                       "under a final name", err=True)
            sys.exit(2)
        except Exception as exc:
            if os.environ.get("INFOPROBE_DEBUG"):
                raise
            click.echo(f"infoprobe: internal error: {type(exc).__name__}: {one_line(exc)} (a defect in "
                       "infoprobe: please report it; INFOPROBE_DEBUG=1 shows the traceback)", err=True)
            sys.exit(EXIT_INTERNAL)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _harden(cmd: click.Command, *, stage: bool = True) -> click.Command:
    """Give a command the budget options and run it inside a result set.

    Adds ``--max-memory`` (every command) and, where the command captures, ``--max-store-size``;
    resolves ``--progress`` left unset to "stderr is a terminal"; runs the command with its
    budgets (:func:`infoprobe.limits.budgets`) and every file it writes staged
    (:func:`infoprobe.results.result_set`): the files appear when it succeeds (exit 0, or 1
    for a gate that fails), never after an error or an interruption.
    """
    import contextlib
    import functools

    cmd.params.append(click.Option(
        ["--max-memory"], default=None, metavar="SIZE", envvar="INFOPROBE_MAX_MEMORY",
        help="Memory budget: refuse, before allocating, any array larger than this (default 4G; "
             "env INFOPROBE_MAX_MEMORY)."))
    callback = cmd.callback

    @functools.wraps(callback)
    def run(*args, max_memory=None, **kwargs):
        from infoprobe.limits import budgets
        from infoprobe.results import result_set

        if "progress" in kwargs and kwargs["progress"] is None:
            kwargs["progress"] = sys.stderr.isatty()
        status = None
        store = kwargs.pop("max_store_size", None)
        with budgets(memory=_size(max_memory) if max_memory else None, store=_size(store) if store else None):
            with result_set() if stage else contextlib.nullcontext():
                try:
                    return callback(*args, **kwargs)
                except SystemExit as exc:   # a gate's verdict (0/1) keeps its report
                    if exc.code not in (None, 0, 1):
                        raise
                    status = exc.code
        sys.exit(status)

    cmd.callback = run
    return cmd


def _announcer(progress: bool):
    """Where a command announces its work (expected sizes, plans, resumption): stderr, with the
    progress bars; None when they are off, so that a failing command's log is one line."""
    return (lambda line: click.echo(line, err=True)) if progress else None


def _announce_estimate(est, progress: bool) -> None:
    """The synergy search plan with the progress bars; its warning (far over budget) always."""
    if progress:
        click.echo("\n".join(est.lines()), err=True)
    elif est.warning():
        click.echo(f"infoprobe: warning: {est.warning().removeprefix('WARNING: ')}", err=True)


def _csv_list(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


max_size_option = click.option("--max-model-size", default=str(DEFAULT_MAX_BYTES // 1024**3) + "G",
                               show_default=True, help="Refuse models (with external data) larger than this.")
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress bars on stderr [default: when stderr is a terminal].")
out_dir_option = click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                              help="Folder for results.")
#: Options of every analysis that writes a results folder: seed, plots, overwriting.
result_options = [
    click.option("--seed", default=0, show_default=True, type=int),
    click.option("--plot/--no-plot", default=True, show_default=True),
    click.option("--overwrite", is_flag=True, help="Replace existing result files."),
]


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
      infoprobe synergy acts.h5 --out results/
      infoprobe modules model.onnx --data fashion.npz --split test --out modules/
      infoprobe frivolous model.onnx --data mnist.npz --split test --out frivolous/
      infoprobe flow model.onnx --data szt.npz --beta 0.005 --out flow/
      infoprobe ablate model.onnx acts.h5 --data mnist.npz --split test --out results/
      infoprobe plan model.onnx --method hybrid --fraction 0.5 --store acts.h5 --out plan.json
      infoprobe prune model.onnx plan.json --out small.onnx --data mnist.npz --split test
      infoprobe check model.onnx small.onnx --data mnist.npz --split test --junit report.xml

    Errors caused by inputs print one line and exit with status 2 (`check` exits with 1
    when a threshold fails).
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


def _data_options(required=True, help=".npz (x, y, optional split), .npy or .h5 file of samples."):
    return [
        click.option("--data", "data_path", required=required, type=click.Path(dir_okay=False, path_type=Path),
                     help=help),
        *_data_details,
    ]


_data_details = [
    click.option("--split", default=None, help="Split of the data file: all, train, validation, test or a number."),
    click.option("--scale", default="auto", show_default=True,
                 help="Input multiplier; auto = 1/255 for uint8 data, else 1."),
    click.option("--x-key", default="x", show_default=True, help="Array of samples in the data file."),
    click.option("--y-key", default="y", show_default=True, help="Array of labels in the data file."),
    click.option("--limit", type=int, default=None, help="Use only the first N samples of the split."),
]
data_options = _data_options()


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
@click.option("--max-store-size", default=None, metavar="SIZE", envvar="INFOPROBE_MAX_STORE_SIZE",
              help="Refuse to write a store larger than this (default 1G; env INFOPROBE_MAX_STORE_SIZE).")
@max_size_option
@progress_option
def capture(model, data_path, split, scale, x_key, y_key, limit, out, layers, batch_size, overwrite,
            max_model_size, progress):
    """Run MODEL over a data set and store every unit layer's activations in HDF5.

    Pre- and post-activations, labels, and each layer's incoming weights and bias are
    written. The expected size of the store is printed first; a store over --max-store-size
    or over the disk's free space is refused before anything runs. The store appears under
    --out only when complete: an interrupted capture keeps OUT.partial and resumes where it
    stopped when run again; one capture at a time writes a given --out.

    \b
    Examples:
      infoprobe capture model.onnx --data mnist.npz --split validation --out acts.h5
      infoprobe capture cnn.onnx --data fashion.npz --split test --limit 1000 --layers conv2,fc1 \\
          --max-store-size 4G --out acts.h5
    """
    from infoprobe.analyses.capture import capture as run
    from infoprobe.data import load_data

    lm = _load(model, max_model_size)
    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit)
    path = run(lm, data, out, layers=_csv_list(layers), batch_size=batch_size, scale=scale,
               overwrite=overwrite, progress=progress, notify=_announcer(progress))
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
@click.option("--json", "as_json", is_flag=True, help="Print the accuracies with 50 percent of the units ablated as JSON.")
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


@cli.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", default="infoprobe-results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--layers", default=None, help="Comma-separated layers (default: hidden layers common to all stores).")
@click.option("--which", type=click.Choice(["pre", "post"]), default="pre", show_default=True,
              help="Pre-activations (the paper's choice: post-ReLU values tie at 0) or post-activations.")
@click.option("--labels", type=click.Choice(["exact", "ordinal", "none"]), default="exact", show_default=True,
              help="The label in every multiplet: exact mixed discrete/continuous entropies, ordinal "
                   "(copula-normalised like a unit, as hoi), or none.")
@click.option("--max-size", default=10, show_default=True, type=int, help="Largest multiplet (units).")
@click.option("--exhaustive-up-to", default="auto", show_default=True, metavar="auto|K",
              callback=lambda ctx, param, v: "auto" if str(v).lower() == "auto" else click.INT.convert(v, param, ctx),
              help="Search every multiplet up to this size, greedy beyond; auto: per layer, the largest "
                   "size whose estimated time fits --budget.")
@click.option("--budget", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Time for the whole search (every layer and store), from which "
                                      "--exhaustive-up-to auto picks the sizes.")
@click.option("--keep", default=1, show_default=True, type=int, help="Multiplets kept per size and direction.")
@click.option("--ties", type=click.Choice(["average", "ordinal"]), default="average", show_default=True,
              help="Copula ranks of tied activations: average (order-free) or by order of appearance (hoi).")
@click.option("--bias-correct/--no-bias-correct", default=True, show_default=True,
              help="Ince et al.'s analytic bias correction of each Gaussian entropy.")
@click.option("--max-samples", type=int, default=None, help="Use a seeded random subset of the samples.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads for the search (default: all cores).")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The network of the first store: needed by --plan and --data.")
@click.option("--plan", "plan_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a pruning plan keeping only each layer's most synergistic multiplet.")
@click.option("--plan-size", type=int, default=None, help="Multiplet size kept by --plan and tested by --data "
                                                          "(default: --max-size).")
@click.option("--replace", type=click.Choice(["zero", "mean", "bias"]), default="zero", show_default=True,
              help="Constants for removed or ablated units (mean: bias balancing from the store).")
@_with(_data_options(required=False, help="Labelled test data: compare ablating the synergistic multiplet with "
                                          "GC-MI-ranked and random units (writes multiunit_importance.csv)."))
@click.option("--random-repeats", default=20, show_default=True, type=int, help="Random selections per layer.")
@_with(result_options)
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
    the exhaustive size of each layer is the largest whose estimated time fits --budget
    (from the search's throughput, measured on the data first); the sizes, multiplets and
    estimated times are printed on stderr before the search starts. Several
    stores (e.g. one network trained from several seeds) give profiles averaged over
    networks. Writes synergy.csv/json (best multiplets), synergy_profile.csv/json and
    synergy.png (bars per layer and size) to --out.

    \b
    Examples:
      infoprobe synergy acts.h5 --out results/
      infoprobe synergy acts.h5 --budget 600 --out results/
      infoprobe synergy acts.h5 --exhaustive-up-to 6 --out results/
      infoprobe synergy seed1.h5 seed2.h5 seed3.h5 --max-size 8 --labels ordinal
      infoprobe synergy acts.h5 --model model.onnx --plan keep_synergy.json --plan-size 10
      infoprobe synergy acts.h5 --model model.onnx --data mnist.npz --split test
    """
    from infoprobe.analyses.synergy import multiunit_importance, synergy as run, synergy_plan
    from infoprobe.data import load_data
    from infoprobe.report import plot_synergy
    from infoprobe.results import check_outputs, write_table

    if (plan_out or data_path) and model is None:
        raise click.UsageError("--plan and --data need --model (the network of the first store)")
    check_outputs([out / f"{n}.{e}" for n in ("synergy", "synergy_profile") for e in ("csv", "json")], overwrite)
    if plan_out:
        check_outputs([plan_out], overwrite)
    if data_path:
        check_outputs([out / "multiunit_importance.csv", out / "multiunit_importance.json"], overwrite)
    lm = _load(model, max_model_size) if model else None
    res = run(list(stores), layers=_csv_list(layers), which=which, labels=labels, max_size=max_size,
              exhaustive_up_to=exhaustive_up_to, budget=budget, keep=keep, ties=ties, biascorrect=bias_correct,
              max_samples=max_samples, seed=seed, device=device, threads=threads, progress=progress,
              on_estimate=lambda est: _announce_estimate(est, progress))
    files = res.save(out, overwrite=overwrite)
    if plot:
        files.append(plot_synergy(res.profiles, out / "synergy.png"))
    summary = {"profiles": res.profiles, "constant_units": {f"{n}:{lay}": u for (n, lay), u in res.constant.items()}}
    if plan_out or data_path:
        from infoprobe.store import Store

        with Store(stores[0]) as st:
            if plan_out:
                pl = synergy_plan(lm, res, size=plan_size, replace=replace, store=st)
                pl.save(plan_out, overwrite=overwrite)
                files.append(plan_out)
            if data_path:
                data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit)
                imp = multiunit_importance(lm, st, data, res, size=plan_size, replace=replace,
                                           random_repeats=random_repeats, seed=seed, scale=scale)
                files += write_table(out, "multiunit_importance", imp, res.meta)
                summary["importance"] = imp
    if as_json:
        click.echo(json.dumps(dict(summary, files=[str(f) for f in files]), indent=1))
        return
    nets = max(r["networks"] for r in res.profiles)
    click.echo(f"best O-information [bits], mean over {nets} network{'s' if nets > 1 else ''} "
               f"(labels={labels}, {which}-activations)")
    click.echo(f"{'layer':<16} {'k':>3} {'synergy':>9} {'redundancy':>11}  method")
    for lay in res.layers():
        for k in sorted({r["size"] for r in res.profiles if r["layer"] == lay}):
            s = next(r for r in res.profiles if (r["layer"], r["size"], r["direction"]) == (lay, k, "synergy"))
            d = next(r for r in res.profiles if (r["layer"], r["size"], r["direction"]) == (lay, k, "redundancy"))
            click.echo(f"{lay:<16} {k:>3} {s['mean']:9.3f} {d['mean']:11.3f}  {s['method']}")
    for key, u in summary["constant_units"].items():
        click.echo(f"excluded constant units of {key}: {u}")
    if "importance" in summary:
        click.echo(f"\nmulti-unit importance (baseline accuracy {summary['importance'][0]['accuracy']:.4f})")
        click.echo(f"{'layer':<16} {'k':>3} {'selection':<13} {'ablate':>8} {'keep only':>10}")
        imp = [r for r in summary["importance"] if r["layer"]]
        for r in imp:
            if r["mode"] == "ablate":
                kept = next(q for q in imp if (q["layer"], q["selection"], q["mode"]) == (r["layer"], r["selection"], "keep"))
                click.echo(f"{r['layer']:<16} {r['k']:>3} {r['selection']:<13} {r['accuracy']:8.4f} {kept['accuracy']:10.4f}")
    click.echo("wrote " + ", ".join(str(f) for f in files))


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option
@_with(_data_options(required=False, help="Labelled test data for the lesion tests (without it: clustering and "
                                          "clusterability only)."))
@click.option("--clusters", default=12, show_default=True, type=int, help="Number of clusters k.")
@click.option("--graph", "kind", type=click.Choice(["auto", "mlp", "cnn"]), default="auto", show_default=True,
              help="Graph of neurons (mlp) or of conv feature maps (cnn); auto: cnn when there are convs.")
@click.option("--eigen-solver", type=click.Choice(["auto", "arpack", "lobpcg"]), default="auto", show_default=True,
              help="Spectral embedding solver; auto: ARPACK (the authors' choice) up to 5,000 vertices, "
                   "LOBPCG above (much faster on large graphs).")
@click.option("--random", "n_random", default=20, show_default=True, type=int,
              help="Random sub-clusters per true sub-cluster.")
@click.option("--shuffles", default=50, show_default=True, type=int,
              help="Shuffled networks for clusterability (0: skip).")
@click.option("--shuffle", "variant", type=click.Choice(["all", "nonzero", "both"]), default="all", show_default=True,
              help="Permute every weight of each layer, only the non-zero ones (keeps a pruned network's "
                   "sparsity), or both.")
@click.option("--lesion", type=click.Choice(["zero", "bias"]), default="zero", show_default=True,
              help="zero: incoming weights and bias zeroed (unit outputs sigma(0)); bias: weights only (sigma(b)).")
@click.option("--double-random", default=50, show_default=True, type=int,
              help="Random partners per double lesion of important sub-clusters (0: skip double lesions).")
@click.option("--alpha", default=0.05, show_default=True, type=float, help="Significance threshold of the taxonomy.")
@click.option("--min-drop", default=0.01, show_default=True, type=float,
              help="Accuracy drop that matters (0.01 = one percentage point).")
@click.option("--small-fraction", default=0.05, show_default=True, type=float,
              help="Sub-clusters under this fraction of their layer are 'small'.")
@click.option("--small-units", default=0, show_default=True, type=int,
              help="Sub-clusters with fewer units are 'small' too.")
@click.option("--visualise/--no-visualise", default=True, show_default=True,
              help="Correlation-based visualisations of sub-clusters (image inputs).")
@click.option("--plan", "plan_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a pruning plan removing the units of 'prunable' sub-clusters (one model only).")
@_with(result_options)
@click.option("--json", "as_json", is_flag=True, help="Print the network-level results as JSON.")
@max_size_option
@progress_option
def modules(sources, out, data_path, split, scale, x_key, y_key, limit, clusters, kind, eigen_solver, n_random, shuffles, variant,
            lesion, double_random, alpha, min_drop, small_fraction, small_units, visualise, plan_out, seed, plot,
            overwrite, as_json, max_model_size, progress):
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
    from infoprobe.analyses.modules import modules as run, network_table, prunable_plan
    from infoprobe.data import load_data
    from infoprobe.results import check_outputs, provenance, write_table

    if plan_out and (len(sources) > 1 or not data_path or sources[0].suffix.lower() in (".h5", ".hdf5")):
        raise click.UsageError("--plan needs --data and a single ONNX model")
    if plan_out:
        check_outputs([plan_out], overwrite)
    if len(sources) > 1:
        check_outputs([out / "networks.csv", out / "networks.json"], overwrite)
    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit) if data_path else None
    variants = ("all", "nonzero") if variant == "both" else (variant,)
    results, files, table = [], [], []
    for src in sources:
        folder = out if len(sources) == 1 else out / src.stem
        source = src if src.suffix.lower() in (".h5", ".hdf5") else _load(src, max_model_size)
        res = run(source, data, n_clusters=clusters, kind=kind, n_random=n_random, n_shuffles=shuffles,
                  variants=variants, lesion=lesion, n_double=double_random, alpha=alpha, min_drop=min_drop,
                  small_fraction=small_fraction, small_units=small_units, visualise=visualise, seed=seed,
                  eigen_solver=eigen_solver, scale=scale, progress=progress)
        files += res.save(folder, overwrite=overwrite)
        if plot:
            files += res.plot(folder)
        results.append(res)
        table.append({"network": str(src), **{k: v for k, v in res.network.items() if k != "categories"}})
    if len(sources) > 1:
        table = network_table(table, alpha=alpha)
        files += write_table(out, "networks", table, provenance(params={"alpha": alpha}))
    if plan_out:
        prunable_plan(source, results[0]).save(plan_out, overwrite=overwrite)
        files.append(plan_out)
    if as_json:
        click.echo(json.dumps({"networks": table, "files": [str(f) for f in files]}, indent=1, default=str))
        return
    for src, res in zip(sources, results):
        net = res.network
        click.echo(f"{src}: {res.partition.graph.kind} graph, {net['vertices']} vertices "
                   f"({net['removed_vertices']} of zero degree removed), k = {clusters}, n-cut {net['ncut']:.3f}")
        for c in res.clusterability:
            click.echo(f"  shuffled ({c['variant']}): n-cut {c['mean']:.3f} +/- {c['std']:.3f} over "
                       f"{len(c['shuffled'])}, p = {c['p']:.3g}, z = {c['z']:.2f}")
        if res.subclusters:
            click.echo(f"  base accuracy (mean per class) {net['base_accuracy']:.4f}; combined p values over "
                       f"{net['n_importance']} sub-clusters:")
            click.echo(f"    importance: Fisher {net['fisher_importance']:.3g}, chi-squared {net['chi2_importance']:.3g}")
            click.echo(f"    output coherence: Fisher {net['fisher_coherence']:.3g}, "
                       f"chi-squared {net['chi2_coherence']:.3g}")
            click.echo("  " + ", ".join(f"{k}: {v}" for k, v in net["categories"].items() if v))
            click.echo(f"  {'layer':<14} {'cl':>3} {'size':>5} {'drop pp':>8} {'p':>6} {'coher.':>7} {'p':>6}  category")
            for r in res.subclusters:
                click.echo(f"  {r['layer']:<14} {r['cluster']:>3} {r['size']:>5} {-100 * r['accuracy_change']:8.2f} "
                           f"{r['p_importance']:6.3f} {r['coherence']:7.2f} {r['p_coherence']:6.3f}  {r['category']}")
            if res.edges:
                click.echo("  dependencies: " + "; ".join(f"{e['source']} -> {e['target']} ({e['relation']})"
                                                          for e in res.edges))
    click.echo("wrote " + ", ".join(str(f) for f in files))


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option
@_with(_data_options(required=False, help="Test samples the units are measured on (needed for models; labels "
                                          "are not: predictions are compared with the intact network's)."))
@click.option("--sweep", is_flag=True,
              help="SOURCES are one architecture at several widths: add sweep tables, gains and plots.")
@click.option("--widths", default=None,
              help="Width factors of the swept models, e.g. 0.25,0.5,1,2,4 (default: hidden units / median).")
@click.option("--layers", default=None, help="Comma-separated hidden layers (default: all).")
@click.option("--tolerance", default=0.2, show_default=True, type=float,
              help="Prunability: tolerated fraction of changed predictions.")
@click.option("--redundancy-tolerance", default=0.05, show_default=True, type=float,
              help="Redundancy (and --thin): largest fraction of variance left unexplained.")
@click.option("--steps", default=7, show_default=True, type=int,
              help="Ablated fractions 0, 1/(steps-1), ..., 1 per curve.")
@click.option("--permutations", default=3, show_default=True, type=int,
              help="Random permutations per curve; the largest prunable fraction is kept.")
@click.option("--mode", type=click.Choice(["layer", "network", "both"]), default="both", show_default=True,
              help="Ablate one layer at a time, all layers at once, or both.")
@click.option("--conv-units", type=click.Choice(["position", "channel"]), default="position", show_default=True,
              help="Conv ablation units: channel x position (the paper's) or whole channels (for --plan-prunable).")
@click.option("--max-rows", default=50_000, show_default=True, type=int,
              help="Redundancy: rows of a layer's activation matrix (conv: samples x positions) kept at random.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where PCA runs (NumPy or CuPy).")
@click.option("--plan-prunable", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a plan removing the prunable units (network mode, replaced by 0), for infoprobe prune.")
@click.option("--plan-redundant", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a plan removing the redundant units, refactored into the kept ones by least squares.")
@click.option("--thin", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the refactored thinner ONNX and check it against the original on --data.")
@_with(result_options)
@click.option("--json", "as_json", is_flag=True, help="Print the tables as JSON.")
@max_size_option
@progress_option
def frivolous(sources, out, data_path, split, scale, x_key, y_key, limit, sweep, widths, layers, tolerance,
              redundancy_tolerance, steps, permutations, mode, conv_units, max_rows, device, plan_prunable,
              plan_redundant, thin, seed, plot, overwrite, as_json, max_model_size, progress):
    """Frivolous units: how many units are prunable and how many redundant, per layer.

    Prunability (ONNX models, needs --data): a random permutation of a layer's units is
    ablated cumulatively (post-activations times 0) at the fractions 0, 1/6, ..., 1, and the
    fraction of predictions that stay unchanged is recorded; the prunable fraction is where
    that curve crosses 1 - --tolerance (linear interpolation; 1.0 when it never does), the
    largest over --permutations. Conv units are channel x position. Redundancy (models with
    --data, or activation stores): PCA of each layer's activations (conv: positions are
    samples); units beyond the components that leave --redundancy-tolerance of the variance
    unexplained are redundant. With --sweep, SOURCES are one architecture at several widths:
    counts normalised by the widest model, and the gain g (growth factor per doubling of the
    width; g > 2: frivolous units grow faster than the network). Method: Casper, Boix et al.,
    "Frivolous Units" (AAAI 2021).

    \b
    Examples:
      infoprobe frivolous model.onnx --data test.npz --split test --out friv/
      infoprobe frivolous acts.h5 --out friv/                        # redundancy only
      infoprobe frivolous model.onnx --data mnist.npz --split test --thin thin.onnx --out friv/
      infoprobe frivolous --sweep m_0.25.onnx m_0.5.onnx m_1.onnx m_2.onnx m_4.onnx \\
          --data synthetic_10d.npz --split test --out sweep/
    """
    from infoprobe.analyses.compress import prune_model
    from infoprobe.analyses.frivolous import frivolous as run, prunable_plan, refactor_plan, width_sweep
    from infoprobe.data import load_data
    from infoprobe.results import check_outputs

    if len(sources) > 1 and not sweep:
        raise click.UsageError("several SOURCES are analysed as a width family: pass --sweep")
    if sweep and len(sources) < 2:
        raise click.UsageError("--sweep needs at least two models")
    is_store = [s.suffix.lower() in (".h5", ".hdf5") for s in sources]
    if (plan_prunable or plan_redundant or thin) and (len(sources) > 1 or is_store[0] or not data_path):
        raise click.UsageError("--plan-prunable, --plan-redundant and --thin need one ONNX model and --data")
    if not all(is_store) and not data_path:
        raise click.UsageError("ONNX models need --data (or pass activation stores for redundancy only)")
    if steps < 2:
        raise click.BadParameter("--steps must be at least 2", param_hint="--steps")
    check_outputs([p for p in (plan_prunable, plan_redundant, thin) if p], overwrite)
    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit) if data_path else None
    width_list = None
    if widths:
        try:
            width_list = [float(w) for w in _csv_list(widths)]
        except ValueError:
            raise click.BadParameter(f"{widths!r} is not a list of numbers", param_hint="--widths") from None
    modes = ("layer", "network") if mode == "both" else (mode,)
    results, files = [], []
    for src, store in zip(sources, is_store):
        folder = out if len(sources) == 1 else out / src.stem
        source = src if store else _load(src, max_model_size)
        if plan_prunable and conv_units == "position" and any(lay.kind == "conv" for lay in source.hidden_layers):
            raise click.UsageError("--plan-prunable on a model with conv layers needs --conv-units channel: a "
                                   "channel x position cannot be removed from a model")
        res = run(source, data if not store else None, layers=_csv_list(layers), prune_tolerance=tolerance,
                  redundancy_tolerance=redundancy_tolerance, fractions=[i / (steps - 1) for i in range(steps)],
                  n_permutations=permutations, conv_units=conv_units, modes=modes, max_rows=max_rows, seed=seed,
                  device=device, scale=scale, progress=progress)
        files += res.save(folder, overwrite=overwrite)
        if plot:
            files += res.plot(folder)
        results.append(res)
    doc = {"models": [{"source": r.source, "layers": r.layers} for r in results]}
    sw = None
    if sweep:
        sw = width_sweep(results, width_list)
        files += sw.save(out, overwrite=overwrite)
        if plot:
            files += sw.plot(out)
        doc["sweep"] = {"rows": sw.rows, "gains": sw.gains, "g_range": sw.g_range}
    if plan_prunable:
        if results[0].prunability is None:
            raise click.UsageError("--plan-prunable needs prunability (a model with --data)")
        plan = prunable_plan(source, results[0].prunability, mode="network" if "network" in modes else "layer")
        files.append(plan.save(plan_prunable, overwrite=overwrite))
    if plan_redundant or thin:
        plan, refactor_rows = refactor_plan(source, data, layers=_csv_list(layers), tolerance=redundancy_tolerance,
                                            max_rows=max_rows, seed=seed, scale=scale, progress=progress)
        doc["refactor"] = refactor_rows
        if plan_redundant:
            files.append(plan.save(plan_redundant, overwrite=overwrite))
        if thin:
            rep = prune_model(source, plan, thin, data=data, scale=scale, overwrite=overwrite)
            doc["thin"] = rep
            files.append(thin)
    if as_json:
        from infoprobe.results import _plain

        click.echo(json.dumps(_plain(doc) | {"files": [str(f) for f in files]}, indent=1))
        return
    for res in results:
        click.echo(f"{res.source}:")
        click.echo(f"  {'layer':<14} {'units':>6} {'prunable':>9} {'of':>7} {'redundant':>9}  mean |r|")
        for r in res.layers:
            pru = (f"{r['prunable_units']:9.1f} {r['ablation_units']:>7}" if r.get("prunable_units") is not None
                   else f"{'-':>9} {'':>7}")
            red = f"{r['redundant']:>9}" if r.get("redundant") is not None else f"{'-':>9}"
            corr = f"{r['corr_mean']:.3f}" if r.get("corr_mean") is not None else ""
            click.echo(f"  {r['layer']:<14} {r['units']:>6} {pru} {red}  {corr}")
    if sw is not None:
        click.echo("width sweep (network; counts / widest model's units):")
        for r in (r for r in sw.rows if r["layer"] == "all"):
            pn = f"{r['prunable_norm']:.4f}" if "prunable_norm" in r else "-"
            click.echo(f"  {r['width']:>6g}x  prunable {pn:>7}  redundant {r['redundant_norm']:.4f}")
        for meas, (lo, hi) in sw.g_range.items():
            click.echo(f"  g {meas}: min {lo:.3f}, max {hi:.3f}")
    if "refactor" in doc:
        rm = sum(r["removed"] for r in doc["refactor"])
        click.echo(f"refactoring at tolerance {redundancy_tolerance}: removes {rm} of "
                   f"{sum(r['units'] for r in doc['refactor'])} hidden units ("
                   + ", ".join(f"{r['layer']} {r['units']}->{r['kept']}" for r in doc["refactor"]) + ")")
    if "thin" in doc and "verification" in doc["thin"]:
        ver = doc["thin"]["verification"]
        click.echo(f"thinner model {thin}: labels kept {ver['label_agreement_with_original']:.4f} of "
                   f"{ver['n_samples']}, max |delta logit| {ver['max_abs_diff_original']:.3g}, parameters "
                   f"x{doc['thin']['ratios']['parameters']:.3f}")
    click.echo("wrote " + ", ".join(str(f) for f in files))


@cli.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Data file to write (.npz).")
@click.option("--dims", default=10, show_default=True, type=int, help="Input dimensions (the paper: 10 and 10000).")
@click.option("--train", "n_train", default=1000, show_default=True, type=int, help="Training samples (split 0).")
@click.option("--test", "n_test", default=1000, show_default=True, type=int, help="Test samples (split 2).")
@click.option("--teacher-width", default=32, show_default=True, type=int,
              help="Hidden units of the random teacher (1/4 of a 128-unit student).")
@click.option("--classes", default=2, show_default=True, type=int)
@click.option("--balance", default="0.4,0.6", show_default=True, help="Bounds on each class's share of the inputs.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def synthetic(out, dims, n_train, n_test, teacher_width, classes, balance, seed, overwrite):
    """Synthetic data: Gaussian inputs labelled by a random teacher MLP.

    Inputs are uncorrelated N(0, I); the label is the argmax of a randomly initialised
    dims-teacher_width-classes ReLU network, redrawn until each class covers a share of the
    inputs within --balance (Casper et al., "Frivolous Units", Section 4). Writes an .npz with
    x, y and split (0 train, 2 test) that every command reads with --data.

    \b
    Example:
      infoprobe synthetic --dims 10000 --out synthetic_10k.npz
    """
    import numpy as np

    from infoprobe.synthetic import save_npz, teacher_data

    try:
        lo, hi = (float(v) for v in balance.split(","))
    except ValueError:
        raise click.BadParameter(f"{balance!r} is not two numbers like 0.4,0.6", param_hint="--balance") from None
    d = teacher_data(dims, n_train=n_train, n_test=n_test, hidden=teacher_width, n_classes=classes,
                     balance=(lo, hi), seed=seed)
    save_npz({k: d[k] for k in ("x", "y", "split")}, out, overwrite=overwrite)
    shares = ", ".join(f"{v:.3f}" for v in np.bincount(d["y"], minlength=classes) / len(d["y"]))
    click.echo(f"wrote {out}: {n_train} + {n_test} samples of {dims} dimensions, class shares {shares} "
               f"(teacher drawn {d['tries']} time{'s' if d['tries'] > 1 else ''})")


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option
@_with(_data_options(help="The inputs X (each equally likely; labels split the distance histograms)."))
@click.option("--beta", required=True, type=float,
              help="Standard deviation of the Gaussian noise added to every hidden layer's output (0: none).")
@click.option("--checkpoints", is_flag=True, help="MODELS are checkpoints of one architecture, in training order.")
@click.option("--epochs", default=None, help="Epoch of each checkpoint, e.g. 0,10,50 (default 0, 1, 2, ...).")
@click.option("--samples", "n_samples", default=200, show_default=True, type=int,
              help="Noisy draws per input for the conditional entropies (n_x).")
@click.option("--mc", "n_mc", default=100_000, show_default=True, type=int,
              help="Monte Carlo draws for each layer's unconditional entropy.")
@click.option("--mc-conditional", default=200, show_default=True, type=int,
              help="Monte Carlo draws for each input's conditional entropy.")
@click.option("--bin-size", type=float, default=None, help="Bin side for H(Bin(T)) (default 10 x beta, or 0.1).")
@click.option("--layers", default=None, help="Comma-separated hidden layers (default: all).")
@click.option("--max-points", default=2000, show_default=True, type=int,
              help="Samples whose pairwise distances are histogrammed.")
@click.option("--nats", is_flag=True, help="Report I(X;T) and entropies in nats instead of bits.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the mixture entropies are computed (NumPy or CuPy).")
@_with(result_options)
@click.option("--json", "as_json", is_flag=True, help="Print the trajectory table as JSON.")
@max_size_option
@progress_option
def flow(models, out, data_path, split, scale, x_key, y_key, limit, beta, checkpoints, epochs, n_samples, n_mc,
         mc_conditional, bin_size, layers, max_points, nats, device, seed, plot, overwrite, as_json, max_model_size,
         progress):
    """Information flow: I(X;T) of each hidden layer in the noisy network, and clustering.

    Adds N(0, beta^2) noise to the output of every hidden layer (not the output layer) and
    estimates I(X;T_l) by sample propagation: the entropy of the Gaussian mixture around the
    layer's noise-free outputs S_l of all inputs, minus the mean entropy of the mixtures around
    --samples noisy draws of each input, each computed by Monte Carlo integration (reported
    with its standard error). Also the binned entropy H(Bin(T_l)) of each layer and unit, and
    histograms of within- and between-class distances between representations. With
    --checkpoints, MODELS are training checkpoints: trajectories, and per-unit trends of the
    binned entropy. beta = 0 gives only the clustering measures: I(X;T) of a deterministic
    network is not a meaningful number. Each finished checkpoint is kept in OUT/.flow-partial
    until the tables are written, so an interrupted run given the same options and --out
    resumes with the checkpoints already done. Method: Goldfeld et al., "Estimating
    Information Flow in Deep Neural Networks" (ICML 2019).

    \b
    Examples:
      infoprobe flow model.onnx --data szt.npz --beta 0.005 --out flow/
      infoprobe flow --checkpoints epoch_*.onnx --epochs 0,10,50,150 --data szt.npz --beta 0.005 --out flow/
      infoprobe flow model.onnx --data mnist.npz --split test --beta 0 --bin-size 0.01 --out flow/
    """
    import shutil

    from infoprobe.analyses.flow import DETERMINISTIC_NOTE, PARTIAL_DIR, TABLES, flow_series
    from infoprobe.results import after_commit, check_outputs, keep_on_interrupt

    if len(models) > 1 and not checkpoints:
        raise click.UsageError("several MODELS are read as training checkpoints: pass --checkpoints")
    epoch_list = None
    if epochs:
        try:
            epoch_list = [float(e) for e in _csv_list(epochs)]
        except ValueError:
            raise click.BadParameter(f"{epochs!r} is not a list of numbers", param_hint="--epochs") from None
    from infoprobe.data import load_data

    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit)
    check_outputs([out / f"{t}.{e}" for t in TABLES for e in ("csv", "json")], overwrite)   # before the work
    if beta == 0:
        click.echo(DETERMINISTIC_NOTE, err=True)
    partial = out / PARTIAL_DIR

    def kept():
        done = len(list(partial.glob("[0-9]*.json"))) if partial.is_dir() else 0
        if not done:
            return "nothing was written (results appear only when complete)"
        return (f"{done} finished checkpoint{'s' if done > 1 else ''} kept in {partial}; run the same command "
                "again to resume")

    keep_on_interrupt(kept)
    series = flow_series([_load(m, max_model_size) for m in models], data, epochs=epoch_list, beta=beta,
                         n_samples=n_samples, n_mc=n_mc, n_mc_conditional=mc_conditional, layers=_csv_list(layers),
                         bin_size=bin_size, max_points=max_points, unit="nats" if nats else "bits", seed=seed,
                         device=device, scale=scale, progress=progress, resume_dir=partial,
                         notify=_announcer(progress))
    files = series.save(out, overwrite=overwrite)
    if plot:
        files += series.plot(out)
    after_commit(lambda: shutil.rmtree(partial, ignore_errors=True))   # once the tables are in place
    if as_json:
        from infoprobe.results import _plain

        click.echo(json.dumps(_plain({"trajectory": series.trajectory, "trend_summary": series.trend_summary,
                                      "files": files}), indent=1))
        return
    unit = "nats" if nats else "bits"
    head = f"  {'epoch':>8} {'layer':<12} {'units':>5}"
    head += f" {'I(X;T) [' + unit + ']':>16} {'MC s.e.':>8}" if beta > 0 else ""
    click.echo(head + f" {'H(Bin(T)) [bits]':>17}")
    for r in series.trajectory:
        line = f"  {r['epoch']:>8g} {r['layer']:<12} {r['units']:>5}"
        line += f" {r['mi']:16.4f} {r['mi_se']:8.4f}" if beta > 0 else ""
        click.echo(line + f" {r['binned_entropy']:17.4f}")
    for s in series.trend_summary:
        click.echo(f"  {s['layer']}: per-unit H(Bin) slope {s['mean_slope']:.3g} +/- {s['std_slope']:.3g} bits/epoch, "
                   f"{100 * s['negative_fraction']:.0f}% of units negative")
    click.echo("wrote " + ", ".join(str(f) for f in files))


def _print_fifty(table):
    click.echo("accuracy with 50% of a layer's units ablated:")
    click.echo(f"  {'layer':<14} {'ranking':<34} {'to zero':>8} {'bias bal.':>9}")
    for r in table:
        name = r["ranking"] if r["order"] == "-" else f"{r['ranking']} ({r['order']} first)"
        zero, mean = (f"{r[k]:.4f}" if k in r else "-" for k in ("accuracy_zero", "accuracy_mean"))
        click.echo(f"  {r['layer']:<14} {name:<34} {zero:>8} {mean:>9}")


@cli.command()
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
@click.option("--replace", type=click.Choice(["zero", "mean", "bias"]), default=None,
              help="Constant replacing a removed unit: zero, mean (bias balancing) or bias (sigma(b)). "
                   "Default: mean for measure/hybrid, zero otherwise.")
@click.option("--surgery/--no-surgery", default=True, show_default=True,
              help="merge: add a removed unit's outgoing weights to its partner's.")
@click.option("--order", type=click.Choice(["low", "high"]), default="low", show_default=True,
              help="measure: remove lowest- or highest-ranked units.")
@click.option("--layers", default=None, help="Comma-separated hidden layers (default: all).")
@click.option("--seed", default=0, show_default=True, type=int, help="random: the seed.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Plan to write (.json).")
@click.option("--overwrite", is_flag=True, help="Replace an existing plan file.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan's summary as JSON.")
@max_size_option
def plan(model, method, fraction, measure, hybrid, store, replace, surgery, order, layers, seed, out,
         overwrite, as_json, max_model_size):
    """Write a pruning plan for MODEL: units to remove and what replaces each.

    \b
    Methods:
      measure    lowest values of an information measure per layer (needs --store)
      hybrid     a measure per layer, removal counts in a ratio (Liu et al. 2018, Sec. 6)
      random     a seeded random choice (the baseline)
      magnitude  smallest L1 norm of incoming weights (data-free)
      merge      data-free neuron merging of Srinivas & Babu 2015 (--no-surgery: no weight update)

    The plan is JSON (format infoprobe-pruning-plan, version 1; see the README) and is
    applied by `infoprobe prune`.

    \b
    Examples:
      infoprobe plan model.onnx --method measure --measure kl_selectivity --fraction 0.3 \\
          --store acts.h5 --out plan.json
      infoprobe plan model.onnx --method hybrid --hybrid fc1=mutual_information:1,fc2=kl_selectivity:2 \\
          --fraction 0.5 --store acts.h5 --out plan.json
      infoprobe plan model.onnx --method merge --fraction 0.5 --out plan.json
    """
    from infoprobe.analyses.plans import make_plan
    from infoprobe.store import Store

    lm = _load(model, max_model_size)
    st = Store(store) if store else None
    try:
        res = make_plan(lm, method, fraction, store=st, measure=measure, hybrid=hybrid or None, replace=replace,
                        surgery=surgery, order=order, seed=seed, layers=_csv_list(layers))
    finally:
        if st is not None:
            st.close()
    res.save(out, overwrite=overwrite)
    summary = {"out": str(out), "generator": res.generator,
               "layers": {n: {"units": lp.units, "removed": len(lp.remove),
                              "replacement": "constant" if lp.is_constant else "affine"}
                          for n, lp in res.layers.items()}}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for n, d in summary["layers"].items():
        click.echo(f"{n:<20} remove {d['removed']:>5} of {d['units']:<5} ({d['replacement']} replacement)")
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Pruned model to write (.onnx).")
@_with(_data_options(required=False, help="Real inputs: verify the pruned model against the original with the "
                                          "plan applied by masks, and measure latency on them."))
@click.option("--latency-batch", default=64, show_default=True, type=int, help="Batch size of the latency measurement.")
@click.option("--repeats", default=30, show_default=True, type=int, help="Latency repetitions (median reported).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@max_size_option
def prune(model, plan_path, out, data_path, split, scale, x_key, y_key, limit, latency_batch, repeats,
          overwrite, as_json, max_model_size):
    """Physically remove the units a PLAN lists from MODEL and write a smaller ONNX model.

    Each removed unit's replacement (constant or affine function of kept units) is folded
    into the next layer's weights and bias; rows, columns, batch-norm parameters and
    Flatten column blocks are removed. The report compares parameters, file size,
    multiply-accumulates and onnxruntime latency of both models. With --data the pruned
    model is verified on real inputs; a mismatch exits with status 1.

    \b
    Example:
      infoprobe prune model.onnx plan.json --out small.onnx --data mnist.npz --split test
    """
    from infoprobe.analyses.compress import prune_model
    from infoprobe.data import load_data

    lm = _load(model, max_model_size)
    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit) if data_path else None
    rep = prune_model(lm, plan_path, out, data=data, scale=scale, latency_batch=latency_batch, repeats=repeats,
                      overwrite=overwrite)
    ver = rep.get("verification")
    if as_json:
        click.echo(json.dumps(rep, indent=1))
    else:
        for lay in rep["layers"]:
            if lay["kept"] != lay["units"]:
                click.echo(f"{lay['layer']:<20} {lay['units']:>6} -> {lay['kept']:<6} units")
        o, p, r = rep["original"], rep["pruned"], rep["ratios"]
        click.echo(f"{'':<22} {'original':>14} {'pruned':>14} {'ratio':>7}")
        click.echo(f"{'parameters':<22} {o['parameters']:>14,} {p['parameters']:>14,} {r['parameters']:>7.3f}")
        click.echo(f"{'file size (bytes)':<22} {o['bytes']:>14,} {p['bytes']:>14,} {r['bytes']:>7.3f}")
        click.echo(f"{'MACs per sample':<22} {o['macs']:>14,} {p['macs']:>14,} {r['macs'] or float('nan'):>7.3f}")
        lat = f"latency (ms/{o['latency']['batch']})"
        click.echo(f"{lat:<22} {o['latency']['median_ms']:>14.4f} {p['latency']['median_ms']:>14.4f} "
                   f"{r['latency']:>7.3f}")
        if ver:
            acc = (f"; accuracy {ver['accuracy_original']:.4f} -> {ver['accuracy_pruned']:.4f}"
                   if "accuracy_pruned" in ver else "")
            click.echo(f"verified on {ver['n_samples']} samples: max |delta| vs the plan applied by masks "
                       f"{ver['max_abs_diff']:.2e} ({'exact' if ver['exact'] else 'MISMATCH'}), vs the original "
                       f"{ver['max_abs_diff_original']:.2e}; labels kept {ver['label_agreement_with_original']:.4f}{acc}")
        click.echo(f"wrote {out}")
    if ver and not ver["exact"]:
        click.echo("infoprobe: error: the pruned model differs from the plan applied by masks; please report "
                   "this with the model and plan", err=True)
        sys.exit(1)


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
}


def _threshold_options(f):
    for name in reversed(list(_THRESHOLD_HELP)):
        f = click.option("--" + name.replace("_", "-"), name, default=None, callback=lambda c, p, v: _threshold(v),
                         help=_THRESHOLD_HELP[name] + " 'off' disables it.")(f)
    return f


@cli.command()
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@_with(_data_options(help="Labelled samples both models run on (.npz with x, y, optional split; .npy; .h5)."))
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file of thresholds (keys as the options below, top level or in [check]).")
@_threshold_options
@click.option("--batch-size", default=1024, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON instead of the summary.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a JUnit XML report (one test case per threshold).")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a Markdown summary for a pull-request comment.")
@click.option("--overwrite", is_flag=True, help="Replace existing --junit/--markdown files.")
@max_size_option
@progress_option
def check(reference, candidate, data_path, split, scale, x_key, y_key, limit, config, batch_size, as_json,
          junit, markdown, overwrite, max_model_size, progress, **thresholds):
    """CI gate: compare a compressed CANDIDATE with its REFERENCE on labelled data.

    Reports the fraction of changed predicted labels, top-1 accuracy of each model and its
    drop, per-class drops (worst class named), mean KL divergence between output
    distributions, max |output difference|, sizes and latencies. Thresholds come from
    the defaults, then --config, then options.

    \b
    Exit status: 0 every threshold holds, 1 a threshold fails, 2 usage or input error.

    \b
    Examples:
      infoprobe check model.onnx small.onnx --data test.npz
      infoprobe check model.onnx small.onnx --data mnist.npz --split test --config gate.toml \\
          --max-class-drop 0.05 --junit report.xml --markdown summary.md
    """
    from infoprobe.analyses.check import check as run, load_thresholds
    from infoprobe.data import load_data
    from infoprobe.results import atomic_write_bytes, check_outputs

    outs = [p for p in (junit, markdown) if p is not None]
    check_outputs(outs, overwrite)
    th = load_thresholds(config) if config else {}
    th.update({k: (None if v == "off" else v) for k, v in thresholds.items() if v is not None})
    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit)
    res = run(reference, candidate, data, thresholds=th, scale=scale, batch_size=batch_size,
              max_bytes=_size(max_model_size), progress=progress)
    if junit:
        atomic_write_bytes(junit, res.junit_xml())
    if markdown:
        atomic_write_bytes(markdown, res.markdown().encode())
    click.echo(json.dumps(res.to_dict(), indent=1) if as_json else res.summary())
    sys.exit(0 if res.passed else 1)


@cli.command()
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
    redundancy profiles of five seeds of the 784-20-20-20-10 ReLU MLP (synergy.png), and the
    modules of the 90%-pruned 4x256 Fashion-MNIST MLP (modules/).

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
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"model {summary['model']}: baseline test accuracy {summary['baseline_accuracy']:.4f} "
               f"({summary['n_test']} test images; measures from {summary['n_validation']} validation images)")
    click.echo("mean single-unit measures (bits):")
    for lay, m in summary["mean_importance_bits"].items():
        click.echo(f"  {lay:<6} H {m['entropy']:.3f}  I(T;Y) {m['mutual_information']:.3f}  "
                   f"KL selectivity {m['kl_selectivity']:.3f}")
    _print_fifty(summary["accuracy_at_50_percent_ablated"])
    pr = summary["pruned"]
    click.echo(f"pruned model ({pr['plan']}): {pr['parameters'][0]:,} -> {pr['parameters'][1]:,} parameters, "
               f"accuracy {pr['accuracy'][0]:.4f} -> {pr['accuracy'][1]:.4f}, labels kept {pr['label_agreement']:.4f}, "
               f"latency x{pr['latency_ratio']:.2f}; CI gate {'passed' if pr['check_passed'] else 'failed'} (check.md)")
    sy = summary["synergy"]
    click.echo(f"best O-information of 6 units with the label, mean over {len(sy['networks'])} ReLU MLPs "
               "(bits): " + "; ".join(f"{lay} synergy {v['synergy']:.2f} redundancy {v['redundancy']:.2f}"
                                      for lay, v in sy["bits"].items()))
    md = summary["modules"]
    click.echo(f"modules of {md['model']} (k = 12): n-cut {md['ncut']:.3f}, shuffle p {md['clusterability_p_all']:.3g}; "
               f"importance of sub-clusters against random ones: Fisher p {md['fisher_importance']:.2g}, "
               f"chi-squared p {md['chi2_importance']:.2g}; "
               + ", ".join(f"{k} {v}" for k, v in md["categories"].items() if v) + " (modules/)")
    click.echo(f"results in {out}/: " + ", ".join(summary["files"]))


#: Commands whose files are not staged: the demo reads back the models it writes.
_UNSTAGED = {"demo"}
for _command in cli.commands.values():
    _harden(_command, stage=_command.name not in _UNSTAGED)


def main():
    """Console-script entry point."""
    cli(prog_name="infoprobe")


if __name__ == "__main__":
    main()
