"""``infoprobe check``: does a compressed candidate still compute what its reference did?

Both models run once over the same labelled data, batch by batch; the comparison is
streamed, so the check costs little more than two inference passes. Metrics:

- ``label_change``: fraction of samples whose predicted label differs (the argmax, or for a
  single output the logit > 0 / probability > 0.5 of :func:`infoprobe.model.predicted_labels`);
- ``accuracy_reference``, ``accuracy_candidate``, ``accuracy_drop`` (reference - candidate);
- per-class accuracies and drops, ``max_class_drop`` and the ``worst_class``;
- ``kl_mean_bits``: mean over samples of KL(p_ref || p_cand) in bits, where p is the softmax
  of the output (or the output itself when it already holds probabilities);
- ``max_abs_logit_diff``: max |output_ref - output_cand|;
- sizes (parameters, bytes, per-sample MACs) and latencies (median onnxruntime time per
  batch during the pass) of both models, and their ratios.

The two models see the same samples, so the drop is a paired quantity
(:func:`paired_statistics`): McNemar's exact test on the discordant pairs, a
confidence interval of the accuracy drop (Bonett-Price), the same per class with Holm's control of the
family-wise error, the smallest drop the data set can detect, and upper confidence bounds that
the thresholds can be written on (``confidence``). :func:`confusions` says which true classes
moved to which predicted classes, and :func:`infoprobe.analyses.divergence.site_divergence`
where in the network the two models part.

Thresholds (``None`` switches one off) come from :data:`DEFAULT_THRESHOLDS`, a TOML file
and options, in that order of precedence (last wins).
"""
from __future__ import annotations

import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
from tqdm.auto import tqdm

from ..data import Dataset, Inputs, prepare_inputs, resolve_scale
from ..errors import BudgetError, ConfigError, DataError, ModelError
from ..limits import rows_within
from ..model import (DEFAULT_MAX_BYTES, check_labels, class_labels, class_output, class_score_shape, load_onnx,
                     output_threshold, predicted_labels, runtime_rows)
from ..modelstats import compare_latency, model_cost
from ..results import atomic_write_bytes, check_outputs
from ..runner import default_threads, make_session, ort_error
from .divergence import DEFAULT_TOLERANCE
from ..stats import (adjust, detectable_drop, drop_interval, mcnemar_exact, proportion_upper,
                     samples_needed)

#: name -> (metric compared, human description). Every threshold is an upper bound except
#: those named ``min_*`` (:data:`LOWER_BOUNDS`).
THRESHOLDS = {
    "max_label_change": ("label_change", "fraction of predicted labels that changed"),
    "max_accuracy_drop": ("accuracy_drop", "top-1 accuracy drop"),
    "max_class_drop": ("max_class_drop", "largest per-class accuracy drop"),
    "max_kl": ("kl_mean_bits", "mean KL(reference || candidate), bits"),
    "max_logit_diff": ("max_abs_logit_diff", "max |output difference|"),
    "max_latency_ratio": ("latency_ratio", "candidate / reference latency"),
    "max_size_ratio": ("size_ratio", "candidate / reference file size"),
    "min_speedup": ("speedup", "reference / candidate latency at the throughput batch"),
}
#: Thresholds that the metric must reach rather than stay under.
LOWER_BOUNDS = {"min_speedup"}
DEFAULT_THRESHOLDS = {"max_label_change": 0.01, "max_accuracy_drop": 0.005, "max_class_drop": 0.02,
                      "max_kl": None, "max_logit_diff": None, "max_latency_ratio": None, "max_size_ratio": None,
                      "min_speedup": None}
_NEEDS_LABELS = {"max_accuracy_drop", "max_class_drop"}
#: Metric a threshold is applied to when ``confidence`` is given: its upper confidence bound.
UPPER_BOUNDS = {"max_label_change": "label_change_upper", "max_accuracy_drop": "accuracy_drop_upper",
                "max_class_drop": "max_class_drop_upper"}
#: Confidence of the intervals reported when the thresholds are on point estimates.
REPORT_CONFIDENCE = 0.95
#: Rows of a Markdown table (a pull-request comment holds at most 65,536 characters).
MARKDOWN_ROWS = 60
#: A candidate slower than the reference by more than this factor (and beyond the runs'
#: spread) is called out.
SLOWER = 1.10


