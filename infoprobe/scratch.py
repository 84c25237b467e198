"""Scratch space: values larger than the memory budget, spilled to the temporary folder.

:func:`synergy <infoprobe.analyses.synergy.reduced_values>` spills a layer's reduced values, and
:func:`~infoprobe.estimators.oinfo.copula_model` its copula values, when they exceed a quarter
of the memory budget. Both go through :func:`scratch_matrix`:

- **One folder per spill**, ``infoprobe-scratch-<pid>-<random>`` in the temporary folder
  (:func:`tempfile.gettempdir`: ``TMPDIR``, else ``/tmp``), mode 0700, holding an exclusive
  ``flock`` on ``.lock`` inside for as long as it lives. It is removed when the ``with`` block
  ends, whatever ends it (a return, an exception, Ctrl-C, the CLI's SIGTERM), with SIGINT and
  SIGTERM deferred while it is created and removed.
- **Stale folders are removed by the next spill.** A process killed outright (SIGKILL, the
  out-of-memory killer, a power cut) leaves its folder; the next spill in the same temporary
  folder removes every folder that matches the name pattern exactly, is a real directory (by
  ``lstat``, never through a symbolic link) owned by this user, whose process is gone and whose
  lock nobody holds. The folder of a live process is never touched.
- **No libhdf5.** The values are a raw float64 file of column panels (each panel ``[N, w]``
  row-major at byte offset ``N * first_column * 8``), written with ``pwrite`` and read with
  ``preadv``: writing rows or appending columns and reading blocks of rows or of columns all
  move contiguous runs. The whole size is reserved first (``posix_fallocate``), so a disk too
  small fails before any work is done; every failed write or read becomes one
  :class:`ScratchError`. (HDF5 scratch files crashed there: a dataset whose chunk cache
  cannot be flushed fails to close half-way and stays, half freed, among libhdf5's open
  objects; closing the file, or libhdf5's shutdown at exit, flushes it again and crashes with
  a segmentation fault or ``free(): invalid pointer``, exit 139 or 134, after a traceback.)
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np

from .errors import InfoprobeError
from .limits import human
from .results import process_alive, signals_deferred

#: Name prefix of scratch folders; the full name is ``<PREFIX><pid>-<8 random characters>``.
PREFIX = "infoprobe-scratch-"
#: Exactly the names :func:`scratch_folder` creates (tempfile's random part: 8 of [a-z0-9_]).
PATTERN = re.compile(re.escape(PREFIX) + r"([1-9][0-9]{0,9})-([a-z0-9_]{8})")
#: The lock file inside every scratch folder, held (``flock``) while its process uses it.
LOCK = ".lock"
#: Columns per panel of a matrix written by rows (:meth:`ScratchMatrix.__setitem__`).
PANEL = 16
#: Most bytes read at once when a block takes only part of a panel (and never more than the
#: block itself, or 64 KiB).
READ_BUFFER = 8 << 20


class ScratchError(InfoprobeError):
    """Values could not be spilled to, or read back from, the temporary folder: it is full,
    a file-size limit or a quota was reached, or it cannot be written. The message names the
    folder, the size and the ways out (free space, ``TMPDIR``, ``--max-memory``).

    ``errno`` and ``filename`` are those of the operating system's error."""

    def __init__(self, message: str, *, errno: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno, self.filename = errno, filename


def _is_own_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def remove_stale(root: str | os.PathLike | None = None) -> list:
    """Remove the scratch folders that processes killed outright left in ``root``.

    A folder is removed only when all of these hold: its name matches :data:`PATTERN` exactly;
    ``lstat`` shows a directory (not a symbolic link) owned by this user; the process whose id
    the name carries no longer exists; and the exclusive lock on its ``.lock`` can be taken
    (no process, not even a child that inherited it, holds it). The lock is kept while the
    folder is removed, so two cleaners never collide; the removal never follows a symbolic
    link (:func:`shutil.rmtree` relative to a descriptor of ``root``).

    Parameters
    ----------
    root : path, optional
        The temporary folder to clean (default :func:`tempfile.gettempdir`).

    Returns
    -------
    list of Path
        The folders removed. Nothing is raised: a folder that cannot be inspected or removed
        is left as it is.
    """
    root = Path(root if root is not None else tempfile.gettempdir())
    removed = []
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return removed
    try:
        with os.scandir(root_fd) as entries:
            names = [e.name for e in entries if PATTERN.fullmatch(e.name)]
        for name in names:
            if _remove_if_stale(root_fd, name):
                removed.append(root / name)
    finally:
        os.close(root_fd)
    return removed


def _remove_if_stale(root_fd: int, name: str) -> bool:
    pid = int(PATTERN.fullmatch(name)[1])
    try:
        if not _is_own_dir(os.lstat(name, dir_fd=root_fd)) or pid == os.getpid() or process_alive(pid):
            return False
        dir_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    except OSError:
        return False
    lock_fd = None
    try:
        if not _is_own_dir(os.fstat(dir_fd)):
            return False
        try:
            lock_fd = os.open(LOCK, os.O_RDWR | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:     # killed before it took its lock: the dead process id decides
            pass
        if lock_fd is not None:
            if not stat.S_ISREG(os.fstat(lock_fd).st_mode):
                return False
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:           # held: a process (perhaps a child of the dead one) still uses it
                return False
        shutil.rmtree(name, dir_fd=root_fd)
        return True
    except OSError:
        return False
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
        os.close(dir_fd)


@contextlib.contextmanager
def scratch_folder():
    """A private folder in the temporary folder for the length of a ``with`` block.

    Removes stale scratch folders first (:func:`remove_stale`), then creates
    ``infoprobe-scratch-<pid>-<random>`` (mode 0700) and holds an exclusive ``flock`` on its
    ``.lock`` until the block ends; then removes it, on every way out of the block
    (exceptions, ``KeyboardInterrupt``, the CLI's SIGTERM), with SIGINT and SIGTERM
    deferred while it is created and removed. Only a process killed outright leaves it, for
    the next call to remove.

    Yields
    ------
    Path
        The folder.

    Raises
    ------
    ScratchError
        The folder cannot be created (the temporary folder is not writable, or full).
    """
    root = tempfile.gettempdir()
    remove_stale(root)
    path = lock_fd = None
    try:
        with signals_deferred():
            try:
                path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
                lock_fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise ScratchError(f"cannot create a scratch folder in the temporary folder {root}: "
                                   f"{exc.strerror or exc}; free space there or set TMPDIR to a writable "
                                   "folder", errno=exc.errno, filename=exc.filename) from exc
        yield path
    finally:   # a signal deferred during the creation, raised at its end, lands here too
        with signals_deferred():
            try:
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            finally:
                if lock_fd is not None:
                    os.close(lock_fd)


def _spill_error(exc: OSError, folder: Path, nbytes: int, what: str, *, reading: bool = False) -> ScratchError:
    """The one-line error for a failed write (or read) of a spill."""
    root = folder.parent
    code = exc.errno
    if reading:
        how = f"could not read back {human(nbytes)} of {what} spilled there ({exc.strerror or exc})"
    elif code == errno.ENOSPC:
        try:
            free = f", {human(shutil.disk_usage(root).free)} free"
        except OSError:
            free = ""
        how = f"ran out of space while spilling {human(nbytes)} of {what}{free}"
    elif code == errno.EFBIG:
        how = f"reached the file-size limit while spilling {human(nbytes)} of {what}"
    elif code == errno.EDQUOT:
        how = f"ran out of disk quota while spilling {human(nbytes)} of {what}"
    else:
        how = f"could not hold {human(nbytes)} of {what} spilled there ({exc.strerror or exc})"
    return ScratchError(f"the temporary folder {root} {how}; free space there or set TMPDIR to a folder on a "
                        "larger disk, or raise the memory budget (--max-memory, INFOPROBE_MAX_MEMORY) to keep them in "
                        "memory if the machine has it", errno=code, filename=exc.filename)


class ScratchMatrix:
    """A float64 matrix [N, K] in a raw file of a scratch folder (see the module docstring).

    Column ``c`` of a panel ``[c0, c1)`` is at byte ``N * c0 * 8 + (row * (c1 - c0) + c - c0) * 8``.
    Either written a block of rows at a time (``m[r0:r1] = block``, fixed panels of
    :data:`PANEL` columns) or a block of columns at a time (:meth:`append_columns`, one panel
    each); read with ``m[rows, cols]`` (slices of step 1), :meth:`rows` or :meth:`columns`.

    Parameters
    ----------
    folder : Path
        A folder from :func:`scratch_folder`.
    n_rows, n_cols : int
        The shape; ``n_cols`` is the most columns :meth:`append_columns` may add.
    what : str
        What the values are, for messages ("the 2,000 x 20 values of layer 'fc1'").
    by : {"rows", "columns"}
        How the matrix is written.

    Raises
    ------
    ScratchError
        The file cannot be created or its ``N * K * 8`` bytes reserved (a full disk, a
        file-size limit, a quota).
    """

    def __init__(self, folder: Path, n_rows: int, n_cols: int, *, what: str, by: str = "rows"):
        if by not in ("rows", "columns"):
            raise ValueError(f"by must be 'rows' or 'columns', not {by!r}")
        self.folder, self.n, self.capacity, self.what, self.by = Path(folder), int(n_rows), int(n_cols), what, by
        self.nbytes = self.n * self.capacity * 8
        self.path = self.folder / "values.f8"
        if by == "rows":
            self.panels = [(c, min(c + PANEL, self.capacity)) for c in range(0, self.capacity, PANEL)]
            self.k = self.capacity
        else:
            self.panels, self.k = [], 0
        self._fd = None
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            if self.nbytes and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(self._fd, 0, self.nbytes)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise              # no reservation on this filesystem: the writes say
        except OSError as exc:
            self.close()
            raise _spill_error(exc, self.folder, self.nbytes, what) from exc

    @property
    def shape(self) -> tuple:
        return (self.n, self.k)

    @property
    def dtype(self):
        return np.dtype(np.float64)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        """Close the file (the folder's removal deletes it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw I/O, every OSError becomes a ScratchError

    def _write(self, offset: int, a: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(a, dtype=np.float64)).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            raise _spill_error(exc, self.folder, self.nbytes, self.what) from exc

    def _read_into(self, offset: int, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        done = 0
        try:
            while done < len(view):
                if hasattr(os, "preadv"):
                    got = os.preadv(self._fd, [view[done:]], offset + done)
                else:
                    data = os.pread(self._fd, len(view) - done, offset + done)
                    view[done:done + len(data)] = data
                    got = len(data)
                if got == 0:
                    raise OSError(errno.EIO, "the scratch file is shorter than written", str(self.path))
                done += got
        except OSError as exc:
            raise _spill_error(exc, self.folder, self.nbytes, self.what, reading=True) from exc

    # -- writing

    def __setitem__(self, key, block) -> None:
        """``m[r0:r1] = block``: rows ``r0..r1`` of every column (``by="rows"``)."""
        if self.by != "rows" or not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a ScratchMatrix written by rows takes m[r0:r1] = block")
        r0, r1, _ = key.indices(self.n)
        block = np.asarray(block, dtype=np.float64)
        if block.shape != (r1 - r0, self.k):
            raise ValueError(f"block of shape {block.shape} for rows {r0}:{r1} of {self.shape}")
        for c0, c1 in self.panels:
            self._write(self.n * c0 * 8 + r0 * (c1 - c0) * 8, block[:, c0:c1])

    def append_columns(self, block) -> None:
        """Add the columns of ``block`` [N, w] after the present ones (``by="columns"``)."""
        block = np.asarray(block, dtype=np.float64)
        if self.by != "columns" or block.ndim != 2 or block.shape[0] != self.n or \
                self.k + block.shape[1] > self.capacity:
            raise ValueError(f"cannot append columns of shape {block.shape} to {self.shape} "
                             f"(at most {self.capacity} columns)")
        if not block.shape[1]:
            return
        self._write(self.n * self.k * 8, block)
        self.panels.append((self.k, self.k + block.shape[1]))
        self.k += block.shape[1]

    # -- reading

    def read(self, r0: int, r1: int, j0: int, j1: int) -> np.ndarray:
        """Rows ``r0..r1`` of columns ``j0..j1`` as a new float64 array."""
        out = np.empty((r1 - r0, j1 - j0))
        if not out.size:
            return out
        for c0, c1 in self.panels:
            a, b = max(j0, c0), min(j1, c1)
            if a >= b:
                continue
            w = c1 - c0
            base = self.n * c0 * 8
            if (a, b) == (c0, c1) and (j0, j1) == (c0, c1):     # the whole request is this panel
                self._read_into(base + r0 * w * 8, out)
                continue
            step = max(1, min(r1 - r0, min(READ_BUFFER, max(out.nbytes, 64 << 10)) // (w * 8)))
            buf = np.empty((step, w))
            for r in range(r0, r1, step):
                part = buf[:min(step, r1 - r)]
                self._read_into(base + r * w * 8, part)
                out[r - r0:r - r0 + len(part), a - j0:b - j0] = part[:, a - c0:b - c0]
        return out

    def __getitem__(self, key) -> np.ndarray:
        """``m[r0:r1, j0:j1]`` (slices of step 1, or ``m[r0:r1]``) as a float64 array."""
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if not (isinstance(rows, slice) and isinstance(cols, slice) and rows.step in (None, 1)
                and cols.step in (None, 1)):
            raise TypeError("a ScratchMatrix is read with slices of step 1: m[r0:r1, j0:j1]")
        r0, r1, _ = rows.indices(self.n)
        j0, j1, _ = cols.indices(self.k)
        return self.read(r0, max(r0, r1), j0, max(j0, j1))

    def rows(self, step: int):
        """Yield ``(start, float64 [r, K])`` over the rows, ``step`` at a time."""
        for r0 in range(0, self.n, step):
            yield r0, self.read(r0, min(self.n, r0 + step), 0, self.k)

    def columns(self, step: int):
        """Yield ``(start, float64 [N, w])`` over the columns, ``step`` at a time."""
        for j0 in range(0, self.k, step):
            yield j0, self.read(0, self.n, j0, min(self.k, j0 + step))


@contextlib.contextmanager
def scratch_matrix(n_rows: int, n_cols: int, *, what: str, by: str = "rows"):
    """A :class:`ScratchMatrix` in its own :func:`scratch_folder`, for a ``with`` block.

    The folder, the file and every stale folder of killed processes are gone when the block
    ends, however it ends.

    Parameters
    ----------
    n_rows, n_cols : int
        The shape (``n_cols``: the most columns, when written ``by="columns"``).
    what : str
        What the values are, for messages.
    by : {"rows", "columns"}
        Written a block of rows or a block of columns at a time.

    Yields
    ------
    ScratchMatrix

    Raises
    ------
    ScratchError
        The folder or file cannot be created, the space cannot be reserved, or a write or
        read fails (``ENOSPC``, ``EFBIG``, ``EDQUOT``, ``EIO`` ...): one line naming the
        temporary folder, the size, and the ways out.
    """
    with scratch_folder() as folder:
        m = ScratchMatrix(folder, n_rows, n_cols, what=what, by=by)
        try:
            yield m
        finally:
            m.close()
