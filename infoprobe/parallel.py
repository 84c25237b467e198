"""Independent work on Dask: the models of a width sweep, the checkpoints of a flow run, the
replicate networks of an averaged experiment, the subtrees of a large exhaustive O-information
search, blocks of the intervention sets of one network's ablations and lesions.

Outside an :func:`engine` block (the default) every task runs in this process, one after the
other. Inside one, :func:`map_tasks` sends the tasks to a ``dask.distributed`` cluster:
``engine("local", workers=4)`` starts a :class:`~dask.distributed.LocalCluster` of four worker
processes on this machine for the block; ``engine("tcp://host:8786")`` uses a user's running
scheduler. The command line's ``--workers N`` and ``--scheduler ADDRESS``.

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
from dataclasses import dataclass, field

from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .errors import ConfigError

_ENGINE: contextvars.ContextVar = contextvars.ContextVar("infoprobe_engine", default=None)


@dataclass
class Engine:
    """Where :func:`map_tasks` runs tasks: ``scheduler`` is ``"local"`` (a LocalCluster of
    ``workers`` processes, started on first use) or a scheduler address."""

    scheduler: str
    workers: int = 2
    threads: int | None = None
    _client: object = field(default=None, repr=False)
    _cluster: object = field(default=None, repr=False)

    def client(self):
        """The ``dask.distributed.Client`` (started on first use).

        Raises
        ------
        ConfigError
            Dask's distributed scheduler is not installed, or the scheduler cannot be reached.
        """
        if self._client is not None:
            return self._client
        try:
            import dask
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("--workers/--scheduler need Dask's distributed scheduler: "
                              "pip install 'infoprobe[distributed]' (or pip install 'dask[distributed]')") from None
        try:
            if self.scheduler == "local":
                env = {k: str(self.threads) for k in ("INFOPROBE_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MKL_NUM_THREADS")}
                # Dask's workers trim the heap at 64 KiB by default: large arrays are then unmapped and
                # mapped again at every allocation (a fifth of the time in system calls); glibc's own
                # threshold keeps them
                environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                           if k != "MALLOC_TRIM_THRESHOLD_"}
                with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                    self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                 dashboard_address=None, silence_logs=logging.ERROR, env=env,
                                                 memory_limit=0)
                self._client = Client(self._cluster)
            else:
                self._client = Client(self.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler {self.scheduler!r}: {exc}") from None
        return self._client

    def capacity(self) -> int:
        """Tasks the cluster runs at once: the LocalCluster's workers, or a running
        cluster's worker threads (at least 1)."""
        if self.scheduler == "local":
            return self.workers
        info = self.client().scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.values()))

    def close(self) -> None:
        """Close the client and the LocalCluster this engine started."""
        for obj in (self._client, self._cluster):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        self._client = self._cluster = None


@contextlib.contextmanager
def engine(scheduler: str | None = "local", *, workers: int = 2, threads: int | None = None):
    """Run the :func:`map_tasks` calls of the block on Dask.

    Parameters
    ----------
    scheduler : str or None
        ``"local"``: a LocalCluster of ``workers`` worker processes (one thread each; the
        machine's cores shared among them for onnxruntime and BLAS), started on first use and
        closed at the end of the block. An address (``tcp://host:8786``): a running
        scheduler, whose workers must see the same files at the same paths. None: serial,
        in this process.
    workers : int
        Worker processes of a LocalCluster (at least 1).
    threads : int, optional
        BLAS and onnxruntime threads of each LocalCluster worker (default: the machine's
        cores // ``workers``, at least 1). A remote cluster's workers keep their own.

    Raises
    ------
    ConfigError
        ``workers`` below 1; Dask missing or the scheduler unreachable (on first use).
    """
    if scheduler is None:
        token = _ENGINE.set(None)
        try:
            yield None
        finally:
            _ENGINE.reset(token)
        return
    if int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if scheduler == "local" and threads is None:
        threads = max(1, (os.cpu_count() or 1) // int(workers))
    eng = Engine(str(scheduler), int(workers), None if scheduler != "local" else int(threads))
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
    keeps its type); ConfigError when the cluster cannot be used.
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
        from dask.distributed import as_completed

        client, settings = eng.client(), _settings()
        futures = [client.submit(_run, fn, a, k, settings, pure=False, key=f"{getattr(fn, '__name__', 'task')}-{i}-"
                                 f"{os.urandom(4).hex()}") for i, (a, k) in enumerate(tasks)]
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                i = index[fut.key]
                try:
                    results[i], caught = fut.result()
                except Exception as exc:   # a task's own error is raised as it is
                    if type(exc).__module__.startswith(("distributed", "dask")):
                        raise ConfigError(f"the Dask cluster failed while running {desc}: {exc}") from None
                    raise
                _rewarn(caught)
                if on_result is not None:
                    on_result(i, results[i])
                bar.update(1)
        finally:
            client.cancel([f for f in futures if not f.done()])
        return results
    finally:
        bar.close()