def paired_statistics(reference_pred, candidate_pred, labels=None, *, confidence: float = REPORT_CONFIDENCE,
                      power: float = 0.8, adjustment: str = "holm") -> dict:
    """Statistics of two classifiers' predictions on the same samples.

    Parameters
    ----------
    reference_pred, candidate_pred : int array [N]
        Predicted labels.
    labels : int array [N], optional
        True labels; without them only the label change is tested.
    confidence : float
        Level of the intervals and bounds; alpha = 1 - confidence is the level of McNemar's test
        and of the smallest detectable drop.
    power : float
        Power of the smallest detectable drop (:func:`infoprobe.stats.detectable_drop`).
    adjustment : {"holm", "bh"}
        Multiple-comparison control of the per-class McNemar p values
        (:func:`infoprobe.stats.adjust`).
    Returns
    -------
    dict
        ``n``, ``confidence``, ``alpha``, ``power``; ``label_change`` and its one-sided
        Clopper-Pearson upper bound ``label_change_upper``. With labels also:
        ``reference_only`` (b: reference right, candidate wrong), ``candidate_only`` (c),
        ``mcnemar_p`` (exact, two-sided; McNemar 1947), ``accuracy_drop`` = (b - c) / N,
        ``accuracy_drop_ci`` (two-sided, Bonett and Price's interval,
        :func:`infoprobe.stats.drop_interval`), ``accuracy_drop_upper`` (its one-sided bound),
        ``detectable_drop`` (Connor 1987) and ``classes``: per true class ``class``, ``n``, ``reference``,
        ``candidate`` (accuracies), ``drop``, b, c, ``mcnemar_p``, ``p_adjusted``,
        ``significant``, ``drop_upper`` and ``detectable_drop``. The per-class upper bounds are
        simultaneous (Bonferroni: each at confidence 1 - alpha/K over K classes), so
        ``max_class_drop_upper``, their maximum, bounds the worst class's drop at
        ``confidence``. Accuracy quantities are fractions of samples.

    Raises
    ------
    ConfigError
        ``confidence`` or ``power`` outside (0, 1), unknown ``adjustment``.
    """
    if not 0 < confidence < 1 or not 0 < power < 1:
        raise ConfigError("confidence and power must lie in (0, 1)")
    rp, cp = np.asarray(reference_pred), np.asarray(candidate_pred)
    n = len(rp)
    alpha = 1.0 - confidence
    changed = int((rp != cp).sum())
    out = {"n": n, "confidence": confidence, "alpha": alpha, "power": power, "adjustment": adjustment,
           "label_change": changed / n, "label_change_upper": proportion_upper(changed, n, confidence)}
    if labels is None:
        return out
    y = np.asarray(labels)

    def paired(mask, level):
        ok_r, ok_c = rp[mask] == y[mask], cp[mask] == y[mask]
        m = int(mask.sum())
        b, c = int((ok_r & ~ok_c).sum()), int((~ok_r & ok_c).sum())
        row = {"n": m, "reference": float(ok_r.mean()), "candidate": float(ok_c.mean()), "drop": (b - c) / m,
               "reference_only": b, "candidate_only": c, "mcnemar_p": mcnemar_exact(b, c),
               "detectable_drop": detectable_drop(m, (b + c) / m, alpha, power)}
        row["drop_upper"] = drop_interval(b, c, m, level, side="upper")[1]
        return row

    whole = paired(np.ones(n, bool), confidence)
    out.update({k: whole[k] for k in ("reference_only", "candidate_only", "mcnemar_p", "detectable_drop")})
    out["accuracy_drop"] = whole["drop"]
    out["accuracy_drop_upper"] = whole["drop_upper"]
    out["accuracy_drop_ci"] = list(drop_interval(whole["reference_only"], whole["candidate_only"], n, confidence))
    classes = np.unique(y)
    rows = [dict(paired(y == k, 1.0 - alpha / len(classes)), **{"class": int(k)}) for k in classes]
    reject, adjusted = adjust([r["mcnemar_p"] for r in rows], adjustment, alpha)
    for r, rej, pa in zip(rows, reject, adjusted):
        r["p_adjusted"], r["significant"] = float(pa), bool(rej)
    out["classes"] = rows
    out["max_class_drop_upper"] = max(r["drop_upper"] for r in rows)
    out["class_bound_confidence"] = 1.0 - alpha / len(classes)
    return out


def confusions(labels, reference_pred, candidate_pred) -> dict:
    """Which true classes moved to which predicted classes.

    Parameters
    ----------
    labels : int array [N] or None
    reference_pred, candidate_pred : int array [N]

    Returns
    -------
    dict
        ``changed`` (indices of the samples whose predicted label differs, int array),
        ``moves``: one row per (true class, reference label, candidate label) among the changed
        samples, ``count`` descending (``true`` is None without labels); with labels also
        ``classes`` and the confusion matrices ``reference``, ``candidate`` and
        ``difference`` = candidate - reference (rows: true class, columns: predicted), by
        ``sklearn.metrics.confusion_matrix``.
    """
    rp, cp = np.asarray(reference_pred), np.asarray(candidate_pred)
    changed = np.flatnonzero(rp != cp)
    cols = [rp[changed], cp[changed]] if labels is None else [np.asarray(labels)[changed], rp[changed], cp[changed]]
    keys, counts = (np.unique(np.stack(cols, 1), axis=0, return_counts=True) if len(changed)
                    else (np.zeros((0, len(cols)), np.int64), np.zeros(0, np.int64)))
    order = np.lexsort((*keys.T[::-1], -counts))
    moves = [{"true": None if labels is None else int(keys[i, 0]), "reference": int(keys[i, -2]),
              "candidate": int(keys[i, -1]), "count": int(counts[i])} for i in order]
    out = {"changed": changed, "moves": moves}
    if labels is not None:
        from sklearn.metrics import confusion_matrix

        y = np.asarray(labels)
        classes = np.unique(np.concatenate([y, rp, cp]))
        ref = confusion_matrix(y, rp, labels=classes)
        cand = confusion_matrix(y, cp, labels=classes)
        out.update(classes=classes.tolist(), reference=ref.tolist(), candidate=cand.tolist(),
                   difference=(cand - ref).tolist())
    return out


def load_thresholds(path) -> dict:
    """Thresholds from a TOML file: keys of :data:`THRESHOLDS` (``-`` or ``_``) at the top
    level or in a ``[check]`` table; ``false`` switches a threshold off.

    Raises
    ------
    ConfigError
        Unreadable or oversized TOML, an unknown key, or a value that is not a number or false.
    """
    path = Path(path)
    try:
        if path.stat().st_size > 1 << 20:
            raise ConfigError(f"threshold file {path} is over 1 MiB; it holds a few thresholds")
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"threshold file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {type(exc).__name__}: {str(exc)[:160]}") from None
    table = doc.get("check", doc)
    out = {}
    for key, val in table.items():
        name = key.replace("-", "_")
        if name not in THRESHOLDS:
            raise ConfigError(f"{path}: unknown threshold {key!r}; known: {', '.join(THRESHOLDS)}")
        if val is False:
            out[name] = None
        elif isinstance(val, (int, float)) and not isinstance(val, bool) and val >= 0:
            out[name] = float(val)
        else:
            raise ConfigError(f"{path}: {key} must be a non-negative number or false, got {val!r}")
    return out


