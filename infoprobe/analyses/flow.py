"""Information flow: I(X;T_l) in noisy networks by sample propagation, binned entropy and
pairwise distances of representations, over training checkpoints.

Source: Goldfeld et al., "Estimating Information Flow in Deep Neural Networks" (ICML 2019).
The noisy network (Section 2) is any ONNX model whose hidden unit layers get i.i.d.
N(0, beta^2) noise on their outputs, T_l = f_l(T_{l-1}) + Z_l, through the ``L:noise`` inputs
of the rewritten graph (DESIGN.md); the output layer gets none. The sample-propagation
estimator (Section 3.1, eq. 1) is

    I_SP = h(p_hat_{S_l} * phi_beta) - (1/n) sum_x h(p_hat_{S_l^(x)} * phi_beta),

with S_l = f_l(T_{l-1}) collected by feeding each input once (the first of its draws) and
``n_samples`` times with fresh noise (the conditional samples); every entropy is a Gaussian
mixture's, computed by Monte Carlo integration
(:func:`~infoprobe.estimators.mixture.mixture_entropy`). Layers fed by the input alone have
S_l deterministic given x, so their conditional entropy is exactly (d/2) log(2 pi e beta^2)
(footnote 3). For beta = 0, I(X;T_l) is constant or infinite (Section 1): only the
clustering measures are computed -- H(Bin(T_l)) of layers and units (Section 5.1) and
within- against between-class pairwise distances (Figs. 6, 8).

:func:`flow_series` can keep each finished checkpoint in a resume folder (one JSON file per
checkpoint with a fingerprint of its inputs and parameters), so an interrupted series restarts
from the checkpoints already done and gives exactly the numbers of an uninterrupted run: every
checkpoint draws its noise and Monte Carlo samples from the same ``seed``, independently of
the others.

The position of each checkpoint in training (:func:`checkpoint_axis`) is an epoch or a step
count only where it is known: given (``epochs``), in the model's metadata (``epoch``,
``step``), or in the file names (``szt_e0010.onnx``: epoch 10; ``toy_tanh_k000046.onnx``: step
46); otherwise the checkpoints are numbered in training order (``checkpoint_index``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import shutil
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..arrays import namespace
from ..data import Dataset, Inputs, model_inputs, repeat_rows, resolve_scale, row_bytes
from ..errors import ConfigError
from ..limits import rows_within
from ..estimators.mixture import binned_entropy, gaussian_entropy_isotropic, mixture_entropy
from ..model import DEFAULT_MAX_BYTES, LoadedModel, load_model, sha256_file
from ..parallel import map_tasks, portable
from ..report import AXIS_LABELS
from ..results import (Tables, after_commit, atomic_write_bytes, check_outputs, keep_on_interrupt, plain,
                       provenance, write_table)
from ..rewrite import io_name
from ..runner import Runner, default_threads

LN2 = math.log(2.0)

#: Result tables of :meth:`FlowSeries.save`, each written as ``.csv`` and ``.json``.
TABLES = ("flow", "unit_trends", "trend_summary", "distances", "units")
#: Folder inside a results folder where :func:`flow_study` keeps finished checkpoints.
PARTIAL_DIR = ".flow-partial"
#: Version of the resume files' layout; files of another version are recomputed.
PARTIAL_FORMAT = 2
#: Keys of an ONNX model's metadata that give its position in training: key -> axis.
METADATA_AXES = {"epoch": "epoch", "step": "step", "global_step": "step"}
#: File-name endings that give a checkpoint's position in training: axis -> pattern of the
#: stem (``szt_e0010``, ``run1_epoch-5``: epochs; ``toy_tanh_k000046``, ``ckpt_step1200``: steps).
NAME_AXES = {"epoch": re.compile(r"(?:^|[^a-z])(?:e|ep|epoch)[_-]?(\d+)$", re.IGNORECASE),
             "step": re.compile(r"(?:^|[^a-z])(?:k|it|iter|step)[_-]?(\d+)$", re.IGNORECASE)}

#: Explanation printed for beta = 0 (Goldfeld et al., Section 1).
DETERMINISTIC_NOTE = (
    "beta = 0: in a deterministic network I(X;T_l) does not depend on the weights -- it is "
    "H(X) for discrete inputs and infinite for continuous ones with strictly monotone "
    "activations -- so it is not estimated. The binned entropy H(Bin(T_l)) and the pairwise "
    "distances measure how the representations cluster instead; pass beta > 0 (--beta) to analyse "
    "the noisy network.")


def default_bin_size(beta: float) -> float:
    """10 beta, the paper's choice for noisy networks (Fig. 5); 0.1 for beta = 0."""
    return 10 * beta if beta > 0 else 0.1


