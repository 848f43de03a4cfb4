#!/usr/bin/env bash
# Builds test/native/kernels_test.cc against the CPU kernels and runs it once per kernel
# variant this machine supports, then again under AddressSanitizer + UBSan; and the thread pool's
# own test (test/native/threadpool_test.cc), also under ThreadSanitizer.
# Usage: scripts/test-kernels.sh   (exits non-zero if anything fails)
set -euo pipefail
cd "$(dirname "$0")/.."

out="${TMPDIR:-/tmp}/depthgate-kernels-test.$$"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT

# The kernel files: native/cpu/ in native/sources.json, less the CPU backend (it needs the engine).
read -r -a kernels <<<"$(node -p "require('./native/sources.json').filter(f => f.startsWith('native/cpu/') && !f.endsWith('/cpu_backend.cc')).join(' ')")"
sources=(test/native/kernels_test.cc test/native/kernels_quant_test.cc test/native/kernels_kquant_test.cc native/threadpool.cc native/penalty_window.cc "${kernels[@]}")
flags=(-std=c++17 -O2 -pthread -Inative)

variants=(scalar)
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo; then
  variants+=(avx2)
  if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo; then variants+=(avx512); fi
fi

status=0
run() {  # run <binary> <variant>
  echo "== $1 DEPTHGATE_CPU_KERNELS=$2"
  if ! DEPTHGATE_CPU_KERNELS="$2" "$out/$1"; then status=1; fi
}

echo "building kernels_test"
g++ "${flags[@]}" "${sources[@]}" -o "$out/kernels_test"
for v in "${variants[@]}"; do run kernels_test "$v"; done

echo "building kernels_test with -fsanitize=address,undefined"
g++ "${flags[@]}" -g -fsanitize=address,undefined -fno-sanitize-recover=all "${sources[@]}" \
  -o "$out/kernels_test_san"
# Every variant: the avx512 one has code of its own (the VNNI kernels, the Q8_0x16 masked tails).
for v in "${variants[@]}"; do run kernels_test_san "$v"; done

echo "building threadpool_test (and with -fsanitize=thread)"
g++ "${flags[@]}" test/native/threadpool_test.cc native/threadpool.cc -o "$out/threadpool_test"
g++ "${flags[@]}" -g -fsanitize=thread test/native/threadpool_test.cc native/threadpool.cc -o "$out/threadpool_test_tsan"
for t in threadpool_test threadpool_test_tsan; do
  echo "== $t"
  if ! "$out/$t"; then status=1; fi
done

if [ "$status" -ne 0 ]; then echo "kernel tests FAILED"; else echo "kernel tests passed"; fi
exit "$status"