def _io(model: ir.Model):
    g = model.graph
    inputs = [v for v in g.inputs if not v.is_initializer()]
    return inputs, list(g.outputs)


def _describe(v) -> tuple:
    dtype = v.type.dtype.name if v.type is not None and hasattr(v.type, "dtype") else "?"
    dims = None if v.shape is None else [d if isinstance(d, int) else str(d) for d in v.shape.dims]
    return dtype, dims


def compatibility(reference: ir.Model, candidate: ir.Model) -> list:
    """Differences between the graph inputs and outputs of two models (empty: compatible).

    Names, element types, ranks and static dimensions must agree; a symbolic dimension
    matches any size.
    """
    problems = []
    for what, (ref_vals, cand_vals) in (("input", (_io(reference)[0], _io(candidate)[0])),
                                        ("output", (_io(reference)[1], _io(candidate)[1]))):
        rn, cn = [v.name for v in ref_vals], [v.name for v in cand_vals]
        if rn != cn:
            problems.append(f"{what} names differ: reference has {rn}, candidate has {cn}")
            continue
        for r, c in zip(ref_vals, cand_vals):
            (rt, rd), (ct, cd) = _describe(r), _describe(c)
            if rt != ct:
                problems.append(f"{what} {r.name!r}: element type {rt} (reference) vs {ct} (candidate)")
            if rd is not None and cd is not None:
                if len(rd) != len(cd) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                             for a, b in zip(rd, cd)):
                    problems.append(f"{what} {r.name!r}: shape {rd} (reference) vs {cd} (candidate)")
    return problems


def _log_probs(out: np.ndarray, is_prob: bool) -> np.ndarray:
    out = out.reshape(len(out), -1).astype(np.float64)
    if is_prob:
        return np.log(np.clip(out, 1e-300, None))
    m = out.max(axis=1, keepdims=True)
    return out - m - np.log(np.exp(out - m).sum(axis=1, keepdims=True))


def _looks_like_probabilities(out: np.ndarray) -> bool:
    o = out.reshape(len(out), -1)
    return bool(o.min() >= 0 and o.max() <= 1 and np.allclose(o.sum(1), 1.0, atol=1e-4))


def _p(v: float) -> str:
    """A p value for reading (binomial tails below the float range print as < 1e-300)."""
    return "< 1e-300" if v < 1e-300 else format(v, ".3g")


def _num(v, fmt=".4g") -> str:
    return "n/a" if v is None else format(v, fmt)


