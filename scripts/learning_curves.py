"""The kit's learning curves: O (paper Table 4's overall score) against the examples a model has seen, in-domain and
zero-shot, along training runs. Where the targets are not reached, these are the honest projection of where more
compute leads.

    python scripts/learning_curves.py RUN [RUN ...] --out docs/eval/curves.jsonl [--points 5 | --at S1,S2] [--n 16]
        [--tasks t1,t2,...] [--seed 0]

Each RUN is a training workdir (`iimagen train --workdir`, or one run of `scripts/train_chain.py`), or an exported
model (one point: a shipped model beside the curves). A workdir's kept checkpoints are evaluated at `--points` steps
spaced evenly on a log scale (the latest always among them), or at `--at` steps, each from its EMA weights, with
the kit's sampling setting (`pipeline.SAMPLING`) on `--n` held-out examples per task and the kit's judges
(`iimagen.evaluate.evaluate_models`). One JSON line per (run, step) is appended to `--out`:

    {"run", "model", "step", "batch", "examples", "examples_before", "n", "in_domain": {"sc", "pq", "o"},
     "zero_shot": {...}, "tasks": {task: {"sc", "pq", "o"}}}

`examples` = step x batch in this run; `examples_before` = what its --init chain saw before it, stage 0 excluded
(every model starts from the same stage 0): a stage-2 run from stage 1 counts stage 1's examples there. A line
already in `--out` is skipped, so a stopped job resumes with the same command. Notebook 08 plots the file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from iimagen.checkpoint import export_of, is_export, load_model, read_config
from iimagen.evaluate import IN_DOMAIN, ZERO_SHOT, averages, display_name, evaluate_models
from iimagen.pipeline import SAMPLING, Generator
from iimagen.train import load_latest_ema


def kept_steps(run: Path) -> list[int]:
    return sorted(int(d.name) for d in (run / "checkpoints").glob("*") if d.name.isdigit())


def log_spaced(steps: list[int], points: int) -> list[int]:
    """`points` of `steps` spaced evenly in log(step), the last always included."""
    if len(steps) <= points:
        return steps
    want = np.geomspace(steps[0], steps[-1], points)
    return sorted({min(steps, key=lambda s: abs(np.log(s) - np.log(w))) for w in want} | {steps[-1]})


def examples_before(init: str | None) -> int | None:
    """Examples seen by the --init chain of a run (stage 0 excluded): its steps x batch, and its own init's; None
    when the chain is no longer on this machine."""
    if not init:
        return 0
    p = Path(init)
    if not p.exists():
        return None
    _, meta, _ = read_config(export_of(p))
    if int(meta.get("stage", 0)) == 0:
        return 0
    before = examples_before(meta.get("init"))
    return None if before is None else int(meta.get("steps", 0)) * int(meta.get("batch_size", 0)) + before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="training workdirs, or exported models (one point each)")
    ap.add_argument("--out", required=True, help="JSON lines, appended (a line already there is skipped)")
    ap.add_argument("--points", type=int, default=5, help="checkpoints per run, log-spaced (the latest included)")
    ap.add_argument("--at", default=None, help="these steps instead (comma-separated; each must be a kept checkpoint): "
                                               "runs compared at equal examples")
    ap.add_argument("--n", type=int, default=16, help="held-out examples per task")
    ap.add_argument("--tasks", default=",".join(IN_DOMAIN + ZERO_SHOT))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    tasks = a.tasks.split(",")
    bad = [t for t in tasks if t not in IN_DOMAIN + ZERO_SHOT]
    if bad:
        raise SystemExit(f"--tasks {bad}: use some of {', '.join(IN_DOMAIN + ZERO_SHOT)}")
    out = Path(a.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["run"], r["step"], r["n"]))
    for run in map(Path, a.runs):
        export = is_export(run)  # an exported model: one point, at its final step
        steps = [int(read_config(run)[1].get("steps", 0))] if export else kept_steps(run)
        if not steps:
            raise SystemExit(f"{run}: no checkpoints (a training workdir keeps them in checkpoints/; train with "
                             f"--keep large enough to keep a curve's points), and not an exported model")
        for step in ([int(x) for x in a.at.split(",")] if a.at and not export else log_spaced(steps, a.points)):
            if (str(run), step, a.n) in done:
                continue
            model, tok, meta = load_model(run) if export else load_latest_ema(run, step=step)
            name = display_name(run)
            res = evaluate_models({name: Generator(model, tok, meta)}, tasks, a.n, a.seed, anchors=False,
                                  sampler=SAMPLING["sampler"], steps=SAMPLING["steps"], guidance=SAMPLING["guidance"],
                                  clip=SAMPLING["clip"], progress=False)[name]
            row = {"run": str(run), "model": name, "step": step, "batch": int(meta["batch_size"]),
                   "examples": step * int(meta["batch_size"]), "examples_before": examples_before(meta.get("init")),
                   "n": a.n, "in_domain": averages(res, [t for t in tasks if t in IN_DOMAIN]),
                   "zero_shot": averages(res, [t for t in tasks if t in ZERO_SHOT]),
                   "tasks": {t: ({k: r[k] for k in ("sc", "pq", "o")} if r else None) for t, r in res.items()}}
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("model", "step", "examples", "in_domain", "zero_shot")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
