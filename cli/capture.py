"""``infoprobe capture``: a model's activations over a data set, into an HDF5 store."""
from __future__ import annotations

from pathlib import Path

import click

from .options import announcer, csv_list, data_options, load, max_size_option, progress_option, read_data, with_options


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@with_options(data_options())
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Store to write (.h5).")
@click.option("--layers", default=None, help="Comma-separated unit layers (default: all).")
@click.option("--batch-size", default=512, show_default=True, type=int,
              help="Samples per onnxruntime run (e.g. --batch-size 64), lowered so that a batch -- its inputs, every "
                   "value the model computes for it and the activations copied out -- fits a quarter of "
                   "--max-memory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store (kept until the new one is complete).")
@click.option("--full-maps", is_flag=True,
              help="Store every position of conv and token sites (default: each unit's mean over positions per sample, "
                   "padding tokens left out).")
@click.option("--float16", is_flag=True, help="Store activations as float16 (half the size).")
@click.option("--max-store-size", default=None, metavar="SIZE", envvar="INFOPROBE_MAX_STORE_SIZE",
              help="Refuse to write a store larger than this (default 1G; env INFOPROBE_MAX_STORE_SIZE).")
@max_size_option
@progress_option
def capture(model, data_path, split, scale, x_key, y_key, limit, out, layers, batch_size, overwrite, full_maps,
            float16, max_model_size, progress):
    """Run MODEL over a data set and store every unit site's activations in HDF5.

    Pre- and post-activations, labels, and each affine layer's incoming weights and bias are
    written. Conv and token sites are stored as each unit's mean over its positions per sample
    (padding tokens of an attention_mask left out); --full-maps keeps every position. The expected
    size of the store is printed first; a store over --max-store-size or over the disk's free
    space is refused before anything runs. Memory: one batch at a time (--batch-size, lowered
    to fit --max-memory), without onnxruntime's memory arena, so that nothing of a batch stays
    while the next one runs. The store appears under
    --out only when complete: an interrupted capture keeps OUT.partial and resumes where it
    stopped when run again; one capture at a time writes a given --out.

    \b
    Examples:
      infoprobe capture model.onnx --data mnist.npz --split validation --out acts.h5
      infoprobe capture cnn.onnx --data fashion.npz --split test --limit 1000 --layers conv2,fc1 \\
          --full-maps --max-store-size 4G --out acts.h5
      infoprobe capture encoder.onnx --data tokens.npz --x-key input_ids,attention_mask --out acts.h5
      infoprobe capture resnet18.onnx --data images/ --image-size 224 --max-memory 1G --out acts.h5
    """
    from infoprobe.analyses.capture import capture as run

    data = read_data(data_path, split, x_key, y_key, limit)
    lm = load(model, max_model_size)
    names = csv_list(layers)
    path = run(lm, data, out, layers=names, batch_size=batch_size, scale=scale, overwrite=overwrite,
               progress=progress, notify=announcer(progress), positions="full" if full_maps else "mean",
               dtype="float16" if float16 else "float32")
    click.echo(f"wrote {path} ({len(data)} samples, {len(names or lm.layers)} layers)")
