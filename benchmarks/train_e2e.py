"""Stage-2 training examples/s end to end: the real command (`iimagen train`, its loader and its train step), one
source tree against another in the same run; one JSON line per run and one `train_e2e_compare` line at the end.

    git worktree add /work/before <commit>
    .venv/bin/python benchmarks/train_e2e.py --trees before=/work/before,after=. [--steps 60] [--batch 32]

Each run is `python -m iimagen.cli train --stage 2 --init data/checkpoints/stage0-tiny --config tiny` in its own
subprocess with `PYTHONPATH=<tree>` and a fresh workdir, interleaved over `--repeats` (before, after, before, ...),
so that a machine whose load drifts affects both alike. The rate of a run is the median of the `images_per_s` that
the loop logs every `--log-every` steps, leaving out the first window (start-up, and an older tree's compile). Both
trees read the same shipped checkpoint and draw the same batches.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from data import parse_trees  # noqa: E402


def one_run(tree: Path, init: Path, a) -> dict:
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "iimagen.cli", "train", "--stage", "2", "--config", "tiny", "--init", str(init),
               "--batch-size", str(a.batch), "--steps", str(a.steps), "--log-every", str(a.log_every),
               "--ckpt-every", str(10 ** 6), "--workers", str(a.workers), "--workdir", work]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        p = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed in {tree}:\n{p.stderr[-3000:]}")
        recs = [json.loads(x) for x in Path(work, "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in recs[1:]]
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"bench": "train_e2e", "path": str(tree), "commit": commit, "batch": a.batch, "steps": a.steps,
            "workers": a.workers, "examples_per_s": round(statistics.median(rates), 2),
            "windows": [round(x, 1) for x in rates]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trees", required=True, help="label=path pairs, e.g. before=/work/before,after=.")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    trees = parse_trees(a.trees)
    init = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "stage0-tiny"
    got = {k: [] for k in trees}
    for _ in range(a.repeats):
        for label, tree in trees.items():
            r = {"tree": label, **one_run(tree, init, a)}
            print(json.dumps(r), flush=True)
            got[label].append(r["examples_per_s"])
    first = next(iter(trees))
    med = {k: statistics.median(v) for k, v in got.items()}
    print(json.dumps({"bench": "train_e2e_compare", "median_examples_per_s": med,
                      f"ratio_to_{first}": {k: round(v / med[first], 3) for k, v in med.items()}}), flush=True)


if __name__ == "__main__":
    main()
