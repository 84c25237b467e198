"""The README's timing and memory figures, measured again from the code as it is (run by hand,
not a test): each command the README quotes, as a fresh process with the options the README
states, its wall time and peak resident memory (``/usr/bin/time -v``) printed beside the
sentence it backs.

Figures (``--parts``):

- ``demo``: ``infoprobe demo`` (the README's first paragraph: "in about 45 seconds on two idle
  cores"), run ``--repeats`` times.
- ``analyze``: ``infoprobe analyze fixtures/mlp_sigmoid.onnx --data fixtures/mnist_demo.npz
  --split test --fit-split validation --out DIR`` with the default budget (the "Everything at
  once" section), with what each analysis took as ``analyze.json`` records it.
- ``tour``: the Tour's pruning block (capture, plan, prune, check) as the README writes it, with
  the gate's verdict.

Numbers depend on the machine and on what else runs: the README states them for two idle
cores. Usage::

    python benchmarks/readme_figures.py [--parts demo,analyze,tour] [--repeats 3] [--tmp DIR]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
INFOPROBE = [sys.executable, "-m", "infoprobe.cli.main"]


def timed(args: list, cwd: Path) -> dict:
    """Run ``args`` under ``/usr/bin/time -v``: exit status, wall seconds, peak RSS in MiB and
    the command's own output."""
    r = subprocess.run(["/usr/bin/time", "-v", *args], cwd=cwd, capture_output=True, text=True)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    seconds = 0.0
    if wall:
        for part in wall.group(1).split(":"):
            seconds = seconds * 60 + float(part)
    return {"rc": r.returncode, "seconds": seconds, "rss_mib": int(rss.group(1)) / 1024 if rss else float("nan"),
            "stdout": r.stdout, "stderr": r.stderr}


def demo(tmp: Path, repeats: int) -> None:
    runs = []
    for i in range(repeats):
        out = tmp / f"demo{i}"
        res = timed([*INFOPROBE, "demo", "--out", str(out)], tmp)
        if res["rc"]:
            sys.exit(f"demo failed: {res['stderr'][-2000:]}")
        runs.append(res)
    secs = sorted(r["seconds"] for r in runs)
    print(f"demo: {len(runs)} runs, {secs[0]:.0f}-{secs[-1]:.0f} s (median {secs[len(secs) // 2]:.0f} s), "
          f"peak {max(r['rss_mib'] for r in runs):.0f} MiB")


def analyze(tmp: Path) -> None:
    out = tmp / "analyze"
    res = timed([*INFOPROBE, "analyze", str(FIX / "mlp_sigmoid.onnx"), "--data", str(FIX / "mnist_demo.npz"),
                 "--split", "test", "--fit-split", "validation", "--out", str(out)], tmp)
    print(f"analyze (default budget): exit {res['rc']}, {res['seconds']:.0f} s wall, peak {res['rss_mib']:.0f} MiB")
    doc = json.loads((out / "analyze.json").read_text()) if (out / "analyze.json").exists() else {}
    for row in doc.get("rows", []):
        took, est = row.get("seconds"), row.get("estimate_s")
        print(f"  {row.get('analysis')}: " + (f"{took:.1f} s" if isinstance(took, (int, float)) else "not run")
              + (f" (estimated {est:.1f} s)" if isinstance(est, (int, float)) else ""))


def tour(tmp: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Tour"):]
    block = block[block.index("```bash") + 7:block.index("```", block.index("```bash") + 7)]
    block = re.sub(r"\\\n\s*", " ", block)
    lines = [ln.split("#")[0].split() for ln in block.splitlines() if ln.startswith("infoprobe ")]
    subs = {"model.onnx": str(FIX / "mlp_sigmoid.onnx"), "mnist.npz": str(FIX / "mnist_demo.npz")}
    for verb in ("capture", "plan", "prune", "check"):
        args = next(ln for ln in lines if ln[1] == verb)
        res = timed([*INFOPROBE, *[subs.get(a, a) for a in args[1:]]], tmp)
        verdict = next((ln for ln in res["stdout"].splitlines() if ln.startswith("infoprobe check:")), "")
        print(f"tour {verb}: exit {res['rc']}, {res['seconds']:.1f} s, peak {res['rss_mib']:.0f} MiB {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="demo,analyze,tour")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tmp", type=Path, default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="infoprobe-readme-", dir=a.tmp))
    try:
        for part in a.parts.split(","):
            {"demo": lambda: demo(tmp, a.repeats), "analyze": lambda: analyze(tmp), "tour": lambda: tour(tmp)}[part]()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
