"""Lesion tests of sub-clusters against random sub-clusters: importance, output coherence,
taxonomy and network-level p values (Hod et al. 2021, Section 3.2, Appendices A.4, A.9)."""
from __future__ import annotations

import warnings

import numpy as np
from tqdm.auto import tqdm

from ...data import Dataset, model_inputs, resolve_scale
from ...errors import ConfigError, DataError
from ...interventions import Evaluator, Intervention, replacement
from ...model import LoadedModel
from ...stats import chi2_ranks, fisher_combined, percentile_p
from .partition import Partition

#: What a lesioned unit outputs (:func:`infoprobe.interventions.replacement` kinds).
LESIONS = ("activation_of_zero", "activation_of_bias", "zero")
CATEGORIES = ("complete", "small", "important", "prunable", "sig-but-not-diff", "diff-but-not-sig", "other")


class Lesioner:
    """Per-class test accuracy of a model under lesions of sets of units (Hod et al. 2021,
    Section 3.2), through the intervention engine (:class:`infoprobe.interventions.Evaluator`):
    each lesion runs the suffix after its earliest lesioned layer, chunk by chunk within the
    memory budget.

    Parameters
    ----------
    lm : LoadedModel
    data : Dataset
        Labelled test samples.
    layers : list of str
        Hidden layers that will be lesioned.
    lesion : str
        What a lesioned unit outputs (:func:`infoprobe.interventions.replacement`):
        ``"activation_of_zero"`` (default), sigma(0), incoming weights and bias zeroed, as the
        authors' code does; ``"activation_of_bias"``, sigma(b_j), incoming weights zeroed
        (batch norm folded), as the paper words it; ``"zero"``, 0.
    scale : "auto" or float
        Input multiplier (as in capture).

    Attributes
    ----------
    base : float64 [C]
        Per-class accuracy of the intact model.
    factor : float
        The input scale used.

    Raises
    ------
    DataError
        No labels.
    ConfigError
        Unknown ``lesion``.
    ModelError
        An activation infoprobe cannot evaluate for the lesion value.
    """

    def __init__(self, lm: LoadedModel, data: Dataset, layers, *, lesion: str = "activation_of_zero",
                 scale="auto", batch_size: int = 4096, providers=None, threads=None):
        if data.y is None:
            raise DataError(f"{data.path} has no labels ('y'); lesion tests measure accuracy and need them")
        if lesion not in LESIONS:
            raise ConfigError(f"unknown lesion {lesion!r}; use one of {', '.join(LESIONS)}")
        self.lm, self.layers = lm, list(layers)
        self.factor = resolve_scale(data.x, scale)
        x = model_inputs(lm, data.x, self.factor)
        self.engine = Evaluator(lm, x, labels=data.y, batch_size=batch_size, providers=providers,
                                threads=threads).shareable(data, self.factor)
        self.constants = {n: replacement(lm, n, lesion) for n in self.layers}
        self.base = self.engine.base.class_accuracy[0]
        #: The labels present, int64 [C]: entry c of per-class accuracies is class classes[c].
        self.classes = self.engine.classes

    @property
    def calls(self) -> int:
        """Lesions evaluated so far (benchmarks compare with as many plain forward passes)."""
        return self.engine.runs

    def many(self, lesions: list) -> np.ndarray:
        """Per-class accuracy [K, C] under each of K lesions, each {layer: unit indices}
        lesioned together; evaluated in one pass over the samples."""
        sets = [[Intervention(n, u, self.constants[n][np.asarray(u, np.int64)]) for n, u in les.items() if len(u)]
                for les in lesions]
        return self.engine.evaluate(sets).class_accuracy

    def __call__(self, lesions: dict) -> np.ndarray:
        """Per-class accuracy [C] with ``lesions`` = {layer: unit indices} lesioned together."""
        return self.many([lesions])[0]


def coherence_range(delta: np.ndarray) -> float:
    """Normalised class-wise range ptp(d / mean(d)) of per-class accuracy changes d.

    Defined everywhere so that percentile p values keep their lattice: 0 when no class
    changes, +inf when classes change but their mean change is exactly 0.
    """
    delta = np.asarray(delta, np.float64)
    m = float(np.mean(delta))
    if m == 0.0:
        return 0.0 if not delta.any() else float("inf")
    return float(np.ptp(delta / m))


