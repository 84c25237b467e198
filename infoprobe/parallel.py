"""Independent work on Dask: the models of a width sweep, the checkpoints of a flow run, the
replicate networks of an averaged experiment, the subtrees of a large exhaustive O-information
search, blocks of the intervention sets of one network's ablations and lesions.

Outside an :func:`engine` block (the default) every task runs in this process, one after the
other. Inside one, :func:`map_tasks` sends the tasks to a ``dask.distributed`` cluster:
``engine("local", workers=4)`` starts a :class:`~dask.distributed.LocalCluster` of four worker
processes on this machine for the block; ``engine("tls://host:8786", security="tls.toml")``
uses a user's running scheduler. The command line's ``--workers N``, ``--scheduler ADDRESS``
and ``--scheduler-security FILE``.

Whom a distributed run trusts: task results come back pickled, and unpickling them can run
any code, so infoprobe talks only to a scheduler and workers that authenticate themselves.

* A LocalCluster listens on 127.0.0.1 only, with TLS and a certificate made for the run
  (:meth:`distributed.security.Security.temporary`, kept in memory): its scheduler, workers
  and this process accept only peers holding that certificate, so no other process on the
  machine can join as a worker or answer as the scheduler.
* A running scheduler is used only at a ``tls://HOST:PORT`` address, with the certificate
  authority and this client's certificate named by a security file (:func:`load_security`):
  whoever holds a certificate of that authority is trusted to run code in this process.
  Plain ``tcp://``, any other scheme, or a ``tls://`` address without certificates is
  refused before anything is sent.
* Every exchange with the scheduler has a deadline: connecting (TCP, TLS and Dask's
  handshake) and each call, :data:`SCHEDULER_TIMEOUT` seconds; a scheduler left without
  workers (none started, or all lost) for :data:`NO_WORKERS_TIMEOUT` seconds ends the run.
  Each is a :class:`~infoprobe.errors.ConfigError`. A worker lost while others remain is
  survived: the scheduler runs its tasks again elsewhere, with the same results.

What makes a distributed run give the serial run's numbers:

* every task carries its own seed (the analysis's seed, or one derived from it and the task's
  index), never a worker's state, so which worker runs a task changes nothing;
* tasks take paths, not arrays: a :class:`~infoprobe.data.Dataset` or
  :class:`~infoprobe.model.LoadedModel` read from a file travels as the call that read it and
  is read again by the worker from shared storage (its SHA-256 checked), a
  :class:`~infoprobe.store.Store` as its path. A cluster's workers must see the same files at
  the same absolute paths;
* the caller's settings travel with each task: the memory and store budgets
  (:mod:`infoprobe.limits`; each worker holds up to one budget at a time), the site discovery
  (``--site``, ``--sites``, ``--output``) and the onnxruntime provider.

A LocalCluster's workers share the machine's cores: each runs its BLAS and onnxruntime on
``threads`` threads (default: cores // workers). A sum that BLAS splits over another number of
threads can differ in its last bits (about 1e-16 relative), so a distributed run equals, bit
for bit, the serial run made with the workers' thread count (``OPENBLAS_NUM_THREADS=1
INFOPROBE_THREADS=1`` for ``threads=1``), and any serial run to rounding.

Results are gathered in task order; files are written by the calling process only, so a
failed or interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .errors import ConfigError, one_line

_ENGINE: contextvars.ContextVar = contextvars.ContextVar("infoprobe_engine", default=None)

#: Seconds allowed to connect to a scheduler (TCP, TLS and Dask's handshake together) and
#: to each later call to it (its workers, a task's result).
SCHEDULER_TIMEOUT = 20.0
#: Seconds a scheduler may have no worker at all (none started, or every one lost) while
#: tasks wait, before the run ends.
NO_WORKERS_TIMEOUT = 60.0
#: Times a computed result whose fetch timed out is waited for again, each time twice as long.
FETCH_RETRIES = 3
#: Seconds between two checks of the scheduler's workers while tasks run.
WORKER_POLL = 2.0
#: Seconds given to closing a client (a vanished scheduler must not hold the exit).
CLOSE_TIMEOUT = 5.0
#: The keys of a scheduler security file (:func:`load_security`).
SECURITY_KEYS = ("ca_file", "cert", "key")
_SECURITY_FILE_BYTES = 64 * 1024
_PEM_FILE_BYTES = 1024 * 1024

_WHY = ("infoprobe unpickles the task results that the scheduler's workers send back, so it only "
        "uses a scheduler that authenticates itself")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})")


def _distributed():
    """``dask.distributed``, or the ConfigError that says how to install it."""
    try:
        import dask.distributed as distributed
    except ImportError:
        raise ConfigError("--workers/--scheduler need Dask's distributed scheduler: "
                          "pip install 'infoprobe[distributed]' (or pip install 'dask[distributed]')") from None
    return distributed


def _shown(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters, for a message."""
    return " ".join(str(text).split())[:limit]


