"""Synthetic classification data from a random teacher network (Casper et al., "Frivolous
Units", Section 4, "Datasets"): uncorrelated Gaussian inputs labelled by a randomly
initialised MLP of 1/4 of the student's width, kept only when every label covers 40-60% of
the inputs."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .results import atomic_write_bytes, check_outputs


def teacher_data(dims: int, *, n_train: int = 1000, n_test: int = 1000, hidden: int = 32, n_classes: int = 2,
                 balance: tuple = (0.4, 0.6), init_std: float | None = None, seed: int = 0,
                 max_tries: int = 1000) -> dict:
    """Draw a labelled data set from a random teacher MLP.

    Inputs are i.i.d. N(0, I) of ``dims`` dimensions. The teacher is ``dims``-``hidden``
    (ReLU)-``n_classes``, weights N(0, init_std^2) (default He: 2 / fan_in for the hidden
    layer, 1 / fan_in for the output), biases 0; the label is the argmax of its output.
    Teachers are drawn again until every class covers a share of the ``n_train + n_test``
    inputs within ``balance`` (the paper: 40-60% for two classes, 32 hidden units = 1/4 of
    the 128 of its 1x student).

    Parameters
    ----------
    dims : int
        Input dimension (the paper: 10 and 10,000).
    n_train, n_test : int
        Samples per split (the paper: 1,000 each).
    hidden, n_classes : int
    balance : (float, float)
        Bounds on each class's share of the inputs.
    init_std : float, optional
        Standard deviation of every teacher weight (default: He / LeCun scaling).
    seed : int
        Seeds inputs and teachers (``numpy.random.default_rng``).
    max_tries : int
        Teachers drawn at most.

    Returns
    -------
    dict
        ``x`` float32 [N, dims], ``y`` int64 [N], ``split`` uint8 [N] (0 train, 2 test, the
        layout of :func:`infoprobe.data.load_data`), ``teacher_w1`` [hidden, dims],
        ``teacher_w2`` [n_classes, hidden], ``tries`` (teachers drawn).

    Raises
    ------
    ConfigError
        Sizes that are not positive, or ``balance`` that no labelling can meet.
    DataError
        No teacher met the balance in ``max_tries`` draws.
    """
    if min(dims, n_train, n_test, hidden) < 1 or n_classes < 2:
        raise ConfigError("dims, n_train, n_test and hidden must be positive and n_classes at least 2")
    lo, hi = balance
    if not (0 <= lo <= 1.0 / n_classes <= hi <= 1):
        raise ConfigError(f"balance {balance} excludes equal classes (1/{n_classes} each)")
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    x = rng.standard_normal((n, dims))
    for tries in range(1, max_tries + 1):
        s1 = init_std if init_std is not None else np.sqrt(2.0 / dims)
        s2 = init_std if init_std is not None else np.sqrt(1.0 / hidden)
        w1 = rng.standard_normal((hidden, dims)) * s1
        w2 = rng.standard_normal((n_classes, hidden)) * s2
        y = (np.maximum(x @ w1.T, 0.0) @ w2.T).argmax(1)
        share = np.bincount(y, minlength=n_classes) / n
        if share.min() >= lo and share.max() <= hi:
            split = np.concatenate([np.zeros(n_train, np.uint8), np.full(n_test, 2, np.uint8)])
            return {"x": x.astype(np.float32), "y": y.astype(np.int64), "split": split,
                    "teacher_w1": w1.astype(np.float32), "teacher_w2": w2.astype(np.float32), "tries": tries}
    raise DataError(f"no teacher gave every class a share within {balance} in {max_tries} draws; "
                    "widen the balance or raise max_tries")


def save_npz(data: dict, path, *, overwrite: bool = False) -> Path:
    """Write a data set (arrays ``x``, ``y``, ``split`` and any other arrays) as a
    compressed ``.npz`` atomically; refuses to replace a file unless ``overwrite``."""
    path = Path(path)
    check_outputs([path], overwrite)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in data.items() if isinstance(v, np.ndarray)})
    atomic_write_bytes(path, buf.getvalue())
    return path
