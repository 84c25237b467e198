"""Budgets: how much memory one command may use and how large a store it may write.

Third-party models, stores and data files declare their own sizes, and a few bytes can
declare terabytes (a compressed HDF5 layer, a zip member, an ``.npy`` header, a shape computed
at run time). infoprobe compares every declared size with a budget *before* it allocates,
and refuses with a one-line :class:`~infoprobe.errors.BudgetError` that names the option
raising the budget.

The budgets hold for the current context (a command, a thread): set them with
:func:`budgets`; the command line sets them from ``--max-memory`` and ``--max-store-size``, or
the environment variables ``INFOPROBE_MAX_MEMORY`` and ``INFOPROBE_MAX_STORE_SIZE``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

from .errors import BudgetError, ConfigError

#: Default memory budget of one command (bytes): the largest array infoprobe reads or builds.
DEFAULT_MAX_MEMORY = 4 * 1024**3
#: Default largest activation store ``capture`` writes (bytes).
DEFAULT_MAX_STORE = 1024**3

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_memory: contextvars.ContextVar = contextvars.ContextVar("infoprobe_max_memory", default=None)
_store: contextvars.ContextVar = contextvars.ContextVar("infoprobe_max_store", default=None)


def parse_size(value) -> int:
    """Bytes from a size such as ``2G``, ``500M``, ``1.5GiB`` or ``1048576`` (powers of 1024).

    Raises
    ------
    ConfigError
        Not a positive size.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        v = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = v[-1] if v and v[-1] in "KMGT" else ""
        try:
            n = int(float(v[: len(v) - len(unit)]) * _UNITS[unit])
        except ValueError:
            raise ConfigError(f"{value!r} is not a size like 2G or 500M") from None
    if n <= 0:
        raise ConfigError(f"{value!r} is not a positive size")
    return n


def _from_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return parse_size(raw) if raw else default


def max_memory() -> int:
    """The memory budget in bytes: :func:`budgets`, else ``INFOPROBE_MAX_MEMORY``, else 4 GiB."""
    v = _memory.get()
    return v if v is not None else _from_env("INFOPROBE_MAX_MEMORY", DEFAULT_MAX_MEMORY)


def max_store() -> int:
    """The largest store ``capture`` writes, in bytes: :func:`budgets`, else
    ``INFOPROBE_MAX_STORE_SIZE``, else 1 GiB."""
    v = _store.get()
    return v if v is not None else _from_env("INFOPROBE_MAX_STORE_SIZE", DEFAULT_MAX_STORE)


@contextlib.contextmanager
def budgets(*, memory=None, store=None):
    """Set the memory budget and the store-size limit (bytes or sizes like ``"8G"``) for the
    code run inside the ``with`` block; ``None`` keeps the current value."""
    tokens = []
    if memory is not None:
        tokens.append((_memory, _memory.set(parse_size(memory))))
    if store is not None:
        tokens.append((_store, _store.set(parse_size(store))))
    try:
        yield
    finally:
        for var, tok in reversed(tokens):
            var.reset(tok)


def human(n: float) -> str:
    """A byte count for messages: ``"3.1 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def require_memory(nbytes: int, what: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when it exceeds the memory budget.

    Raises
    ------
    BudgetError
        ``nbytes`` is larger than :func:`max_memory`; the message says how to raise it.
    """
    limit = max_memory()
    if nbytes > limit:
        raise BudgetError(f"{what} needs {human(nbytes)}, over the memory budget of {human(limit)}; "
                          "raise it with budgets(memory=) (--max-memory, or INFOPROBE_MAX_MEMORY) if the machine has the memory")


def rows_within(per_row: int, n_rows: int, *, share: float = 0.125, what: str = "one sample") -> int:
    """Rows of ``per_row`` bytes that fit in ``share`` of the memory budget (at least 1).

    Raises
    ------
    BudgetError
        A single row does not fit in the share.
    """
    room = int(max_memory() * share)
    if per_row > room:
        raise BudgetError(f"{what} takes {human(per_row)}, more than {share:.0%} of the memory budget of "
                          f"{human(max_memory())}; raise it with budgets(memory=) (--max-memory)")
    return int(max(1, min(n_rows, room // max(1, per_row))))
