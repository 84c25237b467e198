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
from ..errors import ConfigError, DataError, ModelError
from ..limits import rows_within
from ..model import DEFAULT_MAX_BYTES, load_onnx, output_threshold, predicted_labels, runtime_rows
from ..modelstats import compare_latency, model_cost
from ..results import atomic_write_bytes, check_outputs
from ..runner import default_threads, make_session, ort_error

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


@dataclass
class CheckResult:
    """Outcome of :func:`check`: metrics, one entry per threshold, and the models' costs."""

    metrics: dict
    checks: list
    models: dict
    data: dict
    params: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": self.checks, "metrics": self.metrics, "models": self.models,
                "data": self.data, "parameters": self.params}

    def summary(self) -> str:
        """A short human summary (a few lines)."""
        m = self.metrics
        lines = [f"infoprobe check: {'PASSED' if self.passed else 'FAILED'} "
                 f"({sum(not c['passed'] for c in self.checks)} of {len(self.checks)} checks failed) "
                 f"on {self.data['n_samples']} samples"]
        if m.get("accuracy_reference") is not None:
            lines.append(f"  accuracy {m['accuracy_reference']:.4f} -> {m['accuracy_candidate']:.4f} "
                         f"(drop {m['accuracy_drop']:+.4f}); worst class {m['worst_class']} "
                         f"(drop {m['max_class_drop']:+.4f})")
        lines.append(f"  labels changed {m['label_change']:.4f}; mean KL {m['kl_mean_bits']:.4g} bits; "
                     f"max |delta output| {m['max_abs_logit_diff']:.4g}")
        r, c = self.models["reference"], self.models["candidate"]
        lines.append(f"  size {r['bytes']:,} -> {c['bytes']:,} bytes ({m['size_ratio']:.3f}x); "
                     f"MACs/sample {r['macs']:,} -> {c['macs']:,}; latency {r['latency_ms']:.3f} -> "
                     f"{c['latency_ms']:.3f} ms per batch of {self.params['batch_size']} ({m['latency_ratio']:.3f}x; "
                     f"at batch 1 {m.get('latency_ratio_batch1', float('nan')):.3f}x)")
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
            out.append(f"| {ch['description']} (`{ch['name']}`) | {ch['value']:.4g} | ≤ {ch['threshold']:.4g} | "
                       f"{'✅' if ch['passed'] else '❌'} |")
        out += ["", "| | reference | candidate | ratio |", "|---|---:|---:|---:|"]
        if m.get("accuracy_reference") is not None:
            out.append(f"| top-1 accuracy | {m['accuracy_reference']:.4f} | {m['accuracy_candidate']:.4f} | |")
        out.append(f"| parameters | {r['parameters']:,} | {c['parameters']:,} | {c['parameters'] / r['parameters']:.3f} |")
        out.append(f"| file size (bytes) | {r['bytes']:,} | {c['bytes']:,} | {m['size_ratio']:.3f} |")
        out.append(f"| MACs per sample | {r['macs']:,} | {c['macs']:,} | "
                   f"{(c['macs'] / r['macs']) if r['macs'] else float('nan'):.3f} |")
        out.append(f"| latency (ms / batch of {self.params['batch_size']}) | {r['latency_ms']:.3f} | "
                   f"{c['latency_ms']:.3f} | {m['latency_ratio']:.3f} |")
        if m.get("worst_class") is not None:
            out += ["", f"Worst class: **{m['worst_class']}** (accuracy drop {m['max_class_drop']:+.4f}); "
                    f"{m['label_change']:.2%} of predicted labels changed."]
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
                     ("data", self.data["path"]), ("n_samples", self.data["n_samples"])):
            ET.SubElement(props, "property", name=k, value=str(v))
        for ch in self.checks:
            case = ET.SubElement(suite, "testcase", classname="infoprobe.check", name=ch["name"], time="0")
            if not ch["passed"]:
                fail = ET.SubElement(case, "failure", type="threshold",
                                     message=f"{ch['metric']} = {ch['value']:.6g} exceeds {ch['threshold']:.6g}")
                fail.text = f"{ch['description']}: {ch['value']:.6g} > {ch['threshold']:.6g}"
        ET.SubElement(suite, "system-out").text = self.summary()
        return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def check(reference, candidate, data: Dataset, *, thresholds: dict | None = None, scale="auto",
          batch_size: int = 1024, max_bytes: int = DEFAULT_MAX_BYTES, progress: bool = False,
          latency_repeats: int = 10) -> CheckResult:
    """Compare ``candidate`` with ``reference`` on labelled ``data`` and apply thresholds.

    Parameters
    ----------
    reference, candidate : path-like
        ONNX classifiers with the same inputs and outputs; the first graph output holds
        logits (or probabilities) ``[N, classes]``.
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
    in_name, out_name = inputs[0].name, outputs[0].name
    in_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape.dims) if inputs[0].shape else ()
    threads = default_threads()
    sessions = {"reference": make_session(ref_model, threads=threads, spin=False),
                "candidate": make_session(cand_model, threads=threads, spin=False)}
    thresholds_of = {"reference": output_threshold(ref_model), "candidate": output_threshold(cand_model)}
    batch_size = rows_within(4 * int(np.prod(data.x.shape[1:], dtype=np.float64)), batch_size, share=1 / 16,
                             what="one input sample")
    factor = resolve_scale(data.x, scale)
    in_dtype = inputs[0].type.dtype.numpy() if inputs[0].type is not None else np.float32

    def batch_inputs(start):  # converted batch by batch: memory stays bounded by the batch
        xb = prepare_inputs(data.x[start:start + batch_size], in_shape or (None, *data.x.shape[1:]), factor,
                            input_name=in_name)
        return xb if xb.dtype == in_dtype else xb.astype(in_dtype)

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
            pred[k][start:start + len(xb)] = predicted_labels(outs[k], thresholds_of[k])
        a, b = outs["reference"], outs["candidate"]
        if a.shape != b.shape:
            raise ModelError(f"output {out_name!r} has shape {list(a.shape)} (reference) but {list(b.shape)} "
                             "(candidate) on the same batch")
        lp_a, lp_b = _log_probs(a, is_prob["reference"]), _log_probs(b, is_prob["candidate"])
        kl_sum += float((np.exp(lp_a) * (lp_a - lp_b)).sum()) / np.log(2.0)
        max_diff = max(max_diff, float(np.abs(a.astype(np.float64) - b).max()))
    changed = int((pred["reference"] != pred["candidate"]).sum())
    metrics = {"label_change": changed / n, "kl_mean_bits": max(kl_sum / n, 0.0), "max_abs_logit_diff": max_diff,
               "accuracy_reference": None, "accuracy_candidate": None, "accuracy_drop": None,
               "max_class_drop": None, "worst_class": None, "class_accuracy": None}
    if y is not None:
        acc = {k: (pred[k] == y) for k in sessions}
        classes = np.unique(y)
        per = {k: np.array([acc[k][y == c].mean() for c in classes]) for k in sessions}
        drops = per["reference"] - per["candidate"]
        worst = int(np.argmax(drops))
        metrics.update(accuracy_reference=float(acc["reference"].mean()),
                       accuracy_candidate=float(acc["candidate"].mean()),
                       accuracy_drop=float(acc["reference"].mean() - acc["candidate"].mean()),
                       max_class_drop=float(drops[worst]), worst_class=int(classes[worst]),
                       class_accuracy=[{"class": int(c), "reference": float(r), "candidate": float(cn),
                                        "drop": float(d)} for c, r, cn, d in
                                       zip(classes, per["reference"], per["candidate"], drops)])
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
        value = metrics[metric]
        checks.append({"name": name, "metric": metric, "description": desc, "value": float(value),
                       "threshold": float(limit),
                       "passed": bool(value >= limit if name in LOWER_BOUNDS else value <= limit)})
    return CheckResult(metrics, checks, models,
                       {"path": str(data.path), "sha256": data.sha256, "split": data.split, "n_samples": n},
                       {"thresholds": th, "batch_size": batch_size, "seconds": time.perf_counter() - t0})


def gate(reference, candidate, data: Dataset, *, config=None, thresholds: dict | None = None, junit=None,
         markdown=None, overwrite: bool = False, **kw) -> CheckResult:
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
    junit, markdown : path-like, optional
        Reports to write (:meth:`CheckResult.junit_xml`, :meth:`CheckResult.markdown`); an
        existing one is refused before any work unless ``overwrite``.
    **kw
        Passed to :func:`check` (``scale``, ``batch_size``, ``max_bytes``, ``progress``).

    Returns
    -------
    CheckResult
        Its ``passed`` is the gate's verdict.

    Raises
    ------
    OutputExistsError, ConfigError, ModelError, DataError
    """
    check_outputs([p for p in (junit, markdown) if p is not None], overwrite)
    th = load_thresholds(config) if config else {}
    th.update(thresholds or {})
    res = check(reference, candidate, data, thresholds=th, **kw)
    if junit:
        atomic_write_bytes(junit, res.junit_xml())
    if markdown:
        atomic_write_bytes(markdown, res.markdown().encode())
    return res
