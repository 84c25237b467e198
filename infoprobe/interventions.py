"""One intervention engine: replace the post-activations of chosen units, run the model, and
count what it then predicts.

Every analysis that ablates, lesions or removes units -- cumulative ablation (Liu, Amjad &
Geiger 2018), prunability (Casper et al. 2021), lesion tests and double lesions (Hod et al.
2021), the multiplet test of ``synergy --data`` -- describes each of its runs as a set of
:class:`Intervention` objects (a unit site, the units, what replaces them) and hands the sets
to one :class:`Evaluator`. The evaluator

- applies an intervention through the ``L:mask`` / ``L:offset`` inputs of the rewritten graph
  (:func:`infoprobe.rewrite.instrument`: t' = m * t + c, with m = 0 and c = the replacement
  on the intervened units);
- starts from the post-activation of the first intervened site and runs only the suffix graph
  after it (:func:`infoprobe.rewrite.suffix`); where no suffix exists (a skip connection around
  the site, :class:`~infoprobe.errors.NoSuffixError`) it runs the whole model -- no other
  error is taken for that case;
- streams over the samples in chunks whose size follows the memory budget
  (:func:`infoprobe.limits.max_memory`), so that its peak memory does not grow with the number
  of samples nor with the number of sites;
- stacks several interventions along the batch when a chunk is small (fewer than
  ``stack_rows`` rows), where one onnxruntime call per intervention would be dominated by the
  call's overhead (``benchmarks/frivolous.py`` measures when it pays);
- predicts labels with one rule for every command (:func:`infoprobe.model.predicted_labels`:
  the argmax, or the sign of a single logit) and counts, per intervention, correct labels per
  class and labels unchanged from the intact model; or, for a model whose output is not class
  logits (a detector, a segmenter, an embedding model), counts the samples whose output stays
  within a tolerance of the intact model's (``agreement``).

Replacement values come from :func:`replacement`, with one vocabulary for every command.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .data import row_bytes, tile_rows
from .errors import ConfigError, NoSuffixError
from .limits import max_memory
from .model import LoadedModel
from .positions import units_last
from .rewrite import io_name, mask_shape
from .runner import Runner, default_threads

#: Replacement kinds of :func:`replacement`.
REPLACEMENTS = ("zero", "mean", "activation_of_bias", "activation_of_zero", "constant")

#: Rows per onnxruntime call under which interventions are stacked along the batch.
STACK_ROWS = 256
#: Default tolerance of the output agreement of models without class logits (relative L2).
AGREEMENT = 0.05


def mean_activation(store, site: str) -> np.ndarray:
    """Mean post-activation of each unit of ``site`` over a store's samples (conv and token
    sites: over samples and positions, padding tokens left out), float64 [U], read block by
    block.

    This is the constant of bias balancing (Liu, Amjad & Geiger 2018, eq. 7): replacing t_j
    by its mean adds w_jk * mean(t_j) to the next layer's bias.
    """
    axis, mask, counts = store.layer_info(site)["unit_axis"], store.position_mask(site), store.token_counts(site)
    if counts is not None:   # stored means, weighted by their real tokens
        mask = counts[:, None]
    total, n = None, 0
    for start, block in store.iter_rows(site, "post"):
        b = units_last(block, axis).astype(np.float64)
        if mask is not None:   # padding tokens left out
            b = b * mask[start:start + len(block), :, None]
        s = b.sum(axis=(0, 1))
        total = s if total is None else total + s
        n += b.shape[0] * b.shape[1] if mask is None else int(mask[start:start + len(block)].sum())
    return total / n


def replacement(lm: LoadedModel, site: str, kind: str, *, store=None, value: float | None = None) -> np.ndarray:
    """The value that replaces each unit of ``site`` when it is intervened on, float64 [U].

    Parameters
    ----------
    lm : LoadedModel
    site : str
        A unit layer of ``lm``.
    kind : str
        ``"zero"``: 0 (ablation to zero, Liu et al. 2018; the prunability ablation of Casper
        et al. 2021). ``"mean"``: the unit's mean post-activation over ``store`` (bias
        balancing, Liu et al. eq. 7). ``"activation_of_bias"``: sigma(b_j), the output of the
        unit once its incoming weights are zeroed (batch norm folded; the lesion of Hod et al.
        2021 as the paper words it). ``"activation_of_zero"``: sigma(0), incoming weights and
        bias zeroed (the lesion of Hod et al.'s code). ``"constant"``: ``value`` for every unit.
    store : Store, optional
        Activations of the data the means come from (``"mean"`` only).
    value : float, optional
        The constant of ``"constant"``.

    Raises
    ------
    ConfigError
        Unknown ``kind``, ``"mean"`` without a store, ``"constant"`` without a value.
    ModelError
        An activation infoprobe cannot evaluate in NumPy (``activation_of_*``), or an unknown
        site.
    """
    lay = lm.layer(site)
    if kind == "zero":
        return np.zeros(lay.units)
    if kind == "mean":
        if store is None:
            raise ConfigError("the replacement 'mean' (bias balancing) needs an activation store of the data the "
                              "means come from")
        return mean_activation(store, site)
    if kind == "activation_of_bias":
        return lm.lesion_constants(lay, keep_bias=True)
    if kind == "activation_of_zero":
        return lm.lesion_constants(lay, keep_bias=False)
    if kind == "constant":
        if value is None:
            raise ConfigError("the replacement 'constant' needs a value")
        return np.full(lay.units, float(value))
    raise ConfigError(f"unknown replacement {kind!r}; use one of {', '.join(REPLACEMENTS)}")


def chunk_rows(runner: Runner, x: np.ndarray, batch_size: int) -> int:
    """Samples per chunk when ``runner`` (an instrumented model) runs over ``x``: at most
    ``batch_size``, and few enough that every value the model computes for the chunk -- twice
    over, for the masked copy and the exposure of each site -- fits a quarter of the memory
    budget (:func:`infoprobe.limits.max_memory`), whatever the number of samples.

    Parameters
    ----------
    runner : Runner
    x : array [N, ...] or Inputs
        The inputs (their per-sample size counts too).
    batch_size : int
    """
    lm = runner.lm
    sizes = lm.source.runtime_sizes if lm.source is not None else {}
    per_row = 2 * int(sizes.get("per_sample_total", 0)) + row_bytes(x)
    return int(max(1, min(batch_size, runner.max_rows, (max_memory() // 4) // max(1, per_row))))


@dataclass(frozen=True, eq=False)
class Intervention:
    """Replace the post-activation of some units of one unit site by constants.

    Attributes
    ----------
    site : str
        A unit layer.
    units : int64 [K]
        Indices of the intervened units: into the site's units, or with ``positions`` into
        its channel x position units (C * H * W, in C-order of ``(C, H, W)``).
    values : float [K] or float
        What replaces them (one per listed unit, or one for all).
    positions : bool
        Conv sites: the units are channel x positions rather than whole channels.
    """

    site: str
    units: np.ndarray
    values: np.ndarray | float = 0.0
    positions: bool = False

    def __post_init__(self):
        object.__setattr__(self, "units", np.asarray(self.units, np.int64).reshape(-1))


@dataclass
class Outcome:
    """Counts over the samples for K intervention sets.

    Attributes
    ----------
    n : int
        Samples.
    unchanged : int64 [K]
        Samples whose predicted label equals the intact model's (with an evaluator's
        ``agreement``: whose output stays within it).
    correct : int64 [K, C] or None
        Correctly labelled samples per true class (None without labels).
    class_totals : int64 [C] or None
        Samples per true class.
    """

    n: int
    unchanged: np.ndarray
    correct: np.ndarray | None = None
    class_totals: np.ndarray | None = None

    def _labels(self):
        if self.correct is None:
            raise ConfigError("accuracy needs labels; build the Evaluator with labels")
        return self.correct

    @property
    def accuracy(self) -> np.ndarray:
        """Fraction of correct labels, float64 [K]."""
        return self._labels().sum(axis=1) / self.n

    @property
    def class_accuracy(self) -> np.ndarray:
        """Accuracy per true class, float64 [K, C] (NaN for a class without samples)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.class_totals > 0, self._labels() / np.maximum(self.class_totals, 1), np.nan)

    @property
    def unchanged_fraction(self) -> np.ndarray:
        """Fraction of labels equal to the intact model's, float64 [K]."""
        return self.unchanged / self.n


