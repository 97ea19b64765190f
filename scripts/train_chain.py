"""Train the kit's chain and the baselines its evaluation compares, on any host (CPU, GPU or TPU VM).

    python scripts/train_chain.py OUT [--config tiny] [--stage0 DIR] [--runs stage0,stage1,stage2,multitask,no_stage1]
        [--single subject,edge_to_image] [--budget stage0=150,stage1=60,stage2=120] [--batch 128]
        [--side-by-side] [--workers N] [-- more `iimagen train` arguments for every run after stage 0]

The runs (paper §3.2 and Tables 3-4), each `iimagen train --workdir OUT/NAME ...`, its output in OUT/NAME.log:

    stage0     text-to-image from scratch (the stand-in for the pre-trained Imagen); skipped with --stage0 DIR
    stage1     retrieval-augmented training from stage 0 (world clusters, the context branch attached at identity)
    stage2     Instruct-Imagen: instruction tuning on the Table-1 mixture from stage 1
    multitask  the same mixture without instruction text, from stage 1 (the multi-task baseline)
    no_stage1  instruction tuning straight from stage 0 (the "w/o retrieval-augmented training" ablation)
    single_T   for each T in --single: stage 2 on task T alone, from stage 1 (the single-task baselines)

Every run is bounded by time: `--budget` gives seconds of training per kind of run (stage0, stage1, and `stage2` for
every stage-2 run); `--scale` multiplies them all (0.03: a smoke test). Stopped at any point (Ctrl-C, a lost machine),
the same command resumes: a run whose checkpoints hold part of its budget continues from the latest one with what is
left (read from its metrics.jsonl), and a finished run (its export written, its budget spent) is skipped.

The stage-2 runs are independent: on an accelerator `--side-by-side` runs them at once, sharing its memory (each gets
`XLA_PYTHON_CLIENT_MEM_FRACTION` = 0.95 / their number) and the host's cores (`--workers` data processes each); on a
CPU they run one after the other, which is faster there. OUT/runs.log gets one line when each run starts and one when
it ends (scripts/ship_runs.py reads them to write the model cards).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

RUNS = ("stage0", "stage1", "stage2", "multitask", "no_stage1")
BUDGETS = {"stage0": 150.0, "stage1": 60.0, "stage2": 120.0}  # seconds: the shipped accelerator chain's


def parse_budget(text: str) -> dict:
    out = dict(BUDGETS)
    for item in filter(None, text.split(",")):
        k, sep, v = item.partition("=")
        if not sep or k not in BUDGETS:
            raise SystemExit(f"--budget {text!r}: write stage0=S,stage1=S,stage2=S (seconds)")
        try:
            out[k] = float(v)
        except ValueError:
            raise SystemExit(f"--budget {item!r}: {v!r} is not a number of seconds") from None
    return out


def spent(workdir: Path) -> float:
    """Seconds of training a run's metrics.jsonl records (each line holds the mean step time since the last one)."""
    f, total, last = workdir / "metrics.jsonl", 0.0, 0
    if not f.exists():
        return 0.0
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "step" in r and "step_time_s" in r and r["step"] > last:
            total, last = total + r["step_time_s"] * (r["step"] - last), r["step"]
    return total


def plan(a) -> list[tuple[str, list[str], str]]:
    """(name, `iimagen train` arguments, budget kind) for every run asked for, in dependency order."""
    out_dir = Path(a.out)
    s0 = a.stage0 or str(out_dir / "stage0" / "export")
    s1 = str(out_dir / "stage1" / "export")
    runs = {"stage0": ["--stage", "0"],
            "stage1": ["--stage", "1", "--init", s0, "--pool-size", str(a.pool_size)],
            "stage2": ["--stage", "2", "--init", s1],
            "multitask": ["--stage", "2", "--init", s1, "--variant", "no_instruction"],
            "no_stage1": ["--stage", "2", "--init", s0]}
    wanted = [r for r in a.runs.split(",") if r]
    bad = [r for r in wanted if r not in runs]
    if bad:
        raise SystemExit(f"--runs: {bad} unknown; use some of {','.join(RUNS)}")
    if a.stage0 and "stage0" in wanted:
        wanted.remove("stage0")  # given: not trained
    todo = [(r, runs[r], r if r in ("stage0", "stage1") else "stage2") for r in RUNS if r in wanted]
    for task in filter(None, a.single.split(",")):
        todo.append((f"single_{task}", ["--stage", "2", "--init", s1, "--variant", f"single_task={task}"], "stage2"))
    return todo


