#!/usr/bin/env bash
# The CUDA checks of one GPU lease, as phases: bash bench/gpu_session.sh PHASE... (writes logs under $OUT).
#
# Runs on a machine with an NVIDIA GPU, its own python3 and PyTorch (the project's pins do not apply there),
# no network: the missing packages travel as py3.12 wheels in .whl/ (see docs/engine.md, "CUDA"), and the
# models as chunks in .xfer/ (the SmolLM2 then the Qwen GGUF, concatenated and split: a lease moves at most
# 64 MiB a call). Phases:
#   tests    the CUDA unit tests on the fixture models, and apr run/bench on a fixture through the CLI
#   models   reassemble .xfer/c* into /tmp/models and check both sha256
#   qwen     parity against transformers on the same GPU, bench vs transformers (single stream + batch 8),
#            apr run / chat / serve (official openai client) on qwen2.5-coder:1.5b
#   certify  the MVP certification of smollm2:135m with its GPU cells run, into $OUT/cert-smollm2.tgz
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 APR_HOME=/tmp/apr-home
APR=(python3 -m apr.cli.main)
QWEN=/tmp/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
SMOL=/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf

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

phase_models() {
  mkdir -p /tmp/models
  cat "${CHUNKS:-.xfer}"/c* > /tmp/models/all.bin || return 1
  head -c 98362432 /tmp/models/all.bin > "$SMOL"
  tail -c +98362433 /tmp/models/all.bin > "$QWEN"
  rm /tmp/models/all.bin
  sha256sum "$SMOL" "$QWEN"
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

phase_certify() {
  # Bounded, and the evidence comes back even when the bound cuts the run short: evidence.jsonl is written
  # cell by cell. (In the 2026-12-04 lease this phase did not finish in the ~5 min left: budget it first.)
  timeout "${CERTIFY_TIMEOUT_S:-420}" "${APR[@]}" certify playbooks/models/smollm2-135m-mvp.playbook.yaml \
    --model-path "$SMOL" --workers 4 -o /tmp/cert-smollm2 2>&1 | tee "$OUT/certify.log" | tail -15
  tar czf "$OUT/cert-smollm2.tgz" -C /tmp cert-smollm2
}

for phase in "$@"; do
  echo "=== $phase $(date -u +%T)"
  "phase_$phase"
done
echo "=== done $(date -u +%T)"
