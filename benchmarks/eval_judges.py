"""The current judges (judges v2), one JSON line per case:
- `anchors` (task, resolution): SC / PQ / O and per-condition SC of the ground-truth targets (should be ~1), of another
  example's target ("ignored instruction", SC should be ~0) and of random noise (O should be 0), with the identity
  judges' rank-1 rates (`subject_rank1`, `style_rank1`; chance 1/8) where the task has a subject or a style;
- `identity` (judge, split, resolution): rank-1 of the true subject / style among 8 of its region on sample-like
  renders (`E.sample_like`: new pose, shifted layout), clean and mildly degraded (`mild_blur`, `mild_noise`,
  `mild_shift`), and the anchors another example's target (`other_target`) and random pixels (`random`; chance 0.125),
  with the time per judge call (the keys of `validate_identity_judges`, data/judges/report.json);
- `realism` (resolution): how often the learned realism judge (PQ) calls held-out renders clean, clean and degraded
  (`E.validate_judges`), and its time per image.
Test split (held-out identities) unless `identity` says otherwise.
Usage: .venv/bin/python benchmarks/eval_judges.py [--n 24] [--n-identity 40] [--n-realism 100] [--only anchors ...]"""
import argparse
import json
import time

import numpy as np

from iimagen import evaluate as E
from iimagen import tasks as T

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=24, help="examples per task and resolution (anchors)")
p.add_argument("--n-identity", type=int, default=40, help="examples per judge, split and resolution (identity)")
p.add_argument("--n-realism", type=int, default=100, help="renders per resolution (realism)")
p.add_argument("--seed", type=int, default=100)
p.add_argument("--resolutions", type=int, nargs="*", default=[32, 64])
p.add_argument("--only", nargs="*", choices=["anchors", "identity", "realism"],
               default=["anchors", "identity", "realism"])
a = p.parse_args()
J = E.load_judges()
r3 = lambda v: None if v is None else round(float(v), 3)  # noqa: E731

if "anchors" in a.only:
    for R in a.resolutions:
        for task in E.IN_DOMAIN + E.ZERO_SHOT:
            t = time.time()
            ex = T.sample(task, a.n, a.seed, R, split="test")
            rng = np.random.default_rng(a.seed)
            runs = {"truth": [e.target for e in ex], "other_target": [e.target for e in ex[1:] + ex[:1]],
                    "noise": [rng.integers(0, 256, (R, R, 3), dtype=np.uint8) for _ in ex]}
            out = {"case": "anchors", "task": task, "resolution": R, "n": a.n}
            for k, imgs in runs.items():
                s = E.score_examples(ex, imgs, J)["summary"]
                out[k] = {"sc": r3(s["sc"]), "pq": r3(s["pq"]), "o": r3(s["o"]),
                          "conditions": {c: r3(v) for c, v in s["conditions"].items()},
                          **{q: r3(s[q]) for q in ("subject_rank1", "style_rank1") if q in s}}
            out["seconds"] = round(time.time() - t, 2)
            print(json.dumps(out), flush=True)

if "identity" in a.only:
    for judge, task in (("subject", "subject"), ("style", "styled_generation")):
        for split in ("test", "train"):
            exs = T.sample(task, a.n_identity, a.seed + 11, a.resolutions[0], split=split)
            n = len(exs)
            for R in a.resolutions:
                rng = np.random.default_rng([a.seed, R])
                ranks, calls, secs = {}, 0, 0.0
                for j, ex in enumerate(exs):
                    img = E.sample_like(ex.spec, R, rng)
                    imgs = {"clean": img,
                            **{f"mild_{k}": E.degrade(img, rng, k, "mild") for k in E.VALIDATION_DEGRADATIONS},
                            "other_target": E.sample_like(exs[(j + 1) % n].spec, R, rng),
                            "random": rng.integers(0, 256, (R, R, 3), dtype=np.uint8)}
                    for k, im in imgs.items():
                        t = time.time()
                        r = (E.judge_subject(im, ex, ex.truth["subjects"][0]) if judge == "subject"
                             else E.judge_style(im, ex))["rank"]
                        secs += time.time() - t
                        calls += 1
                        ranks.setdefault(k, []).append(r)
                print(json.dumps({"case": "identity", "judge": judge, "split": split, "resolution": R, "n": n,
                                  "candidates": E.IDENTITY_CANDIDATES,
                                  "rank1": {k: r3(np.mean(np.asarray(v) == 1)) for k, v in ranks.items()},
                                  "top3": {k: r3(np.mean(np.asarray(v) <= 3)) for k, v in ranks.items()},
                                  "ms_per_call": round(1000 * secs / calls, 2)}), flush=True)

if "realism" in a.only:
    for R in a.resolutions:
        imgs = E.judge_data(a.n_realism, a.seed + 1, resolutions=(R,))
        t = time.time()
        X = E.judge_features(imgs[R])  # features in one batch, as score_examples does, then one call per image
        [E.judge_realism(x, J) for x in X]
        ms = 1000 * (time.time() - t) / len(X)
        rep = E.validate_judges(J, imgs, a.seed + 3)["realism"]
        print(json.dumps({"case": "realism", "resolution": R, "n": a.n_realism,
                          "called_clean": {k.split("px_", 1)[1].removesuffix("_called_clean"): r3(v)
                                           for k, v in rep.items()},
                          "ms_per_image": round(ms, 2)}), flush=True)
