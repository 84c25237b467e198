"""onnxruntime sessions over rewritten models: batching, default masks, interventions."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from .data import feeds as feeds_of
from .errors import ConfigError, DataError, DeviceError, ModelError, PlanError, one_line
from .model import LoadedModel, UnitLayer, runtime_rows
from .rewrite import instrument, io_name, mask_shape, mix_feed, mix_shape, suffix

_PROTO_LIMIT = 1_800_000_000  # bytes; above this a model is saved with external data

#: ``--provider`` names -> onnxruntime execution providers, in order of preference.
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
_default_providers: list | None = None


def providers_for(provider: str) -> list:
    """The onnxruntime execution providers of a ``--provider`` name.

    Raises
    ------
    ConfigError
        An unknown name.
    DeviceError
        The provider is not in this onnxruntime (``cuda`` needs the ``onnxruntime-gpu`` wheel
        in place of ``onnxruntime``, and a CUDA device).
    """
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}; use {' or '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise DeviceError(f"--provider {provider}: this onnxruntime has no {wanted[0]} (it has "
                          f"{', '.join(available)}); install onnxruntime-gpu in place of onnxruntime "
                          "(pip uninstall onnxruntime && pip install onnxruntime-gpu) on a machine with CUDA")
    return list(wanted)


@contextlib.contextmanager
def execution(provider: str = "cpu"):
    """Every session :func:`make_session` builds inside runs on ``provider`` (``cpu`` or
    ``cuda``) unless it is given its own providers; the CLI's ``--provider``.

    Raises
    ------
    ConfigError, DeviceError
        As :func:`providers_for`.
    """
    global _default_providers
    previous, _default_providers = _default_providers, providers_for(provider)
    try:
        yield _default_providers
    finally:
        _default_providers = previous


#: onnxruntime's FATAL severity: its own log lines never reach the user's terminal; every
#: failure is reported once, as an infoprobe error (:func:`ort_error`).
_ORT_QUIET = 4
ort.set_default_logger_severity(_ORT_QUIET)


def ort_error(exc: Exception, what: str) -> Exception:
    """The infoprobe error for an onnxruntime exception, on one line.

    Invalid inputs (wrong shape, type or rank) are the data's fault (:class:`DataError`);
    anything else -- a failed allocation, a node that cannot run -- is the model's
    (:class:`ModelError`), with onnxruntime's first line.
    """
    msg = one_line(exc)
    if "alloc" in msg.lower() or isinstance(exc, MemoryError):
        return ModelError(f"{what}: onnxruntime could not allocate the memory the model asks for at run "
                          f"time ({msg})")
    if type(exc).__name__ in ("InvalidArgument", "InvalidGraph") and "input" in msg.lower():
        return DataError(f"{what}: onnxruntime rejected the input: {msg}")
    return ModelError(f"{what}: onnxruntime failed: {msg}")


_SHARED_ARENA = []
#: CPU memory arenas of a session (:func:`session_options`).
ARENAS = ("own", "shared", "none")


def _shared_arena() -> None:
    """Register, once per process, the CPU memory arena that sessions built with
    ``arena="shared"`` allocate from."""
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _SHARED_ARENA.append(info)


def session_options(threads: int | None = None, *, spin: bool = True, arena="own") -> ort.SessionOptions:
    """onnxruntime session options: silent logging, ``threads`` intra-op threads (None:
    onnxruntime's choice), with ``spin=False`` idle threads that do not spin, and the CPU
    memory arena: ``"own"`` (onnxruntime's default: each session keeps the peak of its runs),
    ``"shared"`` (one arena for every session so built: sessions used in turn hold one peak
    between them, without returning pages to the system after every run), ``"none"`` (no
    arena: every tensor is allocated when computed and freed when no longer needed, so a run
    holds only its live values and nothing stays between runs; for large batches run once
    each, as capture's).

    Raises
    ------
    ConfigError
        An unknown ``arena``.
    """
    if arena not in ARENAS:
        raise ConfigError(f"unknown arena {arena!r}; use one of {', '.join(ARENAS)}")
    opts = ort.SessionOptions()
    opts.log_severity_level = _ORT_QUIET
    if arena == "none":
        opts.enable_cpu_mem_arena = False
    elif arena == "shared":
        _shared_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def make_session(model: ir.Model, *, providers=None, threads: int | None = None,
                 spin: bool = True, arena="own") -> ort.InferenceSession:
    """An ``onnxruntime.InferenceSession`` for an ``onnx_ir.Model``.

    The model holds its weights in memory (:func:`infoprobe.model.load_onnx` reads external
    data once, from the model's folder), so onnxruntime never resolves a file name itself:
    small models are passed as bytes; models near the 2 GB protobuf limit are written to a
    private temporary folder with external data first.

    Parameters
    ----------
    providers : list of str, optional
        onnxruntime execution providers (default: those of the enclosing :func:`execution`,
        else ``["CPUExecutionProvider"]``).
    threads : int, optional
        Intra-op threads (default: onnxruntime's choice).
    spin : bool
        Let idle intra-op threads spin (onnxruntime's default: lower latency for runs back to
        back). False for a session that runs once while others work, so that its idle
        threads do not compete with theirs for the cores.
    arena : {"own", "shared", "none"}
        The session's own CPU memory arena (onnxruntime's default), or the one arena shared
        by every session built with ``"shared"``: sessions that live side by side over large
        batches (one per unit site of an intervention sweep) share it, so that each does not
        keep the peak of its last run; or none (``"none"``: each tensor allocated and freed
        on its own, see :func:`session_options`).
    """
    opts = session_options(threads, spin=spin, arena=arena)
    providers = providers or _default_providers or ["CPUExecutionProvider"]
    proto = ir.to_proto(model)
    try:
        if proto.ByteSize() < _PROTO_LIMIT:
            return ort.InferenceSession(proto.SerializeToString(), opts, providers=providers)
        with tempfile.TemporaryDirectory(prefix="infoprobe-") as tmp:
            path = Path(tmp) / "model.onnx"
            ir.save(model, path, external_data="model.onnx.data")
            return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {one_line(exc)}") from None


class Runner:
    """Run an instrumented model (or the suffix after one layer) with masks and offsets.

    Parameters
    ----------
    lm : LoadedModel
    after : str, optional
        Build the suffix after this unit layer (input: its post-activation) instead of the
        whole model. See :func:`infoprobe.rewrite.suffix`.
    expose : bool
        Expose every layer's ``pre`` and ``post`` as outputs (whole model only).
    mix : bool
        Add the ``L:mix`` inputs that apply a pruning plan's affine replacements
        (whole model only; see :meth:`plan_feeds`).
    noise : bool
        Add the ``L:noise`` inputs of every hidden layer (whole model only; see
        :meth:`noise_feeds`): the noisy network of Goldfeld et al. (2019).
    providers, threads, spin, arena :
        As for :func:`make_session`.

    Attributes
    ----------
    identity : dict
        Feeds of the identity intervention (mask 1, offset 0, shape ``[1, U]`` or
        ``[1, C, 1, 1]``) for every mask/offset input; :meth:`run` uses them for inputs it is
        not given. One session thus serves every ablation of a sweep.
    """

    def __init__(self, lm: LoadedModel, *, after: str | None = None, expose: bool = False,
                 mix: bool = False, noise: bool = False, providers=None, threads: int | None = None,
                 spin: bool = True, arena="own"):
        self.lm = lm
        self.after = after
        #: Rows per onnxruntime run that keep the model's largest tensor within the budget.
        self.max_rows = runtime_rows(lm.source, 1 << 40) if lm.source is not None else 1 << 40
        model = suffix(lm, after) if after else instrument(lm, expose=expose, mix=mix, noise=noise)
        self.session = make_session(model, providers=providers, threads=threads, spin=spin, arena=arena)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.data_input = io_name(after, "post_in") if after else lm.input_name
        self.identity = {}
        for lay in lm.layers:
            if io_name(lay.name, "mask") in self.input_names:
                self.identity[io_name(lay.name, "mask")] = np.ones((1, *mask_shape(lay)), np.float32)
                self.identity[io_name(lay.name, "offset")] = np.zeros((1, *mask_shape(lay)), np.float32)
            if io_name(lay.name, "noise") in self.input_names:
                self.identity[io_name(lay.name, "noise")] = np.zeros((1, *lay.shape), np.float32)
            if io_name(lay.name, "mix") in self.input_names:
                self.identity[io_name(lay.name, "mix")] = np.zeros(mix_shape(lay), np.float32)

    def intervention_feeds(self, layer: UnitLayer, mask: np.ndarray, offset: np.ndarray) -> dict:
        """Feeds for one layer from per-unit arrays ``mask``/``offset`` of shape [U] or [B, U]
        (conv: per channel; or the full mask shape for per-position interventions)."""
        mask = np.asarray(mask, np.float32)
        offset = np.asarray(offset, np.float32)
        if mask.ndim <= 2:
            mask = mask.reshape(-1, *mask_shape(layer))
            offset = offset.reshape(-1, *mask_shape(layer))
        return {io_name(layer.name, "mask"): mask, io_name(layer.name, "offset"): offset}

    def replacement_feeds(self, layer: UnitLayer, units, constants) -> dict:
        """Feeds replacing the post-activation of ``units`` (indices) of ``layer`` by
        ``constants`` (one per listed unit): mask 0 and offset c there, identity elsewhere."""
        mask = np.ones(layer.units, np.float32)
        offset = np.zeros(layer.units, np.float32)
        mask[units] = 0.0
        offset[units] = constants
        return self.intervention_feeds(layer, mask, offset)

    def noise_feeds(self, rng: np.random.Generator, n: int, beta: float) -> dict:
        """N(0, beta^2) draws for every ``L:noise`` input, float32 ``[n, *layer.shape]``, from
        ``rng`` (layers in model order, so a seed reproduces them). Empty when beta = 0.

        Raises
        ------
        ModelError
            The runner was built without ``noise=True``.
        """
        names = [lay for lay in self.lm.layers if io_name(lay.name, "noise") in self.input_names]
        if not names and any(not lay.is_output for lay in self.lm.layers):
            raise ModelError("this runner has no noise inputs; build it with noise=True")
        if beta == 0:
            return {}
        return {io_name(lay.name, "noise"): (beta * rng.standard_normal((n, *lay.shape))).astype(np.float32)
                for lay in names}

    def plan_feeds(self, plan) -> dict:
        """Feeds that apply a :class:`~infoprobe.plan.PruningPlan` without removing anything:
        each removed unit j becomes ``sum_k a_jk t_k + c_j`` (mask 0, offset c, and the
        ``L:mix`` matrix for affine terms). The model must be built with ``mix=True`` when a
        plan has terms.

        Raises
        ------
        PlanError
            The plan has affine terms but the runner has no ``L:mix`` inputs.
        """
        feeds = {}
        for name, lp in plan.layers.items():
            lay = self.lm.layer(name)
            feeds.update(self.replacement_feeds(lay, lp.remove, lp.constant))
            if not lp.is_constant:
                key = io_name(name, "mix")
                if key not in self.input_names:
                    raise PlanError(f"layer {name!r} of the plan has affine terms; build the Runner with mix=True")
                p = lp.replacement_matrix().astype(np.float32)
                feeds[key] = np.ascontiguousarray(mix_feed(lay, p))
        return feeds

    def run(self, x: np.ndarray, *, feeds: dict | None = None, outputs=None,
            batch_size: int = 4096) -> dict:
        """Run on ``x`` in batches of ``batch_size`` rows and concatenate the outputs.

        Parameters
        ----------
        x : float32 [N, ...] or Inputs
            The model input (:func:`infoprobe.data.model_inputs`: an :class:`~infoprobe.data.Inputs`
            for a model with several inputs), or for a suffix runner the layer's post-activation.
        batch_size : int
            Rows per onnxruntime call, lowered to :attr:`max_rows` (the memory budget).
        feeds : dict, optional
            Mask/offset arrays by input name. Arrays whose first dimension is N are sliced
            with the batch; arrays with first dimension 1 are broadcast.
        outputs : list of str, optional
            Output names (default: all).

        Returns
        -------
        dict of name -> ndarray [N, ...]
        """
        feeds = dict(self.identity, **(feeds or {}))
        unknown = set(feeds) - set(self.input_names)
        if unknown:
            raise ModelError(f"unknown model inputs {sorted(unknown)}")
        outputs = list(outputs or self.output_names)
        n = len(x)
        if n == 0:
            raise DataError("no samples to run the model on")
        batch_size = max(1, min(batch_size, self.max_rows))
        parts = {o: [] for o in outputs}
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            f = feeds_of(self.data_input, x[start:stop])
            for k, v in feeds.items():
                f[k] = v[start:stop] if v.shape[0] == n else v  # per-row arrays follow the batch
            try:
                res = self.session.run(outputs, f)
            except Exception as exc:
                raise ort_error(exc, f"running {self.lm.path.name}") from None
            for o, r in zip(outputs, res):
                parts[o].append(r)
        # a single batch is returned as is: no copy on the hot path of a sweep
        return {o: p[0] if len(p) == 1 else np.concatenate(p) for o, p in parts.items()}


def default_threads() -> int | None:
    """Intra-op thread count from ``INFOPROBE_THREADS`` (unset: onnxruntime's default)."""
    v = os.environ.get("INFOPROBE_THREADS")
    return int(v) if v else None
