"""Does a model read a subject from its stage-1 neighbours? (docs/experiments/2026-12-01-stage1-subjects.md)

    python experiments/stage1_subject_use.py CKPT [CKPT ...] [--n 64] [--also edge_to_image depth_to_image ...]

CKPT: an exported checkpoint, or a training workdir (its export, or the EMA of its latest checkpoint while it
trains). For each it prints one JSON line: the context gain (`evaluate.context_use`: 1 - loss with the
true context / with another example's, t in [0.5, 1]) on stage-1 examples of a held-out pool (seed 99: new images,
training subjects), with nonce names as stage-1 training now uses them:
- `retrieval, subject in a neighbour`: the target shows a subject that one of its neighbours shows too (reading
  the neighbour tells its look; the caption only calls it by a made-up name);
- `retrieval, no subject`: targets without a subject (plain and styled scenes);
then the stage-2 `subject` task (nonce names; training and held-out subjects), `subject_probe`'s subject-weighted
token accuracy, and `context_alignment`'s attention mass on the reference's subject (even attention: about 0.076).
`--also`: the context gain of other stage-2 tasks too (held-out split, nonce names), e.g. whether a model that learnt
subjects still reads its control maps.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def stage1_examples(n: int, resolution: int, seed: int = 99, pool_size: int = 1024) -> dict:
    from iimagen import tasks as T

    pool = T.RetrievalPool(pool_size, seed=seed)
    rng = np.random.default_rng([seed, 7])
    out = {"retrieval, subject in a neighbour": [], "retrieval, no subject": []}
    while min(len(v) for v in out.values()) < n:
        ex = pool.example(int(rng.integers(len(pool.clusters))), rng, resolution, anonymous=True)
        if ex.drop is not None:
            continue
        items = ex.truth["pool_items"]
        target = pool.subject[items[0]]
        key = ("retrieval, no subject" if not target else
               "retrieval, subject in a neighbour" if target in pool.subject[items[1:]] else None)
        if key and len(out[key]) < n:
            out[key].append(ex)
    return out


def main(argv=None):
    from iimagen import evaluate as E
    from iimagen.train import load_any

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--also", nargs="*", default=(), metavar="TASK", help="other stage-2 tasks to measure")
    a = ap.parse_args(argv)
    for path in a.checkpoints:
        model, tok, _ = load_any(path)
        R = model.cfg.resolution
        use = E.context_use(model, tok, examples=stage1_examples(a.n, R))
        for split in ("train", "test"):
            use[f"subject, {split}"] = E.context_use(model, tok, ("subject",), n=a.n, split=split,
                                                     anonymous=True)["subject"]
        if a.also:
            use.update(E.context_use(model, tok, tuple(a.also), n=a.n, anonymous=True))
        probe = E.subject_probe(model, tok)
        align = E.context_alignment(model, tok, tasks=("subject",))["subject"]
        mass = [round(v["subject"], 3) for v in align.values()]
        print(json.dumps({"checkpoint": path, **{k: round(100 * v["gain"], 2) for k, v in use.items()},
                          "loss_true": {k: round(v["true"], 4) for k, v in use.items()},
                          "probe_tokens_subject": probe["tokens_subject"], "subject_mass": mass,
                          "subject_mass_even": round(float(np.mean([v["subject_uniform"] for v in align.values()])),
                                                     3)}), flush=True)


if __name__ == "__main__":
    main()
