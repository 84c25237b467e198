"""Double lesions of important sub-clusters and the dependency graph they suggest (Hod et al.
2021, Appendix A.10)."""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ...stats import percentile_p
from .lesions import Lesioner, random_units, warn_unreachable
from .partition import Partition


def double_lesions(lesioner: Lesioner, part: Partition, rows: list, *, n_random: int = 50, seed: int = 0,
                   alpha: float = 0.05, min_drop: float = 0.01, progress: bool = True) -> tuple[list, list]:
    """Double lesions of pairs of important sub-clusters in different layers, and the
    dependency graph they suggest (Hod et al., Appendix A.10).

    For X (earlier layer) and Y (later layer), with l(S) the drop of the mean per-class
    accuracy when S is lesioned: delta(Y, X) = l(X u Y) - l(X), and Y is important given X
    when l(X u Y) exceeds l(X u Y') for random Y' (same size and layer as Y) with right-sided
    percentile p < ``alpha`` and delta(Y, X) > ``min_drop``; likewise X given Y.

    Dependency edges X -> Y (the paper's Fig. 7, following the argument of its first case):
    neither important given the other: ``exclusive`` (X's information reaches the output
    only through Y, and Y's comes only from X); X not important given Y but Y important given
    X: ``Y has other sources``; X important given Y but Y not given X: ``X has other
    targets``; both important: no conclusion (no edge).

    With fewer than :func:`draws_needed` random partners no pair can be significant; an
    :class:`UnreachableAlphaWarning` says so.

    Returns
    -------
    pairs : list of dict
        x, y (``layer/cluster`` labels), loss_x, loss_y, loss_xy, delta_y_given_x,
        delta_x_given_y, p_y_given_x, p_x_given_y, y_given_x, x_given_y (bool), relation.
    edges : list of dict
        source, target, relation.
    """
    rng = np.random.default_rng(seed)
    imp = [r for r in rows if r["category"] == "important"]
    order = lesioner.layers.index
    pairs_idx = [(a, b) for i, a in enumerate(imp) for b in imp[i + 1:] if a["layer"] != b["layer"]]
    if pairs_idx:
        warn_unreachable(n_random, alpha, "double lesions", "n_double, --double-random")
    base = float(np.mean(lesioner.base))
    pools = {lay: np.flatnonzero(part.layer_labels(lay) >= 0) for lay in {r["layer"] for r in imp}}
    pairs, edges = [], []
    bar = tqdm(total=len(pairs_idx) * (1 + 2 * n_random), desc="double lesions", unit="lesion",
               disable=not progress or not pairs_idx)
    for a, b in pairs_idx:
        x, y = (a, b) if order(a["layer"]) < order(b["layer"]) else (b, a)
        ux, uy = np.asarray(x["units"]), np.asarray(y["units"])
        l_x, l_y = -x["accuracy_change"], -y["accuracy_change"]
        ry = random_units(rng, pools[y["layer"]], len(uy), n_random)
        rx = random_units(rng, pools[x["layer"]], len(ux), n_random)
        lesions = ([{x["layer"]: ux, y["layer"]: uy}] + [{x["layer"]: ux, y["layer"]: u} for u in ry]
                   + [{x["layer"]: u, y["layer"]: uy} for u in rx])
        losses = base - np.mean(lesioner.many(lesions), axis=1)
        l_xy, l_xy_rand, l_rand_xy = float(losses[0]), losses[1:1 + n_random].tolist(), losses[1 + n_random:].tolist()
        bar.update(1 + 2 * n_random)
        d_yx, d_xy = l_xy - l_x, l_xy - l_y
        p_yx, p_xy = percentile_p(l_xy, l_xy_rand, "right"), percentile_p(l_xy, l_rand_xy, "right")
        y_given_x = bool(p_yx < alpha and d_yx > min_drop)
        x_given_y = bool(p_xy < alpha and d_xy > min_drop)
        relation = {(False, False): "exclusive", (False, True): "Y has other sources",
                    (True, False): "X has other targets", (True, True): "no conclusion"}[(x_given_y, y_given_x)]
        lx, ly = f"{x['layer']}/{x['cluster']}", f"{y['layer']}/{y['cluster']}"
        pairs.append({"x": lx, "y": ly, "loss_x": l_x, "loss_y": l_y, "loss_xy": l_xy,
                      "delta_y_given_x": d_yx, "delta_x_given_y": d_xy, "p_y_given_x": p_yx,
                      "p_x_given_y": p_xy, "y_given_x": y_given_x, "x_given_y": x_given_y,
                      "relation": relation})
        if relation != "no conclusion":
            edges.append({"source": lx, "target": ly, "relation": relation})
    bar.close()
    return pairs, edges
