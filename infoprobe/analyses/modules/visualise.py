"""Correlation-based visualisations of sub-clusters (Hod et al. 2021, Section 3.1.1, A.3)."""
from __future__ import annotations

import numpy as np

from ...estimators.correlation import align_signs, spearman_columns
from .lesions import Lesioner, random_units
from .partition import Partition


def image_shape(input_shape: tuple) -> tuple | None:
    """(H, W) of an image input from a model's input shape (batch dimension first): the last
    two dimensions of [N, C, H, W] or [N, H, W], the square root of a flat [N, H*W]; None when
    the input is not an image or its size is symbolic."""
    shape = tuple(input_shape[1:])
    if not shape or any(not isinstance(d, (int, np.integer)) for d in shape):
        return None
    if len(shape) >= 2:
        return int(shape[-2]), int(shape[-1])
    side = int(round(np.sqrt(shape[0])))
    return (side, side) if side * side == shape[0] else None


def correlation_visualisations(lesioner: Lesioner, rows: list, part: Partition, *, n_random: int = 4,
                               iterations: int = 20, seed: int = 0, max_samples: int | None = 10000) -> dict | None:
    """Correlation-based visualisation of sub-clusters (Hod et al., Section 3.1.1, A.3).

    Each unit's visualisation is the Spearman correlation of its post-activation (conv: the
    L1 norm of its feature map) with every input pixel over the test samples; a sub-cluster's
    is the mean of its units' visualisations after :func:`align_signs`; the same is drawn for
    ``n_random`` random sub-clusters of the same size and layer (the paper's Fig. 1). Inputs
    and post-activations are those of the intact model on the lesioner's samples (a seeded
    subset of ``max_samples`` rows), computed chunk by chunk.

    Returns
    -------
    dict or None
        ``image_shape`` (H, W), ``columns`` (``layer/cluster`` labels) and ``images`` float
        [1 + n_random, n_columns, H, W]; None when the input is not an image.
    """
    hw = image_shape(lesioner.lm.input_shape)
    if hw is None or not rows:
        return None
    engine = lesioner.engine
    n = len(engine.x)
    keep = np.arange(n)
    if max_samples is not None and n > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
    x = engine.x[keep]
    pix = spearman_columns(x.reshape(len(x), -1, hw[0] * hw[1]).mean(axis=1))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    acts = {n: [] for n in layers}
    for a, b in engine.chunks():   # the kept samples' activations (conv: L1 norm of each feature map)
        sel = keep[(keep >= a) & (keep < b)] - a
        for n in layers:
            act = engine.activations(n, a, b)[sel]
            if act.ndim > 2:
                act = np.abs(act.reshape(len(act), act.shape[1], -1)).sum(axis=2)
            acts[n].append(act)
    corr = {n: spearman_columns(np.concatenate(acts[n])).T @ pix for n in layers}   # [U, P] per layer
    rng = np.random.default_rng(seed)
    images = np.zeros((1 + n_random, len(rows), *hw))
    for j, r in enumerate(rows):
        pool = np.flatnonzero(part.layer_labels(r["layer"]) >= 0)
        sets = [np.asarray(r["units"])] + random_units(rng, pool, len(r["units"]), n_random)
        for i, units in enumerate(sets):
            images[i, j] = align_signs(corr[r["layer"]][units], iterations).mean(axis=0).reshape(hw)
    return {"image_shape": hw, "columns": [f"{r['layer']}/{r['cluster']}" for r in rows], "images": images}
