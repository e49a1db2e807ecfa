#!/usr/bin/env bash
# The main job, end to end on this machine's CPU: install what is missing,
# build (Release), prepare the King James Bible (Debian's bible-kjv), train the
# demo model with a live progress line, then print validation perplexity and a
# text sample from the final checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "== build"
./scripts/build.sh --target llmt
LLMT=${LLMT_BUILD_DIR:-build}/cli/llmt

DATA=data/kjv
RUN=runs/demo
if [[ ! -f "$DATA/manifest.json" ]]; then
  echo "== prepare: King James Bible -> $DATA"
  mkdir -p data/corpus
  bible Gen1:1-Rev22:21 > data/corpus/kjv.txt
  "$LLMT" prepare --input data/corpus/kjv.txt --out "$DATA" --vocab-size 4096 --seed 1337
else
  echo "== prepare: $DATA already prepared"
fi

echo "== train examples/demo.yaml -> $RUN"
rm -rf "$RUN"
"$LLMT" train examples/demo.yaml --set data.dir="$DATA" --out "$RUN" "$@"

echo "== evaluate"
"$LLMT" eval --checkpoint "$RUN"

echo "== sample"
"$LLMT" sample --checkpoint "$RUN" --prompt "And God said" --max-tokens 120 \
  --temperature 0.8 --top-k 40 --seed 7
