#!/usr/bin/env bash
# The CUDA checks of one GPU lease, as phases: bash bench/gpu_session.sh PHASE... (writes logs under $OUT).
#
# Runs on a machine with an NVIDIA GPU, its own python3 and PyTorch (the project's pins do not apply there),
# no network: the missing packages travel as py3.12 wheels in .whl/ (see docs/engine.md, "CUDA"), and the
# models as chunks in .xfer/ (the SmolLM2 then the Qwen GGUF, concatenated and split: a lease moves at most
# 64 MiB a call; bench/gpu_models.txt says which bytes are which). Phases:
#   stash    copy the chunks this call carried (.xfer/c*) to /tmp/chunks, which outlives the call
#   tests    the CUDA unit tests on the fixture models, and apr run/bench on a fixture through the CLI
#   cli      apr --version, `apr run --benchmark --device cuda --batch-size 8` and the load bar (on a
#            pseudo-terminal) on a fixture, and the GPU name evidence records carry
#   models   reassemble every model whose chunks have all arrived into /tmp/models, checking each sha256
#   qwen     parity against transformers on the same GPU, bench vs transformers (single stream + batch 8),
#            apr run / chat / serve (official openai client) on qwen2.5-coder:1.5b
#   certify-bg NAME...  start the MVP certification of each named model (bench/gpu_models.txt) in its own
#            session, so it outlives the call; logs and evidence under /tmp/cert-NAME
#   certify NAME...     the same, in the foreground
#   collect  wait (COLLECT_WAIT_S) for the background certifications, pack each /tmp/cert-NAME into $OUT
# A phase that takes model names consumes the rest of the command line.
#
# The 2026-12-04 (second) lease, 10.7 of its 15 minutes: one call carrying .whl (start, ~40 s), then one call
# per chunk (`stash`, carry .xfer/cNN, ~7 s each); after c05 `stash models certify-bg smollm2-135m gemma3-270m`;
# after c25 all three certifications in the foreground of one call, in parallel (~5 min; qwen the longest):
#   CELL_THREADS=2 ... certify smollm2-135m & CELL_THREADS=2 ... certify gemma3-270m &
#   CELL_THREADS=4 ... certify qwen2.5-coder-1.5b & wait; bash bench/gpu_session.sh collect
# Results: certifications/<model>/gpu-h200/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
if [ ! -f /tmp/site/.apr-wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
  touch /tmp/site/.apr-wheels
fi
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 APR_HOME=/tmp/apr-home
APR=(python3 -m apr.cli.main)
QWEN=/tmp/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

phase_tests() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
  python3 -m pytest -q -p no:cacheprovider tests/unit/test_engine_cuda.py tests/unit/test_engine_cache_pool.py 2>&1 \
    | tee "$OUT/cuda-tests.log" | tail -25
  local fixture
  fixture=$(python3 -c 'from pathlib import Path; from apr.formats.fixtures import build_fixture_set
print(build_fixture_set(Path("/tmp/fixtures"))["qwen2"]["gguf"])' | tail -1)
  "${APR[@]}" run "$fixture" --device cuda --prompt "hello" --max-tokens 8 --json 2>&1 | tail -3
  "${APR[@]}" bench "$fixture" --device cuda --batch 8 --min-reps 2 --min-seconds 1 2>/dev/null | tail -4
}

phase_stash() {
  mkdir -p /tmp/chunks
  cp .xfer/c[0-9][0-9] /tmp/chunks/ 2>/dev/null
  ls /tmp/chunks | tr '\n' ' '; echo
}

phase_cli() {
  local fixture
  fixture=$(python3 -c 'from pathlib import Path; from apr.formats.fixtures import build_fixture_set
print(build_fixture_set(Path("/tmp/fixtures"))["qwen2"]["gguf"])' | tail -1)
  "${APR[@]}" --version
  "${APR[@]}" run "$fixture" --device cuda --prompt "hello" --max-tokens 32 --benchmark --batch-size 8 2>&1 | tail -6
  script -qec "${APR[*]} run $fixture --device cuda --prompt hi --max-tokens 4" /dev/null | tr '\r' '\n' | grep -a "loading\|loaded" | tail -3
  python3 -c "from apr.qa.provenance import named_device; print('evidence device:', named_device('cuda'))"
}

phase_models() {
  python3 bench/gpu_models.py --chunks /tmp/chunks --models /tmp/models
}

model_file() {
  awk -v name="$1" '$1 == name { print "/tmp/models/" $2 }' bench/gpu_models.txt
}

certify_one() {
  # Cells use OMP_NUM_THREADS CPU threads each: three certifications of 3 workers share the 16 cores.
  local name=$1 file
  file=$(model_file "$name")
  [ -f "$file" ] || { echo "$name: $file not assembled"; return 1; }
  rm -rf "/tmp/cert-$name/out" "/tmp/cert-$name/done"; mkdir -p "/tmp/cert-$name"
  OMP_NUM_THREADS="${CELL_THREADS:-2}" timeout "${CERTIFY_TIMEOUT_S:-540}" "${APR[@]}" certify \
    "playbooks/models/$name-mvp.playbook.yaml" --model-path "$file" --workers "${CERTIFY_WORKERS:-3}" \
    -o "/tmp/cert-$name/out" > "/tmp/cert-$name/certify.log" 2>&1
  echo "exit $?" > "/tmp/cert-$name/done"
}

phase_qwen() {
  # transformers' reference: the dense bf16 export of the same GGUF (what "transformers bf16" means).
  [ -f /tmp/qwen-hf/config.json ] || "${APR[@]}" convert "$QWEN" --to safetensors --dtype bf16 -o /tmp/qwen-hf | tail -1
  python3 bench/bench_cuda_parity.py --model "$QWEN" --hf-dir /tmp/qwen-hf 2>&1 | tee "$OUT/parity.log" | tail -8
  python3 bench/bench_engine.py --model "$QWEN" --device cuda --batch 8 --engines apr,transformers --hf-dir /tmp/qwen-hf \
    --min-reps 5 --min-seconds 5 2>&1 | tee "$OUT/bench.log" | tail -9
  "${APR[@]}" run "$QWEN" --device cuda --prompt "What is 2+2?" --json 2>&1 | tee "$OUT/run.json" | tail -2
  printf 'Write a Python function to add two numbers.\nNow make it add three.\n' \
    | "${APR[@]}" chat "$QWEN" --device cuda --json 2>&1 | tee "$OUT/chat.log" | tail -3
  "${APR[@]}" serve "$QWEN" --device cuda --port 8097 > "$OUT/serve.log" 2>&1 &
  local server=$!
  python3 - <<'EOF' 2>&1 | tee "$OUT/serve-client.log"
import concurrent.futures, json, time, urllib.request
for _ in range(240):
    try:
        health = json.load(urllib.request.urlopen("http://127.0.0.1:8097/health", timeout=2)); break
    except Exception:
        time.sleep(0.5)
print("health", health)
from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:8097/v1", api_key="none")
name = client.models.list().data[0].id
reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=32)
print("chat:", repr(reply.choices[0].message.content), reply.usage)
def one(i):
    start = time.perf_counter()
    r = client.completions.create(model=name, prompt=f"def add_{i}(a, b):", max_tokens=64, temperature=0)
    return r.usage.completion_tokens, time.perf_counter() - start
start = time.perf_counter()
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    done = list(pool.map(one, range(8)))
wall = time.perf_counter() - start
print(f"serve 8 concurrent: {sum(t for t, _ in done)} tokens in {wall:.2f} s -> {sum(t for t, _ in done) / wall:.1f} tok/s")
EOF
  kill -INT $server; wait $server
  tail -2 "$OUT/serve.log"
}

phase_certify-bg() {
  # Each `run` call re-copies the working tree, and a module missing for that instant crashes any cell that
  # starts then (seen in the first 2026-12-04 lease: 4 crashed cells). So background runs start from a
  # snapshot of the tree in /tmp/repo-snapshot, and their folders are emptied here, before `collect` can look.
  local name
  rm -rf /tmp/repo-snapshot && cp -r . /tmp/repo-snapshot
  for name in "$@"; do
    rm -rf "/tmp/cert-$name"; mkdir -p "/tmp/cert-$name"
    (cd /tmp/repo-snapshot && setsid nohup bash bench/gpu_session.sh certify "$name" > /dev/null 2>&1 < /dev/null &)
    echo "$name: certification started in the background"
  done
}

phase_certify() {
  local name
  for name in "$@"; do
    certify_one "$name"
    tail -4 "/tmp/cert-$name/certify.log"
  done
}

phase_collect() {
  local deadline=$((SECONDS + ${COLLECT_WAIT_S:-0})) dir name
  for dir in /tmp/cert-*; do
    name=${dir#/tmp/cert-}
    while [ ! -f "$dir/done" ] && [ $SECONDS -lt $deadline ]; do sleep 5; done
    echo "== $name: $(cat "$dir/done" 2>/dev/null || echo 'still running')"
    tail -6 "$dir/certify.log"
    tar czf "$OUT/cert-$name.tgz" -C /tmp "cert-$name"
  done
}

while [ $# -gt 0 ]; do
  phase=$1; shift
  echo "=== $phase $(date -u +%T)"
  case $phase in
    certify|certify-bg) "phase_$phase" "$@"; set -- ;;
    *) "phase_$phase" ;;
  esac
done
echo "=== done $(date -u +%T)"