def command(a, name: str, args: list[str], budget: float) -> list[str]:
    common = ["--config", a.config, "--batch-size", str(a.batch), "--steps", str(a.steps), "--export-dtype",
              a.export_dtype, "--log-every", str(a.log_every), "--ckpt-every", str(a.ckpt_every), "--no-progress",
              "--time-budget", f"{budget:.0f}"]
    if a.workers is not None:
        common += ["--workers", str(a.workers)]
    extra = a.extra if name != "stage0" else []
    return [sys.executable, "-m", "iimagen.cli", "train", "--workdir", str(Path(a.out) / name)] + args + common + extra


def stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def start(a, name: str, args: list[str], kind: str, env: dict):
    """Start one run (a subprocess), or None when it is finished or its budget is spent."""
    out = Path(a.out)
    budget = a.budgets[kind] * a.scale
    left = budget - spent(out / name)
    if (out / name / "export").is_dir() and left < 0.05 * budget + 5:
        print(f"{name}: done ({budget:.0f} s budget spent); skipped", flush=True)
        return None
    cmd = command(a, name, args, max(left, 5.0))
    shown = " ".join(shlex.quote(c) for c in cmd[3:])  # from `train` on
    with open(out / "runs.log", "a") as f:
        f.write(f"== {stamp()} {name}: iimagen {shown}\n")
    print(f"{name}: {left:.0f} s of {budget:.0f} s to go", flush=True)
    log = open(out / f"{name}.log", "a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log


def finish(a, name: str, proc_log) -> int:
    proc, log = proc_log
    rc = proc.wait()
    log.close()
    lines = (Path(a.out) / f"{name}.log").read_text().strip().splitlines()
    with open(Path(a.out) / "runs.log", "a") as f:
        f.write(f"== {stamp()} {name} exit {rc}: {lines[-1] if lines else ''}\n")
    print(f"{name}: exit {rc}" + ("" if rc == 0 else f" (see {a.out}/{name}.log)"), flush=True)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("out", help="folder for the runs (created); the same folder resumes them")
    ap.add_argument("--config", default="tiny", help="named model config: tiny | small | base")
    ap.add_argument("--stage0", default=None, help="a stage-0 export to start from instead of training stage 0")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"which runs, comma-separated (default {','.join(RUNS)})")
    ap.add_argument("--single", default="", help="single-task baselines: tasks, comma-separated")
    ap.add_argument("--budget", default="", type=parse_budget,
                    help="seconds of training: stage0=S,stage1=S,stage2=S (default 150, 60, 120)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every budget")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10 ** 6, help="a cap on steps per run (the budget usually binds)")
    ap.add_argument("--pool-size", type=int, default=8192, help="stage 1's retrieval pool")
    ap.add_argument("--workers", type=int, default=None, help="data worker processes per run (default: train's)")
    ap.add_argument("--side-by-side", action="store_true", help="the stage-2 runs at once (an accelerator)")
    ap.add_argument("--export-dtype", default="bfloat16")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--dry-run", action="store_true", help="print each run's command; train nothing")
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: more `iimagen train` arguments (stages 1-2)
    a = ap.parse_args(argv[:cut])
    a.extra = argv[cut + 1:]
    a.budgets = a.budget if isinstance(a.budget, dict) else parse_budget(a.budget)
    out = Path(a.out)
    todo = plan(a)
    if a.dry_run:
        for name, args, kind in todo:
            print(" ".join(shlex.quote(c) for c in command(a, name, args, a.budgets[kind] * a.scale)[1:]))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "invocation.txt", "a") as f:
        f.write("python " + " ".join(shlex.quote(x) for x in [Path(__file__).as_posix()] + sys.argv[1:]) + "\n")
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "jax_cache"))  # stage-2 runs load stage 1's compile
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    for name, args, kind in [t for t in todo if t[0] in ("stage0", "stage1")]:
        p = start(a, name, args, kind, env)
        if p is not None and finish(a, name, p) != 0:
            return 1
    rest = [t for t in todo if t[0] not in ("stage0", "stage1")]
    if a.side_by_side and len(rest) > 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(round(0.95 / len(rest), 3))
        procs = [(t[0], start(a, *t, env)) for t in rest]
        rcs = [finish(a, name, p) for name, p in procs if p is not None]
    else:
        rcs = []
        for t in rest:
            p = start(a, *t, env)
            rcs.append(0 if p is None else finish(a, t[0], p))
    return 1 if any(rcs) else 0


if __name__ == "__main__":
    sys.exit(main())
