"""The HDF5 activation store, schema version 1 (DESIGN.md).

::

    /                attrs: format="infoprobe-activations", schema_version=1, created_by,
                            source, model_sha256, complete, plus capture provenance
    /samples/labels  int64 [N]        (absent for unlabelled data)
    /samples/index   int64 [N]
    /samples/mask    int8 [N, T]      (token models: 1 for a real token, 0 for padding; the
                                       model input ``attention_mask``)
    /layers/<name>/  attrs: kind, activation, depth, units, inputs, op, fan_in, is_output,
                            unit_axis, found_by, heads (one group per unit site); for a site
                            stored reduced, positions="mean" and site_shape (JSON list)
        pre, post    float32 or float16: [N, U] (dense, and conv or token sites reduced to the
                     mean over positions: capture's default), or every position
                     [N, C, H, W] or [N, C, L] (conv), [N, T, U] (token)
        weight       float32 [U, fan_in] or [C_out, C_in, kh, kw]  (affine sites only)
        bias         float32 [U]                                  (affine sites only)
    /outputs/logits  float32 [N, K]  (the model's first output, each sample's values flattened)

Datasets are chunked along N (about 1 MiB a chunk) so readers stream through files larger
than memory. A writer builds ``<path>.partial`` and renames it to ``<path>`` only after the
last row, so a file at ``<path>`` is always complete; an interrupted writer resumes from the
rows recorded in the partial file's ``rows_written`` attribute.
"""
from __future__ import annotations

import fcntl
import functools
import io
import json
import os
import stat
import zlib
from pathlib import Path

import h5py
import numpy as np

from . import hdf5
from .data import class_labels
from .errors import DataError, InfoprobeError, OutputExistsError, StoreError, one_line
from .limits import require_memory, rows_within
from .results import create_or_open, fsync_dir, signals_deferred, uninterruptible

FORMAT = "infoprobe-activations"
SCHEMA_VERSION = 1
#: The eight bytes that open an HDF5 file's superblock (at offset 0, or 512, 1024, ... after a
#: user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Suffixes that name an HDF5 file that does not exist yet (or cannot be read).
HDF5_SUFFIXES = (".h5", ".hdf5")


def is_store_path(path) -> bool:
    """Whether ``path`` is an HDF5 file (an activation store; for :func:`infoprobe.data.load_data`
    an HDF5 data file) rather than an ONNX model or a NumPy file.

    An existing regular file is recognised by the HDF5 signature, at offset 0 or after a user
    block (512, 1024, 2048, ... bytes); anything else -- a missing or unreadable file, or one
    without the signature -- by the suffix ``.h5`` or ``.hdf5``. Nothing is opened but the file
    itself, and only its first bytes at those offsets are read.
    """
    p = Path(path)
    try:
        st = os.stat(p)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            try:
                offset = 0
                while offset + len(HDF5_SIGNATURE) <= st.st_size:
                    if os.pread(fd, len(HDF5_SIGNATURE), offset) == HDF5_SIGNATURE:
                        return True
                    offset = 512 if offset == 0 else 2 * offset
            finally:
                os.close(fd)
    except OSError:
        pass
    return p.suffix.lower() in HDF5_SUFFIXES


def _version() -> str:
    from . import __version__

    return f"infoprobe {__version__}"


