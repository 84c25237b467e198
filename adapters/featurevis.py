"""Feature visualisation by input optimisation, and the coherence tests built on it.

Importance-and-coherence paper (Hod et al.), Section 3.1.2 and Appendix A.8; frivolous-units
paper (Casper et al. 2021), Section 5. Needs PyTorch; ONNX models run through
:func:`infoprobe.adapters.onnx_torch.from_onnx`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infoprobe.errors import ConfigError, ModelError
from infoprobe.estimators.images import (fourier_total_variation, set_dispersion, softmax_entropy,
                                         total_variation)

#: Coherence measures: (result key, side of the percentile p value). Right for the score
#: (a true sub-cluster activated more strongly), left for the rest (lower output entropy,
#: activation variance and total variation mean more coherent), as in Hod et al. 3.1.2/A.8.
MEASURES = (("score", "right"), ("entropy", "left"), ("variance", "left"), ("tv", "left"),
            ("tv_fft", "left"))


def _target(model, layer, input_shape, torch):
    """(forward(x) -> (post-activation, logits), per-sample input shape)."""
    from infoprobe.model import LoadedModel

    from .onnx_torch import from_onnx

    if isinstance(model, (str, Path, LoadedModel)):
        model = from_onnx(model)
    lm = getattr(model, "loaded", None)
    if lm is not None:
        lay = lm.layer(layer)
        names = [lay.post_value, lm.output_name]

        def forward(x):
            out = model(x, outputs=names)
            return out[names[0]], out[names[1]]
        shape = tuple(lm.input_shape[1:])
        if any(not isinstance(d, int) for d in shape):
            if input_shape is None:
                raise ConfigError("the model input has symbolic dimensions; pass input_shape")
            shape = tuple(input_shape)
        return model, forward, shape
    mods = dict(model.named_modules())
    if layer not in mods:
        raise ModelError(f"unknown module {layer!r}; name the module whose output is the post-activation")
    if input_shape is None:
        raise ConfigError("pass input_shape (per sample) for a PyTorch model")
    seen = {}

    def hook(_m, _i, out):
        seen["post"] = out

    def forward(x):
        h = mods[layer].register_forward_hook(hook)
        try:
            logits = model(x)
        finally:
            h.remove()
        return seen.pop("post"), logits[0] if isinstance(logits, (list, tuple)) else logits
    return model, forward, tuple(input_shape)


def _image_view(shape: tuple) -> tuple:
    """[C, H, W] view of a per-sample input shape (a flat square input is one channel)."""
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 1:
        side = int(round(np.sqrt(shape[0])))
        if side * side == shape[0]:
            return (1, side, side)
    raise ConfigError(f"input of shape {list(shape)} is not an image; feature visualisation needs one")


def visualise(model, layer: str, unit_sets, *, steps: int = 256, lr: float = 0.05, jitter: int = 2,
              scale: tuple = (0.9, 1.1), pixel_range: tuple = (0.0, 1.0), input_shape=None, seed: int = 0,
              batch_size: int = 64, device=None, progress: bool = True) -> dict:
    """Optimise one input per unit set to maximise the set's mean post-activation.

    The objective of set S is (1/|S|) sum_{j in S} t_j(x), with t_j a conv channel's
    post-activation averaged over positions (the paper's "mean of means"); Adam on the
    pixels directly (pixel parameterisation, no regulariser), each step seeing a randomly
    jittered (shift of up to ``jitter`` pixels) and scaled copy of the image (bilinear
    resampling), pixels clipped to ``pixel_range`` after each step (Hod et al., A.8, after
    Olah et al. 2017's Lucid).

    Parameters
    ----------
    model : path-like, LoadedModel, module from ``from_onnx``, or torch.nn.Module
        For a plain PyTorch module, ``layer`` names the module whose *output* is the
        post-activation (e.g. the ``nn.ReLU`` after a ``Linear``) and ``input_shape`` is needed.
    layer : str
        Unit layer (infoprobe name for ONNX models).
    unit_sets : list of int sequences
        One image is optimised per set.
    steps, lr : int, float
    jitter : int
        Largest random shift, pixels.
    scale : (float, float)
        Range of the random scale factor.
    pixel_range : (float, float)
    input_shape : tuple, optional
        Per-sample input shape, when the model's is not fixed.
    seed : int
    batch_size : int
        Images optimised together.
    device : str, optional

    Returns
    -------
    dict of arrays [B] (B = number of sets) and ``images`` [B, C, H, W]:
        ``score`` (objective on the final image, the activation's units), ``entropy``
        (softmax output, bits), ``variance`` and ``cv`` (over the set's units), ``tv`` and
        ``tv_fft`` (total variation of the image and of its Fourier magnitude).

    Raises
    ------
    ConfigError
        PyTorch missing, a non-image input, empty sets, bad options.
    ModelError
        Unknown layer, or a unit index out of range.
    """
    from .torch_runtime import require_torch

    torch = require_torch()
    F = torch.nn.functional
    if steps < 0 or lr <= 0 or batch_size < 1 or jitter < 0 or not (0 < scale[0] <= scale[1]):
        raise ConfigError("need steps >= 0, lr > 0, batch_size >= 1, jitter >= 0, 0 < scale[0] <= scale[1]")
    sets = [np.asarray(list(s), np.int64) for s in unit_sets]
    if not sets or any(len(s) == 0 for s in sets):
        raise ConfigError("give at least one non-empty unit set")
    module, forward, shape = _target(model, layer, input_shape, torch)
    view = _image_view(shape)
    p = next(iter(module.buffers()), None)
    p = p if p is not None else next(iter(module.parameters()), None)
    device = device or (p.device if p is not None else "cpu")
    modes = {m: m.training for m in module.modules()}
    lo, hi = float(pixel_range[0]), float(pixel_range[1])
    gen = torch.Generator().manual_seed(seed)
    out = {k: [] for k in ("images", "score", "entropy", "variance", "cv")}

    def reduce(post):
        return post.flatten(2).mean(-1) if post.dim() > 2 else post

    from tqdm.auto import tqdm

    module.eval()
    try:
        n_units = None
        for start in tqdm(range(0, len(sets), batch_size), desc=f"visualise {layer}", unit="batch",
                          disable=not progress):
            chunk = sets[start:start + batch_size]
            b = len(chunk)
            img = (0.5 * (lo + hi) + 0.01 * (hi - lo) * torch.randn((b, *view), generator=gen)).to(device)
            img.requires_grad_(True)
            if n_units is None:
                with torch.no_grad():
                    n_units = reduce(forward(img[:1].reshape(1, *shape))[0]).shape[1]
                bad = [s for s in sets if s.min() < 0 or s.max() >= n_units]
                if bad:
                    raise ModelError(f"layer {layer!r} has {n_units} units; got sets with {bad[0].tolist()}")
            weights = torch.zeros((b, n_units), device=device)
            for i, s in enumerate(chunk):
                weights[i, torch.as_tensor(s)] = 1.0 / len(s)
            opt = torch.optim.Adam([img], lr=lr)
            for _ in range(steps):
                s = torch.empty(b).uniform_(scale[0], scale[1], generator=gen)
                shift = torch.randint(-jitter, jitter + 1, (b, 2), generator=gen).float()
                theta = torch.zeros((b, 2, 3))
                theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / s
                theta[:, 0, 2] = 2 * shift[:, 0] / view[2]
                theta[:, 1, 2] = 2 * shift[:, 1] / view[1]
                grid = F.affine_grid(theta.to(device), [b, *view], align_corners=False)
                moved = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
                post, _ = forward(moved.reshape(b, *shape))
                loss = -(reduce(post) * weights).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    img.clamp_(lo, hi)
            with torch.no_grad():
                post, logits = forward(img.reshape(b, *shape))
                acts = reduce(post).cpu().double().numpy()
                out["score"].append((acts * weights.cpu().double().numpy()).sum(1))
                out["entropy"].append(softmax_entropy(logits.cpu().double().numpy()))
                for i, s in enumerate(chunk):
                    var, cv = set_dispersion(acts[i:i + 1, s])
                    out["variance"].append(var)
                    out["cv"].append(cv)
                out["images"].append(img.detach().cpu().numpy())
    finally:
        for m, training in modes.items():
            m.train(training)
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["tv"] = total_variation(res["images"])
    res["tv_fft"] = fourier_total_variation(res["images"])
    return res


@dataclass
class CoherenceResult:
    """Input- and output-coherence tests of sub-clusters against random ones.

    ``rows``: one per tested sub-cluster: ``layer``, ``cluster``, ``size``, each measure of
    the true sub-cluster's image, the mean over its random ones (``<measure>_random``) and
    the percentile p value (``p_<measure>``). ``summary``: per measure, ``fisher_p`` and
    ``chi2_p`` over the network's sub-clusters (``n`` of them); the row ``cv`` has instead the
    quartiles (``q1``, ``median``, ``q3``) of the true sub-clusters' coefficients of variation. ``images``: {(layer, cluster):
    [1 + n_random, C, H, W]}, the true sub-cluster first.
    """
    rows: list
    summary: list
    images: dict = field(repr=False, default_factory=dict)
    meta: dict = field(default_factory=dict)

    def plot(self, outdir) -> list:
        """``coherence.png``: one row per sub-cluster, true image beside the random ones."""
        from infoprobe.report import plot_feature_grid

        return [plot_feature_grid(self.images, self.rows, Path(outdir) / "coherence.png")]

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write coherence.csv/json and coherence_summary.csv/json."""
        from infoprobe.results import check_outputs, write_table

        outdir = Path(outdir)
        names = [outdir / f"{n}.{e}" for n in ("coherence", "coherence_summary") for e in ("csv", "json")]
        check_outputs(names, overwrite)
        return write_table(outdir, "coherence", self.rows, self.meta) + \
            write_table(outdir, "coherence_summary", self.summary, self.meta)


def coherence(model, *, partition=None, n_clusters: int = 12, n_random: int = 9, min_size: int = 3,
              max_fraction: float = 0.8, layers=None, seed: int = 0, progress: bool = True,
              **visualise_options) -> CoherenceResult:
    """Input- and output-coherence of a network's sub-clusters by feature visualisation
    (Hod et al., Section 3.1.2, Appendix A.4 and A.8).

    Every sub-cluster of the spectral partition with at least ``min_size`` units and at most
    ``max_fraction`` of its layer's units (those still in the weight graph) is visualised
    beside ``n_random`` random sets of the same size drawn from the same layer. Percentile p
    values (:func:`infoprobe.stats.percentile_p`, the true value counted among the draws):
    right-sided for the score (input coherence), left-sided for the softmax entropy (output
    coherence), the activation variance and the total variations. They are combined over the
    network by Fisher's method and the chi-squared test of their histogram
    (:func:`infoprobe.stats.fisher_combined`, :func:`infoprobe.stats.chi2_ranks`).

    Parameters
    ----------
    model : path-like or LoadedModel (ONNX)
    partition : Partition, optional
        From :func:`infoprobe.analyses.modules.partition`; by default the model's weight graph
        is partitioned into ``n_clusters`` clusters (seed ``seed``).
    n_random, min_size, max_fraction : see above (9, 3 and 0.8 in the paper)
    layers : list of str, optional
        Hidden layers to test (default: all).
    seed : int
        Seeds the partition, the random sets and the optimisation.
    **visualise_options
        Passed to :func:`visualise` (``steps``, ``lr``, ``jitter``, ``scale``, ...).

    Returns
    -------
    CoherenceResult

    Raises
    ------
    ConfigError
        No sub-cluster qualifies, or bad options.
    ModelError, ConfigError
        As :func:`visualise`.
    """
    from infoprobe.analyses.modules import partition as spectral
    from infoprobe.graph import graph_from_model
    from infoprobe.model import LoadedModel, load_model
    from infoprobe.stats import chi2_ranks, fisher_combined, percentile_p

    from .onnx_torch import from_onnx

    if n_random < 1 or min_size < 1 or not 0 < max_fraction <= 1:
        raise ConfigError("need n_random >= 1, min_size >= 1 and 0 < max_fraction <= 1")
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    part = partition if partition is not None else spectral(graph_from_model(lm), n_clusters, seed=seed)
    rng = np.random.default_rng(seed)
    module = from_onnx(lm)
    tests = [sc for sc in part.sub_clusters()
             if (layers is None or sc["layer"] in layers)
             and min_size <= sc["size"] <= max_fraction * sc["in_graph"]]
    if not tests:
        raise ConfigError(f"no sub-cluster has between {min_size} units and {max_fraction:.0%} of its layer")
    rows, images = [], {}
    for lay in dict.fromkeys(sc["layer"] for sc in tests):
        mine = [sc for sc in tests if sc["layer"] == lay]
        pool = np.flatnonzero(part.layer_labels(lay) >= 0)
        sets = []
        for sc in mine:
            sets.append(sc["units"])
            sets.extend(np.sort(rng.choice(pool, sc["size"], replace=False)) for _ in range(n_random))
        vis = visualise(module, lay, sets, seed=seed, progress=progress, **visualise_options)
        for i, sc in enumerate(mine):
            sl = slice(i * (n_random + 1), (i + 1) * (n_random + 1))
            row = {"layer": lay, "cluster": sc["cluster"], "size": sc["size"]}
            for key, side in MEASURES + (("cv", None),):
                v = vis[key][sl]
                row[key] = float(v[0])
                row[f"{key}_random"] = float(np.nanmean(v[1:])) if np.isfinite(v[1:]).any() else float("nan")
                if side is not None:
                    row[f"p_{key}"] = percentile_p(v[0], v[1:], side)
            rows.append(row)
            images[(lay, sc["cluster"])] = vis["images"][sl]
    summary = []
    for key, _ in MEASURES:
        p = np.array([r[f"p_{key}"] for r in rows], np.float64)
        ok = np.isfinite(p)
        summary.append({"measure": key, "n": int(ok.sum()),
                        "fisher_p": fisher_combined(p[ok], n_random) if ok.any() else float("nan"),
                        "chi2_p": chi2_ranks(p[ok], n_random) if ok.any() else float("nan"),
                        "q1": float("nan"), "median": float("nan"), "q3": float("nan")})
    cv = np.array([r["cv"] for r in rows], np.float64)
    cv = cv[np.isfinite(cv)]
    q = np.percentile(cv, [25, 50, 75]) if len(cv) else [float("nan")] * 3
    summary.append({"measure": "cv", "n": int(len(cv)), "fisher_p": float("nan"), "chi2_p": float("nan"),
                    "q1": float(q[0]), "median": float(q[1]), "q3": float(q[2])})
    meta = dict(model=str(lm.path), model_sha256=lm.sha256, n_clusters=part.n_clusters, n_random=n_random,
                min_size=min_size, max_fraction=max_fraction, seed=seed, ncut=float(part.ncut),
                visualise=dict(visualise_options))
    return CoherenceResult(rows, summary, images, meta)
