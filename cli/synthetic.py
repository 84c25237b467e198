"""``infoprobe synthetic``: Gaussian inputs labelled by a random teacher network."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
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
