#!/usr/bin/env bash
# Train stages 1 and 2 of `tiny` and the two baselines on a 2-core CPU, from the shipped stage-0 checkpoint.
# This is the script that made data/checkpoints/{stage1,instruct-imagen,multitask,no-stage1}-tiny in a session
# without an accelerator (stage0-tiny came from scripts/train_shipped.sh on an H200).
#   scripts/train_shipped_cpu.sh OUTDIR [STAGE2_STEPS] [STAGE1_STEPS]
# Stage 1 runs alone (both cores); then the three stage-2 runs side by side, all with the same steps, so the
# evaluation compares them at matched training:
#   stage2     Instruct-Imagen: instruction tuning from stage 1
#   multitask  the same mixture without instruction text, from stage 1 (the paper's multi-task baseline)
#   no_stage1  instruction tuning from stage 0 ("without retrieval-augmented training", paper Table 4)
#   single_T   with SINGLE="T ...": a single-task model per task T (paper Table 3), SINGLE_STEPS steps
# stage0-tiny predates the full-resolution input skip, so stage 1 is trained without it (input_skip=false) and each
# stage-2 run adds it at identity when it starts (iimagen.model.grow).
set -uo pipefail
OUT=${1:?usage: scripts/train_shipped_cpu.sh OUTDIR [STAGE2_STEPS] [STAGE1_STEPS]}
STEPS=${2:-600}
STEPS1=${3:-1000}
PY=${PYTHON:-python3}
STAGE0=${STAGE0:-data/checkpoints/stage0-tiny}
mkdir -p "$OUT"
COMMON=(--config tiny --batch-size 32 --lr 1e-3 --warmup 100 --export-dtype bfloat16
        --log-every 10 --ckpt-every 100 --workers 1 --no-progress)
run() {  # run NAME ARGS...: one training run, its log in OUT/NAME.log; resumes if OUT/NAME holds a checkpoint
  local name=$1; shift
  echo "== $(date -u +%FT%TZ) $name: iimagen train ${COMMON[*]} --workdir $OUT/$name $*" | tee -a "$OUT/runs.log"
  $PY -m iimagen.cli train "${COMMON[@]}" --workdir "$OUT/$name" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?; echo "== $(date -u +%FT%TZ) $name exit $rc: $(tail -n 1 "$OUT/$name.log")" | tee -a "$OUT/runs.log"
  return $rc
}
[ -d "$OUT/stage1/export" ] || run stage1 --stage 1 --steps "$STEPS1" --init "$STAGE0" --override input_skip=false \
  || exit 1
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