@dataclass
class CheckResult:
    """Outcome of :func:`check`: metrics, one entry per threshold, the models' costs, the
    paired statistics, the confusion changes, the per-site divergence and the notes."""

    metrics: dict
    checks: list
    models: dict
    data: dict
    params: dict = field(default_factory=dict)
    statistics: dict = field(default_factory=dict)
    confusions: dict = field(default_factory=dict)
    divergence: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    @property
    def changed_samples(self) -> np.ndarray:
        """Indices (rows of the data split) of the samples whose predicted label changed."""
        return self.confusions.get("changed", np.zeros(0, np.int64))

    def to_dict(self) -> dict:
        conf = {k: v for k, v in self.confusions.items() if k not in ("changed", "predicted")}
        conf["n_changed"] = int(len(self.changed_samples))
        return {"passed": self.passed, "checks": self.checks, "metrics": self.metrics, "models": self.models,
                "data": self.data, "parameters": self.params, "statistics": self.statistics, "confusions": conf,
                "divergence": self.divergence, "notes": self.notes}

    def _interval(self) -> str:
        st = self.statistics
        if st.get("accuracy_drop_ci") is None:
            return ""
        lo, hi = st["accuracy_drop_ci"]
        return (f"{st['confidence']:.0%} CI [{lo:+.4f}, {hi:+.4f}], McNemar exact p {_p(st['mcnemar_p'])} "
                f"({st['reference_only']} samples only the reference got right, {st['candidate_only']} only the "
                f"candidate); smallest detectable drop {st['detectable_drop']:.4f}")

    def _moves(self, k: int = 5) -> list:
        out = []
        for m in self.confusions.get("moves", [])[:k]:
            head = "" if m["true"] is None else f"true {m['true']}: "
            out.append(f"{head}{m['reference']} -> {m['candidate']} ({m['count']})")
        return out

    def summary(self) -> str:
        """A short human summary (a few lines)."""
        m = self.metrics
        lines = [f"infoprobe check: {'PASSED' if self.passed else 'FAILED'} "
                 f"({sum(not c['passed'] for c in self.checks)} of {len(self.checks)} checks failed) "
                 f"on {self.data['n_samples']} samples"]
        out = self.params.get("output") or {}
        if out.get("others"):
            lines.append(f"  class scores: output {out['description']} ({out['reason']}); other outputs: "
                         + ", ".join(out["others"]))
        if m.get("accuracy_reference") is not None:
            lines.append(f"  accuracy {m['accuracy_reference']:.4f} -> {m['accuracy_candidate']:.4f} "
                         f"(drop {m['accuracy_drop']:+.4f}; {self._interval()})")
            lines.append(f"  worst class {m['worst_class']} (drop {m['max_class_drop']:+.4f}, simultaneous upper bound "
                         f"{m['max_class_drop_upper']:+.4f})")
        lines.append(f"  labels changed {m['label_change']:.4f}; mean KL {m['kl_mean_bits']:.4g} bits; "
                     f"max |delta output| {m['max_abs_logit_diff']:.4g}")
        if self._moves():
            lines.append("  moves (true: reference -> candidate label): " + "; ".join(self._moves()))
        dv = self.divergence
        if dv.get("sites"):
            first = dv["first_diverging"]
            row = next((r for r in dv["sites"] if r["reference"] == first), None)
            lines.append("  sites: " + (f"first diverging site {first} (relative error "
                                        f"{_num(row['relative_error'])}, CKA {_num(row['cka'])}; tolerance "
                                        f"{dv['tolerance']:g}) of {len(dv['sites'])} matched"
                                        if row else f"no site diverges beyond {dv['tolerance']:g} "
                                        f"({len(dv['sites'])} matched)"))
        elif dv.get("skipped"):
            lines.append(f"  sites: not compared ({dv['skipped']})")
        r, c = self.models["reference"], self.models["candidate"]
        lines.append(f"  size {r['bytes']:,} -> {c['bytes']:,} bytes ({m['size_ratio']:.3f}x); "
                     f"MACs/sample {r['macs']:,} -> {c['macs']:,}; latency {r['latency_ms']:.3f} -> "
                     f"{c['latency_ms']:.3f} ms per batch of {self.params['batch_size']} ({m['latency_ratio']:.3f}x; "
                     f"at batch 1 {m.get('latency_ratio_batch1', float('nan')):.3f}x)")
        for note in self.notes:
            lines.append(f"  note: {note}")
        for ch in self.checks:
            mark = "ok  " if ch["passed"] else "FAIL"
            lines.append(f"  [{mark}] {ch['name']}: {ch['value']:.6g} (limit {ch['threshold']:.6g})")
        return "\n".join(lines)

    def markdown(self) -> str:
        """A Markdown summary for a pull-request comment."""
        m = self.metrics
        r, c = self.models["reference"], self.models["candidate"]
        head = "✅ passed" if self.passed else "❌ failed"
        out = [f"### infoprobe check: {head}", "",
               f"Reference `{Path(r['path']).name}` vs candidate `{Path(c['path']).name}` on "
               f"{self.data['n_samples']:,} samples of `{Path(self.data['path']).name}` (split {self.data['split']}).",
               "", "| check | value | threshold | |", "|---|---:|---:|:-:|"]
        for ch in self.checks:
            bound = "≥" if ch["name"] in LOWER_BOUNDS else "≤"
            out.append(f"| {ch['description']} (`{ch['name']}`) | {ch['value']:.4g} | {bound} {ch['threshold']:.4g} | "
                       f"{'✅' if ch['passed'] else '❌'} |")
        if self.notes:
            out += [""] + [f"> ⚠️ {n}" for n in self.notes]
        out += ["", "| | reference | candidate | ratio |", "|---|---:|---:|---:|"]
        if m.get("accuracy_reference") is not None:
            out.append(f"| top-1 accuracy | {m['accuracy_reference']:.4f} | {m['accuracy_candidate']:.4f} | |")
        out.append(f"| parameters | {r['parameters']:,} | {c['parameters']:,} | {c['parameters'] / r['parameters']:.3f} |")
        out.append(f"| file size (bytes) | {r['bytes']:,} | {c['bytes']:,} | {m['size_ratio']:.3f} |")
        out.append(f"| MACs per sample | {r['macs']:,} | {c['macs']:,} | "
                   f"{(c['macs'] / r['macs']) if r['macs'] else float('nan'):.3f} |")
        out.append(f"| latency (ms / batch of {self.params['batch_size']}) | {r['latency_ms']:.3f} | "
                   f"{c['latency_ms']:.3f} | {m['latency_ratio']:.3f} |")
        out.append(f"| latency (ms / sample at batch 1) | {r['latency_batch1_ms']:.3f} | "
                   f"{c['latency_batch1_ms']:.3f} | {m['latency_ratio_batch1']:.3f} |")
        st = self.statistics
        if st.get("accuracy_drop_ci") is not None:
            out += ["", f"Accuracy drop **{m['accuracy_drop']:+.4f}**: {self._interval()}."]
        if m.get("worst_class") is not None:
            out += ["", f"Worst class: **{m['worst_class']}** (accuracy drop {m['max_class_drop']:+.4f}); "
                    f"{m['label_change']:.2%} of predicted labels changed."]
            moved = [row for row in m["class_accuracy"] if row["reference_only"] or row["candidate_only"]]
            if moved:
                out += ["", f"<details><summary>Per class ({'Holm' if st['adjustment'] == 'holm' else 'Benjamini-Hochberg'}-adjusted McNemar p; upper bounds "
                        f"simultaneous at {st['confidence']:.0%})</summary>", "",
                        "| class | samples | reference | candidate | drop | upper bound | p (adjusted) |",
                        "|---:|---:|---:|---:|---:|---:|---:|"]
                for row in sorted(moved, key=lambda v: -v["drop"])[:MARKDOWN_ROWS]:
                    out.append(f"| {row['class']} | {row['n']:,} | {row['reference']:.4f} | {row['candidate']:.4f} | "
                               f"{row['drop']:+.4f} | {row['drop_upper']:+.4f} | {_p(row['p_adjusted'])}"
                               f"{' *' if row['significant'] else ''} |")
                if len(moved) > MARKDOWN_ROWS:
                    out.append(f"\n{len(moved) - MARKDOWN_ROWS} more classes in the JSON report (`--json`).")
                out += ["", "</details>"]
        if self._moves():
            out += ["", "Samples that changed label, by (true class: reference → candidate): "
                    + "; ".join(f"`{t}`" for t in self._moves(10)).replace("->", "→") + "."]
        dv = self.divergence
        if dv.get("sites"):
            first = dv["first_diverging"]
            out += ["", (f"First diverging site: **{first}**" if first else "No site diverges")
                    + f" (relative error > {dv['tolerance']:g}; {dv['n_samples']:,} samples).", "",
                    f"<details><summary>Per-site divergence ({len(dv['sites'])} matched sites)</summary>", "",
                    "| site | candidate site | matched by | compared on | relative error | unit correlation (mean / min) "
                    "| linear CKA | units that moved most |", "|---|---|---|---|---:|---:|---:|---|"]
            first_at = next((i for i, row in enumerate(dv["sites"]) if row["diverged"]), 0)
            start = max(0, min(first_at - 5, len(dv["sites"]) - MARKDOWN_ROWS))
            for row in dv["sites"][start:start + MARKDOWN_ROWS]:
                units = ", ".join(f"{u['unit']} ({u['moved']:.3g})" for u in row["moved_units"][:3])
                name = f"**{row['reference']}**" if row["diverged"] else row["reference"]
                out.append(f"| {name} | {row['candidate']} | {row['matched_by']} | {row['compared_on']} | "
                           f"{_num(row['relative_error'])} | {_num(row['correlation_mean'], '.4f')} / "
                           f"{_num(row['correlation_min'], '.4f')} | {_num(row['cka'], '.4f')} | {units} |")
            if len(dv["sites"]) > MARKDOWN_ROWS:
                out.append(f"\nSites {start + 1}-{start + MARKDOWN_ROWS} of {len(dv['sites'])}, from just before the "
                           "first diverging one; all are in the JSON report (`--json`).")
            out += ["", "</details>"]
        elif dv.get("skipped"):
            out += ["", f"Sites not compared: {dv['skipped']}."]
        return "\n".join(out) + "\n"

    def junit_xml(self) -> bytes:
        """JUnit XML: one ``testcase`` per threshold, a ``failure`` for each that does not hold."""
        suites = ET.Element("testsuites", name="infoprobe check", tests=str(len(self.checks)),
                            failures=str(sum(not c["passed"] for c in self.checks)), errors="0",
                            time=f"{self.params.get('seconds', 0):.3f}")
        suite = ET.SubElement(suites, "testsuite", name="infoprobe check", tests=str(len(self.checks)),
                              failures=str(sum(not c["passed"] for c in self.checks)), errors="0", skipped="0",
                              time=f"{self.params.get('seconds', 0):.3f}")
        props = ET.SubElement(suite, "properties")
        for k, v in (("reference", self.models["reference"]["path"]), ("candidate", self.models["candidate"]["path"]),
                     ("data", self.data["path"]), ("n_samples", self.data["n_samples"]),
                     ("first_diverging_site", self.divergence.get("first_diverging") or "")):
            ET.SubElement(props, "property", name=k, value=str(v))
        for ch in self.checks:
            case = ET.SubElement(suite, "testcase", classname="infoprobe.check", name=ch["name"], time="0")
            if not ch["passed"]:
                word = "is below" if ch["name"] in LOWER_BOUNDS else "exceeds"
                fail = ET.SubElement(case, "failure", type="threshold",
                                     message=f"{ch['metric']} = {ch['value']:.6g} {word} {ch['threshold']:.6g}")
                fail.text = f"{ch['description']}: {ch['value']:.6g} {word} {ch['threshold']:.6g}"
        ET.SubElement(suite, "system-out").text = self.summary()
        return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def check(reference, candidate, data: Dataset, *, thresholds: dict | None = None, scale="auto",
          batch_size: int = 1024, max_bytes: int = DEFAULT_MAX_BYTES, progress: bool = False,
          latency_repeats: int = 10, confidence: float | None = None, power: float = 0.8,
          divergence_samples: int = 1000, tolerance: float = DEFAULT_TOLERANCE, output: str | None = None) -> CheckResult:
    """Compare ``candidate`` with ``reference`` on labelled ``data`` and apply thresholds.

    Parameters
    ----------
    reference, candidate : path-like
        ONNX classifiers with the same inputs and outputs; one output holds logits (or
        probabilities) ``[N, classes]``: ``output``, else the one
        :func:`infoprobe.model.class_output` picks (never an integer label tensor).
    data : Dataset
        Samples (and labels, needed for the accuracy thresholds).
    thresholds : dict, optional
        Overrides of :data:`DEFAULT_THRESHOLDS` (``None`` switches one off).
    batch_size : int
        Rows per onnxruntime call.
    latency_repeats : int
        Runs per model and batch size of the latency measurement: both models warmed up,
        then run in turn on the first batch (:func:`infoprobe.modelstats.compare_latency`),
        at batch 1 and at ``batch_size``; ``latency_ms`` is the median at ``batch_size``,
        ``speedup`` = reference / candidate there (``min_speedup`` is its lower bound).
    confidence : float, optional
        Apply ``max_label_change``, ``max_accuracy_drop`` and ``max_class_drop`` to the upper
        confidence bounds at this level (:data:`UPPER_BOUNDS`, :func:`paired_statistics`)
        instead of the point estimates: the gate then fails unless the data show the drop is
        below the threshold. The intervals are reported at 0.95 when it is not given.
    power : float
        Power of the smallest detectable drop; a threshold below it is called out in ``notes``.
    divergence_samples : int
        Samples (evenly spaced over the data) on which the two models' unit sites are
        compared (:func:`infoprobe.analyses.divergence.site_divergence`); 0 switches it off.
    tolerance : float
        Relative error beyond which a site has diverged.
    output : str, optional
        The output that holds the class scores (``--output``); recorded in
        ``config["output"]`` with how it was chosen.

    Returns
    -------
    CheckResult

    Raises
    ------
    ModelError
        A model is unreadable or unsafe, or the two models' inputs/outputs differ (the
        message lists every difference).
    DataError
        Data that do not fit the models; accuracy thresholds without labels.
    ConfigError
        Unknown threshold names or negative values.
    """
    th = dict(DEFAULT_THRESHOLDS)
    for k, v in (thresholds or {}).items():
        if k not in THRESHOLDS:
            raise ConfigError(f"unknown threshold {k!r}; known: {', '.join(THRESHOLDS)}")
        if v is not None and (not np.isfinite(v) or v < 0):
            raise ConfigError(f"threshold {k} must be a non-negative number")
        th[k] = v
    if data.y is None and any(th[k] is not None for k in _NEEDS_LABELS):
        raise DataError(f"{data.path} has no labels; accuracy thresholds need them (switch off "
                        f"{', '.join(k for k in _NEEDS_LABELS if th[k] is not None)} or read the labels' "
                        "array: y_key, --y-key)")
    t0 = time.perf_counter()
    files = {"reference": load_onnx(reference, max_bytes=max_bytes), "candidate": load_onnx(candidate, max_bytes=max_bytes)}
    for f in files.values():
        batch_size = runtime_rows(f, batch_size)
    ref_model, cand_model = files["reference"].ir(), files["candidate"].ir()
    problems = compatibility(ref_model, cand_model)
    if problems:
        raise ModelError("the candidate is not compatible with the reference: " + "; ".join(problems))
    inputs, outputs = _io(ref_model)
    if len(inputs) != 1:
        raise ModelError(f"the models have {len(inputs)} data inputs; infoprobe check compares classifiers "
                         "with one input")
    if isinstance(data.x, Inputs):
        raise DataError("infoprobe check compares classifiers with one input; the data holds several arrays")
    choice = class_output(ref_model.graph, output, reference)
    if choice["problem"]:
        raise ModelError(f"{choice['problem']}; infoprobe check compares class scores (name them with --output)")
    in_name, out_name = inputs[0].name, choice["name"]
    columns = class_labels(files["reference"].proto, reference)
    in_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape.dims) if inputs[0].shape else ()
    threads = default_threads()
    sessions = {"reference": make_session(ref_model, threads=threads, spin=False),
                "candidate": make_session(cand_model, threads=threads, spin=False)}
    thresholds_of = {"reference": output_threshold(ref_model, out_name),
                     "candidate": output_threshold(cand_model, out_name)}
    batch_size = rows_within(4 * int(np.prod(data.x.shape[1:], dtype=np.float64)), batch_size, share=1 / 16,
                             what="one input sample")
    factor = resolve_scale(data.x, scale)
    in_dtype = inputs[0].type.dtype.numpy() if inputs[0].type is not None else np.float32

    def prepare(raw):
        xb = prepare_inputs(raw, in_shape or (None, *data.x.shape[1:]), factor, input_name=in_name)
        return xb if xb.dtype == in_dtype else xb.astype(in_dtype)

    def batch_inputs(start):  # converted batch by batch: memory stays bounded by the batch
        return prepare(data.x[start:start + batch_size])

    n = len(data.x)
    if n == 0:
        raise DataError("no samples to compare the models on")
    y = data.y
    kl_sum, max_diff = 0.0, 0.0
    pred = {k: np.empty(n, np.int64) for k in sessions}
    times = {k: [] for k in sessions}
    is_prob = {}
    for start in tqdm(range(0, n, batch_size), desc="check", unit="batch", disable=not progress):
        xb = batch_inputs(start)
        outs = {}
        for k, sess in sessions.items():
            t = time.perf_counter()
            try:
                outs[k] = sess.run([out_name], {in_name: xb})[0]
            except Exception as exc:
                raise ort_error(exc, f"running the {k}") from None
            times[k].append(time.perf_counter() - t)
            if k not in is_prob:
                is_prob[k] = _looks_like_probabilities(outs[k])
            if not class_score_shape(outs[k]):
                raise ModelError(f"output {out_name!r} has per-sample shape {list(outs[k].shape[1:])}, not class "
                                 "scores [N, classes]; infoprobe check compares classifiers (name the class scores "
                                 "with --output)")
            if start == 0 and y is not None:
                check_labels(y, outs[k], columns, output=out_name, path=str(files[k].path))
            pred[k][start:start + len(xb)] = predicted_labels(outs[k], thresholds_of[k], columns)
        a, b = outs["reference"], outs["candidate"]
        if a.shape != b.shape:
            raise ModelError(f"output {out_name!r} has shape {list(a.shape)} (reference) but {list(b.shape)} "
                             "(candidate) on the same batch")
        lp_a, lp_b = _log_probs(a, is_prob["reference"]), _log_probs(b, is_prob["candidate"])
        kl_sum += float((np.exp(lp_a) * (lp_a - lp_b)).sum()) / np.log(2.0)
        max_diff = max(max_diff, float(np.abs(a.astype(np.float64) - b).max()))
    level = REPORT_CONFIDENCE if confidence is None else confidence
    st = paired_statistics(pred["reference"], pred["candidate"], y, confidence=level, power=power)
    moved = dict(confusions(y, pred["reference"], pred["candidate"]), predicted=pred)
    metrics = {"label_change": st["label_change"], "label_change_upper": st["label_change_upper"],
               "kl_mean_bits": max(kl_sum / n, 0.0), "max_abs_logit_diff": max_diff,
               "accuracy_reference": None, "accuracy_candidate": None, "accuracy_drop": None,
               "accuracy_drop_upper": None, "max_class_drop": None, "max_class_drop_upper": None,
               "worst_class": None, "class_accuracy": None}
    if y is not None:
        rows = st["classes"]
        worst = max(rows, key=lambda r: r["drop"])
        metrics.update(accuracy_reference=float((pred["reference"] == y).mean()),
                       accuracy_candidate=float((pred["candidate"] == y).mean()),
                       accuracy_drop=st["accuracy_drop"], accuracy_drop_upper=st["accuracy_drop_upper"],
                       max_class_drop=worst["drop"], max_class_drop_upper=st["max_class_drop_upper"],
                       worst_class=worst["class"], class_accuracy=rows)
    divergence = _divergence(reference, candidate, data, divergence_samples, tolerance, max_bytes, progress,
                             lambda rows: prepare(data.x[rows]))
    lat = compare_latency(sessions, in_name, {in_name: batch_inputs(0)}, batches=(1, batch_size),
                          repeats=latency_repeats)
    models = {}
    for k, path, model in (("reference", reference, ref_model), ("candidate", candidate, cand_model)):
        cost = model_cost(model, files[k].bytes)
        models[k] = {"path": str(path), "sha256": files[k].sha256, "parameters": cost["parameters"],
                     "bytes": cost["bytes"], "bytes_by_dtype": cost["bytes_by_dtype"],
                     "macs": cost["macs"], "latency_ms": lat[k][-1]["median_ms"],
                     "latency_batch1_ms": lat[k][0]["median_ms"], "latency": lat[k],
                     "seconds_total": float(np.sum(times[k]))}
    metrics["latency_ratio"] = models["candidate"]["latency_ms"] / models["reference"]["latency_ms"]
    metrics["speedup"] = 1.0 / metrics["latency_ratio"]
    metrics["latency_ratio_batch1"] = models["candidate"]["latency_batch1_ms"] / models["reference"]["latency_batch1_ms"]
    metrics["size_ratio"] = models["candidate"]["bytes"] / models["reference"]["bytes"]
    checks = []
    for name, limit in th.items():
        if limit is None:
            continue
        metric, desc = THRESHOLDS[name]
        if confidence is not None and name in UPPER_BOUNDS:
            metric, desc = UPPER_BOUNDS[name], f"{desc}, {confidence:.0%} upper confidence bound"
        value = metrics[metric]
        checks.append({"name": name, "metric": metric, "description": desc, "value": float(value),
                       "threshold": float(limit),
                       "passed": bool(value >= limit if name in LOWER_BOUNDS else value <= limit)})
    statistics = {k: v for k, v in st.items() if k != "classes"}
    notes = _notes(st, th, models, batch_size, confidence)
    return CheckResult(metrics, checks, models,
                       {"path": str(data.path), "sha256": data.sha256, "split": data.split, "n_samples": n},
                       {"thresholds": th, "batch_size": batch_size, "confidence": confidence, "power": power,
                        "output": choice, "seconds": time.perf_counter() - t0},
                       statistics=statistics, confusions=moved, divergence=divergence,
                       notes=notes + divergence.get("notes", []))


