#!/usr/bin/env bash
# Train stages 1 and 2 of `tiny` and the two baselines on a 2-core CPU, from a stage-0 checkpoint (STAGE0, default the
# shipped one). An earlier shipped chain came from it (700 stage-1 and 300 stage-2 steps at batch 32); the shipped
# checkpoints now come from scripts/train_shipped.sh on an H200. A stage 1 already in OUTDIR/stage1/export is used as
# is. See each MODEL_CARD.md.
#   scripts/train_shipped_cpu.sh OUTDIR [STAGE2_STEPS] [STAGE1_STEPS]
# Stage 1 runs alone (both cores); then the three stage-2 runs side by side, all with the same steps, so the
# evaluation compares them at matched training:
#   stage2     Instruct-Imagen: instruction tuning from stage 1
#   multitask  the same mixture without instruction text, from stage 1 (the paper's multi-task baseline)
#   no_stage1  instruction tuning from stage 0 ("without retrieval-augmented training", paper Table 4)
#   single_T   with SINGLE="T ...": a single-task model per task T (paper Table 3), SINGLE_STEPS steps
set -uo pipefail
OUT=${1:?usage: scripts/train_shipped_cpu.sh OUTDIR [STAGE2_STEPS] [STAGE1_STEPS]}
STEPS=${2:-600}
STEPS1=${3:-1000}
PY=${PYTHON:-python3}
STAGE0=${STAGE0:-data/checkpoints/stage0-tiny}
mkdir -p "$OUT"
COMMON=(--config tiny --batch-size 32 --lr 1e-3 --warmup 100 --export-dtype bfloat16
        --log-every 10 --ckpt-every 100 --workers 1 --no-progress)
source "$(dirname "$0")/run_lib.sh"
[ -d "$OUT/stage1/export" ] || run stage1 --stage 1 --steps "$STEPS1" --init "$STAGE0" || exit 1
run stage2 --stage 2 --steps "$STEPS" --init "$OUT/stage1/export" &
run multitask --stage 2 --steps "$STEPS" --variant no_instruction --init "$OUT/stage1/export" &
run no_stage1 --stage 2 --steps "$STEPS" --init "$STAGE0" &
# Single-task baselines (paper Table 3): one model per task named in SINGLE (e.g. SINGLE=edge_to_image), each
# trained SINGLE_STEPS steps on its task alone from stage 1.
for task in ${SINGLE:-}; do
  run "single_$task" --stage 2 --steps "${SINGLE_STEPS:-$STEPS}" --variant "single_task=$task" \
    --init "$OUT/stage1/export" &
done
wait
echo "== $(date -u +%FT%TZ) done" | tee -a "$OUT/runs.log"
