"""Copy the exports of scripts/train_chain.py's runs into data/checkpoints/ and write their model cards.

    python scripts/ship_runs.py RUNS_DIR [RUNS_DIR ...]

A run is shipped from the RUNS_DIR whose runs.log started it (a stage 1 copied into a CPU runs dir from an accelerator
one is shipped from the accelerator's). RUNS_DIR/invocation.txt, when present, is the exact command line that made
the dir, quoted in the cards. The card's first part comes from iimagen.checkpoint.save_model (config, command, seed,
steps, devices, wall time); this appends how the run was made (from runs.log and the run's metrics.jsonl).
Evaluation figures are added by hand from `iimagen eval` (see README "Evaluation")."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from iimagen.checkpoint import model_card
from iimagen.configs import ModelConfig
from iimagen.train import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SHIP = {  # run name -> (checkpoint name, what it is)
    "stage0": ("stage0-tiny", "Stage 0 (text-to-image on the synthetic world) of `tiny`: the stand-in for the "
                              "pre-trained Imagen that the later stages start from."),
    "stage1": ("stage1-tiny", "Stage 1 (retrieval-augmented training) of `tiny`, from `stage0-tiny`."),
    "stage2": ("instruct-imagen-tiny", "Instruct-Imagen: stage 2 (instruction tuning on the task mixture) of `tiny`, "
                                       "from `stage1-tiny`."),
    "multitask": ("multitask-tiny", "The multi-task baseline (paper Table 4): the stage-2 mixture **without "
                                    "instruction text** (raw inputs only), from `stage1-tiny`."),
    "no_stage1": ("no-stage1-tiny", "Instruct-Imagen **without stage 1** (paper Table 3/4 ablation): stage 2 "
                                    "straight from `stage0-tiny`."),
}


def _events(log: list[str]) -> list[tuple[str, str, str, str]]:
    """(time, name, kind, rest) of runs.log's `== DATE NAME: COMMAND` lines (kind "start", rest the command) and
    `== DATE NAME exit RC: SUMMARY` lines (kind "exit", rest the summary); scripts/train_chain.py writes them."""
    out = []
    for x in log:
        w = x.split(maxsplit=3)
        if len(w) < 3 or w[0] != "==":
            continue
        rest = x.split(": ", 1)[1] if ": " in x else ""
        if w[2].endswith(":"):
            out.append((w[1], w[2][:-1], "start", rest))
        elif len(w) == 4 and w[3].startswith("exit"):
            out.append((w[1], w[2], "exit", rest))
    return out


def _started(log: list[str], run: str) -> list[str]:
    """The command lines in runs.log that started `run`."""
    return [rest for _, name, kind, rest in _events(log) if name == run and kind == "start"]


def _summaries(log: list[str], run: str) -> list[dict]:
    """The JSON summaries `iimagen train` printed at the end of each segment of `run` (its exit lines)."""
    out = []
    for _, name, kind, rest in _events(log):
        if name == run and kind == "exit" and "{" in rest:
            try:
                out.append(json.loads(rest[rest.find("{"):]))
            except json.JSONDecodeError:
                pass
    return out


def _segments(log: list[str], run: str) -> list[tuple[str, str]]:
    """(start, end) ISO times of each segment of `run`, from its start line to its exit line; a segment still running
    or killed without its exit line ends at the log's last time."""
    events = _events(log)
    out, start = [], None
    for time, name, kind, _ in events:
        if name == run and kind == "start":
            start = time
        elif name == run and kind == "exit" and start:
            out.append((start, time))
            start = None
    if start:
        out.append((start, events[-1][0]))
    return out


def _side_by_side(log: list[str], run: str) -> list[str]:
    """The other runs in runs.log that trained while a segment of `run` did (they shared the machine)."""
    mine = _segments(log, run)
    others = sorted({name for _, name, _, _ in _events(log)} - {run})
    return [o for o in others if any(a < d and c < b for a, b in mine for c, d in _segments(log, o))]


def _flag(cmd: str, flag: str) -> str | None:
    """The value of `flag` (e.g. "--steps") in a command line, or None if the command has no such flag."""
    return cmd.split(f"{flag} ")[1].split()[0] if f"{flag} " in cmd else None


def _stage2_what(cmd: str, what: str) -> str:
    """What the Instruct-Imagen run is, from the `--init` of the command that started it: the Table-1 mixture from a
    stage 1, or a curriculum (the mixture after a single-task model)."""
    init = Path(_flag(cmd, "--init") or "").name
    if not init or "stage1" in init:
        return what
    task = init.removeprefix("single-task-").removesuffix("-tiny").replace("-", "_")
    first = (f" (a curriculum: `{task}` alone first, then the mixture; the single-task model was trained from "
             "`stage1-tiny`)") if init.startswith("single-task-") else ""
    return f"Instruct-Imagen: stage 2 (instruction tuning on the task mixture) of `tiny`, from `{init}`{first}."


