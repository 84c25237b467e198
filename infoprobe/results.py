"""Result tables as JSON and CSV with provenance, written atomically, and result sets: all the
files of one command appear together or not at all."""
from __future__ import annotations

import contextlib
import contextvars
import csv
import fcntl
import hashlib
import hmac
import io
import json
import os
import platform
import secrets
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import OutputExistsError


_STAGING = ".infoprobe-staging-"
_COMMIT = "COMMIT"
_LOCK = ".lock"
_result_set: contextvars.ContextVar = contextvars.ContextVar("infoprobe_result_set", default=None)


def create_file(path) -> int:
    """Create ``path`` exclusively with the user's umask (mode ``0o666 & ~umask``, as
    ``open(path, "x")``) and return a writable descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)


def create_or_open(path) -> int:
    """Open ``path`` read-write, creating it with the user's umask when missing."""
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)


def fsync_dir(folder) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    fd = create_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _hidden_temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path, data: bytes, *, staged: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` never holds a partial file.

    Inside :func:`result_set` (every command that writes results runs in one), the file is
    written into the result set's staging folder and appears under its final name only
    when the whole set does. Otherwise (or with ``staged=False``, for files that must
    exist at once, such as resumable partial results) it is written to a hidden temporary
    file beside ``path``, flushed to disk and renamed. Files get the user's umask.
    """
    path = Path(path)
    rs = _result_set.get()
    if staged and rs is not None:
        _write_durable(rs.stage(path), data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_temp(path)
    _write_durable(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class ResultSet:
    """The files one command writes, staged and then renamed into place together.

    Each destination folder gets a staging folder ``.infoprobe-staging-<pid>-<random>``
    inside it (same file system, so renames are atomic), locked with ``flock`` while its
    command runs and marked as this user's (:func:`_seal`). :meth:`commit` flushes, writes a
    sealed ``COMMIT`` list, renames every file to its final name and removes the staging
    folders; :meth:`abort` removes them. A command killed before its ``COMMIT`` leaves only a
    staging folder, which the next command writing to that folder deletes; one killed during
    the renames (after ``COMMIT``) has its renames finished by the next command, so a result
    set appears complete or not at all. :func:`recover` acts only on staging folders that
    this user's infoprobe made in that very folder: anything else is left alone.
    """

    def __init__(self):
        self.folders: dict = {}   # destination folder -> (staging folder, lock fd, stat of it and of the folder)
        self.files: dict = {}     # final path -> staged path
        self.after: list = []     # callables run once the files are in place
        self.held: list = []      # descriptors (locks) held until the set is committed or aborted
        self.created: list = []   # folders made for the set, removed again by abort if left empty

    def hold(self, fd: int) -> None:
        """Keep the descriptor ``fd`` (a lock) open until the result set is committed or aborted."""
        self.held.append(fd)

    def workspace(self, folder) -> Path:
        """A private folder to build results in that must not appear until commit (files that
        later steps of the command read back, such as an activation store): ``work`` inside the
        staging folder of ``folder``, discarded with it by :meth:`abort` or by the
        :func:`recover` of a killed command. Move its files into the set with :meth:`adopt`."""
        folder = Path(folder)
        if folder not in self.folders:
            self._open(folder)
        work = self.folders[folder][0] / "work"
        work.mkdir(mode=0o700, exist_ok=True)
        return work

    def adopt(self, work, folder) -> list:
        """Stage every regular file under ``work`` (not hidden, not a link) as the file of the
        same relative path under ``folder``, moving it (no copy); then remove ``work``.

        Returns
        -------
        list of Path
            The final paths staged.
        """
        work, folder = Path(work), Path(folder)
        finals = []
        for dirpath, dirnames, filenames in os.walk(work):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if name.startswith(".") or not stat.S_ISREG(os.lstat(src).st_mode):
                    continue
                final = folder / src.relative_to(work)
                os.replace(src, self.stage(final))
                finals.append(final)
        shutil.rmtree(work, ignore_errors=True)
        return finals

    def _open(self, folder: Path) -> None:
        missing = [q for q in (folder, *folder.parents) if not q.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self.created += [q for q in missing if q not in self.created]
        private_folder(folder)
        recover(folder)
        staging = folder / f"{_STAGING}{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        lock = None
        try:
            lock = os.open(staging / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            st = (os.lstat(staging), os.stat(folder))
            _write_durable(staging / _MARK, json.dumps({"mac": _seal("mark", *st)}).encode())
            (staging / _FILES).mkdir(mode=0o700)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if lock is not None:
                os.close(lock)
            raise
        self.folders[folder] = (staging, lock, st)

    def _release(self) -> None:
        for fd in self.held:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.held.clear()

    def stage(self, final: Path) -> Path:
        """Where the file for ``final`` is written until commit."""
        final = Path(final)
        folder = final.parent
        if folder not in self.folders:
            self._open(folder)
        staged = self.folders[folder][0] / _FILES / final.name
        if staged.exists():
            staged.unlink()
        self.files[final] = staged
        return staged

    def seal(self) -> None:
        """Write every staging folder's sealed ``COMMIT`` list (the point after which a killed
        command's result set is finished by the next one, not discarded)."""
        for folder, (staging, _, st) in self.folders.items():
            names = [f.name for f, s in self.files.items() if f.parent == folder]
            _write_durable(staging / (_COMMIT + ".tmp"),
                           json.dumps({"names": names, "mac": _seal("commit", *st, names)}).encode())
            os.replace(staging / (_COMMIT + ".tmp"), staging / _COMMIT)
            fsync_dir(staging)

    def commit(self) -> None:
        """Rename every staged file to its final name (see the class docstring). A failure
        before the first rename (writing a ``COMMIT`` list) discards the whole set."""
        try:
            self.seal()
        except BaseException:
            self.abort()
            raise
        try:
            for folder, (staging, lock, st) in list(self.folders.items()):
                outcome = _settle(folder, staging.name, finish=st[0])
                os.close(lock)
                del self.folders[folder]
                if outcome != "finished":
                    raise OSError(f"the staging folder {staging} could not be finished: {outcome}; the rest of "
                                  "the result set is finished by the next infoprobe command writing there")
        finally:
            for _, lock, _ in self.folders.values():
                with contextlib.suppress(OSError):
                    os.close(lock)
            self.folders.clear()
            self._release()
        for fn in self.after:
            fn()

    def abort(self) -> None:
        """Delete the staged files; nothing reaches a final name, and the folders made for the
        set are removed again where they are left empty."""
        for staging, lock, _ in self.folders.values():
            shutil.rmtree(staging, ignore_errors=True)
            os.close(lock)
        self.folders.clear()
        for folder in sorted(self.created, key=lambda q: len(q.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._release()


_MARK = "MARK"
_FILES = "files"   # the staged files, apart from the staging folder's own MARK, COMMIT and lock
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_KEY: list = []


def _state_dir() -> Path:
    """Where this user's infoprobe keeps its staging key: ``INFOPROBE_STATE_DIR``, else
    ``$XDG_STATE_HOME/infoprobe``, else ``~/.local/state/infoprobe``."""
    if os.environ.get("INFOPROBE_STATE_DIR"):
        return Path(os.environ["INFOPROBE_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "infoprobe"


def _key() -> bytes:
    """This user's secret key for sealing staging folders (32 random bytes in a file of mode
    0600 under :func:`_state_dir`, made on first use). Where it cannot be kept (no writable home,
    a key file someone else could read or write), a key of this process alone: staging folders
    of killed commands are then left alone rather than trusted."""
    if _KEY:
        return _KEY[0]
    key = secrets.token_bytes(32)
    try:
        folder = _state_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / "staging.key"
        tmp = folder / f".staging.key.{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)            # the first writer's key wins; others read it
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                stored = os.read(fd, 64)
                if len(stored) == 32:
                    key = stored
        finally:
            os.close(fd)
    except OSError:
        pass
    _KEY.append(key)
    return key


def _seal(kind: str, st: os.stat_result, parent: os.stat_result, names: list | None = None) -> str:
    """HMAC-SHA256 under this user's key of what a staging folder vouches for: its kind of
    mark, its own and its parent folder's device and inode, its owner and (for ``COMMIT``) the
    names to rename."""
    msg = json.dumps([kind, st.st_dev, st.st_ino, parent.st_dev, parent.st_ino, os.getuid(), names]).encode()
    return hmac.new(_key(), msg, hashlib.sha256).hexdigest()


def _read_small(name: str, dir_fd: int, limit: int = 1 << 20) -> bytes | None:
    """A regular file of at most ``limit`` bytes, opened relative to ``dir_fd`` without following
    links (None if it is anything else)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def _sealed(name: str, dir_fd: int, kind: str, st: os.stat_result, parent: os.stat_result):
    """The JSON a sealed file of a staging folder holds, or None if its seal does not match."""
    raw = _read_small(name, dir_fd)
    try:
        doc = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("mac"), str):
        return None
    names = doc.get("names") if kind == "commit" else None
    if kind == "commit" and not (isinstance(names, list) and all(isinstance(n, str) and _plain_name(n) for n in names)):
        return None
    return doc if hmac.compare_digest(doc["mac"], _seal(kind, st, parent, names)) else None


def _plain_name(name: str) -> bool:
    """A name of a file directly inside a folder: no separator, no ``.``/``..``, no NUL."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name \
        and (os.altsep is None or os.altsep not in name)


def _settle(folder, name: str, *, finish: os.stat_result | None = None) -> str:
    """Finish (``COMMIT`` present) or discard (absent) the staging folder ``name`` of ``folder``,
    touching nothing but the files it lists, through descriptors: no link is followed and no
    name leaves the folder. ``finish``: the stat of the staging folder the caller made, holds
    the lock of and has sealed (it must still be that folder).

    Returns what was done: "finished", "discarded", "running" (its lock is held), or why it was
    left alone.
    """
    ffd = os.open(folder, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        fst = os.fstat(ffd)
        try:
            st = os.lstat(name, dir_fd=ffd)
        except FileNotFoundError:
            return "gone"
        if stat.S_ISLNK(st.st_mode):
            return "a symbolic link"
        if not stat.S_ISDIR(st.st_mode):
            return "not a folder"
        if st.st_uid != os.getuid():
            return "owned by another user"
        if st.st_dev != fst.st_dev:
            return "on another file system"
        sfd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=ffd)
        lock = None
        try:
            sst = os.fstat(sfd)
            if (sst.st_dev, sst.st_ino) != (st.st_dev, st.st_ino):
                return "replaced while being read"
            if finish is not None and (sst.st_dev, sst.st_ino) != (finish.st_dev, finish.st_ino):
                return "not the staging folder this command made"
            if _sealed(_MARK, sfd, "mark", sst, fst) is None:
                entries = os.listdir(sfd)   # killed before its mark, nothing staged yet: nothing to lose
                if entries == [] or (entries == [_LOCK] and stat.S_ISREG(os.lstat(_LOCK, dir_fd=sfd).st_mode)):
                    if _alive(name):
                        return "running"    # being made by a live process (before its lock or mark)
                    lock = _try_lock(sfd) if entries else None
                    if entries and lock is None:
                        return "running"
                    shutil.rmtree(name, dir_fd=ffd, ignore_errors=True)
                    return "discarded"
                return "not marked as this user's staging folder here"
            if finish is None:
                lock = _try_lock(sfd)
                if lock is None:
                    return "running"
            commit = _sealed(_COMMIT, sfd, "commit", sst, fst)
            if commit is None:
                if _exists(_COMMIT, sfd):
                    return "its COMMIT list does not match its seal"
                shutil.rmtree(name, dir_fd=ffd, ignore_errors=True)
                return "discarded"
            try:
                files = os.open(_FILES, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=sfd)
            except OSError:
                return "its files folder is missing or a link"
            try:
                for n in commit["names"]:
                    try:
                        est = os.lstat(n, dir_fd=files)
                    except FileNotFoundError:
                        continue                       # renamed before the command was killed
                    if stat.S_ISREG(est.st_mode) and est.st_nlink == 1:
                        os.replace(n, n, src_dir_fd=files, dst_dir_fd=ffd)
            finally:
                os.close(files)
            os.fsync(ffd)
            shutil.rmtree(name, dir_fd=ffd, ignore_errors=True)
            return "finished"
        finally:
            if lock is not None:
                os.close(lock)
            os.close(sfd)
    finally:
        os.close(ffd)


def process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                 # another user's process
    return True


def _alive(name: str) -> bool:
    """Whether the process whose id a staging folder's name holds is running."""
    pid = name[len(_STAGING):].split("-", 1)[0]
    return pid.isdigit() and int(pid) > 0 and process_alive(int(pid))


def private_folder(folder) -> None:
    """Refuse to stage results in ``folder`` when another user could rename or replace what
    infoprobe puts there between its checks: ``folder`` must belong to this user (or to root)
    and be writable by no one else, unless it has the sticky bit (as ``/tmp``: then only the
    owner of an entry may rename it). A group that may write is allowed when it is this user's
    own primary group.

    Raises
    ------
    ConfigError
        ``folder`` belongs to another user, or others may write to it.
    """
    from .errors import ConfigError

    st = os.stat(folder)
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        raise ConfigError(f"{folder} belongs to another user (uid {st.st_uid}), who could replace infoprobe's "
                          "files there while it writes; write the results to a folder of your own")
    others = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != os.getegid())
    if others and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(f"{folder} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}), who could "
                          "replace infoprobe's files there while it writes; chmod go-w it or choose another folder")


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False


def _try_lock(sfd: int) -> int | None:
    """The staging folder's lock, taken without waiting (None: a running command holds it)."""
    try:
        lock = os.open(_LOCK, os.O_RDWR | _NOFOLLOW | _CLOEXEC, dir_fd=sfd)
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return None
    return lock


_WARNED: set = set()


def recover(folder) -> None:
    """Finish or discard the staging folders that killed commands left in ``folder``.

    A staging folder is acted on only when it is a real folder (not a link) of this user, on
    the folder's file system, whose ``MARK`` is sealed with this user's key for its own device
    and inode (so a folder copied, moved or forged by someone else does not pass), and whose
    lock no running command holds: with a sealed ``COMMIT`` list its files (plain names,
    regular files with one link) are renamed into ``folder``, without one it is deleted.
    Anything else named like a staging folder is left alone, with a one-line warning.
    """
    import warnings

    try:
        names = [n for n in os.listdir(folder) if n.startswith(_STAGING)]
    except OSError:
        return
    for name in names:
        try:
            outcome = _settle(folder, name)
        except OSError as exc:
            outcome = f"unreadable ({exc.strerror or type(exc).__name__})"
        said = (os.path.realpath(folder), name, outcome)
        if outcome not in ("finished", "discarded", "running", "gone") and said not in _WARNED:
            _WARNED.add(said)           # once per process: several writers of a command recover one folder
            warnings.warn(f"{Path(folder) / name} was left alone: {outcome}; infoprobe recovers only the staging "
                          f"folders it made itself in that folder", stacklevel=2)


def after_commit(fn) -> None:
    """Call ``fn()`` once the running result set's files are in place (at once when no result
    set runs): for clean-up that must not happen before, such as removing resumable partial
    results."""
    rs = _result_set.get()
    if rs is None:
        fn()
    else:
        rs.after.append(fn)


@contextlib.contextmanager
def unstaged():
    """Write directly (temporary file and rename) inside the block, even within a result set:
    for files built in a :meth:`ResultSet.workspace`."""
    token = _result_set.set(None)
    try:
        yield
    finally:
        _result_set.reset(token)


_relocated: contextvars.ContextVar = contextvars.ContextVar("infoprobe_relocated", default=None)


@contextlib.contextmanager
def relocated(work, final):
    """Inside the block, results record a path under ``work`` (a
    :meth:`ResultSet.workspace`) as the same path under ``final``, where it will be
    (:func:`shown_path`)."""
    token = _relocated.set(({os.path.abspath(work), os.path.realpath(work)}, os.path.abspath(final)))
    try:
        yield
    finally:
        _relocated.reset(token)


def shown_path(path) -> str:
    """``path`` as results record it: where it will be once its result set is in place (see
    :func:`relocated`), else as given."""
    text = str(path)
    moved = _relocated.get()
    if moved is not None:
        works, final = moved
        for full in (os.path.abspath(text), os.path.realpath(text)):
            for work in works:
                if full == work or full.startswith(work + os.sep):
                    return final + full[len(work):]
    return text


@contextlib.contextmanager
def result_set():
    """Run the block with every :func:`atomic_write_bytes` (tables, plots, plans, models)
    staged, and make the files appear together when it ends without an exception; on an
    exception or an interruption nothing appears (see :class:`ResultSet`)."""
    if _result_set.get() is not None:   # nested: the outer set commits
        yield _result_set.get()
        return
    rs = ResultSet()
    token = _result_set.set(rs)
    try:
        yield rs
    except BaseException:
        rs.abort()
        raise
    else:
        rs.commit()
    finally:
        _result_set.reset(token)


def plain(v):
    """``v`` as JSON values: NumPy scalars and arrays as numbers and lists, tuples as lists, dict
    keys as strings, paths as strings, non-finite floats as None."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, Path):
        return str(v)
    return v


def provenance(inputs: dict | None = None, params: dict | None = None) -> dict:
    """Versions, input files with SHA-256, and parameters: what regenerates a result.

    Parameters
    ----------
    inputs : dict of role -> (path, sha256)
    params : dict of JSON-serialisable parameters
    """
    import h5py
    import onnx
    import onnxruntime

    from . import __version__

    return {
        "infoprobe": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "h5py": h5py.__version__},
        "inputs": {k: {"path": shown_path(p), "sha256": s} for k, (p, s) in (inputs or {}).items()},
        "parameters": plain(params or {}),
    }


def check_outputs(paths, overwrite: bool) -> None:
    """Refuse to replace existing result files unless ``overwrite``, once the result sets that
    killed commands left in their folders are finished or discarded (:func:`recover`).

    Raises
    ------
    OutputExistsError
    """
    paths = [Path(p) for p in paths]
    for folder in dict.fromkeys(p.parent for p in paths):   # a killed command's result set first
        if folder.is_dir():
            recover(folder)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; choose another out or pass overwrite=True")


def write_table(outdir, name: str, rows: list, meta: dict) -> list:
    """Write ``rows`` (list of dicts with the same keys) as ``name.csv`` and ``name.json``.

    The JSON holds ``{"meta": meta, "columns": [...], "rows": [...]}``; NaN and infinities
    become null (an empty CSV cell).
    Returns the two paths.
    """
    outdir = Path(outdir)
    columns = list(rows[0].keys()) if rows else []
    clean = [{k: plain(r.get(k)) for k in columns} for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in clean:
        w.writerow({k: ("" if v is None else (json.dumps(v) if isinstance(v, list) else v)) for k, v in r.items()})
    csv_path, json_path = outdir / f"{name}.csv", outdir / f"{name}.json"
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    atomic_write_bytes(json_path, json.dumps({"meta": meta, "columns": columns, "rows": clean},
                                             indent=1, allow_nan=False).encode())
    return [csv_path, json_path]


def read_table(path) -> list:
    """Rows of a table written by :func:`write_table` (the ``.json`` file)."""
    with open(path) as f:
        return json.load(f)["rows"]


_UNINTERRUPTIBLE: set = set()


def uninterruptible(fn):
    """Mark a function in which an interruption must not raise (a callback that libhdf5 makes
    in the middle of a write: an exception there leaves the file inconsistent). Signal
    handlers ask :func:`interruptible` and deliver the signal a little later instead."""
    _UNINTERRUPTIBLE.add(fn.__code__)
    return fn


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM deferred to the end of the block (in the main thread; a no-op
    elsewhere): for work an interruption must not cut in two (an HDF5 block, a scratch folder
    being made or removed).

    Their handlers are replaced by one that only records the signal, then restored, and a
    recorded signal is raised again then (the CLI's handler raises ``KeyboardInterrupt`` or
    its SIGTERM exception; the default action ends the process). A signal mask would not do:
    a signal sent to the process may be taken by another thread (BLAS, onnxruntime), whose
    mask it ignores, and Python runs the handler in the main thread all the same.
    """
    import signal
    import threading

    got, old = [], {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
            except (ValueError, OSError, TypeError):
                pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(got):
            signal.raise_signal(sig)


def interruptible(frame) -> bool:
    """Whether raising KeyboardInterrupt in ``frame`` (a signal handler's frame) is safe: not
    in an :func:`uninterruptible` function nor in a finalizer (``__del__``, a weakref
    callback), where Python prints the exception as "ignored" and loses it."""
    for _ in range(4):
        if frame is None:
            return True
        code = frame.f_code
        if code in _UNINTERRUPTIBLE or code.co_name == "__del__" or \
                code.co_filename.endswith(("weakref.py", "_weakrefset.py")):
            return False
        frame = frame.f_back
    return True


_kept: contextvars.ContextVar = contextvars.ContextVar("infoprobe_kept", default=None)


def keep_on_interrupt(describe) -> None:
    """Register what an interrupted command keeps: ``describe()`` returns one sentence (for
    example the partial store and how to resume), printed when the command is interrupted.
    ``None`` forgets it."""
    _kept.set(describe)


def kept_on_interrupt() -> str:
    """What the running command keeps if it is interrupted now (see :func:`keep_on_interrupt`)."""
    describe = _kept.get()
    if describe is None:
        return "nothing was written (results appear only when complete)"
    try:
        return describe()
    except Exception:   # never let the description hide the interruption
        return "a partial result may be kept; run the same command again to resume"


class Tables:
    """What every analysis result offers beside ``summary()``, ``save()`` and ``plot()``: a short
    ``repr`` (its tables and their sizes) and :meth:`to_frame`. A result names its tables in
    :meth:`tables` (the same tables ``save`` writes)."""

    def tables(self) -> dict:
        """{table name: list of row dicts}, the first being the result's main table."""
        raise NotImplementedError

    def to_frame(self, table: str | None = None):
        """One table as a ``pandas.DataFrame`` (pandas is an optional dependency:
        ``pip install 'infoprobe[pandas]'``).

        Parameters
        ----------
        table : str, optional
            A name of :meth:`tables` (default: the first).

        Raises
        ------
        ConfigError
            pandas is missing, or no table has that name.
        """
        from .errors import ConfigError

        try:
            import pandas as pd
        except ImportError:
            raise ConfigError("to_frame needs pandas: pip install 'infoprobe[pandas]' (or pandas)") from None
        tabs = self.tables()
        name = table or next(iter(tabs))
        if name not in tabs:
            raise ConfigError(f"no table {name!r}; this result has: {', '.join(tabs)}")
        return pd.DataFrame([plain(r) for r in tabs[name]])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {len(rows):,} rows" for name, rows in self.tables().items())
        return f"<{type(self).__name__} {sizes}>"