def classify(row: dict, *, alpha: float = 0.05, min_drop: float = 0.01, small_fraction: float = 0.05,
             small_units: int = 0) -> str:
    """Taxonomy of a lesioned sub-cluster (Hod et al., Fig. 2 and Appendix A.9), checked in
    order: ``complete`` (every unit of the layer still in the graph), ``small`` (under
    ``small_fraction`` of the layer, or fewer than ``small_units`` units), ``important``
    (p < ``alpha`` and accuracy drop > ``min_drop``), ``prunable`` (less damage than random
    sub-clusters: upper p < ``alpha``, and drop < ``min_drop``), ``sig-but-not-diff``
    (p < ``alpha``), ``diff-but-not-sig`` (drop > ``min_drop``), ``other``.

    ``row`` needs ``size``, ``layer_units``, ``in_graph``, ``accuracy_change`` (mean of
    per-class accuracies; negative is damage), ``p_importance`` and ``p_prunable``.
    """
    drop = -row["accuracy_change"]
    if row["size"] >= row["in_graph"]:
        return "complete"
    if row["size"] / row["layer_units"] < small_fraction or row["size"] < small_units:
        return "small"
    sig = np.isfinite(row["p_importance"]) and row["p_importance"] < alpha
    if sig and drop > min_drop:
        return "important"
    if np.isfinite(row["p_prunable"]) and row["p_prunable"] < alpha and drop < min_drop:
        return "prunable"
    if sig:
        return "sig-but-not-diff"
    if drop > min_drop:
        return "diff-but-not-sig"
    return "other"


def random_units(rng, pool, size, n):
    return [np.sort(rng.choice(pool, size, replace=False)) for _ in range(n)]


class UnreachableAlphaWarning(UserWarning):
    """Too few random draws: no percentile p value can fall below ``alpha``."""


def draws_needed(alpha: float) -> int:
    """Fewest random draws n for which a percentile p value can fall below ``alpha``.

    The smallest percentile p value among n draws is 1/(n + 1) (:func:`infoprobe.stats.
    percentile_p`, Phipson & Smyth 2010), and the tests call a result significant when
    p < ``alpha`` (strictly), so n is the least integer with 1/(n + 1) < alpha: 20 for
    alpha = 0.05 (19 draws give exactly 0.05).

    Parameters
    ----------
    alpha : float
        Significance level, in (0, 1].

    Returns
    -------
    int

    Raises
    ------
    ConfigError
        ``alpha`` outside (0, 1].
    """
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"alpha must lie in (0, 1]; got {alpha}")
    n = max(int(np.floor(1.0 / alpha)) - 1, 0)
    while 1.0 / (n + 1) >= alpha:
        n += 1
    return n


def warn_unreachable(n_random: int, alpha: float, what: str, option: str) -> None:
    """Warn (:class:`UnreachableAlphaWarning`) when 1/(n_random + 1) >= alpha."""
    if not 0.0 < alpha <= 1.0:
        return
    need = draws_needed(alpha)
    if n_random < need:
        warnings.warn(f"{what}: with {n_random} random draws ({option}) the smallest percentile p value is "
                      f"1/{n_random + 1} = {1.0 / (n_random + 1):.3g}, not below alpha = {alpha:g}, so none can "
                      f"be significant; use at least {need} random draws", UnreachableAlphaWarning, stacklevel=3)


