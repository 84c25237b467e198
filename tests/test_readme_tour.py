"""The README's Tour, run as written on the bundled sigmoid MLP and MNIST images: the pruning
block's commands succeed and its gate passes, as the comment beside it says."""
import re
import shlex

from click.testing import CliRunner

from conftest import FIX, ROOT
from infoprobe.cli.main import cli


def _tour_commands() -> list:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Tour"):]
    block = block[block.index("```bash") + 7:block.index("```", block.index("```bash") + 7)]
    block = re.sub(r"\\\n\s*", " ", block)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("infoprobe ")]


def test_the_tour_prunes_a_model_its_gate_passes(tmp_path, monkeypatch):
    lines = _tour_commands()
    wanted = [next(c for c in lines if c.startswith(f"infoprobe {verb} ")) for verb in ("capture", "plan", "prune",
                                                                                          "check")]
    monkeypatch.chdir(tmp_path)
    for command in wanted:
        args = [{"model.onnx": str(FIX / "mlp_sigmoid.onnx"), "mnist.npz": str(FIX / "mnist_demo.npz")}.get(a, a)
                for a in shlex.split(command)[1:]]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, (command, r.output)
    assert "PASSED" in r.output
    # with the default thresholds the same candidate fails: the comment's second half
    check = [a for a in args if a not in ("--junit", "report.xml")]
    cut = check.index("--max-label-change")
    r = CliRunner().invoke(cli, check[:cut] + ["--divergence-samples", "0"])
    assert r.exit_code == 1 and "FAILED" in r.output, r.output
