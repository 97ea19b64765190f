"""Examples/s of the stage-1 and stage-2 input pipelines (iimagen.data.Loader) at 32 and 64 px, with `workers=0`
(one background thread) and `workers=None` (one process per core, at most 16); one JSON line per case.

    .venv/bin/python benchmarks/data.py [--batch 64] [--batches 16] [--workers N] [--stages 0,1,2]

Each case iterates the loader as the trainer does (`for step, batch in loader`) and times `--batches` batches after
a warm-up (imports, tokenizer, worker start-up: one batch per worker). The stage-1 pool is built before timing. The
consumer here does nothing else, so this is the rate the pipeline can feed an accelerator at.
"""
import argparse
import json
import os
import platform
import time

from iimagen import tasks as T
from iimagen.data import Loader


def rate(loader, batches: int, warmup: int) -> float:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    loader.close()
    return loader.batch_size * batches / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--pool", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=None, help="the parallel case (default: one per core, <= 16)")
    ap.add_argument("--stages", default="1,2")
    ap.add_argument("--resolutions", default="32,64")
    a = ap.parse_args()
    pool = None
    for stage in map(int, a.stages.split(",")):
        for R in map(int, a.resolutions.split(",")):
            if stage == 1 and pool is None:
                pool = T.RetrievalPool(a.pool, seed=0)
            for workers in (0, a.workers):
                L = Loader(stage, a.batch, R, seed=0, pool=pool if stage == 1 else None, workers=workers,
                           process_index=0, process_count=1)
                eps = rate(L, a.batches, warmup=max(1, L.workers))
                print(json.dumps({"bench": "data", "stage": stage, "resolution": R, "batch": a.batch,
                                  "workers": L.workers, "examples_per_s": round(eps, 1), "cpus": os.cpu_count(),
                                  "machine": platform.processor() or platform.machine()}), flush=True)


if __name__ == "__main__":
    main()