@dataclass
class FlowResult:
    """The analyses of one model (one checkpoint).

    ``layers``: one row per hidden layer (``mi``, ``mi_se``, ``h_t``, ``h_t_se``,
    ``h_t_given_x``, ``h_t_given_x_se``, in ``unit``; ``binned_entropy`` in bits, ``bin_size``;
    the MI columns are None for beta = 0). ``units``: per-unit binned entropies (bits).
    ``distances``: histogram rows (layer, kind = within/between, bin edges, density).
    ``meta["model_metadata"]``, when the model's metadata has them: its :data:`METADATA_AXES`
    entries (text), the checkpoint's position in training.
    """

    source: str
    beta: float
    layers: list
    units: list
    distances: list
    meta: dict = field(default_factory=dict)


def _pairwise_histograms(t: np.ndarray, y, layer: str, *, max_points: int, bins: int, rng) -> list:
    from scipy.spatial.distance import pdist

    n = len(t)
    pick = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    t = t[pick].astype(np.float64)
    dist = pdist(t)
    if y is None:
        kinds = {"all": dist}
    else:
        yy = np.asarray(y)[pick]
        i, j = np.triu_indices(len(pick), 1)
        same = yy[i] == yy[j]
        kinds = {"within": dist[same], "between": dist[~same]}
    hi = float(dist.max()) if len(dist) else 1.0
    edges = np.linspace(0.0, hi if hi > 0 else 1.0, bins + 1)
    rows = []
    for kind, v in kinds.items():
        dens, _ = np.histogram(v, bins=edges, density=len(v) > 0 and hi > 0)
        rows += [{"layer": layer, "kind": kind, "lo": float(a), "hi": float(b), "density": float(p),
                  "pairs": int(len(v))} for a, b, p in zip(edges[:-1], edges[1:], dens)]
    return rows


