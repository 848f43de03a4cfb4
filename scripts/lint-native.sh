#!/usr/bin/env bash
# The C++ and CUDA sources against .clang-format (clang-format 14, Debian's `clang-format`):
# lists every file whose formatting differs and exits non-zero. `--fix` rewrites them in place.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null; then
  echo "lint-native: clang-format is not installed (Debian: apt-get install clang-format)" >&2
  exit 2
fi
mapfile -t files < <(git ls-files 'native/*.cc' 'native/*.h' 'cuda/*.cu' 'cuda/*.cuh' 'cuda/*.h' 'test/native/*.cc' 'test/native/*.h')
if [ "${1:-}" = --fix ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
bad=0
for f in "${files[@]}"; do
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "lint-native: $f is not formatted (bash scripts/lint-native.sh --fix)"
    bad=1
  fi
done
exit $bad
