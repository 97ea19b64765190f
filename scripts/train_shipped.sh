#!/usr/bin/env bash
# Train the checkpoints shipped in data/checkpoints/ (tiny, all stages + the baselines the evaluation needs) on one
# accelerator host. The shipped stage0-tiny is from `BATCH0=256 SINGLE=edge_to_image scripts/train_shipped.sh OUT 1.1`
# on an H100; everything else from `STAGE0=data/checkpoints/stage0-tiny SINGLE="<seven tasks>" DEADLINE=...
# MARGIN=90 scripts/train_shipped.sh OUT 1.7` on an H200 (experiments/device_call.sh; see each MODEL_CARD.md).
#   scripts/train_shipped.sh OUTDIR [SCALE]
# SCALE multiplies every time budget (150 s stage 0, 60 s stage 1, 120 s stage 2; 0.03 = a smoke test on a CPU).
# ONLY="stage0 ..." runs just the named runs (to split the recipe over several calls of a time-limited machine; a
# run started again resumes its last checkpoint). SINGLE="edge_to_image ..." adds single-task baselines.
# BATCH (default 128) is every run's batch, BATCH0 (default BATCH) stage 0's. DEADLINE (epoch seconds) caps the
# side-by-side stage-2 budgets so that the whole recipe ends by then (a machine lent for a fixed time): it keeps
# MARGIN (default 150) seconds for their start-up, compile (81-83 s for three side by side on an H100 host without the
# cache below) and export.
# ATTACH="ctx_patch=true,ctx_content_attn=true" (empty by default) is the --override of the two runs that attach the
# context branch (stage1, no_stage1): the content-reading parts (README, "Content reading"); the later runs inherit them.
# SUBJECT_FIRST=S (seconds; default 0, off): the curriculum of README "Subjects first, then the mixture". After the
# side-by-side runs, stage2_subject_first trains the Table-1 mixture for S seconds from single_subject (so `subject`
# must be in SINGLE); the side-by-side runs end S + 60 s earlier to leave it room. It is not shipped by ship_runs.py.
# TWO_READERS=S (seconds; default 0, off): the build of README "Two readers on the specialist's encoder". After the
# side-by-side runs (and SUBJECT_FIRST's run), `experiments/two_readers.py --new-aligned --aligned-from stage1` puts
# stage 1's aligned reader beside single_subject's reader (moved to the content slot), and mixture_stage1_reader
# trains the Table-1 mixture from it for S seconds at one learning rate: its --ctx-lr-scale 1 overrides CTX_LR
# (X = 10 erased the new reader's alignment on the CPU). `subject` must be in SINGLE; the side-by-side runs end
# S + 90 s earlier. ship_runs.py ships it as instruct-imagen-two-readers-tiny.
# CTX_LR=X (default 1) gives every run after stage 0 `--ctx-lr-scale X`: the context branch's updates X times the
# backbone's (README, "A faster context branch").
# STAGE0=DIR starts stage 1 and no_stage1 from that stage-0 export (e.g. the shipped data/checkpoints/stage0-tiny)
# instead of training stage 0. Compiled programs go to a persistent cache (scripts/run_lib.sh).
# TAR_TO=DIR packs each run's export, metrics and log into DIR/NAME.tgz as soon as it ends (scripts/run_lib.sh), so a
# call cut off later still returns every run that finished.
set -uo pipefail
OUT=${1:?usage: scripts/train_shipped.sh OUTDIR [SCALE]}
SCALE=${2:-1}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
budget() { $PY -c "print(max(5, int($1 * $SCALE)))"; }
deadline_cap() {  # min(budget, seconds to DEADLINE less MARGIN for start-up, compile and export)
  if [ -z "${DEADLINE:-}" ]; then echo "$1"; else
    $PY -c "import time; print(max(5, min($1, int($DEADLINE - time.time() - ${MARGIN:-150}))))"; fi
}
BATCH=${BATCH:-128}
COMMON=(--config tiny --export-dtype bfloat16 --log-every 50 --ckpt-every 1000 --no-progress)
source "$(dirname "$0")/run_lib.sh"
# Stage 0: the text-to-image backbone (stands in for the pre-trained Imagen).
S0=${STAGE0:-$OUT/stage0}
[ -n "${STAGE0:-}" ] || run stage0 --stage 0 --batch-size "${BATCH0:-$BATCH}" --steps 100000 --lr 1e-3 \
  --time-budget "$(budget 150)" || exit 1
# Every run from here on has the context branch: CTX_LR scales its updates.
[ "${CTX_LR:-1}" = 1 ] || COMMON+=(--ctx-lr-scale "$CTX_LR")
# Stage 1: retrieval-augmented training from stage 0.
ATT=(); [ -z "${ATTACH:-}" ] || ATT=(--override "$ATTACH")
run stage1 --stage 1 --batch-size "$BATCH" --init "$S0" --steps 100000 --time-budget "$(budget 60)" \
  --pool-size 8192 "${ATT[@]}" || exit 1
# Stage 2 and the baselines, side by side on the one accelerator (each takes a share of memory and data workers).
N_SIDE=$((3 + $(echo ${SINGLE:-} | wc -w)))
export XLA_PYTHON_CLIENT_MEM_FRACTION=$($PY -c "print(round(0.95 / $N_SIDE, 3))")  # 0.317 for the three
SF=${SUBJECT_FIRST:-0}; TR=${TWO_READERS:-0}
if [ $((SF + TR)) -gt 0 ] && [[ " ${SINGLE:-} " != *" subject "* ]]; then
  echo "SUBJECT_FIRST and TWO_READERS need subject in SINGLE (they start from single_subject)" >&2; exit 2; fi
B2=$(MARGIN=$(( ${MARGIN:-150} + (SF > 0 ? SF + 60 : 0) + (TR > 0 ? TR + 90 : 0) )) deadline_cap "$(budget 120)")
COMMON+=(--batch-size "$BATCH" --steps 100000 --time-budget "$B2")
# Data workers (the host has 16 cores): stage2, multitask, no_stage1, each single-task run.
if [ "$N_SIDE" -gt 5 ]; then W=(4 3 3 1); else W=(8 4 4 2); fi
run stage2 --stage 2 --init "$OUT/stage1" --workers "${W[0]}" &
run multitask --stage 2 --variant no_instruction --init "$OUT/stage1" --workers "${W[1]}" &
run no_stage1 --stage 2 --init "$S0" --workers "${W[2]}" "${ATT[@]}" &
for task in ${SINGLE:-}; do
  run "single_$task" --stage 2 --variant "single_task=$task" --init "$OUT/stage1" --workers "${W[3]}" &
done
wait
# Subjects first: the mixture from the subject specialist (one run, the whole machine).
[ "$SF" -eq 0 ] || run stage2_subject_first --stage 2 --init "$OUT/single_subject" --workers 8 --time-budget "$SF"
# Two readers: the specialist's reader (content slot) beside stage 1's aligned one, then the mixture at one rate.
if [ "$TR" -gt 0 ]; then
  $PY experiments/two_readers.py --new-aligned --aligned-from "$OUT/stage1" "$OUT/single_subject" "$OUT/two_readers_init" \
    > "$OUT/two_readers_init.log" 2>&1 || exit 1
  run mixture_stage1_reader --stage 2 --init "$OUT/two_readers_init" --workers 8 --time-budget "$TR" --ctx-lr-scale 1
fi
echo "== done" | tee -a "$OUT/runs.log"
