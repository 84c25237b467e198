"""Capture the activations of a model's unit layers over a data set into a store."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import Dataset, model_inputs, position_mask, resolve_scale
from ..errors import BudgetError, DataError
from ..limits import human, max_store, rows_within
from ..model import LoadedModel, load_model
from ..results import keep_on_interrupt
from ..rewrite import io_name
from ..runner import Runner, default_threads
from ..store import StoreWriter


def store_size(lm: LoadedModel, n_rows: int, layers=None, n_outputs: int | None = None) -> dict:
    """What a capture of ``n_rows`` samples will write, before anything runs.

    Returns
    -------
    dict
        ``bytes`` (the store, uncompressed: pre- and post-activations, logits, labels,
        index, weights), ``per_sample`` (bytes the run produces per sample), ``layers``.
    """
    names = [lay.name for lay in lm.layers] if layers is None else [lm.layer(n).name for n in layers]
    per_layer = {n: 2 * 4 * int(np.prod(lm.layer(n).shape, dtype=np.float64)) for n in names}
    outputs = 4 * (n_outputs if n_outputs is not None else lm.layers[-1].units)
    weights = sum(4 * (lm.layer(n).units * (lm.layer(n).fan_in + 1)) for n in names if lm.layer(n).has_weights)
    per_sample = sum(per_layer.values()) + outputs + 16
    return {"bytes": int(n_rows * per_sample + weights), "per_sample": int(per_sample), "layers": names}


def capture(model, data: Dataset, out, *, layers=None, batch_size: int = 512, scale="auto",
            overwrite: bool = False, progress: bool = True, providers=None, notify=None) -> Path:
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
        Samples per onnxruntime run, lowered when a batch's activations would take more than
        a quarter of the memory budget.
    scale : "auto" or float
        Input multiplier; ``"auto"`` is 1/255 for uint8 data.
    overwrite : bool
        Replace an existing store at ``out`` (kept until the new one is complete).
    notify : callable, optional
        Called with one line announcing the work (samples, layers, expected store size and
        its limit) once the inputs are validated, before anything is written.

    Returns
    -------
    Path of the complete store.

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
    if batch_size < 1:
        raise DataError("batch size must be at least 1")
    factor = resolve_scale(data.x, scale)
    model_inputs(lm, data.x[:1], factor)  # fail fast
    runner = Runner(lm, expose=True, providers=providers, threads=default_threads())
    out_dims = runner.session.get_outputs()[runner.output_names.index(lm.output_name)].shape[1:]
    if not all(isinstance(d, int) for d in out_dims):
        out_dims = runner.run(model_inputs(lm, data.x[:1], factor),
                              outputs=[lm.output_name])[lm.output_name].shape[1:]
    n_out = int(np.prod(out_dims, dtype=np.int64))   # the outputs of each sample, flattened
    size = store_size(lm, len(data), names, int(n_out))
    out = Path(out)
    _check_room(size["bytes"], out)
    if notify is not None:
        notify(f"capture: {len(data):,} samples x {len(names)} layers -> a store of about {human(size['bytes'])} "
               f"(limit {human(max_store())})")
    batch_size = rows_within(size["per_sample"] * 2, batch_size, share=0.25, what="one sample's activations")
    specs = []
    for n in names:
        lay = lm.layer(n)
        w, b = lm.weights(lay) if lay.has_weights else (None, None)
        specs.append(dict(lay.to_dict(), weight=w, bias=b))
    fingerprint = json.dumps({"model": lm.sha256, "data": data.sha256, "split": data.split,
                              "n": len(data), "scale": factor, "layers": names})
    writer = StoreWriter(out, n_rows=len(data), layers=specs, n_outputs=int(n_out), labels=data.y,
                         index=data.index, overwrite=overwrite, mask=position_mask(data.x),
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
                x = model_inputs(lm, data.x[start:stop], factor)
                res = runner.run(x, outputs=wanted, batch_size=batch_size)
                blocks = {f"layers/{n}/{r}": res[io_name(n, r)] for n in names for r in ("pre", "post")}
                blocks["outputs/logits"] = res[lm.output_name].reshape(stop - start, -1)
                writer.write(start, blocks)
                bar.update(stop - start)
                start = stop
        path = writer.finish()
        keep_on_interrupt(None)
        return path
    finally:
        writer.close()


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