def _divergence(reference, candidate, data, samples, tolerance, max_bytes, progress, prepare) -> dict:
    """:func:`~infoprobe.analyses.divergence.site_divergence` on ``samples`` rows evenly spaced
    over ``data``, or ``{"skipped": reason}`` when it cannot run."""
    if samples <= 0:
        return {"skipped": "switched off (divergence_samples = 0)"}
    from ..model import load_model
    from .divergence import site_divergence

    try:
        ref, cand = load_model(reference, max_bytes=max_bytes), load_model(candidate, max_bytes=max_bytes)
    except ModelError as exc:
        return {"skipped": f"the unit sites could not be read: {exc}"}
    if not ref.layers or not cand.layers:
        return {"skipped": "a model has no unit site infoprobe recognises"}
    n = len(data.x)
    per_row = 4 * int(np.prod(data.x.shape[1:], dtype=np.float64))
    k = rows_within(per_row, min(samples, n), share=1 / 16, what="one input sample")
    rows = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
    try:
        return site_divergence(ref, cand, prepare(rows), tolerance=tolerance, progress=progress)
    except BudgetError as exc:                  # the gate itself does not need the sites: say so, go on
        return {"skipped": f"over the memory budget: {exc}"}


def _notes(st: dict, th: dict, models: dict, batch_size: int, confidence: float | None = None) -> list:
    """Warnings of a check: thresholds the data set is too small to test, classes whose change
    is significant, a candidate slower than its reference."""
    notes = []
    alpha, power = st["alpha"], st["power"]
    if confidence is not None:                  # bounds that even an identical candidate cannot get under
        for name, n_of, level in (("max_accuracy_drop", [st["n"]] if st.get("classes") else [], st["confidence"]),
                                  ("max_class_drop", [r["n"] for r in st.get("classes") or []],
                                   st.get("class_bound_confidence"))):
            theta = th.get(name)
            floor = max((drop_interval(0, 0, m, level, side="upper")[1] for m in n_of), default=0.0)
            if theta is not None and floor > theta:
                notes.append(f"{name} = {theta:g} cannot pass at confidence {confidence:g}: with "
                             f"{min(n_of):,} samples{' in the smallest class' if name == 'max_class_drop' else ''} "
                             f"even a candidate identical to the reference has an upper bound of {floor:.4f}; "
                             "use more samples or a larger threshold")
    theta = th.get("max_accuracy_drop")        # power matters where the gate passes: a fail is a fail
    if theta and st.get("detectable_drop") is not None and st["detectable_drop"] > theta >= st["accuracy_drop"]:
        pd = (st["reference_only"] + st["candidate_only"]) / st["n"]
        notes.append(f"{st['n']:,} samples are too few to test max_accuracy_drop = {theta:g}: the smallest drop "
                     f"McNemar's test detects here (alpha {alpha:.2g}, power {power:.0%}) is "
                     f"{st['detectable_drop']:.4f}; about {samples_needed(theta, pd, alpha, power):,} samples "
                     "would detect it, so a pass says little")
    theta = th.get("max_class_drop")
    if theta and st.get("classes"):
        small = [r for r in st["classes"] if r["detectable_drop"] > theta >= r["drop"]]
        if small:
            dd = [r["detectable_drop"] for r in small]
            notes.append(f"{len(small)} of {len(st['classes'])} classes have too few samples "
                         f"({min(r['n'] for r in small):,}-{max(r['n'] for r in small):,}) to test max_class_drop = "
                         f"{theta:g}: their smallest detectable drops are {min(dd):.3f}-{max(dd):.3f}")
    sig = [r for r in st.get("classes") or [] if r["significant"] and r["drop"] != 0]
    if sig:
        sig.sort(key=lambda r: r["p_adjusted"])
        notes.append("classes whose accuracy changed significantly (McNemar, "
                     f"{'Holm' if st['adjustment'] == 'holm' else 'Benjamini-Hochberg'} over "
                     f"{len(st['classes'])} classes, alpha {alpha:.2g}): "
                     + ", ".join(f"{r['class']} (accuracy {-r['drop']:+.3f}, p {_p(r['p_adjusted'])})" for r in sig[:8])
                     + (f" and {len(sig) - 8} more" if len(sig) > 8 else ""))
    r, c = models["reference"], models["candidate"]
    for at, batch in ((-1, batch_size), (0, 1)):          # the throughput batch, then batch 1
        ref, cand = r["latency"][at], c["latency"][at]
        ratio = cand["median_ms"] / ref["median_ms"]
        if ratio > SLOWER and cand["p10_ms"] > ref["p90_ms"]:
            notes.append(f"the candidate is {ratio:.2f}x slower than the reference at batch {batch} "
                         f"({cand['median_ms']:.3f} vs {ref['median_ms']:.3f} ms, median of interleaved runs)"
                         + ("; onnxruntime's integer kernels can be slower than its float ones on this CPU"
                            if any(k.startswith("int") or k.startswith("uint") for k in c["bytes_by_dtype"]) else ""))
    return notes


