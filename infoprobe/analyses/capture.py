"""Capture the activations of a model's unit layers over a data set into a store."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import Dataset, model_inputs, position_mask, resolve_scale, row_bytes
from ..errors import BudgetError, ConfigError, DataError
from ..limits import human, max_store, rows_within
from ..model import LoadedModel, load_model
from ..positions import per_unit
from ..results import keep_on_interrupt
from ..rewrite import io_name
from ..runner import Runner, default_threads
from ..store import StorePath, StoreWriter


#: How capture stores a site with positions: ``mean`` (one value per unit and sample, the mean
#: over positions, padding left out) or ``full`` (every position: ``--full-maps``).
POSITIONS = ("mean", "full")
#: Element types of stored activations.
DTYPES = ("float32", "float16")


def store_size(lm: LoadedModel, n_rows: int, layers=None, n_outputs: int | None = None, *,
               positions: str = "mean", dtype: str = "float32") -> dict:
    """What a capture of ``n_rows`` samples will write, before anything runs.

    Returns
    -------
    dict
        ``bytes`` (the store, uncompressed: pre- and post-activations, logits, labels,
        index, weights), ``per_sample`` (bytes of activations the run produces per sample,
        float32, before any reduction), ``layers``.
    """
    names = [lay.name for lay in lm.layers] if layers is None else [lm.layer(n).name for n in layers]
    item = np.dtype(dtype).itemsize
    stored = {n: 2 * item * (lm.layer(n).units if positions == "mean" else int(np.prod(lm.layer(n).shape, dtype=np.float64)))
              for n in names}
    produced = sum(2 * 4 * int(np.prod(lm.layer(n).shape, dtype=np.float64)) for n in names)
    outputs = 4 * (n_outputs if n_outputs is not None else lm.layers[-1].units)
    weights = sum(4 * (lm.layer(n).units * (lm.layer(n).fan_in + 1)) for n in names if lm.layer(n).has_weights)
    return {"bytes": int(n_rows * (sum(stored.values()) + outputs + 16) + weights),
            "per_sample": int(produced + outputs + 16), "layers": names}


def run_bytes(lm: LoadedModel, x, size: dict) -> int:
    """Bytes one sample takes while capture runs it: its input as the model reads it, every
    value the model computes for it (:attr:`infoprobe.model.OnnxFile.runtime_sizes`, the
    model's own intermediate values as well as the sites), and the sites' pre- and
    post-activations copied out of onnxruntime (``size["per_sample"]``, :func:`store_size`)
    together with their reduction over positions (a float64 mean of one site at a time).

    Parameters
    ----------
    lm : LoadedModel
    x : array [N, ...] or Inputs
        The data (only its per-sample shape counts).
    size : dict
        :func:`store_size` of the capture.
    """
    computed = int(lm.source.runtime_sizes.get("per_sample_total", 0)) if lm.source is not None else 0
    widest = max((int(np.prod(lay.shape, dtype=np.float64)) for lay in lm.layers), default=0)
    return row_bytes(x) + max(computed, size["per_sample"]) + size["per_sample"] + 8 * widest


def capture(model, data: Dataset, out, *, layers=None, batch_size: int = 512, scale="auto",
            overwrite: bool = False, progress: bool = True, providers=None, notify=None,
            positions: str = "mean", dtype: str = "float32") -> Path:
    """Run ``model`` over ``data`` and write every unit layer's activations to an HDF5 store.

    Parameters
    ----------
    model : LoadedModel or path-like
    data : Dataset
        From :func:`infoprobe.data.load_data`; ``x`` [N, ...] is scaled by ``scale`` and
        reshaped to the model's input batch by batch.
    out : path-like
        Store to write (schema of :mod:`infoprobe.store`). An interrupted capture of the
        same model, data, split and scale resumes from the rows already written. One
        capture at a time writes a given ``out`` (an advisory lock, ``<out>.lock``).
    layers : list of str, optional
        Unit layers to store (default: all).
    batch_size : int
        Samples per onnxruntime run, lowered so that what a batch takes while it runs
        (:func:`run_bytes`) fits a quarter of the memory budget.
    scale : "auto" or float
        Input multiplier; ``"auto"`` is 1/255 for uint8 data.
    overwrite : bool
        Replace an existing store at ``out`` (kept until the new one is complete).
    notify : callable, optional
        Called with one line announcing the work (samples, layers, expected store size and
        its limit) once the inputs are validated, before anything is written.
    positions : {"mean", "full"}
        Sites with positions (conv feature maps, tokens): store each unit's mean over the
        positions per sample (default; padding tokens of an ``attention_mask`` left out:
        :func:`infoprobe.positions.per_unit`), or every position (``"full"``,
        ``--full-maps``: what redundancy needs to take positions as samples).
    dtype : {"float32", "float16"}
        Element type of the stored activations (``--float16`` halves the store; readers
        return float32).

    Returns
    -------
    StorePath
        The path of the complete store, which is also the store, opened when first used
        (``with capture(...) as store:``; see :class:`infoprobe.store.StorePath`).

    Raises
    ------
    ModelError, DataError, OutputExistsError, StoreError
    BudgetError
        The store would exceed the store-size limit (:func:`infoprobe.limits.max_store`,
        ``--max-store-size``) or the free space of its disk, or one sample's activations
        exceed the memory budget.
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    names = [lay.name for lay in lm.layers] if layers is None else [lm.layer(n).name for n in layers]
    if positions not in POSITIONS:
        raise ConfigError(f"positions must be one of {', '.join(POSITIONS)}, not {positions!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if batch_size < 1:
        raise DataError("batch size must be at least 1")
    factor = resolve_scale(data.x, scale)
    model_inputs(lm, data.x[:1], factor)  # fail fast
    # no arena: a batch's tensors are freed when the run ends, and none is rounded up to a power of two
    runner = Runner(lm, expose=True, providers=providers, threads=default_threads(), arena="none")
    out_dims = runner.session.get_outputs()[runner.output_names.index(lm.output_name)].shape[1:]
    if not all(isinstance(d, int) for d in out_dims):
        out_dims = runner.run(model_inputs(lm, data.x[:1], factor),
                              outputs=[lm.output_name])[lm.output_name].shape[1:]
    n_out = int(np.prod(out_dims, dtype=np.int64))   # the outputs of each sample, flattened
    size = store_size(lm, len(data), names, int(n_out), positions=positions, dtype=dtype)
    reduced = {n for n in names if positions == "mean" and lm.layer(n).positions > 1}
    mask = position_mask(data.x, lm.padding)
    masks = {n: mask if n in reduced and mask is not None and lm.layer(n).kind == "token"
             and lm.layer(n).shape[0] == mask.shape[1] else None for n in names}
    out = Path(out)
    _check_room(size["bytes"], out)
    if notify is not None:
        notify(f"capture: {len(data):,} samples x {len(names)} layers -> a store of about {human(size['bytes'])} "
               f"(limit {human(max_store())})")
    batch_size = rows_within(run_bytes(lm, data.x, size), batch_size, share=0.25, what="one sample's activations")
    specs = []
    for n in names:
        lay = lm.layer(n)
        w, b = lm.weights(lay) if lay.has_weights else (None, None)
        spec = dict(lay.to_dict(), weight=w, bias=b, dtype=dtype)
        if n in reduced:   # one value per unit: the mean over positions
            spec.update(shape=(lay.units,), positions="mean", site_shape=list(lay.shape))
        specs.append(spec)
    fingerprint = json.dumps({"model": lm.sha256, "data": data.sha256, "split": data.split,
                              "n": len(data), "scale": factor, "layers": names, "positions": positions,
                              "dtype": dtype})
    writer = StoreWriter(out, n_rows=len(data), layers=specs, n_outputs=int(n_out), labels=data.y,
                         index=data.index, overwrite=overwrite, mask=position_mask(data.x, lm.padding),
                         attrs=dict(source="onnx", model_sha256=lm.sha256, fingerprint=fingerprint,
                                    model_file=lm.path.name, data_sha256=data.sha256,
                                    data_file=data.path.name, data_split=data.split, input_scale=factor))
    if notify is not None and writer.resumed:
        notify(f"capture: resuming {writer.partial}: {writer.rows_written:,} of {len(data):,} samples already written")
    elif notify is not None and writer.restarted:
        notify(f"capture: starting {writer.partial} again: {writer.restarted}")
    keep_on_interrupt(lambda: f"the partial store {writer.partial} keeps {writer.rows_written:,} of "
                              f"{len(data):,} samples; run the same command again to resume")
    wanted = [io_name(n, r) for n in names for r in ("pre", "post")] + [lm.output_name]
    try:
        start = writer.rows_written
        with tqdm(total=len(data), initial=start, unit="sample", desc="capture",
                  disable=not progress) as bar:
            while start < len(data):
                stop = min(start + batch_size, len(data))
                res = runner.run(model_inputs(lm, data.x[start:stop], factor), outputs=wanted,
                                 batch_size=batch_size)
                blocks = {"outputs/logits": res[lm.output_name].reshape(stop - start, -1)}
                for n in names:       # each site's whole block is let go once reduced
                    for r in ("pre", "post"):
                        blocks[f"layers/{n}/{r}"] = _stored(res.pop(io_name(n, r)), lm.layer(n), n in reduced,
                                                            masks[n], start, stop)
                del res
                writer.write(start, blocks)
                del blocks            # not alive while the next batch runs
                bar.update(stop - start)
                start = stop
        path = writer.finish()
        keep_on_interrupt(None)
        return StorePath(path)
    finally:
        writer.close()


def _stored(block, lay, reduce: bool, mask, start: int, stop: int) -> np.ndarray:
    """A block as stored: as run, or each unit's mean over the positions (padding left out)."""
    if not reduce:
        return block
    return per_unit(block, lay.unit_axis, "mean", None if mask is None else mask[start:stop]).astype(np.float32)


def _check_room(nbytes: int, out: Path) -> None:
    """Refuse a store over the store-size limit or over the free space of its disk."""
    limit = max_store()
    if nbytes > limit:
        raise BudgetError(f"the store would take about {human(nbytes)}, over the limit of {human(limit)}; "
                          "capture fewer samples (--limit) or layers (layers=, --layers), or raise the store-size "
                          "budget (infoprobe.limits.budgets(store=...), --max-store-size)")
    folder = out.parent if out.parent.exists() else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise BudgetError(f"the store would take about {human(nbytes)} but {folder} has {human(free)} free")
