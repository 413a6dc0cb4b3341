#!/usr/bin/env bash
# Issue 22's CPU figures on this machine in one command: every benchmark the issue's targets need, apr against
# llama.cpp in the same runs, then a table of each figure against its target (bench/cpu_summary.py).
#
#   bash bench/cpu_session.sh [OUT]        # default bench/results/cpu-session-<kernel build>-<UTC date>/
#
# Environment: LLAMA_DIR, a llama.cpp build with build/bin/llama-bench and llama-lookup (default .llama-cpp,
# built by bench/build_llama_cpp.sh when missing, ~15 minutes on 2 cores; LLAMA_CMAKE_ARGS passes through, see
# that script for a CPU whose ggml AMX path crashes); THREADS (default 2); APR_NATIVE_VARIANT to measure another
# kernel build than the best this CPU runs (e.g. avx2 beside a LLAMA_DIR built for AVX2 only: a proxy for an
# AVX2 machine, which is not the same thing); QUICK=1 for a plumbing check (few repetitions, 512-token "long"
# prompt, 3 lookup tasks: the figures then mean nothing). About 30 minutes on a 2-core machine, the lookup
# benchmark the longest. Run it on a quiet machine: every figure is a ratio to a peer measured in the same run,
# but a neighbour's load still moves the two engines' phases differently.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
THREADS="${THREADS:-2}"
LLAMA_DIR="${LLAMA_DIR:-.llama-cpp}"
# The kernel build apr runs here (the best this CPU runs, or APR_NATIVE_VARIANT's), which names the results.
VARIANT=$($PY -c "import os; from apr.cpu import choose_variant; v, why = choose_variant(os.environ.get('APR_NATIVE_VARIANT') or None); print(v.name if v else 'none')")
[ "$VARIANT" != none ] || { echo "cpu_session: no native kernel build runs here (python -m apr.engine.native says why)" >&2; exit 1; }
TAG="$VARIANT"
[ -n "${APR_NATIVE_VARIANT:-}" ] && TAG="forced-$VARIANT"
OUT="${1:-bench/results/cpu-session-$TAG-$(date -u +%Y-%m-%d)}"
mkdir -p "$OUT"
rm -f "$OUT/QUICK"
if [ "${QUICK:-0}" = 1 ]; then
  touch "$OUT/QUICK" # cpu_summary.py then calls no target met
  REPS=(--min-reps 1 --min-seconds 0)
  LONG=512
  LOOKUP_TASKS=(--tasks 3)
else
  REPS=(--min-reps 3 --min-seconds 5)
  LONG=4000
  LOOKUP_TASKS=()
fi

step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/session.log"; }
# A benchmark's JSON is its last stdout line; its progress goes to the log. A benchmark that fails or ends on
# anything but a JSON document leaves NAME.failed (its last line) instead: the summary then says NOT MEASURED,
# and the session goes on with the others.
json_of() {
  local name=$1; shift
  local last
  last=$("$@" 2>>"$OUT/session.log" | tail -1) || true
  if printf '%s' "$last" | $PY -c 'import json, sys; json.load(sys.stdin)' 2>/dev/null; then
    printf '%s\n' "$last" > "$OUT/$name.json"
  else
    printf '%s\n' "$last" > "$OUT/$name.failed"
    echo "   $name: no JSON (see $OUT/session.log)" | tee -a "$OUT/session.log"
  fi
}

