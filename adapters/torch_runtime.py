"""PyTorch, imported on first use: the adapters load without it, and say how to install it."""
from __future__ import annotations

from infoprobe.errors import ConfigError


def require_torch():
    """The ``torch`` module.

    Raises
    ------
    ConfigError
        PyTorch is not installed (with the command that installs it).
    """
    try:
        import torch
    except ImportError:
        raise ConfigError("the PyTorch adapter needs PyTorch: pip install 'infoprobe[torch]'") from None
    return torch
