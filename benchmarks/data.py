"""Examples/s of the stage-1 and stage-2 input pipelines (iimagen.data.Loader) at 32 and 64 px, with `workers=0`
(one background thread) and `workers=None` (one process per core, at most 16); one JSON line per case.

    .venv/bin/python benchmarks/data.py [--batch 64] [--batches 16] [--workers N] [--stages 0,1,2]

Each case iterates the loader as the trainer does (`for step, batch in loader`) and times `--batches` batches after
a warm-up (imports, tokenizer, worker start-up: one batch per worker). The stage-1 pool is built before timing. The
consumer here does nothing else, so this is the rate the pipeline can feed an accelerator at.

Two source trees in one run (e.g. the world before and after a change, the old one from a git worktree):

    git worktree add /work/old 3c0ca1c
    .venv/bin/python benchmarks/data.py --trees old=/work/old,new=. --repeats 3

runs every case once per tree per repeat, each in its own subprocess with `PYTHONPATH=<tree>` (so `iimagen` and
its spawned workers come from that tree), interleaved (case 1: old, new, old, new...; then case 2) so that a
machine whose load drifts affects both alike. Each run prints its JSON line with `tree`, `path` and `commit` added;
after each case one `data_compare` line gives each tree's median examples/s and the ratio of each tree to the
first one; with `workers=0` also examples per CPU second of the process (`median_cpu`, `cpu_ratio_to_<first>`),
which a busy machine moves less than the wall-clock rate.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def rate(loader, batches: int, warmup: int) -> tuple[float, float]:
    """(examples per wall second, examples per CPU second of this process). The second counts the loader's thread
    with `workers=0` (worker processes are not counted) and moves less than the first on a shared machine."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    loader.close()
    return loader.batch_size * batches / dt, loader.batch_size * batches / dc


def parse_trees(spec: str) -> dict:
    trees = {}
    for part in spec.split(","):
        label, sep, path = part.partition("=")
        if not sep or not label or not path or label in trees:
            raise SystemExit(f"--trees {spec!r}: give label=path pairs (distinct labels) separated by commas, "
                             f"e.g. old=/work/old,new=.")
        p = Path(path).resolve()
        if not (p / "iimagen" / "__init__.py").is_file():
            raise SystemExit(f"--trees: {p} holds no iimagen/ package; give the root of a source tree")
        trees[label] = p
    if len(trees) < 2:
        raise SystemExit("--trees needs at least two label=path pairs")
    return trees


def commit(path: Path) -> str:
    r = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no", "iimagen"],
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "?") + ("+dirty" if dirty else "")


def compare(a, trees: dict):
    """Each case in a subprocess per tree, interleaved; the median per tree and the ratio to the first tree."""
    cases = [(s, R, w) for s in a.stages.split(",") for R in a.resolutions.split(",") for w in a.loaders.split(",")]
    base = [sys.executable, str(Path(__file__).resolve()), "--batch", str(a.batch), "--batches", str(a.batches),
            "--pool", str(a.pool)] + (["--workers", str(a.workers)] if a.workers is not None else [])
    commits = {k: commit(p) for k, p in trees.items()}
    for s, R, w in cases:
        got, cpu = {k: [] for k in trees}, {k: [] for k in trees}
        for rep in range(a.repeats):
            for label, path in trees.items():
                env = dict(os.environ, PYTHONPATH=str(path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
                out = subprocess.run(base + ["--stages", s, "--resolutions", R, "--loaders", w], env=env, cwd=path,
                                     capture_output=True, text=True)
                line = next((ln for ln in out.stdout.splitlines() if ln.startswith("{")), None)
                if out.returncode or line is None:
                    raise SystemExit(f"tree {label} ({path}) failed on stage {s}, {R} px, {w}:\n{out.stderr[-3000:]}")
                d = json.loads(line)
                if Path(d["iimagen"]).resolve() != path / "iimagen":
                    raise SystemExit(f"tree {label}: imported iimagen from {d['iimagen']}, not {path}")
                d.update(tree=label, path=str(path), commit=commits[label], repeat=rep)
                got[label].append(d["examples_per_s"])
                cpu[label].append(d.get("examples_per_cpu_s"))
                print(json.dumps(d), flush=True)
        med = {k: round(statistics.median(v), 1) for k, v in got.items()}
        first = next(iter(med))
        extra = {}
        if all(None not in v for v in cpu.values()):  # workers=0: the CPU-time rate too
            mc = {k: round(statistics.median(v), 1) for k, v in cpu.items()}
            extra = {"examples_per_cpu_s": cpu, "median_cpu": mc,
                     "cpu_ratio_to_" + first: {k: round(v / mc[first], 3) for k, v in mc.items()}}
        print(json.dumps({"bench": "data_compare", "stage": int(s), "resolution": int(R), "batch": a.batch,
                          "workers": d["workers"], "repeats": a.repeats, "examples_per_s": got,
                          "median": med, "ratio_to_" + first: {k: round(v / med[first], 3) for k, v in med.items()},
                          **extra,
                          "commits": commits, "cpus": os.cpu_count(),
                          "machine": platform.processor() or platform.machine()}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--pool", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=None, help="the parallel case (default: one per core, <= 16)")
    ap.add_argument("--stages", default="1,2")
    ap.add_argument("--resolutions", default="32,64")
    ap.add_argument("--loaders", default="thread,processes",
                    help="which cases: 'thread' (workers=0), 'processes' (--workers), or both")
    ap.add_argument("--trees", default=None, help="label=path,label=path: run each case in each source tree")
    ap.add_argument("--repeats", type=int, default=1, help="with --trees: runs per case and tree, interleaved")
    a = ap.parse_args()
    bad = set(a.loaders.split(",")) - {"thread", "processes"}
    if bad:
        raise SystemExit(f"--loaders: {sorted(bad)} unknown; use thread, processes or thread,processes")
    if a.trees:
        return compare(a, parse_trees(a.trees))

    import iimagen
    from iimagen import tasks as T
    from iimagen.data import Loader

    pool = None
    for stage in map(int, a.stages.split(",")):
        for R in map(int, a.resolutions.split(",")):
            if stage == 1 and pool is None:
                pool = T.RetrievalPool(a.pool, seed=0)
            for workers in [{"thread": 0, "processes": a.workers}[k] for k in a.loaders.split(",")]:
                L = Loader(stage, a.batch, R, seed=0, pool=pool if stage == 1 else None, workers=workers,
                           process_index=0, process_count=1)
                eps, epc = rate(L, a.batches, warmup=max(1, L.workers))
                print(json.dumps({"bench": "data", "stage": stage, "resolution": R, "batch": a.batch,
                                  "workers": L.workers, "examples_per_s": round(eps, 1),
                                  "examples_per_cpu_s": round(epc, 1) if L.workers == 0 else None,
                                  "cpus": os.cpu_count(),
                                  "machine": platform.processor() or platform.machine(),
                                  "iimagen": str(Path(iimagen.__file__).parent)}), flush=True)


if __name__ == "__main__":
    main()