step "machine"
{
  .venv/bin/apr --version
  grep -m1 'model name' /proc/cpuinfo
  grep -m1 -o -w -E 'avx2|avx512_vnni|avx_vnni|amx_int8|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
  uptime
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

for ref in qwen2.5-coder:1.5b; do .venv/bin/apr pull "$ref" >/dev/null; done
QWEN=$(ls "${APR_HOME:-$HOME/.cache/apr}"/models/qwen2.5-coder-1.5b-*/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf | head -1)
if [ ! -x "$LLAMA_DIR/build/bin/llama-bench" ] || [ ! -x "$LLAMA_DIR/build/bin/llama-lookup" ]; then
  step "building llama.cpp into $LLAMA_DIR (llama-bench, llama-lookup)"
  bash bench/build_llama_cpp.sh "$LLAMA_DIR" llama-bench llama-lookup >> "$OUT/session.log" 2>&1 ||
    { echo "cpu_session: building llama.cpp failed (see $OUT/session.log and $LLAMA_DIR/build.log)" >&2; exit 1; }
fi
BENCH="$LLAMA_DIR/build/bin/llama-bench"

step "prefill-128, decode, roofline, 8 streams: llama.cpp default"
json_of engine-llama-default $PY bench/bench_engine.py --model "$QWEN" --threads "$THREADS" --batch 8 \
  --engines apr,llama.cpp "${REPS[@]}" --llama-bench "$BENCH"
step "the same against llama.cpp --repack 0 (its plain kernels: faster at prompts on some CPUs)"
json_of engine-llama-repack0 $PY bench/bench_engine.py --model "$QWEN" --threads "$THREADS" --batch 8 \
  --engines apr,llama.cpp "${REPS[@]}" --llama-bench "$BENCH" --llama-args "--repack 0"
step "a $LONG-token prompt"
json_of prefill-long $PY bench/bench_engine.py --model "$QWEN" --threads "$THREADS" --engines apr,llama.cpp \
  --prompt-tokens "$LONG" --decode-tokens 16 --min-reps 1 --min-seconds 0 --llama-bench "$BENCH" --llama-args "--repack 0"
step "128 tokens and decode on top of a $LONG-token context"
json_of depth $PY bench/bench_depth.py --model "$QWEN" --threads "$THREADS" --depths "0,$LONG" --prompt-tokens 128 \
  --decode-tokens 32 --min-reps 1 --min-seconds 0 --llama-reps 2 --llama-bench "$BENCH"
step "lookup decoding on the code edits, one thread (apr plain, apr lookup, llama.cpp lookup with draft 3)"
json_of lookup $PY bench/bench_lookup.py --model "$QWEN" --threads 1 --min-reps 1 --warmup 1 "${LOOKUP_TASKS[@]}" \
  --llama-lookup "$LLAMA_DIR/build/bin/llama-lookup" --llama-draft 3

step "the products alone (C): one row and 128 rows, and plain loads of the same bytes"
FLAGS=$($PY -c "from apr.cpu import VARIANTS; print(' '.join(next(v.flags for v in VARIANTS if v.name == '$VARIANT')))")
if cc -O3 -std=c11 -D_DEFAULT_SOURCE -mavx2 -mfma -mf16c -fopenmp $FLAGS bench/bench_products.c -o "$OUT/bench_products" \
  -lm 2>>"$OUT/session.log"; then
  for rows in 1 128; do
    json_of "products-rows$rows" "$OUT/bench_products" --reps 10 --threads "$THREADS" --pages huge --rows "$rows" --by-product
  done
  json_of products-loads "$OUT/bench_products" --reps 10 --threads "$THREADS" --pages huge --rows 1 --loads-only
  rm -f "$OUT/bench_products"
else
  echo "   bench_products did not build (see $OUT/session.log)" | tee -a "$OUT/session.log"
fi

step "the avx2 prompt kernel against the ceiling of its own instruction mix, one thread (bench_q4k8_mix.c)"
if cc -O3 -std=c11 -D_DEFAULT_SOURCE -mavx2 -mfma -mf16c -fopenmp bench/bench_q4k8_mix.c -o "$OUT/bench_q4k8_mix" \
  -lm 2>>"$OUT/session.log"; then
  json_of q4k8-mix "$OUT/bench_q4k8_mix"
  rm -f "$OUT/bench_q4k8_mix"
else
  echo "   bench_q4k8_mix did not build (see $OUT/session.log)" | tee -a "$OUT/session.log"
fi

step "summary"
$PY bench/cpu_summary.py "$OUT" | tee "$OUT/summary.txt"
