"""Capture the activations of a model's unit layers over a data set into a store."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..data import Dataset, prepare_inputs, resolve_scale
from ..errors import DataError
from ..model import LoadedModel, load_model
from ..rewrite import io_name
from ..runner import Runner, default_threads
from ..store import StoreWriter


def capture(model, data: Dataset, out, *, layers=None, batch_size: int = 512, scale="auto",
            overwrite: bool = False, progress: bool = True, providers=None) -> Path:
    """Run ``model`` over ``data`` and write every unit layer's activations to an HDF5 store.

    Parameters
    ----------
    model : LoadedModel or path-like
    data : Dataset
        From :func:`infoprobe.data.load_data`; ``x`` [N, ...] is scaled by ``scale`` and
        reshaped to the model's input batch by batch.
    out : path-like
        Store to write (schema of :mod:`infoprobe.store`). An interrupted capture of the
        same model, data, split and scale resumes from the rows already written.
    layers : list of str, optional
        Unit layers to store (default: all).
    batch_size : int
    scale : "auto" or float
        Input multiplier; ``"auto"`` is 1/255 for uint8 data.
    overwrite : bool
        Replace an existing store at ``out`` (kept until the new one is complete).

    Returns
    -------
    Path of the complete store.

    Raises
    ------
    ModelError, DataError, OutputExistsError, StoreError
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    names = [lay.name for lay in lm.layers] if layers is None else [lm.layer(n).name for n in layers]
    if batch_size < 1:
        raise DataError("batch size must be at least 1")
    factor = resolve_scale(data.x, scale)
    prepare_inputs(data.x[:1], lm.input_shape, factor, input_name=lm.input_name)  # fail fast
    runner = Runner(lm, expose=True, providers=providers, threads=default_threads())
    n_out = runner.session.get_outputs()[runner.output_names.index(lm.output_name)].shape[-1]
    if not isinstance(n_out, int):
        n_out = runner.run(prepare_inputs(data.x[:1], lm.input_shape, factor),
                           outputs=[lm.output_name])[lm.output_name].shape[-1]
    specs = []
    for n in names:
        lay = lm.layer(n)
        w, b = lm.weights(lay)
        specs.append(dict(lay.to_dict(), weight=w, bias=b))
    fingerprint = json.dumps({"model": lm.sha256, "data": data.sha256, "split": data.split,
                              "n": len(data), "scale": factor, "layers": names})
    writer = StoreWriter(out, n_rows=len(data), layers=specs, n_outputs=int(n_out), labels=data.y,
                         index=data.index, overwrite=overwrite,
                         attrs=dict(source="onnx", model_sha256=lm.sha256, fingerprint=fingerprint,
                                    model_file=lm.path.name, data_sha256=data.sha256,
                                    data_file=data.path.name, data_split=data.split, input_scale=factor))
    wanted = [io_name(n, r) for n in names for r in ("pre", "post")] + [lm.output_name]
    try:
        start = writer.rows_written
        with tqdm(total=len(data), initial=start, unit="sample", desc="capture",
                  disable=not progress) as bar:
            while start < len(data):
                stop = min(start + batch_size, len(data))
                x = prepare_inputs(data.x[start:stop], lm.input_shape, factor, input_name=lm.input_name)
                res = runner.run(x, outputs=wanted, batch_size=batch_size)
                blocks = {f"layers/{n}/{r}": res[io_name(n, r)] for n in names for r in ("pre", "post")}
                blocks["outputs/logits"] = res[lm.output_name].reshape(stop - start, -1)
                writer.write(start, blocks)
                bar.update(stop - start)
                start = stop
        return writer.finish()
    finally:
        writer.close()