def information_flow(model, data: Dataset, *, beta: float, n_samples: int = 200, n_mc: int = 100_000,
                     n_mc_conditional: int = 200, layers=None, bin_size: float | None = None,
                     max_points: int = 2000, distance_bins: int = 50, unit: str = "bits",
                     closed_form_first: bool = True, seed: int = 0, device: str = "cpu", scale="auto",
                     batch_size: int = 8192, progress: bool = True) -> FlowResult:
    """I(X;T_l) of every hidden layer of the noisy network, with binned entropies and pairwise
    distances (Goldfeld et al., Sections 3 and 5).

    Parameters
    ----------
    model : LoadedModel or path-like
    data : Dataset
        The inputs X, each an equally likely point (the empirical distribution, as in the
        paper's 4,096 inputs of the SZT task); labels, when present, split the distances.
    beta : float
        Noise standard deviation (>= 0). 0: no MI estimate, clustering measures only.
    n_samples : int
        n_x, noisy draws per input for the conditional entropies.
    n_mc : int
        Monte Carlo draws for the unconditional entropy of each layer.
    n_mc_conditional : int
        Monte Carlo draws for each input's conditional entropy.
    layers : list of str, optional
        Hidden layers (default: all).
    bin_size : float, optional
        Bin side for H(Bin(T_l)) (default :func:`default_bin_size`).
    max_points : int
        Samples (at random) whose pairwise distances are histogrammed.
    unit : {"bits", "nats"}
        Unit of the MI and differential entropies (binned entropies are always in bits).
    closed_form_first : bool
        Use (d/2) log(2 pi e beta^2) for the conditional entropy of layers fed by the input
        alone (exact) instead of sampling it.
    seed : int
        Seeds the noise, the Monte Carlo draws and the subsample.
    device : {"cpu", "cuda"}
        Where the mixture entropies are computed.

    Returns
    -------
    FlowResult

    Raises
    ------
    ConfigError
        beta < 0, unknown unit or layer, n_samples < 2 where a conditional entropy is sampled.
    DataError, ModelError, DeviceError
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    training = {k: v for k, v in lm.ir_model.metadata_props.items() if k in METADATA_AXES}
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta}")
    if unit not in ("bits", "nats"):
        raise ConfigError(f"unit must be bits or nats, got {unit!r}")
    hidden = [lay.name for lay in lm.hidden_layers]
    names = hidden if layers is None else [n for n in hidden if n in set(layers)]
    if layers is not None and len(names) != len(set(layers)):
        bad = sorted(set(layers) - set(hidden))
        raise ConfigError(f"not hidden unit layers of {lm.path.name}: {', '.join(bad)}; its hidden layers are: "
                          + ", ".join(hidden))
    xp = namespace(device)
    bin_size = default_bin_size(beta) if bin_size is None else bin_size
    scale_f = 1.0 if unit == "nats" else 1.0 / LN2
    x = model_inputs(lm, data.x, resolve_scale(data.x, scale))
    n = len(x)
    runner = Runner(lm, expose=True, noise=True, threads=default_threads())
    rng = np.random.default_rng(seed)
    dims = {nm: int(np.prod(lm.layer(nm).shape)) for nm in names}
    first = {nm: not lm.layer(nm).inputs for nm in names}     # fed by the input alone: S deterministic
    sampled = {nm: beta > 0 and not (first[nm] and closed_form_first) for nm in names}
    if any(sampled.values()) and n_samples < 2:
        raise ConfigError("n_samples must be at least 2: a conditional entropy needs several noisy draws per input")
    draws = n_samples if any(sampled.values()) else 1      # one draw per input when no layer needs more
    s_first = {nm: np.empty((n, dims[nm]), np.float32) for nm in names}
    t_first = {nm: np.empty((n, dims[nm]), np.float32) for nm in names}
    h_cond = {nm: np.zeros(n) for nm in names}
    se_cond = {nm: np.zeros(n) for nm in names}
    # inputs per run: their draws, noise feeds, exposed outputs and the values the model computes
    # for them must fit in a quarter of the memory budget (--max-memory)
    noisy = sum(int(np.prod(lay.shape)) for lay in lm.layers if not lay.is_output)
    per_row = 4 * (noisy + sum(dims.values())) + 2 * int((lm.source.runtime_sizes if lm.source else {})
                                                         .get("per_sample_total", 0)) + row_bytes(x)
    rows = rows_within(per_row * draws, max(1, batch_size // draws), share=0.25,
                       what=f"the {draws} noisy draws of one input (n_samples, --samples)")
    block = max(1, rows)
    outs = [io_name(nm, "post") for nm in names]
    bar = tqdm(total=n, desc="flow", unit="input", disable=not progress, leave=False)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        xb = repeat_rows(x[b0:b1], draws)                    # input i's draws are rows i*draws ...
        feeds = runner.noise_feeds(rng, len(xb), beta)
        res = runner.run(xb, feeds=feeds, outputs=outs, batch_size=len(xb))
        for nm in names:
            s = res[io_name(nm, "post")].reshape(b1 - b0, draws, dims[nm])
            s_first[nm][b0:b1] = s[:, 0]
            z = feeds.get(io_name(nm, "noise"))
            t_first[nm][b0:b1] = s[:, 0] + (z.reshape(b1 - b0, draws, dims[nm])[:, 0] if z is not None else 0)
            if sampled[nm]:
                h, se = mixture_entropy(xp.asarray(s), beta, n_mc=n_mc_conditional,
                                        seed=int(rng.integers(2**31)))
                h_cond[nm][b0:b1], se_cond[nm][b0:b1] = h, se
        bar.update(b1 - b0)
    bar.close()
    rows, units, dists = [], [], []
    for nm in names:
        d = dims[nm]
        row = {"layer": nm, "units": d, "beta": beta, "unit": unit}
        if beta > 0:
            h_t, se_t = mixture_entropy(xp.asarray(s_first[nm]), beta, n_mc=n_mc, seed=int(rng.integers(2**31)))
            if first[nm] and closed_form_first:
                hc, sec = gaussian_entropy_isotropic(d, beta), 0.0
            else:
                hc, sec = float(h_cond[nm].mean()), float(np.sqrt((se_cond[nm] ** 2).sum()) / n)
            row.update({"mi": (h_t - hc) * scale_f, "mi_se": math.hypot(se_t, sec) * scale_f,
                        "h_t": h_t * scale_f, "h_t_se": se_t * scale_f, "h_t_given_x": hc * scale_f,
                        "h_t_given_x_se": sec * scale_f, "conditional": "closed form" if first[nm]
                        and closed_form_first else "sampled"})
        else:
            row.update({"mi": None, "mi_se": None})
        row["bin_size"] = bin_size
        row["binned_entropy"] = binned_entropy(t_first[nm], bin_size)
        per_unit = binned_entropy(t_first[nm], bin_size, per_unit=True)
        units += [{"layer": nm, "unit": j, "binned_entropy": float(v)} for j, v in enumerate(per_unit)]
        rows.append(row)
        dists += _pairwise_histograms(t_first[nm], data.y, nm, max_points=max_points, bins=distance_bins, rng=rng)
    params = {"beta": beta, "n_samples": n_samples, "n_mc": n_mc, "n_mc_conditional": n_mc_conditional,
              "bin_size": bin_size, "max_points": max_points, "unit": unit, "closed_form_first": closed_form_first,
              "seed": seed, "layers": layers, "split": data.split}
    meta = provenance({"model": (lm.path, lm.sha256), "data": (data.path, data.sha256)}, params)
    if training:
        meta["model_metadata"] = training
    return FlowResult(str(lm.path), beta, rows, units, dists, meta)


# --------------------------------------------------------------------------- checkpoints

def _number(text):
    """``text`` (a metadata value) as an int or float, or None if it is not a finite number."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return (int(v) if v.is_integer() else v) if math.isfinite(v) else None


