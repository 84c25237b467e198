"""Errors a user can cause. The CLI prints their message and exits with status 2."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), at most ``limit`` characters;
    its type's name when it has no message. For the errors infoprobe builds from the failures
    of libraries (onnxruntime, HDF5, NumPy) it calls."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]


class InfoprobeError(Exception):
    """Base class of every error caused by input a user supplied (files, options, data).

    The message says what is wrong and what to do; the command-line interface prints it on
    one line and exits with status 2 instead of showing a traceback.
    """


class ModelError(InfoprobeError):
    """The ONNX model is unreadable, unsafe, invalid, or has no layer infoprobe can analyse."""


class UnsafeModelError(ModelError):
    """The model refers to files outside its folder, through links, or is larger than allowed."""


class NoSuffixError(ModelError):
    """No suffix graph starts at a unit site: later layers also read values computed before it
    (a skip connection around the site), so the whole model must run instead."""


class StoreError(InfoprobeError):
    """The activation store is missing, malformed, incomplete, or not an infoprobe store."""


class DataError(InfoprobeError):
    """Input data cannot be read or does not fit the model (shape, labels, NaN values)."""


class ConfigError(InfoprobeError):
    """An option or parameter is out of range or inconsistent with the inputs."""


class DeviceError(InfoprobeError):
    """The requested compute device is unavailable (e.g. ``device='cuda'`` without CuPy)."""


class OutputExistsError(InfoprobeError):
    """An output file exists and would be overwritten; pass ``overwrite=True`` (``--overwrite``).

    The message speaks the library's terms (``overwrite=True``, another ``out``);
    :meth:`cli_message` gives the command line's (``--overwrite``, another ``--out``).
    """

    def cli_message(self) -> str:
        import re

        return re.sub(r"\bchoose another out\b", "choose another --out", str(self).replace("overwrite=True", "--overwrite"))


class PlanError(InfoprobeError):
    """A pruning plan is malformed, does not fit the model, or cannot be applied exactly."""


class BudgetError(InfoprobeError):
    """The work would exceed a budget (memory, store size); the message names the option that
    raises it (``--max-memory``, ``--max-store-size``)."""

