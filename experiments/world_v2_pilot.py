"""What reading a subject reference is worth on world v1 and world v2 (issue 30, item 4; docs/experiments page
2026-12-07-world-v2-pilot.md).

    python experiments/world_v2_pilot.py CKPT_OR_WORKDIR [--step S] [--n 128] [--split test] [--tasks subject,...]

Run it once with the old world's source first on PYTHONPATH (a git worktree of a v1 commit) and once with the new.
It prints one JSON line per task (default `subject`): the context gain on that task (`evaluate.context_use`: 1 - loss with the true
reference / with another example's, t in [0.5, 1], nonce names), over `n` examples of `split` measured in chunks of 8,
with a bootstrap 95 % interval over the chunks. `--step S` reads the EMA of the workdir's checkpoint S (to compare two
runs at the same number of examples seen).
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv=None):
    from iimagen import evaluate as E
    from iimagen import tasks as T
    from iimagen.train import load_any, load_latest_ema

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--step", type=int, default=None)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--split", default="test")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--tasks", default="subject", help="comma-separated tasks (in-domain or zero-shot)")
    a = ap.parse_args(argv)
    model, tok, _ = load_any(a.checkpoint) if a.step is None else load_latest_ema(a.checkpoint, a.step)
    import iimagen.world as W

    for task in a.tasks.split(","):
        exs = T.sample(task, a.n, 0, model.cfg.resolution, split=a.split, anonymous=True)
        chunks = {f"c{i}": exs[i:i + a.chunk] for i in range(0, a.n, a.chunk)}
        use = E.context_use(model, tok, examples=chunks, batch_size=a.chunk)
        true = np.asarray([u["true"] for u in use.values()])
        shuf = np.asarray([u["shuffled"] for u in use.values()])
        rng = np.random.default_rng(0)
        boot = [1 - true[i].sum() / shuf[i].sum() for i in rng.integers(0, len(true), (2000, len(true)))]
        print(json.dumps({"checkpoint": a.checkpoint, "step": a.step, "task": task,
                          "world": getattr(W, "VERSION", "v1"), "split": a.split, "n": a.n,
                          "gain": round(100 * (1 - true.sum() / shuf.sum()), 2),
                          "ci95": [round(100 * float(q), 2) for q in np.percentile(boot, [2.5, 97.5])],
                          "loss_true": round(float(true.mean()), 4), "loss_shuffled": round(float(shuf.mean()), 4)}),
              flush=True)

if __name__ == "__main__":
    main()
