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
    for run, (name, what) in SHIP.items():
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
        # One finished segment per "exit 0" line: a run resumed with a larger --steps has several.
        segs = [json.loads(x.split(": ", 1)[1]) for x in log if f" {run} exit 0: " in x]
        wall, compile_s = sum(g["wall_s"] for g in segs), sum(g.get("compile_s", 0) for g in segs)
        ends = [g["steps"] for g in segs]
        spans = ", ".join(f"{a}-{b} ({g['wall_s']:.0f} s)" for a, b, g in zip([0] + ends, ends, segs))
        # The export's meta and card carry the whole run's training time, not only the last segment's.
        cfg_json = json.loads((dst / "config.json").read_text())
        cfg_json["meta"]["wall_s"] = wall
        (dst / "config.json").write_text(json.dumps(cfg_json, indent=2, sort_keys=True))
        card = dst / "MODEL_CARD.md"
        card.write_text(model_card(ModelConfig.from_dict(cfg_json["model"]), cfg_json["meta"]) + f"""
## How it was made
- {what}
- Trained on this kit's 2-core CPU development machine (no accelerator in those sessions), 2026-11-26, by
  `scripts/train_shipped_cpu.sh runs/cpu STEPS 1000` (the three stage-2 runs side by side, stage 1 alone before
  them), in {len(segs)} segment(s) by step: {spans}; each later segment resumed the run's last checkpoint
  (parameters, EMA, optimizer, data position) with a larger `--steps`.
- Command (last segment): `{cmd}`
- {recs[-1]['step']} steps of batch {cfg_json['meta'].get('batch_size', 32)}, {wall:.0f} s of training after \
{compile_s:.0f} s of compiles, median {ips:.1f} images/s (the machine shared between runs).
- Loss (mean of logged steps): {first:.3f} over the first 50 steps, {last:.3f} over the last 100.
- Still **undertrained** by the paper's standard (400-500k steps at batch 512); see README "Evaluation" for what it
  does and does not follow.
""")
        print(f"shipped {run} -> {dst.relative_to(ROOT)}  loss {first:.3f} -> {last:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
