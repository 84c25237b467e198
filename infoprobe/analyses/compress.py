"""``infoprobe prune``: apply a plan, save the smaller model, verify it, and report its cost."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..data import Dataset, feeds, model_inputs, resolve_scale, row_bytes
from ..errors import ConfigError, InfoprobeError, ModelError, PlanError
from ..limits import rows_within
from ..model import LoadedModel, load_model, runtime_rows
from ..modelstats import compare_latency, model_cost
from ..plan import PruningPlan
from ..prune import apply_plan, dependency_groups, save_model
from ..results import check_outputs
from ..runner import Runner, default_threads, make_session, ort_error

#: Largest |pruned - reference| accepted, relative to max(1, max |reference|).
VERIFY_TOLERANCE = 1e-5


def latency_inputs(lm: LoadedModel, data: Dataset | None, batch: int, scale) -> np.ndarray:
    """A batch for latency measurements: the first ``batch`` samples of ``data``, or uniform
    random inputs of the model's static input shape, at most as many rows as fit in a
    sixteenth of the memory budget.

    Raises
    ------
    ConfigError
        Symbolic input dimensions and no data.
    BudgetError
        One input sample alone is larger than the budget allows.
    """
    dims = lm.input_shape[1:] if data is None else None
    if data is None and any(d is None for d in dims):
        raise ConfigError(f"the input {lm.input_name!r} has symbolic dimensions {list(lm.input_shape)}; "
                          "pass data (--data) so that latency is measured on real inputs")
    per_sample = 4 * int(np.prod(dims, dtype=np.float64)) if data is None else row_bytes(data.x)
    batch = rows_within(per_sample, batch, share=1 / 16, what=f"one sample of the input {lm.input_name!r}")
    if data is not None:
        return model_inputs(lm, data.x[:batch], resolve_scale(data.x, scale))
    return np.random.default_rng(0).random((batch, *dims), dtype=np.float32)


def _run_once(session, lm: LoadedModel, x: np.ndarray, what: str) -> np.ndarray:
    try:
        return session.run([lm.output_name], feeds(lm.input_name, x))[0]
    except Exception as exc:
        raise ort_error(exc, what) from None


class PruneReport(dict):
    """The report of :func:`prune_model`: a dict (JSON as it is) that summarises itself."""

    @property
    def mismatch(self) -> bool:
        """Whether the verification on data found the pruned model different from the plan
        applied by masks (a defect: the plan was not folded exactly)."""
        ver = self.get("verification")
        return bool(ver) and not ver["exact"]

    def summary(self) -> str:
        """Units kept per pruned layer; parameters, file size, MACs and latency of both models
        with their ratios; the verification on data, when it ran."""
        lines = [f"{lay['layer']:<20} {lay['units']:>6} -> {lay['kept']:<6} units"
                 for lay in self["layers"] if lay["kept"] != lay["units"]]
        o, p, r = self["original"], self["pruned"], self["ratios"]
        lat = f"latency (ms/{o['latency']['batch']})"
        lines += [f"{'':<22} {'original':>14} {'pruned':>14} {'ratio':>7}",
                  f"{'parameters':<22} {o['parameters']:>14,} {p['parameters']:>14,} {r['parameters']:>7.3f}",
                  f"{'file size (bytes)':<22} {o['bytes']:>14,} {p['bytes']:>14,} {r['bytes']:>7.3f}",
                  f"{'MACs per sample':<22} {o['macs']:>14,} {p['macs']:>14,} {r['macs'] or float('nan'):>7.3f}",
                  f"{lat:<22} {o['latency']['median_ms']:>14.4f} {p['latency']['median_ms']:>14.4f} "
                  f"{r['latency']:>7.3f}"]
        if "latency_batch1" in o:
            lines.append(f"{'latency (ms/1)':<22} {o['latency_batch1']['median_ms']:>14.4f} "
                         f"{p['latency_batch1']['median_ms']:>14.4f} {r['latency_batch1']:>7.3f}")
        lines += [f"note: {n}" for n in self.get("notes", [])]
        lines += [f"left whole: {', '.join(x['layers'])}: {x['reason']}" for x in self.get("left_out", [])]
        ver = self.get("verification")
        if ver:
            acc = (f"; accuracy {ver['accuracy_original']:.4f} -> {ver['accuracy_pruned']:.4f}"
                   if "accuracy_pruned" in ver else "")
            lines.append(f"verified on {ver['n_samples']} samples: max |delta| vs the plan applied by masks "
                         f"{ver['max_abs_diff']:.2e} ({'exact' if ver['exact'] else 'MISMATCH'}), vs the original "
                         f"{ver['max_abs_diff_original']:.2e}; labels kept "
                         f"{ver['label_agreement_with_original']:.4f}{acc}")
        return "\n".join(lines)


def prune_model(model, plan, out, *, data: Dataset | None = None, scale="auto", latency_batch: int = 64,
                repeats: int = 30, overwrite: bool = False, batch_size: int = 4096) -> PruneReport:
    """Prune ``model`` by ``plan``, validate it, write it to ``out``, and compare it with the original.

    The pruned model is written only after it passed ``onnx.checker`` (full check) and ran
    through onnxruntime on one batch with the original's output shape; the file appears
    under ``out`` in one rename (or with the command's other results, see
    :func:`infoprobe.results.result_set`), never half-written.

    Parameters
    ----------
    model : LoadedModel or path-like
    plan : PruningPlan or path-like
    out : path-like
        The pruned ``.onnx`` (never the input file).
    data : Dataset, optional
        Real inputs: the pruned model is checked against the original with the plan applied
        through masks (:meth:`~infoprobe.runner.Runner.plan_feeds`) on all of them, and
        accuracies are reported when labels exist. Its first ``latency_batch`` rows are
        the latency batch.
    latency_batch, repeats : int
        Throughput batch size and repetitions of the onnxruntime latency measurement
        (:func:`infoprobe.modelstats.compare_latency`: both models warmed up, then run in
        turn; median and spread at batch 1 and at ``latency_batch``). The batch is capped to
        fit a sixteenth of the memory budget.

    Returns
    -------
    PruneReport
        A dict: ``original`` and ``pruned``: parameters, bytes, per-sample MACs, ``latency``
        (throughput batch) and ``latency_batch1``; ``ratios`` (pruned / original); ``notes``
        (a measured speed-up under 80% of the MAC-predicted one); ``left_out`` (layers of
        dependency groups that cannot be pruned, left whole, with the reason); ``layers`` (units before and after);
        ``verification`` (with data: max |delta output| against the plan applied by masks
        and against the original, tolerance, label agreement with the original,
        accuracies); ``out``.

    Raises
    ------
    ModelError, PlanError, DataError, ConfigError, OutputExistsError, BudgetError
        ``PlanError`` also when the pruned model would not run (nothing is written then).
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    pl = plan if isinstance(plan, PruningPlan) else PruningPlan.load(plan)
    out = Path(out)
    check_outputs([out], overwrite)
    if out.resolve() == lm.path.resolve():
        raise ConfigError("the output (out, --out) is the input model; write the pruned model elsewhere")
    pl, left_out = prunable_part(lm, pl)
    pruned = apply_plan(lm, pl)
    threads = default_threads()
    x_lat = latency_inputs(lm, data, runtime_rows(lm.source, latency_batch), scale)
    sessions = {"original": make_session(lm.ir_model, threads=threads)}
    try:
        sessions["pruned"] = make_session(pruned, threads=threads)
    except ModelError as exc:
        raise PlanError(f"the pruned model cannot be loaded by onnxruntime, so it was not written: {exc}") from None
    ref_out = _run_once(sessions["original"], lm, x_lat[:1], f"running {lm.path.name}")
    try:
        got_out = _run_once(sessions["pruned"], lm, x_lat[:1], "running the pruned model")
    except InfoprobeError as exc:
        raise PlanError(f"the pruned model does not run, so it was not written: {exc}") from None
    if got_out.shape != ref_out.shape:
        raise PlanError(f"the pruned model's output has shape {list(got_out.shape)} instead of "
                        f"{list(ref_out.shape)}, so it was not written")
    ver = None if data is None else _verify(lm, pl, sessions["pruned"], data, scale, threads, batch_size)
    if ver is not None and not ver["exact"]:
        raise PlanError(f"the pruned model differs from the plan applied by masks by {ver['max_abs_diff']:.3g} "
                        f"(tolerance {ver['tolerance']:.3g}) on {ver['n_samples']} samples, so it was not written")
    save_model(pruned, out, overwrite=overwrite)
    report = PruneReport({"out": str(out), "plan_sha256": pl.sha256(), "generator": pl.generator,
              "left_out": left_out,
              "layers": [{"layer": lay.name, "units": lay.units,
                          "kept": lay.units - (len(pl.layers[lay.name].remove) if lay.name in pl.layers else 0)}
                         for lay in lm.layers]})
    lat = compare_latency(sessions, lm.input_name, x_lat, batches=(1, len(x_lat)), repeats=repeats)
    for key, ir_model, nbytes in (("original", lm.ir_model, lm.file_bytes),
                                  ("pruned", pruned, ir.to_proto(pruned).ByteSize())):
        cost = model_cost(ir_model, nbytes)
        cost["latency_batch1"], cost["latency"] = lat[key][0], lat[key][-1]
        report[key] = cost
    o, p = report["original"], report["pruned"]
    report["ratios"] = {"parameters": p["parameters"] / o["parameters"], "bytes": p["bytes"] / o["bytes"],
                        "macs": p["macs"] / o["macs"] if o["macs"] else None,
                        "latency": p["latency"]["median_ms"] / o["latency"]["median_ms"],
                        "latency_batch1": p["latency_batch1"]["median_ms"] / o["latency_batch1"]["median_ms"]}
    report["notes"] = speedup_notes(report["ratios"])
    if ver is not None:
        report["verification"] = ver
    return report