def changed_samples_csv(res: CheckResult, data: Dataset) -> bytes:
    """CSV of the samples whose predicted label changed: ``row`` (in the data split),
    ``index`` (the sample's index in the file, :attr:`Dataset.index`), ``true`` (empty
    without labels), ``reference`` and ``candidate`` (predicted labels)."""
    rows = res.changed_samples
    pred = res.confusions.get("predicted", {})
    lines = ["row,index,true,reference,candidate"]
    index = data.index if data.index is not None else np.arange(len(data.x))
    for i in rows:
        true = "" if data.y is None else str(int(data.y[i]))
        lines.append(f"{int(i)},{int(index[i])},{true},{int(pred['reference'][i])},{int(pred['candidate'][i])}")
    return ("\n".join(lines) + "\n").encode()


def gate(reference, candidate, data: Dataset, *, config=None, thresholds: dict | None = None, junit=None,
         markdown=None, changed_samples=None, overwrite: bool = False, **kw) -> CheckResult:
    """The CI gate: :func:`check` with thresholds from the defaults, then the TOML file
    ``config`` (:func:`load_thresholds`), then ``thresholds``; the JUnit XML and Markdown
    reports written where asked.

    Parameters
    ----------
    reference, candidate, data :
        As for :func:`check`.
    config : path-like, optional
        TOML file of thresholds.
    thresholds : dict, optional
        Overrides of the file's thresholds (``None`` switches one off).
    junit, markdown, changed_samples : path-like, optional
        Reports to write (:meth:`CheckResult.junit_xml`, :meth:`CheckResult.markdown`,
        :func:`changed_samples_csv`); an existing one is refused before any work unless
        ``overwrite``.
    **kw
        Passed to :func:`check` (``scale``, ``batch_size``, ``max_bytes``, ``progress``,
        ``confidence``, ``power``, ``divergence_samples``, ``tolerance``).

    Returns
    -------
    CheckResult
        Its ``passed`` is the gate's verdict.

    Raises
    ------
    OutputExistsError, ConfigError, ModelError, DataError
    """
    check_outputs([p for p in (junit, markdown, changed_samples) if p is not None], overwrite)
    th = load_thresholds(config) if config else {}
    th.update(thresholds or {})
    res = check(reference, candidate, data, thresholds=th, **kw)
    if junit:
        atomic_write_bytes(junit, res.junit_xml())
    if markdown:
        atomic_write_bytes(markdown, res.markdown().encode())
    if changed_samples:
        atomic_write_bytes(changed_samples, changed_samples_csv(res, data))
    return res
