"""Configurations: one frozen dataclass per analysis, validated once, recorded whole.

An analysis' parameters are written once, as the fields of its configuration (with their
default, help text and allowed values in the field's metadata). The configuration

- validates itself when it is built (:meth:`Config.check`), raising
  :class:`~infoprobe.errors.ConfigError` in library terms;
- is recorded whole as the result's provenance (:meth:`Config.record`), so that no parameter
  is left out of a result file;
- splits its one ``seed`` into independent random streams, one per named step of the
  analysis (:meth:`Config.streams`), so that two steps never draw the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import ClassVar

import numpy as np

from .errors import ConfigError


def read_json(path, *, max_bytes: int, what: str):
    """The JSON document of an earlier run's result file (``analyze.json``, ``synergy.json``),
    read as untrusted: a regular file (no FIFO or device) of at most ``max_bytes`` bytes, read
    in one go, with no NaN or Infinity constants.

    Parameters
    ----------
    path : path-like
    max_bytes : int
        Largest size accepted, in bytes.
    what : str
        What the file should be, for the messages (e.g. "the plan").

    Returns
    -------
    The parsed document (any JSON value: the caller checks its fields).

    Raises
    ------
    ConfigError
        The file cannot be opened, is not a regular file, is over ``max_bytes`` or is not JSON.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        if st.st_size > max_bytes:
            raise ConfigError(f"{what} {path} is over {max_bytes >> 20} MiB")
        raw = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))[:max_bytes + 1]
    finally:
        os.close(fd)
    try:
        return json.loads(raw, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ConfigError(f"{what} {path} is not JSON") from None


def param(default=dataclasses.MISSING, *, help: str = "", choices=None, what: str | None = None, factory=None):
    """A configuration field with its help text and allowed values (``choices``: for a
    sequence-valued field, every element must be one of them; ``what`` names one value in
    error messages)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "what": what}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def seed_streams(seed: int, steps) -> dict:
    """Independent ``numpy.random.Generator`` streams for the named ``steps`` from one seed.

    The first step draws from ``numpy.random.SeedSequence(seed)`` itself (the stream of
    ``numpy.random.default_rng(seed)``); step k > 0 draws from the (k-1)-th child of
    ``SeedSequence(seed).spawn``. Streams depend on the seed and the step's position in
    ``steps`` only, so a step draws the same numbers whether or not the others run.

    Parameters
    ----------
    seed : int
        A non-negative integer.
    steps : sequence of str

    Returns
    -------
    dict of str -> numpy.random.Generator
    """
    root = np.random.SeedSequence(int(seed))
    children = root.spawn(max(0, len(steps) - 1))
    return {s: np.random.default_rng(root if i == 0 else children[i - 1]) for i, s in enumerate(steps)}


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every analysis configuration.

    Subclasses declare their fields with :func:`param` and name the steps that draw random
    numbers in ``STEPS`` (in a fixed order: see :func:`seed_streams`).
    """

    STEPS: ClassVar[tuple] = ()

    def __post_init__(self):
        for f in dataclasses.fields(self):   # sequences are kept as tuples: a configuration is immutable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is None or value is None:
                continue
            values = value if isinstance(value, (tuple, list)) else (value,)
            for v in values:
                if v not in choices:
                    what = f.metadata.get("what") or f.name
                    raise ConfigError(f"unknown {what} {v!r}; use one of {', '.join(map(str, choices))}")
        if hasattr(self, "seed") and (not isinstance(self.seed, (int, np.integer)) or self.seed < 0):
            raise ConfigError(f"seed must be a non-negative integer; got {self.seed!r}")
        self.check()

    def check(self) -> None:
        """Validate the fields together; raise :class:`~infoprobe.errors.ConfigError`."""

    @classmethod
    def build(cls, config=None, **kwargs):
        """``config`` with ``kwargs`` changed, or a new configuration from ``kwargs``.

        Raises
        ------
        ConfigError
            An unknown parameter or an invalid value.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"unknown parameter {unknown[0]!r} of {cls.__name__}; it has: {', '.join(sorted(names))}")
        if config is None:
            return cls(**kwargs)
        if not isinstance(config, cls):
            raise ConfigError(f"expected a {cls.__name__}, got {type(config).__name__}")
        return dataclasses.replace(config, **kwargs) if kwargs else config

    def record(self) -> dict:
        """Every field, as plain JSON values: the parameters of the result's provenance."""
        from .results import plain

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def streams(self) -> dict:
        """The random stream of each step in ``STEPS`` (:func:`seed_streams` of ``seed``)."""
        return seed_streams(self.seed, self.STEPS)