def checkpoint_axis(models, *, epochs=None, metadata=None) -> tuple[str, list, str]:
    """Where each checkpoint lies in training: ``(axis, positions, source)``.

    The first rule that applies gives the axis:

    1. ``epochs`` given: ``("epoch", epochs, "given")``.
    2. Every checkpoint's metadata has an entry of :data:`METADATA_AXES` for one axis, each a
       number, all different: ``("epoch" | "step", numbers, "model metadata")``.
    3. Every file name ends in a pattern of :data:`NAME_AXES` of one axis, all numbers
       different (``szt_e0010.onnx``: epoch 10; ``toy_tanh_k000046.onnx``: step 46):
       ``("epoch" | "step", numbers, "file names")``.
    4. Otherwise ``("checkpoint_index", [0, 1, ...], "order")``: the index in training order,
       not an epoch.

    The flow tables name their column after ``axis``; they always hold ``checkpoint_index``.

    Parameters
    ----------
    models : list of LoadedModel or path-like
        The checkpoints, in training order (only their file names are read here).
    epochs : list of float, optional
        Epoch of each checkpoint (``--epochs``).
    metadata : list of dict, optional
        Each checkpoint's :data:`METADATA_AXES` entries of its model metadata (text values),
        as :func:`information_flow` records them in ``meta["model_metadata"]``.

    Returns
    -------
    tuple of (str, list, str)

    Raises
    ------
    ConfigError
        ``epochs`` does not have one value per checkpoint.
    """
    models = list(models)
    n = len(models)
    if epochs is not None:
        epochs = [float(e) for e in epochs]
        if len(epochs) != n:
            raise ConfigError(f"{len(epochs)} epochs for {n} checkpoints")
        return "epoch", epochs, "given"

    def distinct(values):
        return None not in values and len(set(values)) == len(values)

    metadata = list(metadata or [])
    if len(metadata) == n and n:
        keys = [next((k for k in METADATA_AXES if k in (m or {})), None) for m in metadata]
        axes = {METADATA_AXES.get(k) for k in keys}
        if None not in keys and len(axes) == 1:
            values = [_number(m[k]) for m, k in zip(metadata, keys)]
            if distinct(values):
                return axes.pop(), values, "model metadata"
    stems = [Path(m.path if isinstance(m, LoadedModel) else m).stem for m in models]
    for axis, pattern in NAME_AXES.items():
        found = [pattern.search(stem) for stem in stems]
        values = [int(f.group(1)) if f else None for f in found]
        if n and distinct(values):
            return axis, values, "file names"
    return "checkpoint_index", list(range(n)), "order"


