#!/usr/bin/env bash
# ClusterFuzzLite's build and its runs, without Docker: the source copied to $SRC/rmapfuzz as the
# Dockerfile does, build.sh run there in a virtual environment with a stand-in compile_python_fuzzer,
# the targets built by PyInstaller into $OUT; then each binary run as ClusterFuzzLite runs it:
# -runs=N, -max_total_time=S on a corpus, -merge=1 of two corpora, and a planted bug's crash file
# written by the fuzzer and reproduced by running the binary on it (non-zero exit, its signature).
#
#   .clusterfuzzlite/local.sh [--impl CANARY] [--time S] [--work DIR]
#
# --impl names the planted bug (a canary of fuzz/canaries, default share_nr_pages_zero), --time the
# seconds of the corpus run (default 30), --work where $SRC and $OUT go (default a new temporary one).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
canary=share_nr_pages_zero
seconds=30
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --impl) canary=${2#fuzz.canaries.}; shift 2 ;;
    --time) seconds=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    *) echo "local.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/rmapfuzz-cflite.XXXXXX")
export SRC="$work/src" OUT="$work/out"
rm -rf "$SRC" "$OUT" "$work"/corpus-* "$work/merged" "$work/artifacts"
mkdir -p "$SRC/rmapfuzz" "$OUT"
step() { echo "== $*"; }
fail() { echo "local.sh: $*" >&2; exit 1; }

step "build: the source copied as the Dockerfile's COPY does (.dockerignore), build.sh in a virtual environment"
tar -C "$root" --exclude=.git --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache \
  --exclude=.pytest_cache --exclude=build --exclude='*.egg-info' -c . | tar -C "$SRC/rmapfuzz" -x
# The environment sees the installed tools (PyInstaller, atheris, numpy) and takes build.sh's
# `pip3 install .` for itself: pip3 there is this Python's pip run by the environment's Python
# (no ensurepip needed, and the shared installation is never touched).
python3 -m venv --system-site-packages --without-pip "$work/venv"
printf '#!/bin/sh\nexec "%s/venv/bin/python3" -m pip "$@"\n' "$work" > "$work/venv/bin/pip3"
chmod +x "$work/venv/bin/pip3"
started=$(date +%s)
(
  cd "$SRC/rmapfuzz"
  export PATH="$work/venv/bin:$root/.clusterfuzzlite/standin:$PATH"
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_QUIET=1
  RMAPFUZZ_TARGETS="batched fuzz.canaries.$canary" bash "$SRC/rmapfuzz/.clusterfuzzlite/build.sh"
)
echo "built in $(( $(date +%s) - started )) s: $(cd "$OUT" && echo *)"
target="$OUT/batched_fuzzer"
planted="$OUT/${canary}_fuzzer"
for file in "$target" "$planted" "$OUT/batched_fuzzer.options" "$OUT/batched_fuzzer_seed_corpus.zip"; do
  [ -e "$file" ] || fail "the build did not make $file"
done
options() { sed -n 's/^\([a-z_]*\) = \(.*\)$/-\1=\2/p' "$1.options"; }
mapfile -t batched_options < <(options "$target")
unzip_seeds() { mkdir -p "$2" && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"; }

step "runs: -runs=200 on the seed corpus"
unzip_seeds "$OUT/batched_fuzzer_seed_corpus.zip" "$work/corpus-a"
"$target" "${batched_options[@]}" -runs=200 -seed=1 "$work/corpus-a" 2> "$work/runs.log" \
  || fail "-runs=200 failed: $(tail -n 3 "$work/runs.log")"

step "time: -max_total_time=$seconds on that corpus"
"$target" "${batched_options[@]}" -max_total_time="$seconds" -seed=1 -artifact_prefix="$work/" "$work/corpus-a" \
  2> "$work/time.log" || fail "-max_total_time=$seconds failed: $(tail -n 3 "$work/time.log")"
grep -E '^#[0-9]+[[:space:]]+DONE' "$work/time.log" | tail -n 1 || true

step "merge: -merge=1 of two corpora"
mkdir -p "$work/corpus-b" "$work/merged"
"$target" "${batched_options[@]}" -runs=300 -seed=2 "$work/corpus-b" 2> "$work/corpus-b.log" \
  || fail "the second corpus's run failed: $(tail -n 3 "$work/corpus-b.log")"
"$target" "${batched_options[@]}" -merge=1 "$work/merged" "$work/corpus-a" "$work/corpus-b" 2> "$work/merge.log" \
  || fail "-merge=1 failed: $(tail -n 3 "$work/merge.log")"
a=$(find "$work/corpus-a" -type f | wc -l); b=$(find "$work/corpus-b" -type f | wc -l)
merged=$(find "$work/merged" -type f | wc -l)
echo "merged $a + $b inputs into $merged"
[ "$merged" -gt 0 ] && [ "$merged" -le $(( a + b )) ] || fail "the merge kept $merged of $a + $b inputs"

step "planted bug: fuzz.canaries.$canary leaves a crash file, and the binary reproduces it"
mapfile -t planted_options < <(options "$planted")
unzip_seeds "$OUT/${canary}_fuzzer_seed_corpus.zip" "$work/corpus-c"
mkdir -p "$work/artifacts"
if "$planted" "${planted_options[@]}" -max_total_time=120 -seed=1 -artifact_prefix="$work/artifacts/" \
    "$work/corpus-c" > "$work/planted.log" 2>&1; then
  fail "the planted bug $canary was not found in 120 s"
fi
crash=$(find "$work/artifacts" -name 'crash-*' -print -quit)
[ -n "$crash" ] || fail "no crash file: $(tail -n 3 "$work/planted.log")"
signature=$(grep -m 1 -oE 'Finding: [a-z_]+:[^ ]+' "$work/planted.log" | cut -d' ' -f2 || true)
[ -n "$signature" ] || fail "the crash names no signature: $(tail -n 5 "$work/planted.log")"
echo "crash file $(basename "$crash"): $signature"
if "$planted" "$crash" > "$work/reproduce.log" 2>&1; then
  fail "running $planted on $crash exited 0"
fi
grep -qF "$signature" "$work/reproduce.log" || fail "the reproduction does not name $signature"
echo "reproduced: exit non-zero, $signature"
step "ok ($work)"