def check_address(address: str) -> str:
    """The scheduler address ``address`` if it is ``tls://HOST:PORT``.

    HOST is a host name, an IPv4 address or a bracketed IPv6 address; PORT is 1 to 65535.
    Nothing is connected to.

    Returns
    -------
    str
        The address as Dask takes it (``tls://host:port``).

    Raises
    ------
    ConfigError
        Another scheme (``tcp://``, ``inproc://``, ``ws://``, ...: refused, because task
        results are unpickled from the scheduler's workers and must come from authenticated
        peers), no scheme, or a malformed host or port.
    """
    import ipaddress

    text = str(address)
    shown = _shown(text, 80)
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme:
        raise ConfigError(f"scheduler address {shown!r} is not tls://HOST:PORT (e.g. tls://10.0.0.5:8786)")
    if scheme.lower() != "tls":
        raise ConfigError(f"scheduler address {shown!r}: {_shown(scheme, 20)}:// is refused; {_WHY}: give a "
                          "tls://HOST:PORT address and --scheduler-security FILE")
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise ConfigError(f"scheduler address {shown!r} has no {'port' if not colon else 'host'}: tls://HOST:PORT "
                          "(e.g. tls://10.0.0.5:8786)")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"scheduler address {shown!r}: the port must be a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"scheduler address {shown!r}: {host} is not an IPv6 address") from None
    elif not _HOST.fullmatch(host):
        raise ConfigError(f"scheduler address {shown!r}: {_shown(host, 60)!r} is not a host name or address")
    return f"tls://{host}:{int(port)}"


def load_security(source):
    """The TLS settings of a client of a running scheduler, from a security file.

    The file is TOML (JSON if its name ends in ``.json``) with three keys, paths relative
    to the file's folder::

        ca_file = "ca.pem"         # the authority that signed the scheduler's and workers' certificates
        cert = "client.pem"        # this client's certificate (Dask's scheduler requires one)
        key = "client-key.pem"     # its private key; leave out if cert holds it

    Parameters
    ----------
    source : str, os.PathLike, dict or distributed.security.Security
        The file, the same keys as a dict, or a ready Security object (which must require
        encryption).

    Returns
    -------
    distributed.security.Security
        With ``require_encryption`` set: Dask then speaks TLS only, checks the scheduler's
        certificate against ``ca_file`` and shows it ``cert``.

    Raises
    ------
    ConfigError
        The file is missing, too large (over 64 KiB), not valid TOML/JSON, has unknown or
        missing keys; a certificate or key file is missing, not PEM, or the key does not
        match the certificate; Dask's distributed scheduler is not installed.
    """
    import ssl

    _distributed()
    from distributed.security import Security

    if isinstance(source, Security):
        if not source.require_encryption:
            raise ConfigError(f"the scheduler's security settings must require encryption; {_WHY}")
        return source
    if isinstance(source, dict):
        doc, base, what = source, Path.cwd(), "scheduler security"
    else:
        what = f"--scheduler-security {_shown(source, 200)}"
        path = _expand(source, what)
        try:
            if not path.is_file():
                raise ConfigError(f"{what}: {'not a file' if path.exists() else 'no such file'}")
            if path.stat().st_size > _SECURITY_FILE_BYTES:
                raise ConfigError(f"{what}: over {_SECURITY_FILE_BYTES // 1024} KiB, not a security file")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{what}: cannot be read: {one_line(exc)}") from None
        try:
            if path.suffix.lower() == ".json":
                import json

                doc = json.loads(text)
            else:
                import tomllib

                doc = tomllib.loads(text)
        except (ValueError, RecursionError) as exc:
            kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
            raise ConfigError(f"{what}: not valid {kind}: {one_line(exc)}") from None
        base = path.parent
    if not isinstance(doc, dict):
        raise ConfigError(f"{what}: expected the keys {', '.join(SECURITY_KEYS)}")
    unknown = sorted(set(map(str, doc)) - set(SECURITY_KEYS))
    if unknown:
        raise ConfigError(f"{what}: unknown key {_shown(unknown[0], 60)!r} (the keys: {', '.join(SECURITY_KEYS)})")
    files = {}
    for key in SECURITY_KEYS:
        value = doc.get(key)
        if value is None and key == "key":
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{what}: {key} must name a PEM file"
                              + (" (ca_file: the certificate authority; cert: this client's certificate)"
                                 if value is None else ""))
        file = base / _expand(value, what)
        try:
            ok = file.is_file() and file.stat().st_size <= _PEM_FILE_BYTES
        except OSError:
            ok = False
        if not ok:
            raise ConfigError(f"{what}: {key} {_shown(file, 200)} is not a PEM file of at most 1 MiB")
        files[key] = str(file)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=files["ca_file"])
        ctx.load_cert_chain(files["cert"], files.get("key"))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"{what}: the certificates cannot be used: {one_line(exc)}") from None
    return Security(require_encryption=True, tls_ca_file=files["ca_file"], tls_client_cert=files["cert"],
                    tls_client_key=files.get("key"))


