"""One value per unit and sample from a site's activations: the reductions over positions.

A site's activations are a block ``[N, *shape]`` whose unit axis is ``1 + unit_axis``
(:class:`infoprobe.model.UnitLayer`): dense ``[N, U]`` (no positions), conv ``[N, C, H, W]``
(positions after the units), token ``[N, T, U]`` (positions before the units). Every analysis
that needs one value per unit and sample reduces the positions by one documented rule:

- ``mean`` (default): the mean over positions -- the spatial mean of a feature map, the
  "naive solution" of Tax et al. for conv layers, as used by Liu, Amjad & Geiger (2018) for
  unit importance; for tokens the mean over the real (unmasked) tokens;
- ``max``: the largest value over the (unmasked) positions (global max pooling);
- ``first``: position 0 (the ``[CLS]`` token of BERT-style encoders and ViTs);
- ``last``: the last unmasked position (the last token of a causal model);
- ``samples``: every (sample, position) pair becomes one row, so the positions are extra
  samples -- the treatment of conv channels by Casper et al. (2021), Section 4; masked
  positions are dropped.

A *mask* ``[N, P]`` (1 for a real token, 0 for padding, e.g. a BERT model's
``attention_mask``) applies to token sites whose positions are the mask's; padding never
enters a mean, a maximum, ``last`` or the rows of ``samples``.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, DataError

#: Reductions over positions (see the module docstring).
REDUCTIONS = ("mean", "max", "first", "last", "samples")


def units_last(block: np.ndarray, unit_axis: int) -> np.ndarray:
    """The block as ``[N, P, U]``: positions flattened in their order, units last.

    Parameters
    ----------
    block : array [N, *shape]
    unit_axis : int
        Axis of the per-sample shape that holds the units.
    """
    block = np.asarray(block)
    moved = np.moveaxis(block, 1 + unit_axis, -1)
    return moved.reshape(block.shape[0], -1, block.shape[1 + unit_axis])


def per_unit(block: np.ndarray, unit_axis: int = 0, how: str = "mean", mask: np.ndarray | None = None) -> np.ndarray:
    """One value per unit and sample (or per unit and sample x position for ``samples``).

    Parameters
    ----------
    block : array [N, *shape]
        A site's activations (dense blocks ``[N, U]`` are returned as they are).
    unit_axis : int
        Axis of the per-sample shape that holds the units.
    how : {"mean", "max", "first", "last", "samples"}
        The reduction (:data:`REDUCTIONS`).
    mask : array [N, P], optional
        1 where a position is real, 0 where it is padding; P must be the site's positions.

    Returns
    -------
    array [N, U] (``samples``: [rows, U], the unmasked sample x position pairs, sample-major),
    float64 for ``mean``, else the block's dtype.

    Raises
    ------
    ConfigError
        An unknown reduction.
    DataError
        A mask whose shape is not [N, positions], or a sample whose positions are all masked.
    """
    if how not in REDUCTIONS:
        raise ConfigError(f"unknown reduction over positions {how!r}; use one of {', '.join(REDUCTIONS)}")
    block = np.asarray(block)
    if block.ndim == 2:
        return block
    t = units_last(block, unit_axis)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != t.shape[:2]:
            raise DataError(f"a mask of shape {list(mask.shape)} does not match {t.shape[0]} samples x "
                            f"{t.shape[1]} positions")
        keep = mask != 0
        if not keep.any(axis=1).all():
            raise DataError(f"sample {int(np.flatnonzero(~keep.any(axis=1))[0])} has every position masked")
    if how == "first":
        return t[:, 0]
    if how == "last":
        if mask is None:
            return t[:, -1]
        last = t.shape[1] - 1 - np.argmax(keep[:, ::-1], axis=1)
        return t[np.arange(len(t)), last]
    if how == "samples":
        return t.reshape(-1, t.shape[2]) if mask is None else t[keep]
    if mask is None:
        return t.astype(np.float64).mean(axis=1) if how == "mean" else t.max(axis=1)
    if how == "mean":
        w = keep.astype(np.float64)
        return np.einsum("npu,np->nu", t.astype(np.float64), w) / w.sum(axis=1, keepdims=True)
    return np.where(keep[:, :, None], t, -np.inf).max(axis=1).astype(t.dtype)
