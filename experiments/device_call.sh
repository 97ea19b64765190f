#!/usr/bin/env bash
# One call of a time-limited accelerator host (the `device` tool's `run`, OUT = its $OUT): the training benchmark,
# then stages 1 and 2 of `tiny` with every baseline, packed into at most 4 files under OUT.
#   bash experiments/device_call.sh   (the host needs jax, flax, optax, orbax; diffusers 0.39 for the benchmark peer)
# Back here: `for t in a b c; do tar xf $t.tar; done; for z in *.tgz; do tar xzf $z; done; tar xf a.tar runs.log`
# (the last step restores the full runs.log over the runs' snapshots), then `python scripts/ship_runs.py DIR`.
# BENCH_S (default 300; 0 skips it) is the benchmark's time: compiling `small`'s train step alone took 173 s on an
# H200 host, so with it one 10-minute call has no time left for the chain (BENCH_S=0 trains the chain alone).
# ATTACH (default empty) goes to train_shipped.sh: ATTACH="ctx_patch=true,ctx_content_attn=true" trains the chain with
# the content-reading parts (docs/experiments/2026-12-01-content-reading.md; on a CPU the content attention changed
# nothing in 2,180 mixture steps, while the `subject` task alone began to read subjects:
# docs/experiments/2026-12-01-subject-task-alone.md). Either way stage 1 trains on the current stage-1 data (nonce
# subject names, neighbours found with the foreground block: docs/experiments/2026-12-01-stage1-subjects.md).
# SUBJECT_FIRST=S (seconds, default 0) goes to train_shipped.sh too: the mixture trained S s from the subject
# specialist after the side-by-side runs (docs/experiments/2026-12-01-subjects-first.md; e.g. SUBJECT_FIRST=60
# BENCH_S=0). CTX_LR=X (default 1) goes there too: every run after stage 0 scales its context branch's updates by X
# (docs/experiments/2026-12-02-ctx-lr-scale.md). TWO_READERS=S (seconds, default 0) goes there too: the two-reader
# model built from this call's single_subject and stage1, then S s of the mixture at one learning rate
# (docs/experiments/2026-12-06-two-readers.md; e.g. TWO_READERS=180 BENCH_S=0; with CTX_LR=10 the earlier runs train
# at X = 10, the two-reader run keeps X = 1).
# CALL_S (default 585) is when everything must be packed, counted from the start. The shipped chain came from the
# training half of this script (run first, then the benchmark, which ran out of time), i.e.
#   STAGE0=data/checkpoints/stage0-tiny SINGLE="..." TAR_TO=/tmp/tars DEADLINE=$((T0+440)) MARGIN=90 \
#     scripts/train_shipped.sh /tmp/runs 1.7
set -u
T0=$(date +%s); export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
BENCH_S=${BENCH_S:-300}; CALL_S=${CALL_S:-585}
SINGLES=${SINGLES:-"edge_to_image depth_to_image mask_to_image sketch_to_image subject styled_generation \
style_transfer"}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
if [ "$BENCH_S" -gt 0 ]; then
  timeout "$BENCH_S" python3 benchmarks/train.py --config small --batch 128 2> "$OUT/bench.err" \
    | tee "$OUT/bench_train.jsonl"
fi
# training: whatever is left, less 150 s for the stage-2 compile (cached), the exports and the packing; stage 1 and
# its compile take about 230 s, so the chain needs about 330 s before CALL_S
if [ $(( T0 + CALL_S - $(date +%s) )) -lt 330 ]; then
  echo "no time left for training" | tee "$OUT/device.log"; exit 0
fi
mkdir -p /tmp/tars /tmp/runs
DL=$((T0 + CALL_S - 150))
echo "CTX_LR=${CTX_LR:-1} TWO_READERS=${TWO_READERS:-0} ATTACH=\"${ATTACH:-}\" SUBJECT_FIRST=${SUBJECT_FIRST:-0} STAGE0=data/checkpoints/stage0-tiny SINGLE=\"$SINGLES\" TAR_TO=/tmp/tars DEADLINE=$DL MARGIN=90" \
  "scripts/train_shipped.sh /tmp/runs 1.7" > /tmp/runs/invocation.txt
STAGE0=data/checkpoints/stage0-tiny SINGLE="$SINGLES" TAR_TO=/tmp/tars DEADLINE=$DL MARGIN=90 \
  timeout $((T0 + CALL_S - 20 - $(date +%s))) bash scripts/train_shipped.sh /tmp/runs 1.7 > "$OUT/device.log" 2>&1
echo "training done at $(( $(date +%s) - T0 )) s" | tee -a "$OUT/device.log"
# at most 8 files of 16 MB come back: the runs (about 3 MB each) in three tars; runs.log last (each run's archive
# holds the log as it was when that run ended)
cp /tmp/runs/runs.log /tmp/runs/invocation.txt /tmp/tars/ 2>/dev/null
cd /tmp/tars || exit 1
ls single_*.tgz 2>/dev/null | sort > /tmp/singles.txt
tar cf "$OUT/a.tar" stage1.tgz stage2.tgz multitask.tgz no_stage1.tgz $(ls stage2_subject_first.tgz mixture_stage1_reader.tgz 2>/dev/null) \
  invocation.txt runs.log
tar cf "$OUT/b.tar" $(head -n 4 /tmp/singles.txt) runs.log
tar cf "$OUT/c.tar" $(tail -n +5 /tmp/singles.txt) runs.log
ls -la "$OUT" | tee -a "$OUT/device.log"
