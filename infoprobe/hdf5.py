"""One validating reader for untrusted HDF5 files (activation stores and ``--data`` files).

Plain h5py follows an HDF5 file wherever it points: external links to other files, virtual
datasets (VDS) mapped onto other files, datasets whose raw bytes live in external files, and
user-defined filters loaded as plug-ins. infoprobe opens a file only after walking every link
and every dataset in it: datasets must be stored inside the file (compact, contiguous or
chunked), compressed at most with gzip, lzf or shuffle (and fletcher32 checksums), with
chunks of a bounded size; anything else is refused with one line naming the object. That
walk, and the reading of every attribute, first runs in a child process (once per file and
process), so that a file on which libhdf5 itself hangs or crashes is refused. Reads go
through :func:`read`, which checks the declared size against the memory budget
(:mod:`infoprobe.limits`) before allocating.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from h5py import h5d, h5z

from .errors import one_line
from .limits import human, require_memory

#: HDF5 filters a dataset may use: codecs built into h5py, nothing loaded from a plug-in.
ALLOWED_FILTERS = {h5z.FILTER_DEFLATE: "gzip", h5z.FILTER_SHUFFLE: "shuffle",
                   h5z.FILTER_FLETCHER32: "fletcher32", 32000: "lzf"}
#: Largest chunk (bytes, uncompressed): HDF5 decompresses a whole chunk to read any part of it.
MAX_CHUNK_BYTES = 64 * 1024**2
#: Largest number of links walked when a file is opened.
MAX_LINKS = 100_000
#: Largest ratio of a dataset's declared size to the bytes it occupies in the file (above
#: :data:`BOMB_FLOOR`): gzip cannot exceed about 1000:1, real activations stay near 10:1, and a
#: dataset that was never written occupies nothing. Shared with ``.npz`` members.
MAX_RATIO = 200
#: Declared size (bytes) below which the ratio is not checked.
BOMB_FLOOR = 64 * 1024**2


def open_file(path, error):
    """Open an untrusted HDF5 file read-only after validating every link and dataset.

    Parameters
    ----------
    path : path-like
    error : type
        The :class:`~infoprobe.errors.InfoprobeError` subclass raised (``StoreError`` for
        stores, ``DataError`` for data files).

    Returns
    -------
    h5py.File

    Raises
    ------
    error
        Not a regular file, not HDF5, an external or user-defined link, a virtual dataset,
        external raw storage, a filter other than gzip/lzf/shuffle/fletcher32, a chunk over
        :data:`MAX_CHUNK_BYTES`, or more than :data:`MAX_LINKS` links.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        raise error(f"{path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is not a regular file")
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _PROBED:
        _probe(path, error)
        _PROBED.add(key)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        locked = "lock" in str(exc).lower()
        raise error(f"{path} is being written by another process; wait for it to finish" if locked else
                    f"{path} is not a readable HDF5 file (truncated or another format)") from None
    try:
        validate(f, error)
    except BaseException:
        f.close()
        raise
    return f


#: Files (device, inode, size, modification time) whose metadata a child process read safely.
_PROBED: set = set()
#: Seconds the child process may take to read a file's metadata.
PROBE_SECONDS = 30


def _probe(path: Path, error) -> None:
    """Read every link, dataset header and attribute of ``path`` in a child process first.

    libhdf5 itself can loop forever or crash on some damaged metadata (a fuzzed global heap
    behind a variable-length string attribute made it spin in ``H5HG`` forever); in a child,
    such a file costs a refusal instead of the command. The walk is the one :func:`validate`
    does, plus reading every attribute.

    Raises
    ------
    error
        The child refused the file, crashed, or did not finish within :data:`PROBE_SECONDS`.
    """
    cmd = [sys.executable, "-c", "import sys; from infoprobe.hdf5 import probe_main; sys.exit(probe_main(sys.argv[1]))",
           str(path)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_SECONDS,
                             env=dict(os.environ, PYTHONWARNINGS="ignore"))
    except subprocess.TimeoutExpired:
        raise error(f"{path}: HDF5 did not finish reading the file's metadata in {PROBE_SECONDS} s (a damaged or "
                    "hostile file)") from None
    if res.returncode == 0:
        return
    if res.returncode == 2 and res.stdout.strip():
        raise error(res.stdout.strip().splitlines()[-1])
    raise error(f"{path}: HDF5 failed reading the file's metadata (exit {res.returncode}: a damaged or hostile file)")


def probe_main(path: str) -> int:
    """The child of :func:`_probe`: 0 when the metadata reads cleanly, 2 with the reason on stdout."""
    from .errors import StoreError

    try:
        with h5py.File(path, "r") as f:
            validate(f, StoreError)
            objects = [f]
            f.visititems(lambda name, obj: objects.append(obj))
            for obj in objects:
                for name in obj.attrs:
                    obj.attrs[name]
    except StoreError as exc:
        print(exc)
        return 2
    except Exception as exc:
        print(f"{path} is not a readable HDF5 file or is damaged: {type(exc).__name__}: "
              f"{one_line(exc, 160)}")
        return 2
    return 0


