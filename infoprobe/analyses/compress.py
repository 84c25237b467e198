"""``infoprobe prune``: apply a plan, save the smaller model, verify it, and report its cost."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..data import Dataset, prepare_inputs, resolve_scale
from ..errors import ConfigError, ModelError
from ..model import LoadedModel, load_model
from ..modelstats import measure_latency, model_cost
from ..plan import PruningPlan
from ..prune import apply_plan, save_model
from ..results import check_outputs
from ..runner import Runner, default_threads, session_options

#: Largest |pruned - reference| accepted, relative to max(1, max |reference|).
VERIFY_TOLERANCE = 1e-5


def file_session(path, threads: int | None = None, *, spin: bool = True) -> ort.InferenceSession:
    """onnxruntime CPU session straight from a (validated) ``.onnx`` file.

    ``spin=False`` stops idle intra-op threads from spinning, for sessions that take turns
    (their spinning threads would otherwise compete for the cores).
    """
    try:
        return ort.InferenceSession(str(path), session_options(threads, spin=spin), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run {path}: {str(exc).splitlines()[0]}") from None


def latency_inputs(lm: LoadedModel, data: Dataset | None, batch: int, scale) -> np.ndarray:
    """A batch for latency measurements: the first ``batch`` samples of ``data``, or uniform
    random inputs of the model's static input shape."""
    if data is not None:
        x = data.x[:batch]
        return prepare_inputs(x, lm.input_shape, resolve_scale(data.x, scale), input_name=lm.input_name)
    dims = lm.input_shape[1:]
    if any(d is None for d in dims):
        raise ConfigError(f"the input {lm.input_name!r} has symbolic dimensions {list(lm.input_shape)}; "
                          "pass --data so that latency is measured on real inputs")
    return np.random.default_rng(0).random((batch, *dims), dtype=np.float32)


def prune_model(model, plan, out, *, data: Dataset | None = None, scale="auto", latency_batch: int = 64,
                repeats: int = 30, overwrite: bool = False, batch_size: int = 4096) -> dict:
    """Prune ``model`` by ``plan``, write it to ``out``, and compare it with the original.

    Parameters
    ----------
    model : LoadedModel or path-like
    plan : PruningPlan or path-like
    out : path-like
        The pruned ``.onnx`` (written atomically; never the input file).
    data : Dataset, optional
        Real inputs: the pruned model is checked against the original with the plan applied
        through masks (:meth:`~infoprobe.runner.Runner.plan_feeds`) on all of them, and
        accuracies are reported when labels exist. Its first ``latency_batch`` rows are
        the latency batch.
    latency_batch, repeats : int
        Batch size and repetitions of the onnxruntime latency measurement (median).

    Returns
    -------
    dict
        ``original`` and ``pruned``: parameters, bytes, per-sample MACs and latency;
        ``ratios`` (pruned / original); ``layers`` (units before and after);
        ``verification`` (with data: max |delta output| against the plan applied by masks
        and against the original, tolerance, label agreement with the original,
        accuracies); ``out``.

    Raises
    ------
    ModelError, PlanError, DataError, ConfigError, OutputExistsError
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    pl = plan if isinstance(plan, PruningPlan) else PruningPlan.load(plan)
    out = Path(out)
    check_outputs([out], overwrite)
    if out.resolve() == lm.path.resolve():
        raise ConfigError("--out is the input model; write the pruned model elsewhere")
    pruned = apply_plan(lm, pl)
    save_model(pruned, out, overwrite=overwrite)
    threads = default_threads()
    report = {"out": str(out), "plan_sha256": pl.sha256(), "generator": pl.generator,
              "layers": [{"layer": lay.name, "units": lay.units,
                          "kept": lay.units - (len(pl.layers[lay.name].remove) if lay.name in pl.layers else 0)}
                         for lay in lm.layers]}
    x_lat = latency_inputs(lm, data, latency_batch, scale)
    for key, path, ir_model in (("original", lm.path, lm.ir_model), ("pruned", out, pruned)):
        cost = model_cost(ir_model, path)
        cost["latency"] = measure_latency(file_session(path, threads), lm.input_name, x_lat, repeats=repeats)
        report[key] = cost
    o, p = report["original"], report["pruned"]
    report["ratios"] = {"parameters": p["parameters"] / o["parameters"], "bytes": p["bytes"] / o["bytes"],
                        "macs": p["macs"] / o["macs"] if o["macs"] else None,
                        "latency": p["latency"]["median_ms"] / o["latency"]["median_ms"]}
    if data is not None:
        x = prepare_inputs(data.x, lm.input_shape, resolve_scale(data.x, scale), input_name=lm.input_name)
        ref = Runner(lm, mix=not all(lp.is_constant for lp in pl.layers.values()), threads=threads)
        expected = ref.run(x, feeds=ref.plan_feeds(pl), outputs=[lm.output_name], batch_size=batch_size)[lm.output_name]
        intact = ref.run(x, outputs=[lm.output_name], batch_size=batch_size)[lm.output_name]
        sess = file_session(out, threads)
        got = np.concatenate([sess.run([lm.output_name], {lm.input_name: x[i:i + batch_size]})[0]
                              for i in range(0, len(x), batch_size)])
        diff = float(np.abs(got - expected).max())
        tol = VERIFY_TOLERANCE * max(1.0, float(np.abs(expected).max()))
        ver = {"n_samples": len(x), "max_abs_diff": diff, "tolerance": tol, "exact": diff <= tol,
               "max_abs_diff_original": float(np.abs(got - intact).max()),
               "label_agreement_with_original": float((got.reshape(len(x), -1).argmax(1)
                                                        == intact.reshape(len(x), -1).argmax(1)).mean())}
        if data.y is not None:
            ver["accuracy_original"] = float((intact.reshape(len(x), -1).argmax(1) == data.y).mean())
            ver["accuracy_pruned"] = float((got.reshape(len(x), -1).argmax(1) == data.y).mean())
        report["verification"] = ver
    return report
