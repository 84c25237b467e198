"""Input data: ``.npz`` (keys ``x``, ``y``, optional ``split``), ``.npy`` and HDF5 files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .model import sha256_file

SPLITS = {"train": 0, "validation": 1, "test": 2}


@dataclass
class Dataset:
    """Raw samples of one split.

    Attributes
    ----------
    x : ndarray [N, ...]
        Samples as stored (e.g. uint8 images); see :func:`prepare_inputs`.
    y : int64 ndarray [N] or None
    index : int64 ndarray [N]
        Row numbers in the source file.
    split : str
    path : Path
    sha256 : str
        Of the source file.
    """

    x: np.ndarray
    y: np.ndarray | None
    index: np.ndarray
    split: str
    path: Path
    sha256: str

    def __len__(self):
        return len(self.x)


def load_data(path, *, split: str = "all", x_key: str = "x", y_key: str = "y",
              split_key: str = "split", limit: int | None = None) -> Dataset:
    """Read samples and labels, never unpickling anything.

    Parameters
    ----------
    path : path-like
        ``.npz`` with arrays ``x`` [N, ...], optional ``y`` [N] and ``split`` [N]
        (0 train, 1 validation, 2 test); ``.npy`` with ``x`` only; or HDF5 (``.h5``, ``.hdf5``)
        with datasets of those names.
    split : {"all", "train", "validation", "test"} or int
    x_key, y_key, split_key : str
        Array names in the file.
    limit : int, optional
        Keep only the first ``limit`` samples of the split.

    Raises
    ------
    DataError
        Unreadable file, missing arrays, a split requested from a file without ``split``,
        labels that are not integers of the right length, or an empty selection.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    y = sp = None
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as d:
                if x_key not in d:
                    raise DataError(f"{path} has no array {x_key!r} (it has: {', '.join(d.files)})")
                x = d[x_key]
                y = d[y_key] if y_key in d else None
                sp = d[split_key] if split_key in d else None
        elif suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                if x_key not in f:
                    raise DataError(f"{path} has no dataset {x_key!r}")
                x = f[x_key][()]
                y = f[y_key][()] if y_key in f else None
                sp = f[split_key][()] if split_key in f else None
        else:
            raise DataError(f"{path}: unknown data format {suffix!r}; use .npz, .npy or .h5")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if x.dtype == object:
        raise DataError(f"{path}: {x_key!r} is an object array; numeric arrays only")
    n = len(x)
    for name, arr in (("labels", y), ("split", sp)):
        if arr is not None and (arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{path}: {name} must be integers of shape ({n},), got {arr.dtype} {arr.shape}")
    index = np.arange(n, dtype=np.int64)
    if split not in ("all", None):
        code = SPLITS.get(split, split)
        try:
            code = int(code)
        except (TypeError, ValueError):
            raise DataError(f"unknown split {split!r}; use all, train, validation, test or a number") from None
        if sp is None:
            raise DataError(f"{path} has no {split_key!r} array, so split {split!r} cannot be selected; "
                            "use --split all")
        index = np.flatnonzero(sp == code).astype(np.int64)
    if limit is not None:
        index = index[:limit]
    if len(index) == 0:
        raise DataError(f"{path}: split {split!r} selects no samples")
    return Dataset(x=x[index], y=None if y is None else y[index].astype(np.int64), index=index,
                   split=str(split), path=path, sha256=sha256_file(path))


def resolve_scale(x: np.ndarray, scale) -> float:
    """Input scale factor: ``"auto"`` is 1/255 for uint8 data and 1 otherwise."""
    if scale in (None, "auto"):
        return 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    try:
        return float(scale)
    except (TypeError, ValueError):
        raise DataError(f"--scale must be 'auto' or a number, got {scale!r}") from None


def prepare_inputs(x: np.ndarray, input_shape: tuple, scale: float, *, input_name: str = "input") -> np.ndarray:
    """Scale samples and reshape them to the model's per-sample input shape.

    Parameters
    ----------
    x : ndarray [n, ...]
    input_shape : tuple
        The model input's shape, first dimension the batch (``None`` for symbolic dims).
    scale : float
        Multiplier applied after conversion to float32.

    Returns
    -------
    float32 ndarray [n, *input_shape[1:]]

    Raises
    ------
    DataError
        The per-sample size does not match the model input, or the data holds NaN/inf.
    """
    want = tuple(input_shape[1:])
    have = tuple(x.shape[1:])
    out = np.multiply(x, np.float32(scale), dtype=np.float32)   # one pass, no float64 temporary
    if have != want:
        if any(d is None for d in want):
            if len(have) != len(want) or any(w is not None and w != h for w, h in zip(want, have)):
                raise DataError(f"data samples have shape {list(have)} but the model input "
                                f"{input_name!r} expects {list(want)}")
        elif int(np.prod(have)) == int(np.prod(want)):
            out = out.reshape(len(x), *want)
        else:
            raise DataError(f"data samples have shape {list(have)} ({int(np.prod(have))} values) but the "
                            f"model input {input_name!r} expects {list(want)} ({int(np.prod(want))} values)")
    if not np.issubdtype(x.dtype, np.integer) and not np.isfinite(out).all():
        raise DataError("input data contain NaN or inf")
    return out