def validate(f: h5py.File, error) -> None:
    """Check every link and dataset of an open file (see :func:`open_file`)."""
    where = Path(f.filename).name
    count = 0

    def link(name):
        nonlocal count
        count += 1
        if count > MAX_LINKS:
            raise error(f"{where} has more than {MAX_LINKS:,} links; infoprobe does not walk it")
        lk = f.get(name, getlink=True)
        if isinstance(lk, h5py.ExternalLink):
            raise error(f"{where}: /{name} is an external link to {lk.filename}:{lk.path}; infoprobe reads "
                        "only data stored inside the file")
        if not isinstance(lk, (h5py.HardLink, h5py.SoftLink)):
            raise error(f"{where}: /{name} is a user-defined link; infoprobe reads only data stored inside the file")

    try:
        f.visit_links(link)
        datasets = []
        f.visititems(lambda name, obj: datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
        for name, ds in datasets:
            check_dataset(ds, f"{where}: /{name}", error)
    except error:
        raise
    except Exception as exc:   # HDF5 errors while walking a damaged file
        raise error(f"{where} is damaged: {type(exc).__name__}: {one_line(exc, 200)}") from None


def check_dataset(ds: h5py.Dataset, what: str, error) -> None:
    """Refuse a dataset stored outside the file, with an unknown filter or a huge chunk."""
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == getattr(h5d, "VIRTUAL", 3):
        raise error(f"{what} is a virtual dataset (it maps other files); infoprobe reads only data stored "
                    "inside the file")
    if layout not in (h5d.COMPACT, h5d.CONTIGUOUS, h5d.CHUNKED):
        raise error(f"{what} has an unknown storage layout {layout}")
    if dcpl.get_external_count():
        raise error(f"{what} keeps its data in external files; infoprobe reads only data stored inside the file")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in ALLOWED_FILTERS:
            raise error(f"{what} uses the HDF5 filter {code}; infoprobe reads only "
                        f"{', '.join(sorted(set(ALLOWED_FILTERS.values())))}")
    declared = int(np.prod(ds.shape, dtype=np.float64)) * max(1, ds.dtype.itemsize) if ds.shape else 0
    if declared > BOMB_FLOOR:
        stored = ds.id.get_storage_size()
        if declared > MAX_RATIO * max(stored, 1):
            raise error(f"{what} declares {human(declared)} of data but occupies {human(stored)} of the file "
                        f"(more than {MAX_RATIO}:1): a decompression bomb or data never written")
    if layout == h5d.CHUNKED and ds.chunks is not None:
        nbytes = int(np.prod(ds.chunks, dtype=np.float64)) * max(1, ds.dtype.itemsize)
        if nbytes > MAX_CHUNK_BYTES:
            raise error(f"{what} has chunks of {human(nbytes)}; infoprobe reads chunks of at most "
                        f"{human(MAX_CHUNK_BYTES)}")


def numeric(ds: h5py.Dataset, what: str, error, *, kinds: str = "biuf", ndim: tuple | int | None = None) -> None:
    """Refuse a dataset whose element type is not numeric (``kinds`` of NumPy dtype kinds) or
    whose rank is not ``ndim`` (an int, or ``(min, max)``)."""
    dt = ds.dtype
    if dt.kind not in kinds or dt.fields is not None or dt.hasobject:
        raise error(f"{what} holds {dt} values; infoprobe needs "
                    + {"f": "floating-point numbers", "iu": "integers"}.get(kinds, "numbers"))
    if ndim is not None:
        lo, hi = (ndim, ndim) if isinstance(ndim, int) else ndim
        if not lo <= len(ds.shape) <= hi:
            raise error(f"{what} has shape {list(ds.shape)}; expected {lo if lo == hi else f'{lo} to {hi}'} "
                        "dimensions")


def read(ds: h5py.Dataset, what: str, error, rows=None) -> np.ndarray:
    """Read a dataset (or ``rows``: a slice or sorted indices along axis 0) after checking its
    declared size against the memory budget.

    Raises
    ------
    BudgetError
        The selection is larger than the memory budget.
    error
        The read fails (a damaged file).
    """
    shape = ds.shape
    if rows is None:
        n = shape[0] if shape else 1
    elif isinstance(rows, slice):
        n = len(range(*rows.indices(shape[0])))
    else:
        n = len(rows)
    per_row = int(np.prod(shape[1:], dtype=np.float64)) if len(shape) > 1 else 1
    require_memory(int(n * per_row * max(1, ds.dtype.itemsize)), f"reading {what}")
    try:
        return ds[()] if rows is None else ds[rows]
    except Exception as exc:
        raise error(f"cannot read {what}: {one_line(exc, 200)}") from None


def attr(obj, name: str, what: str, error, kind: type, default=...):
    """An attribute of ``kind`` (str, int, bool, float, or list for a JSON list of strings).

    Raises
    ------
    error
        Missing (without ``default``), unreadable, or of another type.
    """
    if name not in obj.attrs:
        if default is ...:
            raise error(f"{what} lacks the attribute {name!r}")
        return default
    try:
        v = obj.attrs[name]
    except Exception:
        raise error(f"{what}: attribute {name!r} cannot be read") from None
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, bytes):
        try:
            v = v.decode()
        except UnicodeDecodeError:
            raise error(f"{what}: attribute {name!r} is not text") from None
    if kind is bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        raise error(f"{what}: attribute {name!r} is {v!r}, not a boolean")
    if kind is int:
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            return int(v)
        raise error(f"{what}: attribute {name!r} is {v!r}, not a whole number")
    if kind is float:
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            return float(v)
        raise error(f"{what}: attribute {name!r} is {v!r}, not a number")
    if kind is str:
        if isinstance(v, str):
            return v
        raise error(f"{what}: attribute {name!r} is {v!r}, not text")
    if kind is list:
        try:
            out = json.loads(v) if isinstance(v, str) else None
        except ValueError:
            out = None
        if not isinstance(out, list) or not all(isinstance(x, str) for x in out):
            raise error(f"{what}: attribute {name!r} is {str(v)[:80]!r}, not a JSON list of names")
        return out
    raise TypeError(kind)