def _expand(path, what: str) -> Path:
    """``path`` with ``~`` or ``~user`` expanded.

    Raises
    ------
    ConfigError
        ``~user`` names no user.
    """
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise ConfigError(f"{what}: {_shown(path, 200)} names a home folder that does not exist") from None


def _quiet_http() -> dict:
    """Dask settings that leave the LocalCluster's HTTP servers (plain HTTP on 127.0.0.1)
    without routes: no worker list, logs or call stacks for other local users."""
    return {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}


def _dispose(client, *, wait: bool) -> None:
    """Close a client whose connection failed (``wait``: it is idle; within
    :data:`CLOSE_TIMEOUT` seconds), and mark it closed, so that Dask's finalizer does not try
    again (and wait, and print a traceback) when the interpreter exits."""
    if wait:
        closing = threading.Thread(target=_close_quietly, args=(client,), name="infoprobe-dask-close", daemon=True)
        closing.start()
        closing.join(CLOSE_TIMEOUT)
    with contextlib.suppress(Exception):
        client.status = "closed"


def _describe(exc: BaseException) -> str:
    """``Type: message`` of a Dask error in one line (the type alone when it says nothing more)."""
    name, text = type(exc).__name__, one_line(exc)
    return name if text in ("", name) else f"{name}: {text}"


def _close_quietly(client) -> None:
    try:
        client.close(timeout=CLOSE_TIMEOUT)
    except BaseException:   # a half-made client: nothing to report
        pass


