"""Input data: ``.npz`` (keys ``x``, ``y``, optional ``split``), ``.npy`` and HDF5 files.

A model with several inputs (``input_ids``, ``attention_mask``, ``token_type_ids``) reads one
array per input, named after it (``x_key="input_ids,attention_mask"``): the samples are then an
:class:`Inputs`, sliced together along the batch.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import hdf5
from .errors import BudgetError, DataError, one_line
from .hdf5 import BOMB_FLOOR, MAX_RATIO
from .limits import human, max_memory, require_memory
from .model import sha256_file

SPLITS = {"train": 0, "validation": 1, "test": 2}


class Inputs:
    """Several named arrays of the same samples, sliced together along the first axis.

    Parameters
    ----------
    arrays : dict of str -> ndarray [N, ...]
        One array per model input, all with the same N.

    Raises
    ------
    DataError
        No arrays, or arrays of different lengths.
    """

    def __init__(self, arrays: dict):
        if not arrays:
            raise DataError("no input arrays")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise DataError("the input arrays hold different numbers of samples: "
                            + ", ".join(f"{k} {n}" for k, n in lengths.items()))
        self.arrays = dict(arrays)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index) -> "Inputs":
        if np.ndim(index) == 0 and not isinstance(index, slice):
            raise TypeError("Inputs are indexed by a slice or an array of rows, never one row")
        return Inputs({k: v[index] for k, v in self.arrays.items()})

    def __iter__(self):
        raise TypeError("Inputs are not a sequence of samples; use .arrays, or slice them")

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.arrays.values()))

    def __repr__(self) -> str:
        return "Inputs(" + ", ".join(f"{k}={v.dtype}{list(v.shape)}" for k, v in self.arrays.items()) + ")"


class Rows:
    """Samples of a file read on demand, a selection of rows at a time: what :func:`load_data`
    returns for samples larger than a quarter of the memory budget (an HDF5 dataset, an
    ``.npy`` file mapped in memory, a folder of images), so that commands which take the data
    a batch at a time (``capture``) never hold it whole.

    Indexing by a slice or an array of rows reads those rows (an ``ndarray``); converting the
    whole (``np.asarray``) reads everything, within the memory budget.

    Parameters
    ----------
    read : callable
        ``read(rows)`` with ``rows`` sorted, unique int64 indices into the selection returns
        the samples [len(rows), ...].
    n : int
    sample_shape : tuple
    dtype : numpy dtype
    what : str
        Named in errors.
    """

    def __init__(self, read, n: int, sample_shape: tuple, dtype, what: str):
        self._read, self.shape, self.dtype, self.what = read, (int(n), *map(int, sample_shape)), np.dtype(dtype), what

    ndim = property(lambda self: len(self.shape))
    nbytes = property(lambda self: int(math.prod(self.shape)) * self.dtype.itemsize)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, tuple):
            if len(index) != 1:
                raise TypeError("samples read from a file are selected by rows only")
            index = index[0]
        if isinstance(index, slice):
            r = range(self.shape[0])[index]
            if r.step == 1:
                return self._read(np.arange(r.start, r.stop, dtype=np.int64))
            index = np.arange(r.start, r.stop, r.step, dtype=np.int64)
        if np.ndim(index) == 0:
            return self[np.array([int(index)])][0]
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + self.shape[0], index).astype(np.int64)
        if len(index) and (index.min() < 0 or index.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} samples")
        uniq, inverse = np.unique(index, return_inverse=True)
        require_memory(len(index) * int(math.prod(self.shape[1:])) * self.dtype.itemsize,
                       f"{len(index):,} samples of {self.what}")
        block = self._read(uniq)
        return block if len(uniq) == len(index) and np.array_equal(uniq, index) else block[inverse]

    def __array__(self, dtype=None, copy=None):
        require_memory(self.nbytes, f"all {len(self):,} samples of {self.what} at once (commands that read their "
                       "data a batch at a time, such as capture, take any number)")
        a = self[:]
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"Rows({self.what}: {self.dtype}{list(self.shape)}, read on demand)"


#: Model inputs that say which token positions are real (1) and which are padding (0).
MASK_INPUTS = ("attention_mask",)


def position_mask(x, padding: dict | None = None) -> np.ndarray | None:
    """The padding mask of samples ``x``, [N, T] (nonzero: a real token), or None: the array
    of :class:`Inputs` named as a model's ``attention_mask`` (:data:`MASK_INPUTS`); else, for
    a model that computes its mask from the token ids (``padding``: the model's
    :func:`infoprobe.model.padding_rule`, ``LoadedModel.padding``), that comparison applied
    to the ids (the input named, or ``x`` itself for a model of one input)."""
    if isinstance(x, Inputs):
        for name in MASK_INPUTS:
            if name in x.arrays and x.arrays[name].ndim == 2:
                return x.arrays[name]
    if padding is None:
        return None
    ids = x.arrays.get(padding["input"]) if isinstance(x, Inputs) else x
    if ids is None or np.ndim(ids) != 2 or not np.issubdtype(np.asarray(ids[:0]).dtype, np.integer):
        return None
    ids = np.asarray(ids[:])
    return (ids != padding["value"]) if padding["real"] == "!=" else (ids > padding["value"])


def feeds(name: str, x) -> dict:
    """onnxruntime feeds of prepared samples: ``{name: x}`` for one array (float arrays as
    float32), the arrays by their own names for :class:`Inputs`."""
    if isinstance(x, Inputs):
        return {k: np.ascontiguousarray(v) for k, v in x.arrays.items()}
    x = np.asarray(x)
    return {name: np.ascontiguousarray(x, np.float32 if x.dtype.kind == "f" else x.dtype)}


def tile_rows(x, k: int):
    """``x`` repeated ``k`` times along the batch (``[x; x; ...]``), for an array or :class:`Inputs`."""
    if isinstance(x, Inputs):
        return Inputs({name: np.concatenate([v] * k) for name, v in x.arrays.items()})
    return np.concatenate([x] * k)


def repeat_rows(x, k: int):
    """Each row of ``x`` repeated ``k`` times in place (``[x0, x0, ..., x1, x1, ...]``), for an
    array or :class:`Inputs`."""
    if isinstance(x, Inputs):
        return Inputs({name: np.repeat(v, k, axis=0) for name, v in x.arrays.items()})
    return np.repeat(x, k, axis=0)


def row_bytes(x) -> int:
    """Bytes of one sample of ``x`` (an array [N, ...] or :class:`Inputs`), as float32 for
    arrays (the prepared input's size)."""
    if isinstance(x, Inputs):
        return int(sum(max(4, v.dtype.itemsize) * math.prod(v.shape[1:]) for v in x.arrays.values()))
    return 4 * int(math.prod(x.shape[1:]))


@dataclass
class Dataset:
    """Raw samples of one split.

    Attributes
    ----------
    x : ndarray [N, ...] or Inputs
        Samples as stored (e.g. uint8 images), or one array per model input;
        see :func:`model_inputs`.
    y : int64 ndarray [N] or None
    index : int64 ndarray [N]
        Row numbers in the source file.
    split : str
    path : Path
    sha256 : str
        Of the source file (of a folder of images: of its listing, every file's name, size and
        modification time).
    recipe : dict or None
        The :func:`load_data` call that read it (how it travels to a Dask worker).
    classes : list of str or None
        A folder of images' class names, in label order.
    """

    x: np.ndarray
    y: np.ndarray | None
    index: np.ndarray
    split: str
    path: Path
    sha256: str
    recipe: dict | None = field(default=None, repr=False, compare=False)
    classes: list | None = field(default=None, compare=False)

    def __len__(self):
        return len(self.x)

    def __reduce__(self):
        """Pickled (for a Dask worker: :mod:`infoprobe.parallel`) as the :func:`load_data` call
        that read it, so that the worker reads the file from shared storage instead of
        receiving the samples; a Dataset built by hand travels whole."""
        if self.recipe is not None and len(self.index) == self.recipe.get("n"):
            return (_reload, (self.recipe, self.sha256))
        return (Dataset, (self.x, self.y, self.index, self.split, self.path, self.sha256))


def _reload(recipe: dict, sha256: str) -> "Dataset":
    """:func:`load_data` again from a recipe, checking the file is the one first read.

    Raises
    ------
    DataError
        The file changed (another SHA-256) or is unreadable where the task runs.
    """
    kw = {k: v for k, v in recipe.items() if k != "n"}
    data = load_data(**kw)
    if data.sha256 != sha256:
        raise DataError(f"{kw['path']} changed since it was read (SHA-256 {sha256[:12]}… is now "
                        f"{data.sha256[:12]}…); every worker must read the same data file")
    return data


#: Largest class index accepted in labels (a label is an index into per-class tables).
MAX_CLASSES = 100_000
#: Largest ``.npy`` header read (bytes), as NumPy's own default limit.
_MAX_HEADER = 10_000


def class_labels(y: np.ndarray, what: str, error=DataError) -> np.ndarray:
    """Validated class labels: a 1-D array of whole, non-negative numbers below
    :data:`MAX_CLASSES` (floats such as 3.0 are accepted), as int64.

    Raises
    ------
    error
        Not numeric, not 1-D, fractions, NaN, negative values, or a class index so large that
        per-class tables could not be allocated.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "biuf":
        raise error(f"{what} must be a 1-D array of class indices, got {y.dtype} {list(y.shape)}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.equal(np.mod(y, 1), 0).all():
            raise error(f"{what} holds fractions or NaN; labels must be whole class indices")
    if len(y) and y.min() < 0:
        raise error(f"{what} holds negative values; labels must be class indices 0, 1, 2, ...")
    if len(y) and y.max() >= MAX_CLASSES:
        raise error(f"{what} holds the class index {int(y.max())}; infoprobe accepts class indices below "
                    f"{MAX_CLASSES:,}")
    return y.astype(np.int64)


def _check_samples(x: np.ndarray, what: str) -> None:
    if x.dtype.kind not in "biuf" or x.dtype.fields is not None:
        raise DataError(f"{what} holds {x.dtype} values; infoprobe needs numbers (booleans, integers or floats)")
    if x.ndim == 0:
        raise DataError(f"{what} is a single value (0-d); infoprobe needs samples along the first axis")


def _npy_header(fp, what: str) -> tuple:
    """Shape, Fortran order and dtype of an ``.npy`` stream, refusing objects (pickles)."""
    try:
        version = np.lib.format.read_magic(fp)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        with warnings.catch_warnings():   # NumPy's note on headers written by Python 2
            warnings.simplefilter("ignore", UserWarning)
            shape, fortran, dtype = read_header(fp, max_header_size=_MAX_HEADER)
    except Exception as exc:
        raise DataError(f"{what} is not a valid .npy array: {one_line(exc, 160)}") from None
    if dtype.hasobject:
        raise DataError(f"{what} is an object array (it would need unpickling); numeric arrays only")
    return tuple(int(d) for d in shape), fortran, dtype


def _nbytes(shape: tuple, dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _read_npz(path: Path, keys: tuple) -> dict:
    """Arrays ``keys`` (those present) of an ``.npz``, each size checked before it is read."""
    import zipfile

    out = {}
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npz (zip) file: {one_line(exc, 160)}") from None
    with z:
        names = z.namelist()
        if len(names) != len(set(names)):
            raise DataError(f"{path} lists an archive member twice; refusing an ambiguous .npz")
        available = [n[:-4] for n in names if n.endswith(".npy")]
        if keys[0] not in available:
            raise DataError(f"{path} has no array {keys[0]!r} (it has: {', '.join(available) or 'none'})")
        for key in keys:
            if key not in available:
                continue
            info = z.getinfo(key + ".npy")
            what = f"{path}: array {key!r}"
            if info.flag_bits & 0x1:
                raise DataError(f"{what} is encrypted")
            if info.file_size > BOMB_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise DataError(f"{what} unpacks {human(info.compress_size)} into {human(info.file_size)} (more than "
                                f"{MAX_RATIO}:1): a decompression bomb")
            try:
                with z.open(info) as fp:
                    shape, fortran, dtype = _npy_header(fp, what)
                    need = _nbytes(shape, dtype)
                    if info.file_size < need:
                        raise DataError(f"{what} declares {need:,} bytes of data but its archive entry holds "
                                        f"{info.file_size:,}; the file is damaged")
                    if need > max_memory():
                        raise BudgetError(f"{what} holds {human(need)}, over the memory budget of {human(max_memory())}, "
                                          "and a member of an .npz archive can only be read whole: save the array as "
                                          ".npy (numpy.save) or as an HDF5 dataset (h5py), which infoprobe reads a "
                                          "batch at a time, or raise --max-memory")
                with z.open(info) as fp:
                    out[key] = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=_MAX_HEADER)
            except (DataError, BudgetError):
                raise
            except Exception as exc:
                raise DataError(f"cannot read {what}: {type(exc).__name__}: "
                                f"{one_line(exc, 160)}") from None
    return out


def _open_regular(path: Path):
    """``path`` opened for reading as a regular file, without following a link or blocking on a
    FIFO (a file swapped after the folder was listed).

    Raises
    ------
    DataError
        It is a link or not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{path} is a symbolic link; links are not followed in a folder of images") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _read_npy(path: Path) -> np.ndarray:
    """An ``.npy`` file, memory-mapped after its declared size was checked against the file."""
    with open(path, "rb") as fp:
        shape, fortran, dtype = _npy_header(fp, str(path))
        offset = fp.tell()
    need = _nbytes(shape, dtype)
    size = path.stat().st_size
    if offset + need > size:
        raise DataError(f"{path} declares {need:,} bytes of data but holds {size - offset:,}; the file is truncated")
    if need == 0:
        return np.empty(shape, dtype)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _read_h5(path: Path, keys: tuple, lazy: tuple = ()) -> dict:
    """Datasets ``keys`` (those present) of an HDF5 file: read whole, within the memory
    budget, except those in ``lazy``, returned as open ``h5py.Dataset`` objects (the file
    stays open while they are referenced)."""
    out = {}
    f = hdf5.open_file(path, DataError)
    if not isinstance(f.get(keys[0]), h5py.Dataset):
        f.close()
        raise DataError(f"{path} has no dataset {keys[0]!r}")
    for key in keys:
        ds = f.get(key)
        if ds is None:
            continue
        if not isinstance(ds, h5py.Dataset):
            f.close()
            raise DataError(f"{path}: {key!r} is not a dataset")
        out[key] = ds if key in lazy else hdf5.read(ds, f"{path}: {key!r}", DataError)
    if not lazy:
        f.close()
    return out


def _rows_of(a, index: np.ndarray, what: str) -> Rows:
    """A :class:`Rows` over rows ``index`` of an h5py dataset or a memory-mapped array."""
    def read(rows):
        picked = index[rows]
        lo, hi = (int(picked[0]), int(picked[-1]) + 1) if len(picked) else (0, 0)
        try:
            block = a[lo:hi] if hi - lo == len(picked) else a[picked]
            return np.asarray(block)
        except Exception as exc:
            raise DataError(f"cannot read {what}: {one_line(exc, 160)}") from None

    return Rows(read, len(index), a.shape[1:], a.dtype, what)


#: Image files :func:`load_data` reads from a folder, and the formats Pillow may decode.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
#: Largest image decoded (pixels), against decompression bombs.
MAX_IMAGE_PIXELS = 64 * 1024**2
_IMAGES: contextvars.ContextVar = contextvars.ContextVar("infoprobe_images", default=None)


@contextlib.contextmanager
def image_options(size=None, mean=None, std=None):
    """Within the block, :func:`load_data` reads folders of images with these options (the
    CLI's ``--image-size``, ``--mean``, ``--std``); the arguments of a call win."""
    token = _IMAGES.set({"image_size": size, "mean": mean, "std": std})
    try:
        yield
    finally:
        _IMAGES.reset(token)


def _image_files(folder: Path) -> tuple[list, np.ndarray | None, list]:
    """Image files of ``folder`` (sorted), their class indices (one subfolder per class, sorted
    by name) or None (images directly in the folder), and the class names.

    Every subfolder is a class, numbered in the order of the sorted names, so each must be
    usable: a class folder that cannot be read, holds no image, or is a link is refused
    rather than left out (leaving it out would renumber the classes after it, and the labels
    would no longer be the model's). Hidden entries (names starting with ``.``: ``.git``,
    ``.DS_Store``, ``.ipynb_checkpoints``) are not classes or images and are skipped; other
    files beside the class folders, or beside the images, that are not images are ignored.

    Raises
    ------
    DataError
        Links, images both in the folder and in subfolders, nested subfolders, a class folder
        that cannot be read or holds no image, no images at all.
    """
    def listing(d: Path, what: str):
        files, dirs = [], []
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"{what} {d} cannot be read: {exc.strerror or type(exc).__name__}") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_symlink():
                raise DataError(f"{Path(e.path)} is a link; an image folder is read only through its own files")
            if e.is_dir(follow_symlinks=False):
                dirs.append(Path(e.path))
            elif e.is_file(follow_symlinks=False) and Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                files.append(Path(e.path))
        return files, dirs

    files, dirs = listing(folder, "the image folder")
    if files and dirs:
        raise DataError(f"{folder} holds images and subfolders; put every image in its class's subfolder "
                        "(folder/<class>/<image>), or all of them directly in the folder (no labels)")
    if files:
        return files, None, []
    out, labels = [], []
    for c, d in enumerate(dirs):
        sub, nested = listing(d, "the class folder")
        if nested:
            raise DataError(f"{nested[0]} is a folder inside a class folder; use folder/<class>/<image>")
        if not sub:
            raise DataError(f"the class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES)}); every subfolder "
                            f"of {folder} is a class (class {c} here): remove it or add its images")
        out += sub
        labels += [c] * len(sub)
    if not out:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return out, np.asarray(labels, np.int64), [d.name for d in dirs]


