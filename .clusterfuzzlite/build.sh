#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build of rmapfuzz, run in the source directory: install the project,
# write one fuzz target per implementation named in RMAPFUZZ_TARGETS (default: batched) with its
# .options and seed corpus zip (`rmapfuzz target`), and build each with compile_python_fuzzer
# (PyInstaller, one file) into $OUT. .clusterfuzzlite/local.sh runs this same script without Docker.
pip3 install .
targets="$SRC/rmapfuzz-targets"
rm -rf "$targets"
# shellcheck disable=SC2086  # RMAPFUZZ_TARGETS is a list of names
rmapfuzz target ${RMAPFUZZ_TARGETS:-batched} --out "$targets" --seeds corpus/seeds
# The implementations are loaded by name, so PyInstaller is told to take every module; a canary
# loads its own copy of batched/ from its source files, so they go into the bundle as they are.
batched_dir=$(python3 -c 'import batched, os; print(os.path.dirname(batched.__file__))')
for fuzzer in "$targets"/*_fuzzer.py; do
  compile_python_fuzzer "$fuzzer" \
    --collect-submodules fuzz --collect-submodules machine \
    --collect-submodules reference --collect-submodules batched \
    --add-data "$batched_dir:batched"
done
cp "$targets"/*.options "$targets"/*_seed_corpus.zip "$OUT/"