def speedup_notes(ratios: dict, share: float = 0.8) -> list:
    """Lines saying where the measured speed-up falls short of ``share`` of the speed-up the
    MACs predict (``1 / macs ratio``), at either batch size of :func:`prune_model`."""
    notes = []
    if not ratios.get("macs"):
        return notes
    predicted = 1.0 / ratios["macs"]
    for key, what in (("latency_batch1", "batch 1"), ("latency", "the throughput batch")):
        got = 1.0 / ratios[key]
        if predicted > 1.05 and got < 1 + share * (predicted - 1):
            notes.append(f"at {what}: measured speed-up {got:.2f}x, the MACs predict {predicted:.2f}x (time goes "
                         "to per-op overheads, memory traffic or channel counts the kernels do not favour: try "
                         "plan --round-to 8 or 16)")
    return notes


def prunable_part(lm: LoadedModel, plan: PruningPlan) -> tuple:
    """The plan without the layers of dependency groups that cannot be pruned
    (:func:`infoprobe.prune.dependency_groups`), and the list of ``{"layers", "reason"}``
    left out (:class:`PruneReport` prints them).

    Raises
    ------
    PlanError
        Every layer the plan removes units from is left out.
    """
    left, drop = [], set()
    for g in dependency_groups(lm):
        hit = [m for m in g.sites if m in plan.layers and len(plan.layers[m].remove)]
        if hit and g.refused:
            left.append({"layers": hit, "reason": g.refused})
            drop.update(hit)
    if not drop:
        return plan, []
    kept = {n: lp for n, lp in plan.layers.items() if n not in drop}
    if not any(len(lp.remove) for lp in kept.values()):
        raise PlanError("nothing in the plan can be pruned: " + "; ".join(x["reason"] for x in left))
    return PruningPlan(kept, plan.model_sha256, dict(plan.generator, left_out=[x["layers"] for x in left])), left