def _channel_values(value, channels: int, what: str):
    if value is None:
        return None
    v = np.asarray([float(t) for t in (value.split(",") if isinstance(value, str) else np.ravel(value))], np.float32)
    if len(v) == 1:
        v = np.repeat(v, channels)
    if len(v) != channels or not np.isfinite(v).all() or (what == "std" and (v <= 0).any()):
        count = "one value" if channels == 1 else f"one value or {channels} (one per channel)"
        raise DataError(f"--{what} of these {'greyscale' if channels == 1 else 'RGB'} images needs {count}, finite"
                        f"{' and above 0' if what == 'std' else ''}; got {value!r}")
    return v


def _read_image_folder(folder: Path, *, image_size=None, mean=None, std=None):
    """Samples [N, C, H, W] (channels first; uint8, or float32 normalised with ``mean``/``std``)
    of a folder of images, read with Pillow when rows are asked for, and the labels."""
    from PIL import Image

    files, labels, classes = _image_files(folder)
    size = None if image_size is None else (int(image_size), int(image_size))
    if size is not None and min(size) < 1:
        raise DataError(f"--image-size must be at least 1, got {image_size}")

    def decode(path: Path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with _open_regular(path) as fp, Image.open(fp, formats=IMAGE_FORMATS) as im:
                    if im.width * im.height > MAX_IMAGE_PIXELS:
                        raise DataError(f"{path} is {im.width}x{im.height} pixels, over {MAX_IMAGE_PIXELS:,}: "
                                        "refusing a decompression bomb")
                    if size is not None:
                        im.draft(None, size)       # JPEG: decode at a reduced scale when it suffices
                    return im.convert("RGB" if im.mode not in ("L", "I;16", "I", "F", "1") else "L")
        except DataError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: {one_line(exc, 160)}") from None
        except Exception as exc:
            raise DataError(f"{path} is not a readable image: {type(exc).__name__}: {one_line(exc, 160)}") from None

    first = decode(files[0])
    mode = first.mode
    channels = 1 if mode == "L" else 3
    shape = size or (first.height, first.width)
    m, sd = _channel_values(mean, channels, "mean"), _channel_values(std, channels, "std")
    if (m is None) != (sd is None):
        raise DataError("--mean and --std go together (per-channel normalisation of values in [0, 1])")

    def read(rows):
        out = np.empty((len(rows), channels, *shape), np.float32 if m is not None else np.uint8)
        for i, r in enumerate(rows):
            im = decode(files[r]).convert(mode)
            if size is not None:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            elif (im.height, im.width) != tuple(shape):
                raise DataError(f"{files[r]} is {im.width}x{im.height} but {files[0].name} is {shape[1]}x{shape[0]}; "
                                "pass --image-size to resize every image")
            a = np.asarray(im, np.uint8)
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            out[i] = a if m is None else (a / np.float32(255) - m[:, None, None]) / sd[:, None, None]
        return out

    digest = hashlib.sha256()
    for f in files:            # the folder's listing: names, sizes, modification times
        st = f.stat()
        digest.update(f"{f.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    x = Rows(read, len(files), (channels, *shape), np.float32 if m is not None else np.uint8, str(folder))
    return x, labels, classes, digest.hexdigest()


def _load_image_folder(path: Path, *, split, limit, image_size, mean, std) -> Dataset:
    opts = dict(_IMAGES.get() or {})
    opts.update({k: v for k, v in (("image_size", image_size), ("mean", mean), ("std", std)) if v is not None})
    if split not in ("all", None):
        raise DataError(f"{path} is a folder of images: one split; give the folder of split {split!r} itself "
                        "(--split all)")
    x, y, classes, digest = _read_image_folder(path, **opts)
    n = len(x) if limit is None else min(len(x), int(limit))
    index = np.arange(n, dtype=np.int64)
    if n < len(x):
        x = Rows(lambda rows, x=x: x[rows], n, x.shape[1:], x.dtype, x.what)
    if x.nbytes <= max_memory() // 4:       # decoded once, as other data files that fit are read once
        x = x[:]
    recipe = {"path": str(path.resolve()), "split": "all", "limit": limit, "n": n, **opts}
    return Dataset(x=x, y=None if y is None else y[:n], index=index, split="all", path=path, sha256=digest,
                   recipe=recipe, classes=classes)


def load_data(path, *, split: str = "all", x_key: str = "x", y_key: str = "y",
              split_key: str = "split", limit: int | None = None, image_size: int | None = None,
              mean=None, std=None) -> Dataset:
    """Read samples and labels from an untrusted file, never unpickling anything.

    Every array's declared size (``.npy`` header, zip entry, HDF5 dataspace) is checked
    against the file and the memory budget (:mod:`infoprobe.limits`) before it is read;
    HDF5 files are opened through :func:`infoprobe.hdf5.open_file` (data stored inside the
    file only).

    Parameters
    ----------
    path : path-like
        A folder of images (``folder/<class>/<image>``, labels by the sorted class names, or
        images directly in the folder, without labels; PNG, JPEG, BMP, GIF, TIFF, WebP, PPM;
        read with Pillow as [N, C, H, W], C = 1 for greyscale, else RGB; links refused);
        ``.npz`` with arrays ``x`` [N, ...], optional ``y`` [N] and ``split`` [N]
        (0 train, 1 validation, 2 test); ``.npy`` with ``x`` only; or HDF5 (``.h5``, ``.hdf5``,
        or any other name with the HDF5 signature: :func:`infoprobe.store.is_store_path`) with
        datasets of those names.
    split : {"all", "train", "validation", "test"} or int
    x_key, y_key, split_key : str
        Array names in the file. ``x_key`` may name several arrays, comma-separated
        (``"input_ids,attention_mask"``), one per model input: the samples are then an
        :class:`Inputs`.
    limit : int, optional
        Keep only the first ``limit`` samples of the split.
    image_size, mean, std :
        For a folder of images: the side every image is resized to (bilinear; default: the
        images' own size, which must then be the same for all), and the per-channel mean and
        standard deviation (values in [0, 1]) that normalise them (default: uint8 values,
        which the commands scale by 1/255). Default: those of :func:`image_options`.

    Samples larger than a quarter of the memory budget (HDF5 datasets, ``.npy`` files, image
    folders) are returned as :class:`Rows`, read a selection of rows at a time; smaller ones
    are read (decoded) once, into memory.

    Raises
    ------
    DataError
        Unreadable or damaged file, missing arrays, samples that are not numbers or are 0-d,
        a split requested from a file without ``split``, labels that are not whole
        non-negative class indices of the right length, or an empty selection.
    BudgetError
        An array larger than the memory budget.
    """
    from .store import is_store_path   # store.py reads labels through this module

    path = Path(path)
    if path.is_dir():
        return _load_image_folder(path, split=split, limit=limit, image_size=image_size, mean=mean, std=std)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    x_keys = [k.strip() for k in str(x_key).split(",") if k.strip()] or ["x"]
    keys = (*x_keys, y_key, split_key)
    try:
        if suffix == ".npz":
            arrays = _read_npz(path, keys)
        elif suffix == ".npy":
            if len(x_keys) > 1:
                raise DataError(f"{path}: an .npy file holds one array; give several inputs in an .npz or .h5 file")
            arrays = {x_keys[0]: _read_npy(path)}
        elif is_store_path(path):
            arrays = _read_h5(path, keys, lazy=tuple(x_keys))
        else:
            raise DataError(f"{path}: unknown data format {suffix!r}; use .npz, .npy or .h5")
    except (DataError, BudgetError):
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {one_line(exc, 160)}") from None
    x, y, sp = arrays[x_keys[0]], arrays.get(y_key), arrays.get(split_key)
    for k in x_keys:
        if k not in arrays:
            raise DataError(f"{path} has no array {k!r}")
        _check_samples(arrays[k], f"{path}: {k!r}")
        if len(arrays[k]) != len(x):
            raise DataError(f"{path}: {k!r} holds {len(arrays[k])} samples but {x_keys[0]!r} holds {len(x)}")
    n = len(x)
    if n == 0:
        raise DataError(f"{path}: {x_key!r} holds no samples")
    if y is not None:
        if y.shape != (n,):
            raise DataError(f"{path}: labels must have shape ({n},), got {list(y.shape)}")
        y = class_labels(y, f"{path}: labels {y_key!r}")
    if sp is not None and (sp.shape != (n,) or sp.dtype.kind not in "iu"):
        raise DataError(f"{path}: split must be integers of shape ({n},), got {sp.dtype} {list(sp.shape)}")
    index = np.arange(n, dtype=np.int64)
    if split not in ("all", None):
        code = SPLITS.get(split, split)
        try:
            code = int(code)
        except (TypeError, ValueError):
            raise DataError(f"unknown split {split!r}; use all, train, validation, test or a number") from None
        if sp is None:
            raise DataError(f"{path} has no {split_key!r} array, so split {split!r} cannot be selected; "
                            "use split='all' (--split all)")
        index = np.flatnonzero(sp == code).astype(np.int64)
    if limit is not None:
        index = index[:limit]
    if len(index) == 0:
        raise DataError(f"{path}: split {split!r} selects no samples")
    # samples over a quarter of the budget stay in the file, read a selection of rows at a time
    lazy = len(index) * sum(_nbytes(tuple(arrays[k].shape[1:]), arrays[k].dtype) for k in x_keys) > max_memory() // 4
    picked = {}
    for k in x_keys:
        a, what = arrays[k], f"{path}: {k!r}"
        if lazy:
            picked[k] = _rows_of(a, index, what)
        elif isinstance(a, h5py.Dataset):
            whole = len(index) == n
            picked[k] = np.asarray(hdf5.read(a, what, DataError, None if whole else index))
        else:
            picked[k] = np.asarray(np.ascontiguousarray(a[index]) if len(index) < n or isinstance(a, np.memmap) else a)
    xs = picked[x_keys[0]] if len(x_keys) == 1 else Inputs(picked)
    recipe = {"path": str(path.resolve()), "split": split, "x_key": x_key, "y_key": y_key, "split_key": split_key,
              "limit": limit, "n": len(index)}
    return Dataset(x=xs, y=None if y is None else y[index], index=index,
                   split=str(split), path=path, sha256=sha256_file(path), recipe=recipe)


def resolve_scale(x, scale) -> float:
    """Input scale factor: ``"auto"`` is 1/255 for uint8 data and 1 otherwise (for
    :class:`Inputs`: 1/255 when any array is uint8; it applies to float inputs only)."""
    if scale in (None, "auto"):
        arrays = x.arrays.values() if isinstance(x, Inputs) else [x]
        return 1.0 / 255.0 if any(a.dtype == np.uint8 for a in arrays) else 1.0
    try:
        return float(scale)
    except (TypeError, ValueError):
        raise DataError(f"the input scale (--scale) must be 'auto' or a number, got {scale!r}") from None


def model_inputs(lm, x, scale: float):
    """The samples ``x`` as the model ``lm`` reads them.

    Parameters
    ----------
    lm : LoadedModel
    x : ndarray [n, ...] or Inputs
        One array for a model with one input; for a model with several, an :class:`Inputs`
        with an array named after each input.
    scale : float
        Multiplier of float inputs (:func:`resolve_scale`); integer inputs (token ids,
        attention masks) are passed unscaled, cast to the input's integer type.

    Returns
    -------
    float32 ndarray [n, ...] (one input) or Inputs (several, each in the input's dtype)

    Raises
    ------
    DataError
        A missing array, a shape the input cannot take, fractions for an integer input,
        NaN/inf.
    BudgetError
        As :func:`prepare_inputs`.
    """
    specs = list(lm.inputs) or [{"name": lm.input_name, "shape": lm.input_shape, "dtype": "float32"}]
    if not isinstance(x, Inputs):
        if len(specs) > 1:
            raise DataError(f"the model has {len(specs)} inputs ({', '.join(s['name'] for s in specs)}); give one "
                            f"array per input, named after it (x_key=, --x-key {','.join(s['name'] for s in specs)})")
        if np.dtype(specs[0]["dtype"]).kind == "f":
            return prepare_inputs(x, specs[0]["shape"], scale, input_name=specs[0]["name"])
        x = Inputs({specs[0]["name"]: x})
    missing = [s["name"] for s in specs if s["name"] not in x.arrays]
    if missing:
        raise DataError(f"the data has arrays {', '.join(x.arrays)} but the model's inputs are "
                        f"{', '.join(s['name'] for s in specs)}; name one array after each (missing: {', '.join(missing)})")
    out = {}
    for s in specs:
        a, dtype = x.arrays[s["name"]], np.dtype(s["dtype"])
        if dtype.kind == "f":
            out[s["name"]] = prepare_inputs(a, s["shape"], scale, input_name=s["name"]).astype(dtype, copy=False)
            continue
        if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
            raise DataError(f"input {s['name']!r} is {dtype} but the data array holds fractions")
        want, have = tuple(s["shape"][1:]), tuple(a.shape[1:])
        if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have)):
            raise DataError(f"data array {s['name']!r} has samples of shape {list(have)} but the model input "
                            f"expects {list(want)}")
        out[s["name"]] = np.ascontiguousarray(a, dtype)
    return Inputs(out) if len(specs) > 1 or len(out) > 1 else next(iter(out.values()))


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
    BudgetError
        The float32 samples would exceed the memory budget.
    """
    want = tuple(input_shape[1:])
    have = tuple(x.shape[1:])
    require_memory(4 * int(np.prod(x.shape, dtype=np.float64)), f"{len(x):,} input samples as float32 (fewer "
                   "with --limit; capture reads any number a batch at a time)")
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
