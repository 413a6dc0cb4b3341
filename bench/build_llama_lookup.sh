#!/usr/bin/env bash
# Builds llama.cpp's own prompt-lookup decoding program, `llama-lookup` (examples/lookup; the peer of
# bench/bench_lookup.py), from the llama.cpp sources that the llama-cpp-python sdist on PyPI vendors, exactly as
# build_llama_bench.sh builds llama-bench. Nothing is installed: the binary lands in $DEST/build/bin (default
# .llama-lookup/, ignored by git). About 8 minutes on 2 cores.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DEST="${1:-.llama-lookup}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
if [ ! -d "$DEST/src" ]; then
  "$PY" -m pip download --quiet --no-binary llama-cpp-python --no-deps -d "$DEST/sdist" "llama-cpp-python==$VERSION"
  mkdir -p "$DEST/src"
  tar xzf "$DEST/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$DEST/src" --strip-components=1
fi
cmake -S "$DEST/src/vendor/llama.cpp" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF > "$DEST/cmake.log"
cmake --build "$DEST/build" --target llama-lookup -j "$(nproc)" > "$DEST/build.log"
echo "$DEST/build/bin/llama-lookup"