def ship(runs: Path, run: str, name: str, what: str, log: list[str], cmds: list[str], invocation: str | None) -> None:
    """Ship `runs/run` as data/checkpoints/`name`; `log` is runs.log's lines, `cmds` the ones that started the run."""
    export = runs / run / "export"
    dst = ROOT / "data" / "checkpoints" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(export, dst)
    shutil.copy(runs / run / "metrics.jsonl", dst / "metrics.jsonl")
    recs = read_metrics(runs / run)  # one record per logged step
    by_step = {r["step"]: r for r in recs}
    steps = sorted(by_step)
    per_log = steps[0] if steps else 1
    head = max(1, round(50 / per_log))
    first = np.mean([by_step[s]["loss"] for s in steps[:head]])
    last = np.mean([by_step[s]["loss"] for s in steps[-max(1, round(100 / per_log)):]])
    ips = np.median([r["images_per_s"] for r in recs])
    targets = [_flag(c, "--steps") for c in cmds]
    sums = _summaries(log, run)
    compile_s = sum(s.get("compile_s", 0) for s in sums)
    # Training time from the metrics (each record holds the mean step time since the one before), so a segment
    # stopped by hand, which leaves no summary, counts too. The export's meta and card carry the whole run's time.
    wall = sum(by_step[b]["step_time_s"] * (b - a) for a, b in zip([0] + steps, steps))
    cfg_json = json.loads((dst / "config.json").read_text())
    cfg_json["meta"]["wall_s"] = wall
    (dst / "config.json").write_text(json.dumps(cfg_json, indent=2, sort_keys=True))
    meta = cfg_json["meta"]
    on_cpu = "cpu" in meta.get("devices", "").lower()
    side = _side_by_side(log, run)
    machine = ("this kit's 2-core CPU development machine" if on_cpu else
               f"one {meta['devices'].split(' x ', 1)[1]} host (16 CPU cores)")
    where = f"Trained on {machine}, {_segments(log, run)[0][0][:10]}"
    if side:
        where += f", side by side with {len(side)} other run(s) ({', '.join(side)})"
    elif run == "stage1" and _started(log, "stage0"):
        where += ", stage 0 and stage 1 one after the other"
    else:
        where += ", alone on the machine"
    tb = _flag(cmds[-1], "--time-budget")
    budget = f" (a {tb} s time budget)" if tb else ""
    card = dst / "MODEL_CARD.md"
    card.write_text(model_card(ModelConfig.from_dict(cfg_json["model"]), meta) + f"""
## How it was made
- {what}
- {where}, by `{invocation or 'see runs.log'}`, in {len(targets)} segment(s) started with `--steps` \
{', '.join(targets)}; a later segment resumes the run's last checkpoint (parameters, EMA, optimizer, data position), so
  the batches are those of one uninterrupted run.
- Command (last segment): `{cmds[-1]}`
- {meta.get('steps', steps[-1])} steps of batch {meta.get('batch_size')}{budget}: {wall:.0f} s of training (logged \
step times, to step {steps[-1]}) plus \
{compile_s:.0f} s of compiles, median {ips:.0f} images/s{' (the machine shared between runs)' if side else ''}.
- Loss (mean of logged steps): {first:.3f} over the first 50 steps, {last:.3f} over the last 100.
- Still **undertrained** by the paper's standard (400-500k steps at batch 512); see README "Evaluation" for what it
  does and does not follow.
""")
    print(f"shipped {runs / run} -> {dst.relative_to(ROOT)}  loss {first:.3f} -> {last:.3f}")


def main(dirs: list[Path]) -> None:
    for runs in dirs:
        log = (runs / "runs.log").read_text().splitlines()
        invocation = (runs / "invocation.txt").read_text().strip() if (runs / "invocation.txt").exists() else None
        table = dict(SHIP)
        for d in sorted(p for p in runs.glob("single_*") if p.is_dir()):  # single-task baselines (SINGLE=...)
            task = d.name.removeprefix("single_")
            table[d.name] = (f"single-task-{task.replace('_', '-')}-tiny",
                             f"A single-task baseline (paper Table 3): stage 2 on `{task}` alone, from `stage1-tiny` "
                             f"(`--variant single_task={task}`).")
        for run, (name, what) in table.items():
            cmds = _started(log, run)
            if run == "stage2" and cmds:
                what = _stage2_what(cmds[0], what)
            if (runs / run / "export").is_dir() and cmds:
                ship(runs, run, name, what, log, cmds, invocation)


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