def lesion_tests(lesioner: Lesioner, part: Partition, *, n_random: int = 20, seed: int = 0,
                 alpha: float = 0.05, min_drop: float = 0.01, small_fraction: float = 0.05, small_units: int = 0,
                 progress: bool = True) -> tuple[list, list]:
    """Lesion every sub-cluster and ``n_random`` random sub-clusters of the same size and layer
    (Hod et al., Section 3.2).

    Statistics, from per-class test accuracies a_c:
    - importance: the change of the mean of per-class accuracies, mean(a_lesioned) - mean(a);
      left-sided percentile p value among the random sub-clusters (``p_importance``), and the
      right-sided one (``p_prunable``: less damage than the randoms);
    - output coherence: the normalised class-wise range ptp(d / mean(d)) of the per-class
      changes d; right-sided p value (``p_coherence``).

    A p value is significant when below ``alpha``; with fewer than :func:`draws_needed`
    random sub-clusters (1/(n_random + 1) >= alpha) none can be, and an
    :class:`UnreachableAlphaWarning` says so (no sub-cluster is then ``important`` or
    ``prunable``).

    Returns
    -------
    rows : list of dict
        One per sub-cluster: layer, cluster, size, layer_units, in_graph, fraction,
        accuracy_change, random_mean, random_std, p_importance, p_prunable, coherence,
        p_coherence, category, class_<c>_change (c: each label present, ``Lesioner.classes``), units.
    random_rows : list of dict
        One per random lesion: layer, cluster, draw, accuracy_change, coherence,
        class_<c>_change.
    """
    warn_unreachable(n_random, alpha, "lesion tests", "n_random, --random")
    rng = np.random.default_rng(seed)
    subs = part.sub_clusters()
    base = lesioner.base
    rows, random_rows = [], []
    bar = tqdm(total=len(subs) * (n_random + 1), desc="lesions", unit="lesion", disable=not progress)
    for s in subs:
        lay = s["layer"]
        pool = np.flatnonzero(part.layer_labels(lay) >= 0)
        complete = s["size"] >= len(pool)
        draws = [] if complete else random_units(rng, pool, s["size"], n_random)
        acc = lesioner.many([{lay: s["units"]}] + [{lay: u} for u in draws])
        d_true, d_rand = acc[0] - base, (acc[1:] - base).reshape(len(draws), len(base))
        bar.update(1 + n_random)
        imp_true, imp_rand = float(np.mean(d_true)), d_rand.mean(axis=1)
        coh_true = coherence_range(d_true)
        coh_rand = np.array([coherence_range(d) for d in d_rand])
        row = {"layer": lay, "cluster": s["cluster"], "size": s["size"], "layer_units": s["layer_units"],
               "in_graph": s["in_graph"], "fraction": s["size"] / s["layer_units"],
               "accuracy_change": imp_true,
               "random_mean": float(imp_rand.mean()) if len(draws) else imp_true,
               "random_std": float(imp_rand.std()) if len(draws) else 0.0,
               "p_importance": percentile_p(imp_true, imp_rand, "left") if len(draws) else float("nan"),
               "p_prunable": percentile_p(imp_true, imp_rand, "right") if len(draws) else float("nan"),
               "coherence": coh_true,
               "p_coherence": percentile_p(coh_true, coh_rand, "right") if len(draws) else float("nan")}
        row["category"] = classify(row, alpha=alpha, min_drop=min_drop, small_fraction=small_fraction,
                                   small_units=small_units)
        for c, v in zip(lesioner.classes, d_true):
            row[f"class_{c}_change"] = float(v)
        row["units"] = s["units"].tolist()
        rows.append(row)
        for i, d in enumerate(d_rand):
            r = {"layer": lay, "cluster": s["cluster"], "draw": i, "accuracy_change": float(d.mean()),
                 "coherence": float(coh_rand[i])}
            for c, v in zip(lesioner.classes, d):
                r[f"class_{c}_change"] = float(v)
            random_rows.append(r)
    bar.close()
    return rows, random_rows


def combine(rows: list, n_random: int) -> dict:
    """Network-level p values: Fisher's method (shifted p values) and the chi-squared test of
    p-value ranks over the sub-clusters, for importance and for output coherence
    (Appendix A.4). Sub-clusters without a p value (complete layers, undefined coherence)
    are left out; ``n_<stat>`` says how many were combined."""
    out = {}
    for stat in ("importance", "coherence"):
        p = np.array([r[f"p_{stat}"] for r in rows], np.float64)
        p = p[np.isfinite(p)]
        out[f"n_{stat}"] = int(len(p))
        out[f"fisher_{stat}"] = fisher_combined(p, n_random) if len(p) else float("nan")
        out[f"chi2_{stat}"] = chi2_ranks(p, n_random) if len(p) else float("nan")
    return out