@dataclass
class Engine:
    """Where :func:`map_tasks` runs tasks: ``scheduler`` is ``"local"`` (a LocalCluster of
    ``workers`` processes, started on first use, TLS with a certificate of its own) or a
    ``tls://`` scheduler address reached with ``security``
    (:class:`distributed.security.Security`, see :func:`load_security`)."""

    scheduler: str
    workers: int = 2
    threads: int | None = None
    security: object = field(default=None, repr=False)
    _client: object = field(default=None, repr=False)
    _cluster: object = field(default=None, repr=False)

    def client(self):
        """The ``dask.distributed.Client`` (started on first use).

        Raises
        ------
        ConfigError
            Dask's distributed scheduler (or ``cryptography``, for the LocalCluster's
            certificate) is not installed; the scheduler cannot be reached, fails TLS or Dask's
            handshake, or does not complete them within :data:`SCHEDULER_TIMEOUT` seconds.
        """
        if self._client is not None:
            return self._client
        distributed = _distributed()
        if self.scheduler == "local":
            self._start_cluster()
            target, security = self._cluster, self._cluster.security
        else:
            target = check_address(self.scheduler)
            if self.security is None:
                raise ConfigError(f"scheduler {target}: no certificates; {_WHY}: give --scheduler-security FILE")
            security = load_security(self.security)
        self._client = self._connect(distributed.Client, target, security)
        return self._client

    def _start_cluster(self) -> None:
        import dask
        from dask.distributed import LocalCluster
        from distributed.security import Security

        try:
            security = Security.temporary()
        except ImportError:
            raise ConfigError("--workers needs the cryptography package for its cluster's TLS certificate: "
                              "pip install 'infoprobe[distributed]' (or pip install cryptography)") from None
        env = {k: str(self.threads) for k in ("INFOPROBE_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                               "MKL_NUM_THREADS")}
        # Dask's workers trim the heap at 64 KiB by default: large arrays are then unmapped and
        # mapped again at every allocation (a fifth of the time in system calls); glibc's own
        # threshold keeps them
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        try:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **_quiet_http()}):
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                             host="127.0.0.1", security=security, dashboard_address=None,
                                             silence_logs=logging.ERROR, env=env, memory_limit=0)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot start a Dask LocalCluster: {one_line(exc)}") from None

    def _connect(self, client_cls, target, security):
        """A Client of ``target``, connected within :data:`SCHEDULER_TIMEOUT` seconds.

        Dask bounds the TCP connection but not its handshake, so the connection runs in a
        thread of its own that is abandoned (with its socket) if it does not finish in time.
        A client that failed is closed here, so that nothing of it is left to report later."""
        name = self.scheduler if self.scheduler != "local" else "of the LocalCluster"
        client = client_cls.__new__(client_cls)
        box: dict = {}

        def connect():
            try:
                # Dask's own deadline (for the TCP connection, retried) ends first: its error names the cause
                client.__init__(target, timeout=f"{0.75 * SCHEDULER_TIMEOUT}s", security=security,
                                set_as_default=False)
                box["ok"] = True
            except BaseException as exc:   # reported by the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=connect, name="infoprobe-dask-connect", daemon=True)
        thread.start()
        thread.join(SCHEDULER_TIMEOUT)
        if "ok" in box:
            return client
        if thread.is_alive():
            _dispose(client, wait=False)
            raise ConfigError(f"the Dask scheduler {name} did not complete the connection (TLS and Dask's handshake) "
                              f"within {SCHEDULER_TIMEOUT:g} s")
        _dispose(client, wait=True)
        exc = box["error"]
        if not isinstance(exc, Exception):
            raise exc
        # whatever Dask raises on a peer that is no Dask scheduler (a refused connection, a TLS failure, a
        # malformed handshake) means the same to the user
        why = "" if self.scheduler == "local" else \
            " (nothing listens there, or no Dask scheduler with a certificate that ca_file vouches for)"
        raise ConfigError(f"cannot reach the Dask scheduler {name}{why}: {_describe(exc)}") from None

    def nthreads(self) -> dict:
        """The scheduler's workers and their threads, asked within :data:`SCHEDULER_TIMEOUT`
        seconds.

        Raises
        ------
        ConfigError
            The scheduler does not answer in time, or the connection to it is lost.
        """
        client = self.client()
        try:
            return dict(client.nthreads(callback_timeout=SCHEDULER_TIMEOUT))
        except TimeoutError:
            raise ConfigError(f"the Dask scheduler {self.scheduler} did not answer within "
                              f"{SCHEDULER_TIMEOUT:g} s") from None
        except Exception as exc:   # a closed or broken connection, whatever Dask calls it
            raise ConfigError(f"lost the Dask scheduler {self.scheduler}: {_describe(exc)}") from None

    def capacity(self) -> int:
        """Tasks the cluster runs at once: the LocalCluster's workers, or a running
        cluster's worker threads (at least 1).

        Raises
        ------
        ConfigError
            As :meth:`nthreads`.
        """
        if self.scheduler == "local":
            return self.workers
        return max(1, sum(int(n) for n in self.nthreads().values()))

    def close(self) -> None:
        """Close the client (within :data:`CLOSE_TIMEOUT` seconds) and the LocalCluster this
        engine started."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close(timeout=CLOSE_TIMEOUT)
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
        self._client = self._cluster = None


@contextlib.contextmanager
def engine(scheduler: str | None = "local", *, workers: int = 2, threads: int | None = None, security=None):
    """Run the :func:`map_tasks` calls of the block on Dask.

    Parameters
    ----------
    scheduler : str or None
        ``"local"``: a LocalCluster of ``workers`` worker processes (one thread each; the
        machine's cores shared among them for onnxruntime and BLAS) on 127.0.0.1 with TLS and
        a temporary certificate, started on first use and closed at the end of the block.
        ``tls://HOST:PORT``: a running scheduler, with ``security``; its workers must see the
        same files at the same paths. None: serial, in this process.
    workers : int
        Worker processes of a LocalCluster (at least 1).
    threads : int, optional
        BLAS and onnxruntime threads of each LocalCluster worker (default: the machine's
        cores // ``workers``, at least 1). A remote cluster's workers keep their own.
    security : str, os.PathLike, dict or distributed.security.Security, optional
        For a running scheduler (required there): the security file of
        :func:`load_security` (the certificate authority, this client's certificate and
        key), its keys as a dict, or a Security object.

    Raises
    ------
    ConfigError
        At once: ``workers`` below 1; an address that is not ``tls://HOST:PORT``; a running
        scheduler without ``security``; a security file that cannot be used. On first use:
        Dask missing, the scheduler unreachable or silent (:data:`SCHEDULER_TIMEOUT`).
    """
    if scheduler is None:
        if security is not None:
            raise ConfigError("--scheduler-security goes with --scheduler (the address of a running scheduler)")
        token = _ENGINE.set(None)
        try:
            yield None
        finally:
            _ENGINE.reset(token)
        return
    if int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    scheduler = str(scheduler)
    if scheduler == "local":
        if security is not None:
            raise ConfigError("--scheduler-security goes with --scheduler: a LocalCluster makes its own certificate")
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // int(workers))
    else:
        scheduler = check_address(scheduler)
        if security is None:
            raise ConfigError(f"scheduler {scheduler}: no certificates; {_WHY}: give --scheduler-security FILE "
                              "(ca_file, cert and key of this client)")
        security = load_security(security)
    eng = Engine(scheduler, int(workers), None if scheduler != "local" else int(threads), security)
    token = _ENGINE.set(eng)
    try:
        yield eng
    finally:
        _ENGINE.reset(token)
        eng.close()


def current() -> Engine | None:
    """The engine of the enclosing :func:`engine` block, or None (serial)."""
    return _ENGINE.get()


def portable(obj):
    """What a task is given for ``obj``: inside an :func:`engine` block with a remote
    scheduler, a path made absolute (its workers do not share this working directory);
    anything else as it is. Open stores, loaded models and data read from files pickle as the
    calls that opened them (:class:`~infoprobe.store.Store`,
    :class:`~infoprobe.model.LoadedModel`, :class:`~infoprobe.data.Dataset`)."""
    from pathlib import Path

    eng = current()
    if eng is not None and eng.scheduler != "local" and isinstance(obj, (str, os.PathLike)):
        return str(Path(obj).resolve())
    return obj


def _settings() -> dict:
    """The caller's budgets, site discovery and onnxruntime providers, for a worker."""
    from . import model, runner
    from .limits import max_memory, max_store

    eng = current()
    return {"memory": max_memory(), "store": max_store(), "discovery": model._DISCOVERY.get(),
            "providers": runner._default_providers, "threads": eng.threads if eng is not None else None}


def _run(fn, args: tuple, kwargs: dict, settings: dict):
    """One task inside the caller's settings (runs on a worker)."""
    import warnings

    from . import model, runner
    from .limits import budgets

    token = model._DISCOVERY.set(settings["discovery"])
    previous, runner._default_providers = runner._default_providers, settings["providers"]
    try:
        with budgets(memory=settings["memory"], store=settings["store"]), warnings.catch_warnings(record=True) as w, \
                threadpool_limits(limits=settings["threads"], user_api="blas"):
            warnings.simplefilter("always")
            out = fn(*args, **kwargs)
        return out, [(str(x.message), x.category.__name__) for x in w]
    finally:
        runner._default_providers = previous
        model._DISCOVERY.reset(token)


def _rewarn(caught: list) -> None:
    import warnings

    for message, category in caught:
        cls = next((c for c in (UserWarning, RuntimeWarning, DeprecationWarning) if c.__name__ == category),
                   UserWarning)
        warnings.warn(message, cls, stacklevel=3)


def _gather(eng: Engine, futures: list, desc: str):
    """``(index, result)`` of each future as it finishes, while the scheduler keeps a worker.

    Every :data:`WORKER_POLL` seconds the scheduler is asked for its workers (within
    :data:`SCHEDULER_TIMEOUT`); none for :data:`NO_WORKERS_TIMEOUT` seconds ends the wait. A
    result whose worker was lost before it was fetched is waited for again (the scheduler
    computes it anew); one still being fetched then is given twice as long the next time, at
    most :data:`FETCH_RETRIES` times.

    Raises
    ------
    ConfigError
        No worker for :data:`NO_WORKERS_TIMEOUT` seconds, a result not delivered after its
        retries, or an error of the cluster itself.
    """
    wake = threading.Event()
    pending = dict(enumerate(futures))
    patience = dict.fromkeys(pending, SCHEDULER_TIMEOUT)
    for fut in futures:
        fut.add_done_callback(lambda _: wake.set())
    seen = time.monotonic()
    check = seen + WORKER_POLL
    while pending:
        wake.wait(0.2)
        wake.clear()
        for i, fut in [(i, f) for i, f in pending.items() if f.done()]:
            try:
                out = fut.result(timeout=patience[i])
            except Exception as exc:   # a task's own error is raised as it is
                if isinstance(exc, TimeoutError) and fut.status != "error":
                    if patience[i] >= SCHEDULER_TIMEOUT * 2 ** FETCH_RETRIES:
                        raise ConfigError(f"the Dask cluster did not deliver a result of {desc} within "
                                          f"{patience[i]:g} s after it was computed") from None
                    patience[i] *= 2       # its worker went before the result was fetched (computed again),
                    continue               # or the result is large: the workers are checked, then it is waited for
                if type(exc).__module__.startswith(("distributed", "dask")):
                    raise ConfigError(f"the Dask cluster failed while running {desc}: {one_line(exc)}") from None
                raise
            del pending[i]
            yield i, out
        now = time.monotonic()
        if pending and now >= check:
            if eng.nthreads():
                seen = now
            elif now - seen >= NO_WORKERS_TIMEOUT:
                raise ConfigError(f"the Dask scheduler {eng.scheduler} has had no workers for "
                                  f"{NO_WORKERS_TIMEOUT:g} s (none started, or all were lost) while running {desc}")
            check = time.monotonic() + WORKER_POLL


def map_tasks(fn, tasks: list, *, desc: str = "tasks", progress: bool = False, on_result=None) -> list:
    """``[fn(*args, **kwargs) for args, kwargs in tasks]``, serially or on the engine of the
    enclosing :func:`engine` block.

    Parameters
    ----------
    fn : callable
        A module-level function (workers import it by name).
    tasks : list of (tuple, dict)
        Positional and keyword arguments of each call: paths, numbers, a
        :class:`~infoprobe.data.Dataset` (sent as its recipe), never open files.
    desc : str
        Progress bar label (one step per finished task).
    progress : bool
    on_result : callable, optional
        Called as ``on_result(i, result)`` in this process as soon as task ``i`` finishes
        (e.g. to keep it for a resumed run).

    Returns
    -------
    list
        The results, in task order. Warnings raised by a task are raised again here.

    Raises
    ------
    The first task's error, as the serial run would raise it (an :class:`InfoprobeError`
    keeps its type). ConfigError when the cluster cannot be used: the scheduler does not
    answer within :data:`SCHEDULER_TIMEOUT` seconds, has no worker for
    :data:`NO_WORKERS_TIMEOUT` seconds, or fails a task (e.g. a worker killed while running
    it too often).
    """
    tasks = [(tuple(a), dict(k)) for a, k in tasks]
    eng = current()
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress or len(tasks) < 2, leave=False)
    results = [None] * len(tasks)
    try:
        if eng is None or len(tasks) < 2:
            for i, (a, k) in enumerate(tasks):
                results[i] = fn(*a, **k)
                if on_result is not None:
                    on_result(i, results[i])
                bar.update(1)
            return results
        client, settings = eng.client(), _settings()
        futures = [client.submit(_run, fn, a, k, settings, pure=False, key=f"{getattr(fn, '__name__', 'task')}-{i}-"
                                 f"{os.urandom(4).hex()}") for i, (a, k) in enumerate(tasks)]
        try:
            for i, out in _gather(eng, futures, desc):
                results[i], caught = out
                _rewarn(caught)
                if on_result is not None:
                    on_result(i, results[i])
                bar.update(1)
        finally:
            with contextlib.suppress(Exception):   # only a message queued to the scheduler
                client.cancel([f for f in futures if not f.done()])
        return results
    finally:
        bar.close()
