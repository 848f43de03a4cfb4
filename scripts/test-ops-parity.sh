#!/usr/bin/env bash
# Builds the op-level parity harness (test/native/ops_parity_test.cc with test/native/parity/) and
# runs it: backend A is the CPU backend (best kernel variant), backend B is chosen at run time
# (CUDA when a usable GPU and libdepthgate_cuda.so are found, else a second CPU backend with the
# scalar kernels in a child process). Then the planted-bug run (--mutants): every planted bug
# must be caught.
#   scripts/test-ops-parity.sh [--build-only OUT_BINARY | --sanitize] [harness arguments...]
# --sanitize builds everything (kernels too) with AddressSanitizer + UBSan first.
# The harness binary is built with g++ from the CPU sources alone (no Node, no CUDA toolkit).
set -euo pipefail
cd "$(dirname "$0")/.."

build() {  # build <output binary> [extra flags...]
  local out="$1"
  shift
  local kernels  # every native/cpu/ source of the addon (native/sources.json), the CPU backend included
  read -r -a kernels <<<"$(node -p "require('./native/sources.json').filter(f => f.startsWith('native/cpu/')).join(' ')")"
  local harness=(test/native/ops_parity_test.cc test/native/parity/harness.cc test/native/parity/reference.cc
    test/native/parity/child_ops.cc test/native/parity/cases_linear.cc test/native/parity/cases_attention.cc
    test/native/parity/cases_step.cc test/native/parity/op_bench.cc)
  local library=(native/threadpool.cc native/cuda_loader.cc native/json.cc)
  library+=("${kernels[@]}")
  local objs
  objs="$(mktemp -d "${TMPDIR:-/tmp}/depthgate-ops-parity-obj.XXXXXX")"
  # The library sources are the addon's own: node-gyp's objects (build/Release/obj.target) are
  # linked as they are when they are newer than their source and every native header, so the
  # harness tests the code that ships and CI does not compile the kernels twice.
  local newestHeader
  newestHeader="$(ls -t native/*.h | head -1)"
  local sources=("${harness[@]}") reused=()
  for src in "${library[@]}"; do
    local o="build/Release/obj.target/depthgate/${src%.cc}.o"
    if [ -z "${DEPTHGATE_PARITY_COMPILE_ALL:-}" ] && [ -f "$o" ] && [ "$o" -nt "$src" ] && [ "$o" -nt "$newestHeader" ]; then
      reused+=("$o")
    else
      sources+=("$src")
    fi
  done
  # One object per source, $JOBS at a time (default: the processors this process may use).
  local flags=(-std=c++17 -O2 -pthread -Wall -Inative -Itest/native "$@")
  printf '%s\n' "${sources[@]}" | xargs -P "${JOBS:-$(nproc)}" -I{} sh -c \
    'src="$1"; dir="$2"; shift 2; g++ "$@" -c "$src" -o "$dir/$(echo "$src" | tr / _).o"' sh {} "$objs" "${flags[@]}" || {
    rm -rf "$objs"
    return 1
  }
  g++ "${flags[@]}" "$objs"/*.o "${reused[@]}" -ldl -o "$out"
  rm -rf "$objs"
  echo "built $out (${#reused[@]} of ${#library[@]} library objects reused from build/Release)"
}

if [ "${1:-}" = "--build-only" ]; then
  build "$2"
  exit 0
fi

extra=()
if [ "${1:-}" = "--sanitize" ]; then
  shift
  extra=(-g -fsanitize=address,undefined -fno-sanitize-recover=all)
  export DEPTHGATE_PARITY_COMPILE_ALL=1
fi

out="$(mktemp -d "${TMPDIR:-/tmp}/depthgate-ops-parity.XXXXXX")"
trap 'rm -rf "$out"' EXIT
echo "building ops_parity_test"
build "$out/ops_parity_test" "${extra[@]}"
status=0
echo "== ops_parity_test $*"
"$out/ops_parity_test" "$@" || status=1
echo "== ops_parity_test --mutants (planted bugs, against the child CPU backend)"
"$out/ops_parity_test" --mutants --b cpu || status=1
if [ "$status" -ne 0 ]; then echo "ops parity FAILED"; else echo "ops parity passed"; fi
exit "$status"
