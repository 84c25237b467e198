"""Run the hostile-input corpus (tests/hostile.py) against an infoprobe installation.

Every case is built in a fresh temporary folder and run as a child process with a 60 s
limit (or the case's own); a case is refused correctly when its exit status is the expected
one (2, or 0 for a legitimate input that must work), stderr is one ``infoprobe: error:``
line without a traceback, the secret appears in no written file nor on stdout/stderr, no
watched file outside the input's folder was opened or changed, no forbidden output exists,
and a bomb's peak RSS stays under 2 GiB (a child over it is killed at once).

Classes: hostile models (onnx), activation stores (store) and data files (data); result
folders, analyze plans and check candidates made by someone else (results); scratch space
that fails (scratch); Dask scheduler addresses and peers (workers). The genuine results the
result-folder cases start from are made with the infoprobe library of this interpreter.

Usage::

    python benchmarks/hostile_corpus.py [--infoprobe CMD] [--only onnx,store,data,results,scratch,workers] [--json]
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import hostile  # noqa: E402

CLASSES = ("onnx", "store", "data", "results", "scratch", "workers")


def run(cmd: list, classes, *, controls: bool = False, keep: Path | None = None) -> list:
    """Build and run every selected case; one result dict per case."""
    selected = hostile.cases(classes) + (hostile.CONTROLS if controls else [])
    root = Path(tempfile.mkdtemp(prefix="infoprobe-hostile-")) if keep is None else keep
    rows = []
    try:
        for c in selected:
            folder = root / c.id
            try:
                spec, before = hostile.build(c, folder)
            except Exception as exc:
                rows.append(dict(id=c.id, cls=c.cls, ok=False, reasons=[f"build failed: {type(exc).__name__}: {exc}"],
                                 rc=None, peak_mib=None, seconds=0.0, stderr=""))
                continue
            try:
                outcome = hostile.run_subprocess(cmd, spec)
                reasons = hostile.judge(spec, outcome, folder, before)
            finally:
                hostile.finish(spec)
            rows.append(dict(id=c.id, cls=c.cls, ok=not reasons, reasons=reasons, rc=outcome.rc,
                             expect=spec.get("expect", 2), peak_mib=round(outcome.peak_mib, 1),
                             seconds=round(outcome.seconds, 2),
                             stderr=outcome.stderr.decode("utf-8", "replace")[-2000:]))
            if keep is None:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def counts(rows: list) -> dict:
    """{class: [refused correctly, cases]}."""
    out = {}
    for r in rows:
        n = out.setdefault(r["cls"], [0, 0])
        n[0] += r["ok"]
        n[1] += 1
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--infoprobe", default="infoprobe", help="Command that runs the CLI (default: infoprobe).")
    ap.add_argument("--only", default=",".join(CLASSES), help=f"Comma-separated classes: {', '.join(CLASSES)}.")
    ap.add_argument("--controls", action="store_true", help="Also run valid inputs that must succeed.")
    ap.add_argument("--keep", type=Path, default=None, help="Build the cases in this folder and keep them.")
    ap.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = ap.parse_args(argv)
    classes = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(classes) - set(CLASSES)
    if unknown:
        ap.error(f"unknown classes: {', '.join(sorted(unknown))}")
    rows = run(shlex.split(args.infoprobe), classes, controls=args.controls, keep=args.keep)
    summary = counts(rows)
    if args.json:
        print(json.dumps({"command": args.infoprobe, "counts": {k: {"ok": v[0], "cases": v[1]} for k, v in summary.items()},
                          "cases": rows}, indent=1))
        return
    w = max([34, *(len(r["id"]) for r in rows)])
    print(f"{'case':<{w}} {'class':<7} {'result':<6} {'exit':>4} {'MiB':>7} {'s':>6}  reason")
    for r in rows:
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(f"{r['id']:<{w}} {r['cls']:<7} {'ok' if r['ok'] else 'FAIL':<6} {str(r['rc']):>4} {peak:>7} "
              f"{r['seconds']:>6.1f}  {'; '.join(r['reasons'])[:150]}")
    print(", ".join(f"{k}: {v[0]} of {v[1]}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
