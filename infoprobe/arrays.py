"""One code path for NumPy and CuPy: choose the array namespace from inputs or a device name."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DeviceError

DEVICES = ("cpu", "cuda")


def namespace(device: str = "cpu"):
    """Return the array-API compatible namespace for ``device``.

    Parameters
    ----------
    device : {"cpu", "cuda"}
        ``"cpu"`` gives NumPy, ``"cuda"`` gives CuPy.

    Raises
    ------
    DeviceError
        Unknown device, or ``"cuda"`` when CuPy or a CUDA device is unavailable. There is no
        silent fallback to the CPU.
    """
    import array_api_compat

    if device == "cpu":
        return array_api_compat.array_namespace(np.empty(0))
    if device == "cuda":
        try:
            import cupy
        except ImportError as exc:
            raise DeviceError(
                "device='cuda' needs CuPy: install it with `pip install 'infoprobe[gpu]'`"
            ) from exc
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise DeviceError("device='cuda' but no CUDA device is visible")
        except cupy.cuda.runtime.CUDARuntimeError as exc:
            raise DeviceError(f"device='cuda' but CUDA is unusable: {exc}") from exc
        return array_api_compat.array_namespace(cupy.empty(0))
    raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


def namespace_of(*arrays: Any):
    """Array namespace of the given arrays (NumPy or CuPy), via ``array_api_compat``."""
    import array_api_compat

    return array_api_compat.array_namespace(*arrays)


def to_numpy(a: Any) -> np.ndarray:
    """Copy an array of any supported backend to host memory as a NumPy array."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # CuPy
    return np.asarray(get() if get is not None else a)
