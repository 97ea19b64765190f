# Shared by scripts/train_shipped.sh and scripts/train_shipped_cpu.sh (sourced): one training run.
#   run NAME ARGS...   `iimagen train COMMON... --workdir OUT/NAME ARGS...`, its output appended to OUT/NAME.log; it
#                      resumes if OUT/NAME holds a checkpoint. Uses OUT, PY and the array COMMON; with ONLY="a b",
#                      runs only the named runs; with TAR_TO=DIR, packs the run's export, metrics and log into
#                      DIR/NAME.tgz as soon as it ends (checkpoints left out).
# OUT/runs.log gets `== DATE NAME: iimagen train ...` and `== DATE NAME exit RC: SUMMARY` (scripts/ship_runs.py reads
# them).
# Compiled programs go to a persistent cache (JAX_COMPILATION_CACHE_DIR, default OUT/jax_cache): the stage-2 runs
# share stage 1's train step and load it instead of compiling it again (on an H200 host 7-11 s each against 64 s for
# stage 1's compile; on a 2-core CPU 19-21 s against 48 s, the rest being tracing).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
run() {
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  echo "== $(date -u +%FT%TZ) $name: iimagen train ${COMMON[*]} --workdir $OUT/$name $*" | tee -a "$OUT/runs.log"
  $PY -m iimagen.cli train "${COMMON[@]}" --workdir "$OUT/$name" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $(date -u +%FT%TZ) $name exit $rc: $(tail -n 1 "$OUT/$name.log")" | tee -a "$OUT/runs.log"
  if [ -n "${TAR_TO:-}" ]; then
    (cd "$OUT" && tar czf "$TAR_TO/$name.tgz" --exclude='*/checkpoints' runs.log "$name" "$name.log")
  fi
  return $rc
}
