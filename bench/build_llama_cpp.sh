#!/usr/bin/env bash
# Builds llama.cpp's own programs, the peers of apr's benchmarks and of `apr certify --endpoint`, from the
# llama.cpp sources that the llama-cpp-python sdist on PyPI vendors, for this machine's CPU (GGML_NATIVE).
# Nothing is installed: the binaries land in $DEST/build/bin (default .llama-cpp/, ignored by git).
#
#   bench/build_llama_cpp.sh [DEST] [TARGET ...]     # targets default to: llama-bench llama-server
#
# LLAMA_CMAKE_ARGS adds CMake options, e.g. a build without ggml's AMX path, which crashed (SIGSEGV in
# ggml_backend_amx_mul_mat) on a Sapphire Rapids-class VM on 2026-12-05 while its other kernels ran:
#   LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
#     -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" bench/build_llama_cpp.sh DEST
# Useful targets: llama-bench (bench_engine.py, bench_depth.py), llama-server (docs/endpoint.md),
# llama-lookup (prompt-lookup decoding, bench_lookup.py). About 8 minutes per program on 2 quiet cores; a
# second call with other targets reuses the libraries already built.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DEST="${1:-.llama-cpp}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(llama-bench llama-server)
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
if [ ! -d "$DEST/src" ]; then
  # --no-binary for this one package only: ":all:" would make pip build the build dependencies from source too.
  "$PY" -m pip download --quiet --no-binary llama-cpp-python --no-deps -d "$DEST/sdist" "llama-cpp-python==$VERSION"
  mkdir -p "$DEST/src"
  tar xzf "$DEST/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$DEST/src" --strip-components=1
fi
cmake -S "$DEST/src/vendor/llama.cpp" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON \
  -DLLAMA_BUILD_SERVER=ON ${LLAMA_CMAKE_ARGS:-} > "$DEST/cmake.log"
cmake --build "$DEST/build" --target "${TARGETS[@]}" -j "$(nproc)" > "$DEST/build.log"
for target in "${TARGETS[@]}"; do echo "$DEST/build/bin/$target"; done