def _chunk_rows(per_row: int) -> int:
    return int(max(1, min(65536, (1 << 20) // max(1, per_row * 4))))


def partial_path(path: Path) -> Path:
    """Where an unfinished store for ``path`` is written."""
    return path.with_name(path.name + ".partial")


class _GuardedFile(io.RawIOBase):
    """The file under a store being written, seen by HDF5 through h5py's file-object driver.

    The first failed write (a full disk, a file-size limit) is kept in :attr:`failed`, and
    that write and every later one are reported to HDF5 as done: HDF5 then never enters its
    failed-flush state, which crashes the interpreter when it closes the file on the way
    out. :class:`StoreWriter` checks :attr:`failed` after every block and deletes such a
    file; it is never resumed.
    """

    def __init__(self, path: Path, mode: str):
        super().__init__()
        self.raw = open(path, mode)
        self.failed: OSError | None = None

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    @uninterruptible
    def seek(self, pos, whence=0):
        return self.raw.seek(pos, whence)

    @uninterruptible
    def tell(self):
        return self.raw.tell()

    @uninterruptible
    def readinto(self, b):
        return self.raw.readinto(b)

    @uninterruptible
    def write(self, b):
        if self.failed is None:
            try:
                return self.raw.write(b)
            except OSError as exc:
                self.failed = exc
        return len(b)

    @uninterruptible
    def truncate(self, size=None):
        if self.failed is not None:
            return size
        return self.raw.truncate(size)

    @uninterruptible
    def flush(self):
        if self.failed is None and not self.raw.closed:
            try:
                self.raw.flush()
            except OSError as exc:
                self.failed = exc

    def close(self):
        if not self.closed:
            super().close()
            try:
                self.raw.close()
            except OSError as exc:
                self.failed = self.failed or exc


def _crc(arr: np.ndarray, dtype, crc: int = 0) -> int:
    """CRC-32 of rows as the store holds them (its dataset's element type)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(arr, dtype)).cast("B"), crc)   # no copy


class StoreWriter:
    """Write an activation store row block by row block, with resume.

    The store is built in ``<path>.partial`` and renamed to ``<path>`` only when complete and
    flushed to disk. One writer at a time holds ``<path>.lock`` (an advisory ``flock``). Each
    block is written with SIGINT/SIGTERM deferred (:func:`~infoprobe.results.signals_deferred`),
    then flushed, then ``rows_written`` and a CRC-32 of every dataset's rows so far are
    recorded. A resumed writer first re-reads the rows recorded and checks them against those
    CRCs; a partial file that fails the check (for example one killed in the middle of a flush)
    is started again, so that a resumed store is bit for bit the store an uninterrupted capture
    writes. A write that fails (a full disk) deletes the partial file: HDF5 cannot vouch for it
    after a failed write.

    Parameters
    ----------
    path : path-like
        Final file name. Work happens in ``<path>.partial``.
    n_rows : int
        Number of samples N.
    layers : list of dict
        One per layer: ``name``, ``shape`` (per-sample), ``weight``, ``bias`` and the layer
        attributes (``kind``, ``activation``, ``depth``, ``units``, ``inputs``, ...).
    n_outputs : int
        Width of ``/outputs/logits``.
    labels, index : int array [N] or None
    mask : int array [N, T] or None
        Which token positions are real (1) or padding (0), for token sites of length T.
    attrs : dict
        Root attributes (``source``, ``model_sha256``, provenance). A partial file is resumed
        only when its ``fingerprint`` attribute equals ``attrs["fingerprint"]``.
    overwrite : bool
        Replace an existing complete store at ``path`` (only once the new one is complete).

    Attributes
    ----------
    resumed : bool
        Rows of an earlier, interrupted writer were kept.
    restarted : str or None
        Why a partial file of the same inputs was started again (it failed its check).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    StoreError
        A partial file exists for different inputs (and ``overwrite`` is false), or another
        process writes ``path``.
    """

    def __init__(self, path, *, n_rows: int, layers: list, n_outputs: int, labels=None, index=None,
                 attrs: dict | None = None, overwrite: bool = False, mask=None):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.n_rows = int(n_rows)
        self.file = self._io = None
        self.resumed, self.restarted, self.rows_written = False, None, 0
        attrs = dict(attrs or {})
        if self.path.exists() and not overwrite:
            raise OutputExistsError(f"{self.path} already exists; pass overwrite=True to replace it "
                                    "(the old file is kept until the new one is complete)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _acquire_lock(self.path)
        try:
            if self.partial.exists():
                same, why = self._resumable(attrs)
                if same and why is None:
                    self.resumed = True
                elif same:
                    self.restarted = why
                elif not overwrite:
                    raise StoreError(f"{self.partial} is an unfinished capture of other inputs; delete "
                                     "it or pass overwrite=True (--overwrite) to start again")
            if not self.resumed:
                self._create(layers, n_outputs, labels, index, attrs, mask)
            self._open("r+b")
            self.rows_written = int(self.file.attrs["rows_written"])
            self.digests = json.loads(self.file.attrs["digests"])
        except BaseException:
            self.close()
            raise

    def _open(self, mode: str) -> None:
        self._io = _GuardedFile(self.partial, mode)
        self.file = h5py.File(self._io, "r+" if mode == "r+b" else "w")

    def _resumable(self, attrs: dict) -> tuple[bool, str | None]:
        """(same inputs?, why the rows cannot be kept or None) for an existing partial file."""
        try:
            with h5py.File(self.partial, "r", locking=False) as f:
                same = (f.attrs.get("format") == FORMAT and f.attrs.get("fingerprint") == attrs.get("fingerprint")
                        and int(f.attrs.get("n_rows", -1)) == self.n_rows)
                if not same:
                    return False, None
                rows = int(f.attrs["rows_written"])
                digests = json.loads(f.attrs["digests"])
                for key, want in digests.items():
                    ds, crc = f[key], 0
                    step = max(1, ds.chunks[0] if ds.chunks else 4096)
                    for s in range(0, rows, step):
                        crc = _crc(ds[s:min(rows, s + step)], ds.dtype, crc)
                    if crc != want:
                        return True, f"the rows of {key} in {self.partial.name} do not match their checksum"
                return True, None
        except Exception as exc:   # damaged by a kill in the middle of a flush
            return True, f"{self.partial.name} cannot be read back ({type(exc).__name__})"

    def _create(self, layers, n_outputs, labels, index, attrs, mask=None):
        self.partial.unlink(missing_ok=True)
        self._open("w+b")
        f = self.file
        try:
            f.attrs.update(format=FORMAT, schema_version=SCHEMA_VERSION, created_by=_version(),
                           complete=False, rows_written=0, n_rows=self.n_rows)
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
            s = f.create_group("samples")
            if labels is not None:
                s.create_dataset("labels", data=np.asarray(labels, np.int64), track_times=False)
            s.create_dataset("index", data=np.asarray(index if index is not None else np.arange(self.n_rows), np.int64),
                             track_times=False)
            if mask is not None:
                s.create_dataset("mask", data=(np.asarray(mask) != 0).astype(np.int8), track_times=False)
            g = f.create_group("layers")
            keys = []
            for lay in layers:
                lg = g.create_group(lay["name"])
                for k in ("kind", "activation", "depth", "units", "op", "fan_in", "is_output", "unit_axis", "found_by",
                          "heads", "positions"):
                    if k in lay:
                        lg.attrs[k] = lay[k]
                lg.attrs["inputs"] = json.dumps(list(lay.get("inputs", [])))
                if "site_shape" in lay:
                    lg.attrs["site_shape"] = json.dumps([int(d) for d in lay["site_shape"]])
                shape = tuple(lay["shape"])
                rows = _chunk_rows(int(np.prod(shape)))
                for ds in ("pre", "post"):
                    lg.create_dataset(ds, shape=(self.n_rows, *shape), dtype=np.dtype(lay.get("dtype", "float32")),
                                      track_times=False,
                                      chunks=(min(rows, max(1, self.n_rows)), *shape))
                    keys.append(f"layers/{lay['name']}/{ds}")
                if lay.get("weight") is not None:   # affine sites only
                    lg.create_dataset("weight", data=np.asarray(lay["weight"], np.float32), track_times=False)
                    lg.create_dataset("bias", data=np.asarray(lay["bias"], np.float32), track_times=False)
            o = f.create_group("outputs")
            o.create_dataset("logits", shape=(self.n_rows, n_outputs), dtype="f4", track_times=False,
                             chunks=(min(_chunk_rows(n_outputs), max(1, self.n_rows)), n_outputs))
            keys.append("outputs/logits")
            f.attrs["digests"] = json.dumps({k: 0 for k in keys})
        finally:
            self._close_file()
        self._check_io()

    def _close_file(self) -> None:
        with signals_deferred():
            self._close_file_now()

    def _close_file_now(self) -> None:
        for _ in range(3):   # HDF5 must hold no file open at exit (see _GuardedFile)
            try:
                if self.file is None or not self.file.id.valid:
                    break
                self.file.close()
                break
            except Exception:
                continue
        self.file = None
        if self._io is not None:
            self._io.close()

    def _check_io(self) -> None:
        """After a failed write: delete the partial file and raise a one-line error."""
        failed = self._io.failed if self._io is not None else None
        if failed is None:
            return
        self._close_file()
        self.partial.unlink(missing_ok=True)
        raise StoreError(f"cannot write {self.partial}: {failed.strerror or failed}; {self.rows_written:,} of "
                         f"{self.n_rows:,} samples were written, but HDF5 cannot vouch for a file after a failed "
                         "write, so it was deleted: free some space and run the command again") from failed

    def write(self, start: int, blocks: dict) -> None:
        """Write rows ``start : start + n`` of each dataset in ``blocks`` (path -> array).

        Rows must be written in order; ``rows_written`` and the checksums advance only after
        every dataset of the block is written and flushed.

        Raises
        ------
        StoreError
            Rows out of order, blocks of unequal length, or a failed write (the partial file
            is deleted then).
        """
        if start != self.rows_written:
            raise StoreError(f"rows must be written in order: expected row {self.rows_written}, got {start}")
        n = None
        for key, arr in blocks.items():
            n = len(arr) if n is None else n
            if len(arr) != n:
                raise StoreError("blocks of one write must have the same number of rows")
        digests = dict(self.digests)
        try:
            with signals_deferred():
                for key, arr in blocks.items():
                    self.file[key][start:start + n] = arr
                    digests[key] = _crc(arr, self.file[key].dtype, digests.get(key, 0))
                self.file.flush()
                self.file.attrs["rows_written"] = start + (n or 0)
                self.file.attrs["digests"] = json.dumps(digests)
                self.file.flush()
                self._check_io()   # before a held signal lands: the count below is what the file holds
                self.rows_written, self.digests = start + (n or 0), digests
        except Exception:
            self._check_io()
            raise

    def finish(self) -> Path:
        """Mark the store complete, flush it to disk and move it to its final name (one rename)."""
        if self.rows_written != self.n_rows:
            raise StoreError(f"only {self.rows_written} of {self.n_rows} rows were written")
        try:
            with signals_deferred():
                self.file.attrs["complete"] = True
                self.file.flush()
                self._io.raw.flush()
                os.fsync(self._io.raw.fileno())
        except Exception:
            self._check_io()
            raise
        self._close_file()
        self._check_io()
        os.replace(self.partial, self.path)
        fsync_dir(self.path.parent)
        _release_lock(self.path, self._lock)
        self._lock = None
        return self.path

    def close(self) -> None:
        """Close the partial file without completing it (it can be resumed later) and release
        the lock."""
        self._close_file()
        if self._io is not None and self._io.failed is not None:
            self.partial.unlink(missing_ok=True)
        if getattr(self, "_lock", None) is not None:
            _release_lock(self.path, self._lock)
            self._lock = None


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _acquire_lock(path: Path) -> int:
    """Take the advisory lock ``<path>.lock`` (``flock``) that one writer of ``path`` holds.

    Raises
    ------
    StoreError
        Another process holds it.
    """
    lock = _lock_path(path)
    for _ in range(10):
        fd = create_or_open(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(f"another infoprobe process is writing {path} (it holds {lock.name}); wait for "
                             "it to finish or stop it") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)   # the holder removed it between our open and our lock: try again
    raise StoreError(f"cannot take the lock {lock}")


def _release_lock(path: Path, fd: int) -> None:
    try:
        os.unlink(_lock_path(path))
    except OSError:
        pass
    os.close(fd)


class Store:
    """Lazy, validated reader of an activation store (an untrusted file).

    Opening goes through :func:`infoprobe.hdf5.open_file` (no external links, virtual
    datasets, external storage or unknown filters) and checks the format, schema version,
    the ``complete`` flag (a boolean), the labels (non-negative integer class indices) and
    that every layer's attributes agree with its datasets; activations are only read on
    request, in blocks that fit the memory budget (:mod:`infoprobe.limits`).

    Parameters
    ----------
    path : path-like

    Raises
    ------
    StoreError
        Missing file, not HDF5, not an infoprobe store, other schema version, incomplete,
        data stored outside the file, malformed attributes, or inconsistent shapes.
    DataError
        Labels that are not class indices.
    """

    def __reduce_ex__(self, protocol):
        """Pickled (for a Dask worker) as its absolute path: the worker opens and validates it."""
        return (Store, (str(self.path.resolve()),))

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (an unfinished capture exists: re-run capture to resume it)" \
                if partial_path(self.path).exists() else ""
            raise StoreError(f"activation store {self.path} does not exist{hint}")
        self.file = hdf5.open_file(self.path, StoreError)
        try:
            self._validate()
        except (InfoprobeError, KeyboardInterrupt):
            self.file.close()
            raise
        except Exception as exc:   # HDF5 errors of a damaged file, wherever they surface
            self.file.close()
            raise StoreError(f"{self.path} is damaged: {type(exc).__name__}: "
                             f"{one_line(exc, 200)}") from None

    def _validate(self):
        f, p = self.file, self.path
        if hdf5.attr(f, "format", str(p), StoreError, str, None) != FORMAT:
            raise StoreError(f"{p} is not an infoprobe activation store (no format='{FORMAT}' attribute)")
        version = hdf5.attr(f, "schema_version", str(p), StoreError, int, None)
        if version != SCHEMA_VERSION:
            raise StoreError(f"{p} has schema version {version}; this infoprobe reads version {SCHEMA_VERSION}")
        if not hdf5.attr(f, "complete", str(p), StoreError, bool, False):
            raise StoreError(f"{p} is incomplete (capture was interrupted); re-run capture to resume it")
        for group in ("layers", "samples"):
            if not isinstance(f.get(group), h5py.Group):
                raise StoreError(f"{p} has no /{group} group")
        if not len(f["layers"]):
            raise StoreError(f"{p} has no layers")
        index = f["samples"].get("index")
        if not isinstance(index, h5py.Dataset):
            raise StoreError(f"{p} has no /samples/index")
        hdf5.numeric(index, f"{p}: /samples/index", StoreError, kinds="iu", ndim=1)
        self.n_rows = int(index.shape[0])
        if self.n_rows == 0:
            raise StoreError(f"{p} holds no samples")
        rows = hdf5.attr(f, "n_rows", str(p), StoreError, int, self.n_rows)
        if rows != self.n_rows:
            raise StoreError(f"{p} says n_rows={rows} but /samples/index has {self.n_rows} rows")
        self._labels = None
        if "labels" in f["samples"]:
            ds = f["samples"]["labels"]
            if not isinstance(ds, h5py.Dataset):
                raise StoreError(f"{p}: /samples/labels is not a dataset")
            hdf5.numeric(ds, f"{p}: /samples/labels", StoreError, ndim=1)
            if ds.shape != (self.n_rows,):
                raise StoreError(f"{p}: /samples/labels has shape {ds.shape}, expected ({self.n_rows},)")
            self._labels = class_labels(hdf5.read(ds, f"{p}: /samples/labels", StoreError),
                                        f"{p}: /samples/labels", StoreError)
        self._mask = None
        if "mask" in f["samples"]:
            ds = f["samples"]["mask"]
            if not isinstance(ds, h5py.Dataset):
                raise StoreError(f"{p}: /samples/mask is not a dataset")
            hdf5.numeric(ds, f"{p}: /samples/mask", StoreError, kinds="iub", ndim=2)
            if ds.shape[0] != self.n_rows:
                raise StoreError(f"{p}: /samples/mask has {ds.shape[0]} rows for {self.n_rows} samples")
            mask = hdf5.read(ds, f"{p}: /samples/mask", StoreError)
            if not np.isin(mask, (0, 1)).all() or not mask.any(axis=1).all():
                raise StoreError(f"{p}: /samples/mask must hold 0 and 1 with at least one 1 per sample")
            self._mask = mask.astype(bool)
        self._info = {}
        for name, g in f["layers"].items():
            self._info[name] = self._validate_layer(name, g)
        if "outputs" in f and "logits" in f["outputs"]:
            ds = f["outputs"]["logits"]
            hdf5.numeric(ds, f"{p}: /outputs/logits", StoreError, kinds="f", ndim=2)
            if ds.shape[0] != self.n_rows:
                raise StoreError(f"{p}: /outputs/logits has {ds.shape[0]} rows for {self.n_rows} samples")

    def _validate_layer(self, name: str, g) -> dict:
        p = self.path
        what = f"{p}: layer {name!r}"
        if not isinstance(g, h5py.Group):
            raise StoreError(f"{what} is not a group")
        info = {"name": name,
                "kind": hdf5.attr(g, "kind", what, StoreError, str),
                "activation": hdf5.attr(g, "activation", what, StoreError, str),
                "depth": hdf5.attr(g, "depth", what, StoreError, int),
                "units": hdf5.attr(g, "units", what, StoreError, int),
                "inputs": hdf5.attr(g, "inputs", what, StoreError, list, []),
                "is_output": hdf5.attr(g, "is_output", what, StoreError, bool, False)}
        for k, kind in (("op", str), ("fan_in", int), ("found_by", str), ("heads", int), ("positions", str)):
            if k in g.attrs:
                info[k] = hdf5.attr(g, k, what, StoreError, kind)
        reduced = info.get("positions", "full") == "mean"
        if info.get("positions", "full") not in ("mean", "full"):
            raise StoreError(f"{what} has positions={info['positions']!r}; infoprobe writes 'mean' or 'full'")
        if info["kind"] not in ("dense", "conv", "token"):
            raise StoreError(f"{what} has kind {info['kind']!r}; infoprobe reads 'dense', 'conv' and 'token' sites")
        if info["depth"] < 1 or info["units"] < 1:
            raise StoreError(f"{what} has depth {info['depth']} and {info['units']} units")
        for key in ("pre", "post"):
            if not isinstance(g.get(key), h5py.Dataset):
                raise StoreError(f"{what} has no {key!r} dataset")
            hdf5.numeric(g[key], f"{what} {key}", StoreError, kinds="f",
                         ndim=2 if reduced else {"dense": 2, "conv": (3, 4), "token": 3}[info["kind"]])
        pre, post = g["pre"], g["post"]
        if pre.shape != post.shape or post.shape[0] != self.n_rows:
            raise StoreError(f"{what} has pre {pre.shape} and post {post.shape} for {self.n_rows} samples")
        if reduced:   # one value per unit and sample: the mean over the site's positions
            try:
                shape = json.loads(hdf5.attr(g, "site_shape", what, StoreError, str))
            except ValueError:
                shape = None
            if not isinstance(shape, list) or not shape or not all(type(d) is int and 0 < d < 2**31 for d in shape):
                raise StoreError(f"{what}: attribute 'site_shape' is not a JSON list of positive dimensions")
            info["site_shape"] = tuple(shape)
            info["unit_axis"] = 0
        else:
            last = post.ndim - 2
            info["unit_axis"] = hdf5.attr(g, "unit_axis", what, StoreError, int, last if info["kind"] == "token" else 0)
            if info["unit_axis"] != (last if info["kind"] == "token" else 0):
                raise StoreError(f"{what} is a {info['kind']} site with unit axis {info['unit_axis']}")
        if info["units"] != post.shape[1 + info["unit_axis"]]:
            raise StoreError(f"{what} says {info['units']} units but stores {post.shape[1 + info['unit_axis']]}")
        for key in ("weight", "bias"):
            if key in g:
                hdf5.numeric(g[key], f"{what} {key}", StoreError, kinds="f", ndim=1 if key == "bias" else (2, 4))
                if g[key].shape[0] != info["units"]:
                    raise StoreError(f"{what}: {key} has {g[key].shape[0]} rows for {info['units']} units")
        info["shape"] = tuple(int(d) for d in post.shape[1:])
        return info

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the HDF5 file."""
        self.file.close()

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the store file, computed once (for result provenance)."""
        from .model import sha256_file

        return sha256_file(self.path)

    @property
    def attrs(self) -> dict:
        """Root attributes (provenance); attributes that cannot be read are left out."""
        out = {}
        for k in self.file.attrs:
            try:
                v = self.file.attrs[k]
            except Exception:
                continue
            out[k] = v.item() if hasattr(v, "item") and getattr(v, "size", 2) == 1 else v
        return out

    @property
    def layer_names(self) -> list:
        """Layer names in capture order (by depth, then name order of the file)."""
        names = list(self._info)
        return sorted(names, key=lambda n: (self._info[n]["depth"], names.index(n)))

    def check_model(self, lm, layers=None) -> None:
        """Check that this store holds ``lm``'s activations as infoprobe reads ``lm`` now.

        Parameters
        ----------
        lm : LoadedModel
        layers : list of str, optional
            Layers to check (default: every layer of the store that the model has).

        Raises
        ------
        DataError
            The store was captured from another model (SHA-256), a layer's shape differs, or a
            layer's activation differs: the store was written by an infoprobe that read the
            model's activations otherwise (e.g. ReLU6 exported as ``Clip``, read as none before
            version 0.2), so its post-activations are not the model's; capture it again.
        """
        captured = self.attrs.get("model_sha256")
        if captured and captured != lm.sha256:
            raise DataError(f"the store {self.path} was captured from another model (SHA-256 {captured[:12]}..., "
                            f"this model is {lm.sha256[:12]}...); capture it again from {lm.path.name}")
        names = {lay.name for lay in lm.layers}
        for n in layers if layers is not None else [n for n in self.layer_names if n in names]:
            info, lay = self.layer_info(n), lm.layer(n)
            shape = info.get("site_shape", info["shape"])
            if tuple(shape) != tuple(lay.shape):
                raise DataError(f"the store's layer {n!r} has shape {shape} but the model's has {lay.shape}: "
                                "the store was captured from another model")
            if info.get("activation", lay.activation) != lay.activation:
                raise DataError(f"the store's layer {n!r} was captured with activation {info['activation']!r}, but "
                                f"infoprobe now reads it as {lay.activation!r}: its post-activations are another "
                                f"tensor; capture the store again from {lm.path.name}")

    def layer_info(self, name: str) -> dict:
        """Attributes of layer ``name`` plus its per-sample ``shape`` (validated at open)."""
        self._group(name)
        return dict(self._info[name])

    def hidden_layers(self) -> list:
        """Layers not flagged ``is_output``."""
        return [n for n in self.layer_names if not self._info[n]["is_output"]]

    def _group(self, name):
        if name not in self._info:
            raise StoreError(f"layer {name!r} is not in {self.path}; it has: {', '.join(self.layer_names)}")
        return self.file["layers"][name]

    @property
    def labels(self) -> np.ndarray | None:
        """Class labels int64 [N] (validated non-negative class indices), or None."""
        return None if self._labels is None else self._labels.copy()

    def position_mask(self, layer: str) -> np.ndarray | None:
        """bool [N, T]: which positions of a token site are real tokens (``/samples/mask``),
        or None when the store has no mask or ``layer`` is not a token site of length T."""
        info = self._info.get(layer)
        if self._mask is None or info is None or info["kind"] != "token" or self.reduced(layer) or \
                info["shape"][0] != self._mask.shape[1]:
            return None
        return self._mask

    def reduced(self, layer: str) -> bool:
        """Whether ``layer`` was stored as each unit's mean over its positions ([N, U]: the
        default of capture for conv and token sites) rather than every position."""
        return self.layer_info(layer).get("positions", "full") == "mean"

    def token_counts(self, layer: str) -> np.ndarray | None:
        """Real tokens per sample int64 [N] behind a reduced token site's means (the
        ``/samples/mask`` row sums), or None."""
        info = self.layer_info(layer)
        if self._mask is None or info["kind"] != "token" or not self.reduced(layer) or \
                info["site_shape"][0] != self._mask.shape[1]:
            return None
        return self._mask.sum(axis=1).astype(np.int64)

    def require_labels(self) -> np.ndarray:
        """Class labels; raises :class:`DataError` when the store has none."""
        y = self.labels
        if y is None:
            raise DataError(f"{self.path} has no labels (/samples/labels); this measure needs class "
                            "labels: capture from data with a 'y' array")
        return y

    def dataset(self, layer: str, which: str = "post") -> h5py.Dataset:
        """The lazy h5py dataset ``which`` in {"pre", "post", "weight", "bias"} of ``layer``
        (validated at open: stored inside the file, floating point)."""
        g = self._group(layer)
        try:
            ds = g[which] if which in ("pre", "post", "weight", "bias") and which in g else None
        except Exception as exc:
            raise StoreError(f"{self.path} is damaged: {type(exc).__name__}: {one_line(exc, 200)}") from None
        if not isinstance(ds, h5py.Dataset):
            raise StoreError(f"layer {layer!r} has no {which!r} dataset")
        return ds

    def read_weights(self, layer: str, which: str = "weight") -> np.ndarray:
        """A layer's ``weight`` or ``bias`` (float32), within the memory budget."""
        return np.asarray(hdf5.read(self.dataset(layer, which), f"{self.path}: layer {layer!r} {which}",
                                    StoreError), np.float32)

    def read_rows(self, layer: str, which: str, rows) -> np.ndarray:
        """Rows ``rows`` (sorted indices) of a layer's dataset as float32, within the memory budget."""
        return np.asarray(hdf5.read(self.dataset(layer, which), f"{self.path}: layer {layer!r} {which}",
                                    StoreError, rows), np.float32)

    def iter_rows(self, layer: str, which: str = "post", rows: int | None = None):
        """Yield ``(start, float32 block [n, ...])`` over all samples, checking for NaN/inf.

        Blocks hold ``rows`` samples (default: about 1/16 of the memory budget, whole chunks),
        never more than fit in 1/4 of the budget.

        Raises
        ------
        DataError
            A block holds NaN or infinite values.
        BudgetError
            One sample does not fit in a quarter of the memory budget.
        """
        ds = self.dataset(layer, which)
        per_row = int(np.prod(ds.shape[1:], dtype=np.float64)) * 4
        most = rows_within(per_row, ds.shape[0], share=0.25, what=f"one sample of layer {layer!r}")
        if rows is None:
            rows = rows_within(per_row, ds.shape[0], share=1 / 16, what=f"one sample of layer {layer!r}")
            chunk = ds.chunks[0] if ds.chunks else 1
            rows = max(chunk, rows // chunk * chunk)
        step = max(1, min(int(rows), most))
        what = f"{self.path}: layer {layer!r} {which}"
        for start in range(0, ds.shape[0], step):
            try:
                block = np.asarray(ds[start:start + step], np.float32)
            except Exception as exc:
                raise StoreError(f"cannot read {what}: {one_line(exc, 200)}") from None
            if not np.isfinite(block).all():
                bad = start + int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(1))[0])
                raise DataError(f"{self.path}: layer {layer!r} {which} activations contain NaN or inf "
                                f"(first at sample {bad}); fix the model or the input data")
            yield start, block

    def read(self, layer: str, which: str = "post") -> np.ndarray:
        """Whole dataset as float32 in memory, checked for NaN/inf (see :meth:`iter_rows`).

        Raises
        ------
        BudgetError
            The layer is larger than the memory budget (analyses that can stream use
            :meth:`iter_rows` instead).
        """
        ds = self.dataset(layer, which)
        require_memory(int(np.prod(ds.shape, dtype=np.float64)) * 4, f"reading layer {layer!r} ({which}) whole")
        out = np.empty(ds.shape, np.float32)
        for start, block in self.iter_rows(layer, which):
            out[start:start + len(block)] = block
        return out


