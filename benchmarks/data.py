"""Examples/s of the stage-1 and stage-2 input pipelines (iimagen.data.Loader) at 32 and 64 px, one JSON line per case.

    .venv/bin/python benchmarks/data.py [--batch 64] [--batches 8]

Measures `Loader.batch(step)` in this process (one core: the pipeline is numpy + the tokenizer); the loader's
background thread overlaps it with training. The stage-1 pool is built (and its images cached) before timing.
"""
import argparse
import json
import os
import platform
import time

from iimagen.data import Loader


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--pool", type=int, default=2048)
    a = ap.parse_args()
    for stage in (1, 2):
        for R in (32, 64):
            L = Loader(stage, a.batch, R, seed=0, pool_size=a.pool, process_index=0, process_count=1)
            L.batch(0)  # warm-up (imports, tokenizer)
            t = time.perf_counter()
            for s in range(1, a.batches + 1):
                L.batch(s)
            dt = time.perf_counter() - t
            print(json.dumps({"bench": "data", "stage": stage, "resolution": R, "batch": a.batch,
                              "examples_per_s": round(a.batch * a.batches / dt, 1), "processes": 1,
                              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
