#!/usr/bin/env bash
# Run one named training recipe into runs/recipes/NAME and keep its small results in results/recipes/NAME.
#   bash bench/recipe_run.sh NAME [flashlm-train flags...]
# e.g. bash bench/recipe_run.sh seed-30m --recipe seed --minutes 30
set -euo pipefail
name=$1; shift
cd "$(dirname "$0")/.."
out=runs/recipes/$name
res=results/recipes/$name
mkdir -p "$res"
start=$(date -u +%FT%TZ)
.venv/bin/flashlm-train --data data/tinystories --out "$out" --threads 2 --quiet --force "$@" > "$res/summary.json" 2> "$res/stderr.log"
cp "$out/metrics.jsonl" "$res/metrics.jsonl"
printf '{"name": "%s", "started": "%s", "finished": "%s", "args": "%s"}\n' "$name" "$start" "$(date -u +%FT%TZ)" "$*" > "$res/run.json"