class StorePath(type(Path())):
    """The path of a finished activation store that is also the store, opened when first used.

    What :func:`infoprobe.analyses.capture.capture` returns: a :class:`pathlib.Path` wherever a
    path is wanted (``str``, ``open``, ``shutil``, h5py, the CLI), and the :class:`Store` for
    everything else: ``with capture(...) as store:`` opens it and closes it on leaving;
    ``.store`` is the opened store, and the Store's attributes (``layer_names``, ``n_rows``,
    ``labels``, ``iter_rows``, ...) open it on first use; ``close()`` releases it. ``read``
    is the one left out (``.store.read(...)``), so that code which takes anything with a
    ``read`` method for an open file does not mistake the path for one.

    Raises
    ------
    StoreError
        As :class:`Store`, when it is first opened.
    """

    @property
    def store(self) -> "Store":
        """The store, opened on first use and kept open until :meth:`close`."""
        store = self.__dict__.get("_store")
        if store is None:
            store = self.__dict__["_store"] = Store(self)
        return store

    def __getattr__(self, name):
        if name not in _DELEGATED:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.store, name)

    def __enter__(self) -> "Store":
        return self.store

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Close the store if it was opened (the path stays usable; using it opens it again)."""
        store = self.__dict__.pop("_store", None)
        if store is not None:
            store.close()

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"


#: Store attributes a StorePath hands on (file-object names such as ``read`` excepted).
_DELEGATED = ({n for n in dir(Store) if not n.startswith("_")} | {"n_rows"}) - {"read", "close", "file", "path"}
