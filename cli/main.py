"""The ``infoprobe`` command group: one module per command, each parsing its options, calling
one library function and printing what the result says of itself."""
from __future__ import annotations

import click

from infoprobe import __version__

from .ablate import ablate
from .analyze import analyze, report
from .capture import capture
from .check import check
from .demo import demo
from .flow import flow
from .frivolous import frivolous
from .hardening import EXIT_INTERNAL, EXIT_INTERRUPTED, Group, harden
from .importance import importance
from .inspect_model import inspect
from .modules import modules
from .plan import plan
from .prune import prune
from .synergy import synergy
from .synthetic import synthetic

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "cli", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="infoprobe")
def cli():
    """Information-theoretic analysis of trained neural networks from ONNX and HDF5.

    \b
    A typical session:
      infoprobe inspect model.onnx
      infoprobe capture model.onnx --data mnist.npz --split validation --out acts.h5
      infoprobe importance acts.h5 --out results/
      infoprobe synergy acts.h5 --out results/
      infoprobe modules model.onnx --data fashion.npz --split test --out modules/
      infoprobe frivolous model.onnx --data mnist.npz --split test --out frivolous/
      infoprobe flow model.onnx --data szt.npz --beta 0.005 --out flow/
      infoprobe ablate model.onnx acts.h5 --data mnist.npz --split test --out results/
      infoprobe plan model.onnx --method hybrid --fraction 0.5 --store acts.h5 --out plan.json
      infoprobe prune model.onnx plan.json --out small.onnx --data mnist.npz --split test
      infoprobe check model.onnx small.onnx --data mnist.npz --split test --junit report.xml
      infoprobe report results/ modules/ frivolous/ --out report.html

    \b
    Or all of it at once, within a budget, with its report:
      infoprobe analyze model.onnx --data mnist.npz --split test --out analysis/ --budget 4

    Errors caused by inputs print one line and exit with status 2 (`check` exits with 1
    when a threshold fails, `analyze` when an analysis did not run because of an error).
    """


#: Commands whose files are not staged: the demo reads back the models it writes.
_UNSTAGED = {"demo"}
#: Commands that discover no sites (no ``--site``, ``--sites``, ``--output``): check compares whole models.
_NO_MODEL = {"importance", "synthetic", "demo", "check", "report"}
#: Commands that run no model in onnxruntime (no ``--provider``).
_NO_RUNTIME = {"importance", "synthetic", "report", "plan", "inspect"}
for _command in (inspect, capture, importance, ablate, synergy, modules, frivolous, synthetic, flow, plan, prune,
                 check, analyze, report, demo):
    cli.add_command(harden(_command, stage=_command.name not in _UNSTAGED, sites=_command.name not in _NO_MODEL,
                           runtime=_command.name not in _NO_RUNTIME))


def main():
    """Console-script entry point."""
    cli(prog_name="infoprobe")


if __name__ == "__main__":
    main()