def _verify(lm, pl, session, data, scale, threads, batch_size) -> dict:
    """The pruned model (``session``) against the plan applied by masks, and the original."""
    x = model_inputs(lm, data.x, resolve_scale(data.x, scale))
    ref = Runner(lm, mix=not all(lp.is_constant for lp in pl.layers.values()), threads=threads)
    expected = ref.run(x, feeds=ref.plan_feeds(pl), outputs=[lm.output_name], batch_size=batch_size)[lm.output_name]
    intact = ref.run(x, outputs=[lm.output_name], batch_size=batch_size)[lm.output_name]
    got = np.concatenate([_run_once(session, lm, x[i:i + batch_size], "running the pruned model")
                          for i in range(0, len(x), batch_size)])
    diff = float(np.abs(got - expected).max())
    tol = VERIFY_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    pred_got, pred_intact = lm.predicted_labels(got), lm.predicted_labels(intact)
    ver = {"n_samples": len(x), "max_abs_diff": diff, "tolerance": tol, "exact": diff <= tol,
           "max_abs_diff_original": float(np.abs(got - intact).max()),
           "label_agreement_with_original": float((pred_got == pred_intact).mean())}
    if data.y is not None:
        ver["accuracy_original"] = float((pred_intact == data.y).mean())
        ver["accuracy_pruned"] = float((pred_got == data.y).mean())
    return ver
