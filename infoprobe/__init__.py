"""infoprobe: information-theoretic analysis of trained neural networks.

Reads a model as ONNX and its activations as HDF5, without the training framework. See the
README for the command-line tour; the library's entry points are:

- :func:`infoprobe.model.load_model` -- safe loading and unit-layer discovery,
- :func:`infoprobe.analyses.capture.capture` -- activations of a data set into a store,
- :func:`infoprobe.analyses.importance.importance` -- single-unit information measures,
- :func:`infoprobe.analyses.ablation.cumulative_ablation` -- cumulative ablation curves,
- :class:`infoprobe.interventions.Evaluator` -- the engine every ablation and lesion runs through,
- :mod:`infoprobe.analyses.plans` -- pruning plans (:class:`infoprobe.plan.PruningPlan`),
- :func:`infoprobe.prune.apply_plan` -- physical pruning of an ONNX model by a plan,
- :func:`infoprobe.analyses.check.check` -- the CI gate comparing a candidate with its reference.

Framework adapters (``infoprobe.adapters.torch``, ``infoprobe.adapters.keras``) are installed
with the ``torch`` and ``keras`` extras and import their framework only when used.
"""
__version__ = "0.2.0"

import logging as _logging  # noqa: E402

from .errors import (  # noqa: E402
    BudgetError, ConfigError, DataError, DeviceError, InfoprobeError, ModelError, OutputExistsError,
    NoSuffixError, PlanError, StoreError, UnsafeModelError,
)

# onnx-ir logs a failed shape inference with its traceback; infoprobe reports what it cannot
# interpret itself. Without a handler of their own the records would reach stderr through
# logging's last resort; applications that configure logging still receive them.
_logging.getLogger("onnx_ir").addHandler(_logging.NullHandler())

__all__ = ["__version__", "InfoprobeError", "ModelError", "NoSuffixError", "UnsafeModelError", "StoreError",
           "DataError", "ConfigError", "DeviceError", "OutputExistsError", "PlanError", "BudgetError"]