@dataclass(repr=False)
class FlowSeries(Tables):
    """:func:`information_flow` over checkpoints of one architecture.

    ``axis`` and ``positions``: where the checkpoints lie in training
    (:func:`checkpoint_axis`: ``"epoch"``, ``"step"`` or ``"checkpoint_index"``).
    ``trajectory``: one row per (checkpoint, layer) with ``checkpoint`` (the model's path),
    ``checkpoint_index`` (from 0, in training order), the ``epoch`` or ``step`` where known,
    and the layer columns; ``unit_trends``: per (layer, unit) the slope of a least-squares
    line of the unit's binned entropy against the axis (bits per epoch, step or checkpoint,
    Section 5.2); ``trend_summary``: per layer the mean and standard deviation of those
    slopes and the fraction that is negative.
    """

    axis: str
    positions: list
    results: list
    trajectory: list
    unit_trends: list
    trend_summary: list
    meta: dict = field(default_factory=dict)

    def tables(self) -> dict:
        return {"flow": self.trajectory, "unit_trends": self.unit_trends, "trend_summary": self.trend_summary}

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """``flow.{csv,json}`` (trajectories), ``unit_trends``, ``trend_summary``,
        ``distances`` (every checkpoint's histograms) and ``units`` (per-unit binned entropy)."""
        outdir = Path(outdir)
        check_outputs([outdir / f"{t}.{e}" for t in TABLES for e in ("csv", "json")], overwrite)
        outdir.mkdir(parents=True, exist_ok=True)
        files = write_table(outdir, "flow", self.trajectory, self.meta)
        if self.unit_trends:
            files += write_table(outdir, "unit_trends", self.unit_trends, self.meta)
            files += write_table(outdir, "trend_summary", self.trend_summary, self.meta)
        files += write_table(outdir, "distances", [dict(self.where(i), **r) for i, res in enumerate(self.results)
                                                   for r in res.distances], self.meta)
        files += write_table(outdir, "units", [dict(self.where(i), **r) for i, res in enumerate(self.results)
                                               for r in res.units], self.meta)
        return files

    def where(self, i: int) -> dict:
        """The columns that place checkpoint ``i`` in training: ``checkpoint_index`` and the
        ``epoch`` or ``step`` where known."""
        return {"checkpoint_index": i} | ({self.axis: self.positions[i]} if self.axis != "checkpoint_index" else {})

    def summary(self) -> str:
        """The trajectories (I(X;T) with its Monte Carlo standard error for beta > 0, and the
        binned entropy, per checkpoint and layer) and the per-unit trends, as text."""
        p = self.meta.get("parameters", {})
        unit, noisy = p.get("unit", "bits"), p.get("beta", 0) > 0
        label = AXIS_LABELS[self.axis]
        head = f"  {label:>10} {'layer':<12} {'units':>5}"
        head += f" {'I(X;T) [' + unit + ']':>16} {'MC s.e.':>8}" if noisy else ""
        lines = [head + f" {'H(Bin(T)) [bits]':>17}"]
        for r in self.trajectory:
            line = f"  {r[self.axis]:>10g} {r['layer']:<12} {r['units']:>5}"
            line += f" {r['mi']:16.4f} {r['mi_se']:8.4f}" if noisy else ""
            lines.append(line + f" {r['binned_entropy']:17.4f}")
        for s in self.trend_summary:
            lines.append(f"  {s['layer']}: per-unit H(Bin) slope {s['mean_slope']:.3g} +/- {s['std_slope']:.3g} "
                         f"bits/{label}, {100 * s['negative_fraction']:.0f}% of units negative")
        return "\n".join(lines)

    def plot(self, outdir) -> list:
        """``flow.png`` (I(X;T_l) with MC error bars and H(Bin(T_l)) against the epoch, step or
        checkpoint, Figs. 1, 5), ``distances.png`` (within/between-class distance histograms at the first, middle
        and last checkpoints, Figs. 6, 8)."""
        from .. import report

        outdir = Path(outdir)
        picks = sorted({0, len(self.results) // 2, len(self.results) - 1})
        return [report.plot_flow(self.trajectory, outdir / "flow.png"),
                report.plot_distances({self.positions[i]: self.results[i].distances for i in picks},
                                      outdir / "distances.png", axis=self.axis)]


#: Parameters of :func:`information_flow`, all of which enter a resume file's fingerprint.
_FLOW_SIGNATURE = inspect.signature(information_flow)


def _exact(v):
    """``v`` with NumPy scalars and arrays as Python numbers and lists (non-finite floats
    kept), so that a JSON round trip gives back the same numbers."""
    if isinstance(v, np.ndarray):
        return [_exact(x) for x in v.tolist()]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_exact(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _exact(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def _data_digest(data: Dataset) -> str:
    """SHA-256 of the selected samples and labels (covers the split, a limit and the keys)."""
    h = hashlib.sha256()
    xs = [data.x]
    if isinstance(data.x, Inputs):      # one array per model input, each named
        xs = list(data.x.arrays.values())
        h.update(";".join(data.x.arrays).encode())
    for a in (*xs, data.y, data.index):
        if a is None:
            h.update(b"none;")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _partial_name(index: int, sha256: str) -> str:
    return f"{index:04d}-{sha256[:16]}.json"


def _read_partial(path: Path, fingerprint: dict, model_path: Path) -> FlowResult | None:
    """The result stored in ``path`` if its fingerprint is ``fingerprint``, else None."""
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("fingerprint") != fingerprint:
            return None
        res = FlowResult(**doc["result"])
        res.meta["inputs"]["model"]["path"] = str(model_path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    res.source = str(model_path)      # the same file (by SHA-256), perhaps reached by another path
    return res


def flow_series(models, data: Dataset, *, epochs=None, progress: bool = True, resume_dir=None, notify=None,
                **kw) -> FlowSeries:
    """:func:`information_flow` of each checkpoint (``models``: ONNX paths or LoadedModels of
    one architecture, in training order), as trajectories (Goldfeld et al., Figs. 1, 5, 7),
    and the per-unit binned-entropy trends (Section 5.2).

    Parameters
    ----------
    models : list of LoadedModel or path-like
    data : Dataset
    epochs : list of float, optional
        Epoch of each checkpoint. Default: the epochs or steps in the models' metadata or
        file names where they give them, else the index in training order
        (:func:`checkpoint_axis`).
    progress : bool
        Show progress bars.
    resume_dir : path-like, optional
        Folder that keeps each finished checkpoint as soon as it is done, as
        ``<index>-<SHA-256 prefix>.json`` (written atomically) holding the
        :class:`FlowResult` and a fingerprint: the model's and data file's SHA-256, the split,
        a digest of the selected samples, every parameter of :func:`information_flow` (with
        its defaults), the checkpoint's index and given epoch, the package version. A checkpoint
        whose file matches is read instead of computed; other files are ignored and
        overwritten. The folder is left in place (the command line removes it once the
        tables are written). Default: nothing is written.
    notify : callable, optional
        Called with one line of text when checkpoints are read from ``resume_dir``.
    **kw
        Passed to :func:`information_flow` (the same seed for every checkpoint, so the noise
        draws are the same, and a checkpoint's numbers do not depend on the others).

    Returns
    -------
    FlowSeries

    Raises
    ------
    ConfigError
        Epochs that do not match the models, or checkpoints with different hidden layers.
    """
    models = list(models)
    if epochs is not None:
        checkpoint_axis(models, epochs=epochs)               # one epoch per checkpoint, before any work
        epochs = [float(e) for e in epochs]
    results = [None] * len(models)
    fingerprint_of = None
    if resume_dir is not None:
        from .. import __version__

        resume_dir = Path(resume_dir)
        bound = _FLOW_SIGNATURE.bind(None, data, **kw)
        bound.apply_defaults()
        params = {k: v for k, v in bound.arguments.items() if k not in ("model", "data", "progress")}
        common = {"format": PARTIAL_FORMAT, "infoprobe": __version__, "data_sha256": data.sha256,
                  "data_split": data.split, "data_content": _data_digest(data), "parameters": params}

        def fingerprint_of(sha256, index):
            given = float(epochs[index] if epochs is not None else index)
            return json.loads(json.dumps(_exact(dict(common, model_sha256=sha256, index=index, epoch=given)),
                                         default=repr))

        for i, m in enumerate(models):
            path = m.path if isinstance(m, LoadedModel) else Path(m)
            try:
                sha = m.sha256 if isinstance(m, LoadedModel) else sha256_file(m)
            except OSError:
                continue                  # information_flow reports the unreadable file
            results[i] = _read_partial(resume_dir / _partial_name(i, sha), fingerprint_of(sha, i), path)
        done = sum(r is not None for r in results)
        if done and notify is not None:
            notify(f"resuming: {done} of {len(models)} checkpoints already done in {resume_dir}")
    todo = [i for i, r in enumerate(results) if r is None]
    bar = tqdm(total=len(models), initial=len(models) - len(todo), desc="checkpoints", unit="model",
               disable=not progress or len(models) < 2, leave=False)

    def done(j, res):
        i = todo[j]
        results[i] = res
        if fingerprint_of is not None:
            sha = res.meta["inputs"]["model"]["sha256"]
            doc = {"fingerprint": fingerprint_of(sha, i), "result": _exact(dataclasses.asdict(res))}
            # at once, not staged with the command's result set: it must outlive an interruption
            atomic_write_bytes(resume_dir / _partial_name(i, sha), json.dumps(doc).encode(), staged=False)
        bar.update(1)

    # every checkpoint draws from the same seed, so the tasks are independent (and may run on Dask)
    map_tasks(information_flow, [((portable(models[i]), data), dict(kw, progress=progress and len(models) < 2))
                                 for i in todo], desc="checkpoints", on_result=done)
    bar.close()
    shape = [[(r["layer"], r["units"]) for r in res.layers] for res in results]
    if any(s != shape[0] for s in shape):
        raise ConfigError("the checkpoints do not share their hidden layers (one architecture is needed)")
    axis, positions, source = checkpoint_axis(models, epochs=epochs,
                                              metadata=[res.meta.get("model_metadata") for res in results])
    series = FlowSeries(axis, positions, results, [], [], [])
    series.trajectory = [{"checkpoint": res.source, **series.where(i), **r} for i, res in enumerate(results)
                         for r in res.layers]
    if len(results) >= 2:
        ep = np.asarray(positions, np.float64)
        for li, (layer, d) in enumerate(shape[0]):
            ent = np.array([[u["binned_entropy"] for u in res.units if u["layer"] == layer] for res in results])
            slopes = np.polyfit(ep, ent, 1)[0] if np.ptp(ep) > 0 else np.zeros(d)
            series.unit_trends += [{"layer": layer, "unit": j, "slope": float(s)}
                                   for j, s in enumerate(np.atleast_1d(slopes))]
            series.trend_summary.append({"layer": layer, "units": d, "mean_slope": float(np.mean(slopes)),
                                         "std_slope": float(np.std(slopes)),
                                         "negative_fraction": float(np.mean(slopes < 0))})
    meta = {k: v for k, v in results[0].meta.items() if k != "model_metadata"}
    meta["inputs"] = {f"model_{i}": {"path": res.source, "sha256": res.meta["inputs"]["model"]["sha256"]}
                      for i, res in enumerate(results)} | {"data": results[0].meta["inputs"]["data"]}
    meta["parameters"] = dict(meta["parameters"], epochs=epochs,
                              checkpoint_axis={"axis": axis, "positions": positions, "from": source})
    series.meta = meta
    return series


# --------------------------------------------------------------------------- the whole workflow

@dataclass
class FlowStudy:
    """What :func:`flow_study` computed (``series``: the first run's; ``runs``: every run's)
    and wrote (``files``); with several runs, ``across``: per checkpoint (``checkpoint_index``,
    and the ``epoch`` or ``step`` when every run has the same), layer and measure (``mi``,
    ``binned_entropy``) the mean, sd, median, range and Student t interval over the runs
    (:func:`infoprobe.stats.across_replicates`)."""

    series: FlowSeries
    files: list
    runs: list = field(default_factory=list)
    across: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The trajectories, the trend summary and the files, as JSON values."""
        doc = {"trajectory": self.series.trajectory, "trend_summary": self.series.trend_summary, "files": self.files}
        if len(self.runs) > 1:
            doc = {"runs": [{"trajectory": r.trajectory, "trend_summary": r.trend_summary} for r in self.runs],
                   "across_runs": self.across, "files": self.files}
        return plain(doc)

    def summary(self) -> str:
        """:meth:`FlowSeries.summary`, or with several runs the mean and sd over them."""
        if len(self.runs) < 2:
            return self.series.summary()
        from ..report import axis_column

        axis = axis_column(self.across)
        lines = [f"mean +/- sd over {len(self.runs)} runs, by {AXIS_LABELS[axis]}"]
        for g in self.across:
            if g["mean"] is None:
                continue
            sd = f" +/- {g['std']:.4f}" if g["std"] is not None else ""
            lines.append(f"  {g[axis]:>10g} {g['layer']:<12} {g['measure']:<15} {g['mean']:.4f}{sd}")
        return "\n".join(lines)


def flow_study(models, data: Dataset, out, *, beta: float, epochs=None, runs: int = 1, overwrite: bool = False,
               plot: bool = True, progress: bool = True, notify=None, note=None,
               max_model_bytes: int = DEFAULT_MAX_BYTES, **kw) -> FlowStudy:
    """The information-flow workflow: :func:`flow_series` of ``models``, resumable, with its
    tables (and plots) written to ``out``.

    The tables are checked before any work (none is replaced unless ``overwrite``). Each
    finished checkpoint is kept in ``out/.flow-partial`` (:data:`PARTIAL_DIR`) until the
    tables are in place, so that the same call after an interruption resumes with the
    checkpoints already done; an interruption reports them
    (:func:`infoprobe.results.keep_on_interrupt`).

    Parameters
    ----------
    models : list of LoadedModel or path-like
        Checkpoints of one architecture, in training order (paths are loaded with
        ``max_model_bytes``).
    data : Dataset
    out : path-like
    beta : float
        Noise standard deviation (:func:`information_flow`).
    epochs : list of float, optional
        Epoch of each checkpoint of a run (default: from the models' metadata or file names
        where they give epochs or steps, else the index in training order:
        :func:`checkpoint_axis`).
    runs : int
        ``models`` are this many training runs of one configuration (other seeds), each with
        the same checkpoints, given run after run. Each run's tables go to ``out/run<i>``;
        ``out`` gets ``flow_runs.{csv,json}`` (every run's trajectory, with its ``run``),
        ``flow_summary.{csv,json}`` (mean, sd, median, range and Student t interval over the
        runs of I(X;T) and H(Bin(T)) per checkpoint and layer: by ``checkpoint_index``, with
        the ``epoch`` or ``step`` when all runs have the same) and ``flow.png`` with the
        runs' spread as bands.
    plot : bool
        Write ``flow.png`` and ``distances.png``.
    notify : callable, optional
        Called with one line when checkpoints are read back from the resume folder.
    note : callable, optional
        Called with :data:`DETERMINISTIC_NOTE` when ``beta`` is 0, before the work starts.
    **kw
        Passed to :func:`information_flow` (``n_samples``, ``n_mc``, ``layers``, ``unit``,
        ``seed``, ``device``, ``scale``, ...).

    Returns
    -------
    FlowStudy

    Raises
    ------
    OutputExistsError, ModelError, DataError, ConfigError
    """
    out = Path(out)
    models = list(models)
    runs = int(runs)
    if runs < 1 or len(models) % runs:
        raise ConfigError(f"{len(models)} checkpoints cannot be split into {runs} runs of equal length")
    per_run = len(models) // runs
    folders = [out] if runs == 1 else [out / f"run{i}" for i in range(runs)]
    tables = [f / f"{t}.{e}" for f in folders for t in TABLES for e in ("csv", "json")]
    if runs > 1:
        tables += [out / f"{t}.{e}" for t in ("flow_runs", "flow_summary") for e in ("csv", "json")]
    check_outputs(tables, overwrite)   # before the work
    if beta == 0 and note is not None:
        note(DETERMINISTIC_NOTE)
    partial = out / PARTIAL_DIR

    def kept():
        done = len(list(partial.rglob("[0-9]*.json"))) if partial.is_dir() else 0
        if not done:
            return "nothing was written (results appear only when complete)"
        return (f"{done} finished checkpoint{'s' if done > 1 else ''} kept in {partial}; run the same command "
                "again to resume")

    keep_on_interrupt(kept)
    loaded = [m if isinstance(m, LoadedModel) else load_model(m, max_bytes=max_model_bytes) for m in models]
    series, files = [], []
    for i, folder in enumerate(folders):
        s = flow_series(loaded[i * per_run:(i + 1) * per_run], data, epochs=epochs, beta=beta, progress=progress,
                        resume_dir=partial if runs == 1 else partial / f"run{i}", notify=notify, **kw)
        files += s.save(folder, overwrite=overwrite)
        if plot:
            files += s.plot(folder)
        series.append(s)
    across = []
    if runs > 1:
        shape = [(r["checkpoint_index"], r["layer"]) for r in series[0].trajectory]
        for i, s in enumerate(series[1:], start=1):
            if [(r["checkpoint_index"], r["layer"]) for r in s.trajectory] != shape:
                raise ConfigError(f"run {i} does not have run 0's layers: runs share one architecture")
        from ..stats import across_replicates

        per = [dict({"run": i}, **r) for i, s in enumerate(series) for r in s.trajectory]
        values = ("mi", "binned_entropy") if beta > 0 else ("binned_entropy",)
        shared = all((s.axis, s.positions) == (series[0].axis, series[0].positions) for s in series)
        by = ("checkpoint_index",) + ((series[0].axis,) if shared and series[0].axis != "checkpoint_index" else ())
        across = across_replicates(per, by=by + ("layer",), values=values)
        meta = dict(series[0].meta)
        meta["inputs"] = {f"run{i}_{k}": v for i, s in enumerate(series) for k, v in s.meta["inputs"].items()
                          if k != "data"} | {"data": series[0].meta["inputs"]["data"]}
        meta["parameters"] = dict(meta["parameters"], runs=runs)
        files += write_table(out, "flow_runs", per, meta)
        files += write_table(out, "flow_summary", across, meta)
        if plot:
            from .. import report

            files.append(report.plot_flow(series[0].trajectory, out / "flow.png", across=across))
    after_commit(lambda: shutil.rmtree(partial, ignore_errors=True))   # once the tables are in place
    return FlowStudy(series[0], files, series, across)