class Evaluator:
    """Predicted labels of a model under sets of interventions, over samples streamed in chunks.

    Parameters
    ----------
    lm : LoadedModel
    x : float32 [N, ...] or Inputs
        Prepared model inputs (:func:`infoprobe.data.model_inputs`).
    labels : int [N], optional
        True labels, for accuracies.
    batch_size : int
        Largest chunk of samples per onnxruntime call; lowered so that a call's values fit a
        quarter of the memory budget (:func:`infoprobe.limits.max_memory`).
    stack_rows : int
        Chunks under this many rows carry several interventions per call, stacked along the
        batch (never more rows in all than a chunk may hold within the budget).
    providers, threads :
        As for :class:`infoprobe.runner.Runner`.
    agreement : float, "auto" or None
        None: compare predicted labels (the output must be class logits). A float ``tol``:
        a sample is unchanged while its output ``o'`` stays within ``||o' - o||_2 <= tol *
        ||o||_2`` of the intact output ``o`` (each sample's output flattened); accuracies are
        then not counted. ``"auto"``: labels for class logits, else :data:`AGREEMENT`.

    Attributes
    ----------
    classes : int64 [C]
        The classes counted: the labels present, sorted (column c of per-class counts and
        accuracies is class ``classes[c]``; never sized by the largest label).
    intact : int64 [N]
        Labels the intact model predicts (all -1 when outputs are compared).
    agreement : float or None
        The tolerance outputs are compared with, None when labels are.
    base : Outcome
        Counts of the intact model (K = 1).
    runs : int
        Intervention sets evaluated so far (benchmarks compare with as many forward passes).

    Raises
    ------
    ModelError, DataError, BudgetError
        A model onnxruntime cannot run, inputs that do not fit it, or one sample over the budget.
    """

    def __init__(self, lm: LoadedModel, x: np.ndarray, *, labels=None, batch_size: int = 4096, stack_rows: int = STACK_ROWS, providers=None, threads: int | None = None,
                 agreement=None):
        self.lm, self.x = lm, x
        if agreement not in (None, "auto") and not (isinstance(agreement, (int, float)) and agreement >= 0):
            raise ConfigError(f"agreement must be a tolerance >= 0, 'auto' or None, not {agreement!r}")
        self.y = None if labels is None else np.asarray(labels, np.int64)
        if self.y is not None:
            self.classes, self._codes = np.unique(self.y, return_inverse=True)
            self.n_classes = len(self.classes)
            self.class_totals = np.bincount(self._codes, minlength=self.n_classes)
        else:
            self.classes, self._codes = np.zeros(0, np.int64), None
            self.n_classes, self.class_totals = 0, None
        self.stack_rows = stack_rows
        self._kw = {"labels": labels is not None, "batch_size": batch_size,
                    "stack_rows": stack_rows, "agreement": agreement}
        self._source = None
        self.providers = providers
        self.threads = threads if threads is not None else default_threads()
        # the whole model: intact labels, prefixes and interventions that have no suffix
        self.whole = Runner(lm, expose=True, providers=providers, threads=self.threads, spin=False, arena="shared")
        self.rows = chunk_rows(self.whole, x, batch_size)
        self._order = {lay.name: i for i, lay in enumerate(lm.layers)}
        self._suffixes: dict = {}
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes = 0
        self.runs = 0
        n = len(x)
        self.intact = np.full(n, -1, np.int64)
        self.agreement = agreement
        self._outputs, self._outputs_kept = {}, True
        for a, b in self.chunks():
            out = self.whole.run(x[a:b], outputs=[lm.output_name], batch_size=b - a)[lm.output_name]
            if self.agreement == "auto":
                self.agreement = None if lm.is_class_logits(out) else AGREEMENT
            if self.agreement is None:
                if a == 0 and self.y is not None:
                    lm.check_labels(self.y, out)
                self.intact[a:b] = lm.predicted_labels(out)
            else:
                self._keep_output(a, b, out)
        if self.agreement is not None:
            if self.y is not None:
                raise ConfigError("accuracy needs predicted labels; an evaluator comparing outputs takes no labels")
            self.base = Outcome(n, np.array([n]))
            return
        correct = None
        if self.y is not None:
            correct = np.bincount(self._codes[self.intact == self.y], minlength=self.n_classes)[None]
        self.base = Outcome(n, np.array([n]), correct, self.class_totals)

    def _keep_output(self, a: int, b: int, out: np.ndarray) -> None:
        """Keep the intact outputs while they all fit an eighth of the budget; past that they
        are computed again for each evaluation (:meth:`intact_output`)."""
        out = np.asarray(out, np.float32).reshape(b - a, -1)
        if self._outputs_kept and out.nbytes * len(self.x) / max(1, b - a) <= max_memory() // 8:
            self._outputs[(a, b)] = out
        else:
            self._outputs_kept, self._outputs = False, {}

    def intact_output(self, a: int, b: int) -> np.ndarray:
        """The intact model's outputs on samples ``a:b``, flattened per sample, float32."""
        out = self._outputs.get((a, b))
        if out is None:
            name = self.lm.output_name
            out = np.asarray(self.whole.run(self.x[a:b], outputs=[name], batch_size=b - a)[name],
                             np.float32).reshape(b - a, -1)
        return out

    def _unchanged(self, res: np.ndarray, k: int, a: int, b: int, ref: np.ndarray | None) -> np.ndarray:
        """Per intervention of a stacked run, the samples ``a:b`` whose label (or output,
        within ``agreement`` of the intact outputs ``ref``) is the intact model's, bool
        [k, b - a]; and the labels."""
        n = b - a
        if self.agreement is None:
            labels = self.lm.predicted_labels(res).reshape(k, n)
            return labels == self.intact[a:b], labels
        diff = np.asarray(res, np.float64).reshape(k, n, -1) - ref[None]
        return np.linalg.norm(diff, axis=2) <= self.agreement * np.linalg.norm(ref, axis=1)[None], None

    def chunks(self):
        """``(start, stop)`` of every chunk of samples."""
        n = len(self.x)
        return [(a, min(a + self.rows, n)) for a in range(0, n, self.rows)]

    # ------------------------------------------------------------------ sessions and inputs

    def _suffix(self, site: str):
        """The suffix runner after ``site``, or None where no suffix exists."""
        if site not in self._suffixes:
            try:
                self._suffixes[site] = Runner(self.lm, after=site, providers=self.providers, threads=self.threads,
                                              arena="shared")
            except NoSuffixError:
                self._suffixes[site] = None
        return self._suffixes[site]

    def activations(self, site: str, start: int, stop: int) -> np.ndarray:
        """Post-activation of ``site`` on samples ``start:stop`` of the intact model, float32
        [stop - start, *shape]; recent chunks are kept within a sixteenth of the budget."""
        key = (site, start, stop)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out = io_name(site, "post")
        post = self.whole.run(self.x[start:stop], outputs=[out], batch_size=stop - start)[out]
        limit = max_memory() // 16
        if post.nbytes <= limit:
            while self._cache and self._cache_bytes + post.nbytes > limit:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
            self._cache[key] = post
            self._cache_bytes += post.nbytes
        return post

    def _first(self, interventions) -> str | None:
        """The site whose suffix can apply every intervention of a set (its earliest site),
        or None when the whole model must run."""
        sites = {iv.site for iv in interventions}
        first = min(sites, key=self._order.__getitem__)
        runner = self._suffix(first)
        if runner is None or any(io_name(s, "mask") not in runner.input_names for s in sites):
            return None
        return first

    def _feeds(self, sets: list, rows: int) -> dict:
        """Mask and offset feeds of ``sets`` stacked along the batch (``rows`` samples each)."""
        k = len(sets)
        built: dict = {}
        for j, s in enumerate(sets):
            for iv in s:
                lay = self.lm.layer(iv.site)
                prev = built.get(iv.site)
                if prev is not None and prev[2] != iv.positions:
                    raise ConfigError(f"site {iv.site!r}: channel and channel x position interventions cannot be "
                                      "evaluated together")
                if prev is None:
                    size = int(np.prod(mask_shape(lay, iv.positions)))
                    prev = built[iv.site] = (np.ones((k, size), np.float32), np.zeros((k, size), np.float32),
                                             iv.positions)
                prev[0][j, iv.units] = 0.0
                prev[1][j, iv.units] = iv.values
        feeds = {}
        for site, (m, o, positions) in built.items():
            shape = mask_shape(self.lm.layer(site), positions)
            m, o = m.reshape(k, *shape), o.reshape(k, *shape)
            if k > 1:
                m, o = np.repeat(m, rows, axis=0), np.repeat(o, rows, axis=0)
            feeds[io_name(site, "mask")], feeds[io_name(site, "offset")] = m, o
        return feeds

    # ------------------------------------------------------------------ evaluation

    def shareable(self, data, scale: float) -> "Evaluator":
        """Let :meth:`evaluate` send blocks of sets to Dask workers (inside an
        :func:`infoprobe.parallel.engine` block): each worker rebuilds this evaluator from the
        model (read again from its file), ``data`` (read by the worker) and ``scale`` (the
        factor its inputs were prepared with). Counts are integers, so the outcome is the
        serial one. A model not read from a file stays in this process. Returns ``self``."""
        if self.lm.recipe is not None:
            self._source = (self.lm, data, float(scale))
        return self

    def evaluate(self, sets, *, advance=None) -> Outcome:
        """Counts of the model under each set of interventions.

        Inside an :func:`infoprobe.parallel.engine` block, an evaluator made :meth:`shareable`
        sends blocks of at least :data:`DASK_SETS` sets to the workers.

        Parameters
        ----------
        sets : sequence of sequences of Intervention
            K sets; the interventions of one set are applied together (an empty set is the
            intact model).
        advance : callable, optional
            Called with the number of sets finished, for progress bars.

        Returns
        -------
        Outcome
            K rows, in the order of ``sets``.

        Raises
        ------
        ConfigError
            A set mixes channel and channel x position units of one site.
        ModelError, DataError
            As for :meth:`infoprobe.runner.Runner.run`.
        """
        sets = [tuple(s) for s in sets]
        from .parallel import current, map_tasks

        eng = current() if self._source is not None else None
        if eng is not None and len(sets) >= 2 * DASK_SETS:
            parts = max(2, min(4 * eng.capacity(), len(sets) // DASK_SETS))
            bounds = np.linspace(0, len(sets), parts + 1).astype(int)
            outs = map_tasks(_evaluate_block, [((*self._source, self._kw, sets[a:b]), {})
                                               for a, b in zip(bounds[:-1], bounds[1:]) if b > a],
                             desc="interventions",
                             on_result=(lambda i, o: advance(len(o.unchanged))) if advance else None)
            self.runs += len(sets)
            return Outcome(len(self.x), np.concatenate([o.unchanged for o in outs]),
                           None if self.y is None else np.concatenate([o.correct for o in outs]), self.class_totals)
        k, y = len(sets), self.y
        unchanged = np.zeros(k, np.int64)
        correct = np.zeros((k, self.n_classes), np.int64) if y is not None else None
        groups: dict = {}
        for i, s in enumerate(sets):
            if not s:
                unchanged[i] = self.base.unchanged[0]
                if correct is not None:
                    correct[i] = self.base.correct[0]
                continue
            groups.setdefault(self._first(s), []).append(i)
        if k - sum(map(len, groups.values())) and advance:
            advance(k - sum(map(len, groups.values())))
        output = self.lm.output_name
        chunks = self.chunks()
        for first, idx in groups.items():
            runner = self.whole if first is None else self._suffix(first)
            for c, (a, b) in enumerate(chunks):
                n = b - a
                inputs = self.x[a:b] if first is None else self.activations(first, a, b)
                step = max(1, min(self.stack_rows, self.rows) // n)   # stacked rows stay within a chunk's budget
                ref = None if self.agreement is None else self.intact_output(a, b).astype(np.float64)
                for s0 in range(0, len(idx), step):
                    part = idx[s0:s0 + step]
                    xin = inputs if len(part) == 1 else tile_rows(inputs, len(part))
                    res = runner.run(xin, feeds=self._feeds([sets[i] for i in part], n), outputs=[output],
                                     batch_size=len(xin))[output]
                    same, labels = self._unchanged(res, len(part), a, b, ref)
                    for j, i in enumerate(part):
                        unchanged[i] += np.count_nonzero(same[j])
                        if correct is not None:
                            ok = labels[j] == y[a:b]
                            correct[i] += np.bincount(self._codes[a:b][ok], minlength=self.n_classes)
                    if advance and c == len(chunks) - 1:
                        advance(len(part))
        self.runs += k
        return Outcome(len(self.x), unchanged, correct, self.class_totals)


#: Sets per Dask task, at least, when :meth:`Evaluator.evaluate` sends blocks to workers.
DASK_SETS = 16
#: The evaluator a worker rebuilt last (rebuilding costs a pass of the intact model).
_WORKER_EVALUATOR: dict = {}


def _evaluate_block(lm: LoadedModel, data, scale: float, kw: dict, sets: list) -> Outcome:
    """:meth:`Evaluator.evaluate` of ``sets`` on a Dask worker, with the evaluator rebuilt
    from the model and the data (kept for the worker's next block of the same run)."""
    from .data import model_inputs

    key = (lm.sha256, data.sha256, len(data), scale, tuple(sorted(kw.items())))
    ev = _WORKER_EVALUATOR.get(key)
    if ev is None:
        kw = dict(kw)
        labels = data.y if kw.pop("labels") else None
        _WORKER_EVALUATOR.clear()
        ev = _WORKER_EVALUATOR[key] = Evaluator(lm, model_inputs(lm, data.x, scale), labels=labels, **kw)
    return ev.evaluate(sets)
