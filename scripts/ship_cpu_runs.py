"""Copy the exports of scripts/train_shipped_cpu.sh into data/checkpoints/ and write their model cards.

    python scripts/ship_cpu_runs.py RUNS_DIR

The card's first part comes from iimagen.checkpoint.save_model (config, command, seed, steps, devices, wall time);
this appends how the run was made (from RUNS_DIR/runs.log and the run's metrics.jsonl). Evaluation figures are
added by hand from `iimagen eval` (see README "Evaluation")."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from iimagen.checkpoint import model_card
from iimagen.configs import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SHIP = {  # run name -> (checkpoint name, what it is)
    "stage1": ("stage1-tiny", "Stage 1 (retrieval-augmented training) of `tiny`, from `stage0-tiny`."),
    "stage2": ("instruct-imagen-tiny", "Instruct-Imagen: stage 2 (instruction tuning on the task mixture) of `tiny`, "
                                       "from `stage1-tiny`."),
    "multitask": ("multitask-tiny", "The multi-task baseline (paper Table 4): the stage-2 mixture **without "
                                    "instruction text** (raw inputs only), from `stage1-tiny`."),
    "no_stage1": ("no-stage1-tiny", "Instruct-Imagen **without stage 1** (paper Table 3/4 ablation): stage 2 "
                                    "straight from `stage0-tiny`."),
}


def main(runs: Path) -> None:
    log = (runs / "runs.log").read_text().splitlines()
    ship = dict(SHIP)
    for d in sorted(p for p in runs.glob("single_*") if p.is_dir()):  # single-task baselines (SINGLE=... in train_shipped_cpu.sh)
        task = d.name.removeprefix("single_")
        ship[d.name] = (f"single-task-{task.replace('_', '-')}-tiny",
                        f"A single-task baseline (paper Table 3): stage 2 on `{task}` alone, from `stage1-tiny` "
                        f"(`--variant single_task={task}`).")
    for run, (name, what) in ship.items():
        export = runs / run / "export"
        if not export.is_dir():
            print(f"skip {run}: no export")
            continue
        dst = ROOT / "data" / "checkpoints" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(export, dst)
        shutil.copy(runs / run / "metrics.jsonl", dst / "metrics.jsonl")
        recs = [json.loads(x) for x in (runs / run / "metrics.jsonl").read_text().splitlines()]
        first, last = np.mean([r["loss"] for r in recs[:5]]), np.mean([r["loss"] for r in recs[-10:]])
        ips = np.median([r["images_per_s"] for r in recs])
        cmd = [x.split(": ", 1)[1] for x in log if x.startswith("== ") and f" {run}: " in x][-1]
        # Segments: each start of the run after stage 1 ended (a later one resumes the last checkpoint: parameters,
        # EMA, optimizer and data position). Training time from the metrics (each record holds the mean step time
        # since the one before), so a segment stopped by hand, which leaves no exit line, counts too.
        t_s1 = max([i for i, x in enumerate(log) if " stage1 exit 0: " in x] or [0]) if run != "stage1" else 0
        targets = [x.split("--steps ")[1].split()[0] for x in log[t_s1:] if x.startswith("== ") and f" {run}: " in x]
        compile_s = sum(json.loads(x.split(": ", 1)[1]).get("compile_s", 0) for x in log if f" {run} exit 0: " in x)
        script = "scripts/train_shipped_cpu.sh runs/cpu STEPS 1000"
        if run.startswith("single_"):
            script = f"SINGLE={run.removeprefix('single_')} SINGLE_STEPS={targets[-1]} {script}"
            where = "alongside the three stage-2 runs"
        else:
            where = "the three stage-2 runs side by side, stage 1 alone before them"
        by_step = {r["step"]: r for r in recs}
        steps = sorted(by_step)
        wall = sum(by_step[b]["step_time_s"] * (b - a) for a, b in zip([0] + steps, steps))
        # The export's meta and card carry the whole run's training time, not only the last segment's.
        cfg_json = json.loads((dst / "config.json").read_text())
        cfg_json["meta"]["wall_s"] = wall
        (dst / "config.json").write_text(json.dumps(cfg_json, indent=2, sort_keys=True))
        card = dst / "MODEL_CARD.md"
        card.write_text(model_card(ModelConfig.from_dict(cfg_json["model"]), cfg_json["meta"]) + f"""
## How it was made
- {what}
- Trained on this kit's 2-core CPU development machine (no accelerator in those sessions), 2026-11-26, by
  `{script}` ({where}), in {len(targets)} segment(s) started with `--steps` {', '.join(targets)}; each later one resumed the run's last
  checkpoint (parameters, EMA, optimizer, data position), so the batches are those of one uninterrupted run.
- Command (last segment): `{cmd}`
- {recs[-1]['step']} steps of batch {cfg_json['meta'].get('batch_size', 32)}, {wall:.0f} s of training (logged step times) plus \
{compile_s:.0f} s of compiles, median {ips:.1f} images/s (the machine shared between runs).
- Loss (mean of logged steps): {first:.3f} over the first 50 steps, {last:.3f} over the last 100.
- Still **undertrained** by the paper's standard (400-500k steps at batch 512); see README "Evaluation" for what it
  does and does not follow.
""")
        print(f"shipped {run} -> {dst.relative_to(ROOT)}  loss {first:.3f} -> {last:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
