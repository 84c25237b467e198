"""``infoprobe flow``: I(X;T) of the hidden layers of a noisy network, over checkpoints."""
from __future__ import annotations

from pathlib import Path

import click

from .options import (announcer, csv_list, data_options, echo_json, max_size_option, numbers, out_dir_option,
                      progress_option, read_data, result_options, size, to_stderr, with_options, wrote)


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option
@with_options(data_options(help="The inputs X (each equally likely; labels split the distance histograms)."))
@click.option("--beta", required=True, type=float,
              help="Standard deviation of the Gaussian noise added to every hidden layer's output (0: none).")
@click.option("--checkpoints", is_flag=True, help="MODELS are checkpoints of one architecture, in training order.")
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True,
              help="MODELS are this many training runs (other seeds) with the same checkpoints, given run after run: "
                   "each run's tables in OUT/run<i>, the mean, sd and 95% interval over runs in flow_summary, "
                   "bands in flow.png.")
@click.option("--epochs", default=None,
              help="Epoch of each checkpoint of a run, e.g. --epochs 0,10,50. Default: the epochs or steps the models' "
                   "metadata (epoch, step) or file names give (szt_e0010.onnx: epoch 10; toy_k000046.onnx: step 46), "
                   "else none: the tables then have no epoch column, only checkpoint_index (0, 1, 2, ... in "
                   "training order).")
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
@with_options(result_options)
@click.option("--json", "as_json", is_flag=True, help="Print the trajectory table as JSON.")
@max_size_option
@progress_option
def flow(models, out, data_path, split, scale, x_key, y_key, limit, beta, checkpoints, runs, epochs, n_samples, n_mc,
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
    binned entropy. Every row names its checkpoint's index in training order
    (checkpoint_index); the tables and plots have an epoch column only when epochs are known
    (--epochs, the models' metadata, or names such as szt_e0010.onnx), a step column for
    names such as toy_k000046.onnx, and use the checkpoint index otherwise. beta = 0 gives
    only the clustering measures: I(X;T) of a deterministic network is not a meaningful
    number. Each finished checkpoint is kept in OUT/.flow-partial until the tables are
    written, so an interrupted run given the same options and --out resumes with the
    checkpoints already done. Method: Goldfeld et al., "Estimating
    Information Flow in Deep Neural Networks" (ICML 2019).

    \b
    Examples:
      infoprobe flow model.onnx --data szt.npz --beta 0.005 --out flow/
      infoprobe flow --checkpoints szt_e*.onnx --data szt.npz --beta 0.005 --out flow/
      infoprobe flow --checkpoints ckpt_a.onnx ckpt_b.onnx ckpt_c.onnx --epochs 0,10,50 --data szt.npz \\
          --beta 0.005 --out flow/
      infoprobe flow model.onnx --data mnist.npz --split test --beta 0 --bin-size 0.01 --out flow/
      infoprobe flow --checkpoints --runs 3 seed1_e*.onnx seed2_e*.onnx seed3_e*.onnx --data szt.npz \\
          --beta 0.005 --out flow3/ --workers 2
    """
    from infoprobe.analyses.flow import flow_study

    if len(models) > runs and not checkpoints:
        raise click.UsageError("several MODELS are read as training checkpoints: pass --checkpoints"
                               + (" (or --runs N for the final networks of N runs)" if runs == 1 else ""))
    if len(models) % runs:
        raise click.UsageError(f"{len(models)} MODELS cannot be split into --runs {runs} runs of equal length")
    epoch_list = numbers(epochs, "--epochs")
    study = flow_study(models, read_data(data_path, split, x_key, y_key, limit), out, beta=beta, epochs=epoch_list,
                       runs=runs,
                       overwrite=overwrite, plot=plot, progress=progress, notify=announcer(progress), note=to_stderr,
                       max_model_bytes=size(max_model_size), n_samples=n_samples, n_mc=n_mc,
                       n_mc_conditional=mc_conditional, layers=csv_list(layers), bin_size=bin_size,
                       max_points=max_points, unit="nats" if nats else "bits", seed=seed, device=device, scale=scale)
    if as_json:
        echo_json(study.to_dict())
        return
    click.echo(study.summary())
    wrote(study.files)
