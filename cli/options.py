"""Options and helpers shared by the commands: data, output, progress and size options; reading
models and data from the options; printing JSON and the files written."""
from __future__ import annotations

import json
from pathlib import Path

import click

from infoprobe.errors import InfoprobeError
from infoprobe.model import DEFAULT_MAX_BYTES


def size(value: str) -> int:
    """Bytes of a size option (``4G``, ``512M``, ...)."""
    from infoprobe.limits import parse_size

    try:
        return parse_size(value)
    except InfoprobeError as exc:
        raise click.BadParameter(str(exc)) from None


def csv_list(value):
    """A comma-separated option as a list (None when empty)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def numbers(value, param_hint: str):
    """A comma-separated option of numbers as floats (None when empty)."""
    if not value:
        return None
    try:
        return [float(v) for v in csv_list(value)]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of numbers", param_hint=param_hint) from None


def with_options(options):
    """Apply a list of click options to a command, in order."""
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


max_size_option = click.option("--max-model-size", default=str(DEFAULT_MAX_BYTES // 1024**3) + "G",
                               show_default=True, help="Refuse models (with external data) larger than this.")
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress bars on stderr [default: when stderr is a terminal].")
out_dir_option = click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                              help="Folder for results.")
#: Options of every analysis that writes a results folder: seed, plots, overwriting.
result_options = [
    click.option("--seed", default=0, show_default=True, type=int),
    click.option("--plot/--no-plot", default=True, show_default=True),
    click.option("--overwrite", is_flag=True, help="Replace existing result files."),
]

data_details = [
    click.option("--split", default=None, help="Split of the data file: all, train, validation, test or a number."),
    click.option("--scale", default="auto", show_default=True,
                 help="Input multiplier; auto = 1/255 for uint8 data, else 1."),
    click.option("--x-key", default="x", show_default=True,
                 help="Array of samples in the data file; for a model with several inputs, one array per input, "
                      "named after it and comma-separated (e.g. input_ids,attention_mask). Integer inputs are "
                      "passed unscaled; an attention_mask keeps padding tokens out of every reduction."),
    click.option("--y-key", default="y", show_default=True, help="Array of labels in the data file."),
    click.option("--limit", type=int, default=None, help="Use only the first N samples of the split."),
]


def data_options(required=True, help=".npz (x, y, optional split), .npy or .h5 file of samples, or a folder of "
                                    "images (folder/<class>/<image>)."):
    """``--data`` and the options that select and scale its samples."""
    return [
        click.option("--data", "data_path", required=required, type=click.Path(path_type=Path), help=help),
        *data_details,
    ]


def load(path, max_model_size):
    """The ONNX model at ``path``, refused over ``--max-model-size``."""
    from infoprobe.model import load_model

    return load_model(path, max_bytes=size(max_model_size))


def read_data(data_path, split, x_key, y_key, limit):
    """The samples the data options select (None without ``--data``). Models loaded after
    this read their symbolic input dimensions from the data's shapes, so a command reads
    its data before its model."""
    from infoprobe.data import Inputs, load_data
    from infoprobe.model import hint_input_shapes

    if data_path is None:
        return None
    data = load_data(data_path, split=split or "all", x_key=x_key, y_key=y_key, limit=limit)
    # models loaded from now on read symbolic input dimensions (dynamic H, W) from the data
    hint_input_shapes({k: v.shape[1:] for k, v in data.x.arrays.items()} if isinstance(data.x, Inputs)
                      else {None: data.x.shape[1:]})
    return data


def announcer(progress: bool):
    """Where a command announces its work (expected sizes, plans, resumption): stderr, with the
    progress bars; None when they are off, so that a failing command's log is one line."""
    return (lambda line: click.echo(line, err=True)) if progress else None


def to_stderr(text: str) -> None:
    click.echo(text, err=True)


def echo_json(doc, **kw) -> None:
    """Print ``doc`` as indented JSON."""
    click.echo(json.dumps(doc, indent=1, **kw))


def wrote(files) -> None:
    """The last line of a command that wrote files."""
    click.echo("wrote " + ", ".join(str(f) for f in files))


def config_option(config, field: str, *decls, **overrides):
    """A click option backed by a field of an analysis configuration
    (:class:`infoprobe.config.Config`): its default, help text and allowed values come from
    the field, so that a parameter is written once. ``decls`` are the option's flags (the
    field's name is the Python name); ``overrides`` replace any click setting."""
    import dataclasses

    f = next(f for f in dataclasses.fields(config) if f.name == field)
    kw = {"default": f.default, "show_default": True, "help": f.metadata.get("help") or None}
    choices = f.metadata.get("choices")
    if choices:
        kw["type"] = click.Choice(list(choices))
    elif type(f.default) in (int, float):
        kw["type"] = type(f.default)
    kw.update(overrides)
    return click.option(*decls, field, **kw)
