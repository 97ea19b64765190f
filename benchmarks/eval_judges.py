"""Judge validity per task: SC / PQ / O of the ground-truth targets (should be ~1), of another example's target
("ignored instruction", SC should be ~0) and of random noise (O should be 0), at 32 and 64 px, on the test split.
One JSON line per (task, resolution).  Usage: .venv/bin/python benchmarks/eval_judges.py [--n 24]"""
import argparse
import json
import time

import numpy as np

from iimagen import evaluate as E
from iimagen import tasks as T

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=24)
p.add_argument("--seed", type=int, default=100)
a = p.parse_args()
J = E.load_judges()
for R in (32, 64):
    for task in E.IN_DOMAIN + E.ZERO_SHOT:
        t = time.time()
        ex = T.sample(task, a.n, a.seed, R, split="test")
        rng = np.random.default_rng(a.seed)
        runs = {"truth": [e.target for e in ex], "other_target": [e.target for e in ex[1:] + ex[:1]],
                "noise": [rng.integers(0, 256, (R, R, 3), dtype=np.uint8) for _ in ex]}
        out = {"task": task, "resolution": R, "n": a.n}
        for k, imgs in runs.items():
            s = E.score_examples(ex, imgs, J)["summary"]
            out[k] = {"sc": round(s["sc"], 3), "pq": round(s["pq"], 3), "o": round(s["o"], 3),
                      "conditions": {c: round(v, 3) for c, v in s["conditions"].items()}}
        out["seconds"] = round(time.time() - t, 2)
        print(json.dumps(out), flush=True)
