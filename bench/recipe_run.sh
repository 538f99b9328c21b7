#!/usr/bin/env bash
# Run one named training recipe into runs/recipes/NAME and keep its small results in results/recipes/NAME.
#   [DATA=data/tinystories-plus] [THREADS=2] bash bench/recipe_run.sh NAME [flashlm-train flags...]
# e.g. bash bench/recipe_run.sh seed-800 --recipe seed --max-steps 800
# Runs by steps (--max-steps) give the same model on a busy or a quiet machine; the step count that a
# 30-minute budget buys on this CPU comes from bench/train_speed.py (800 seed steps x the recipe's speed ratio).
set -euo pipefail
name=$1; shift
cd "$(dirname "$0")/.."
data=${DATA:-data/tinystories-plus}
out=runs/recipes/$name
res=results/recipes/$name
mkdir -p "$res"
start=$(date -u +%FT%TZ)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)  # the code that trains is the code at the start
cpu=$(.venv/bin/python -c 'from flashlm_core.cpu import cpu_kind, kind_name; print(kind_name(cpu_kind()))')  # with the family and model of a numberless name
bf16=$(grep -qw avx512_bf16 /proc/cpuinfo && echo native || echo none)
mkdir -p runs/recipes
.venv/bin/flashlm-train --data "$data" --out "$out" --threads "${THREADS:-2}" --quiet --force "$@" > "$out.summary.json" 2> "$res/stderr.log"
# the summary as a results file: with the command, the commit it trained at, the CPU and its flags, versions, date
.venv/bin/python bench/train_record.py "$out.summary.json" --command "THREADS=${THREADS:-2} DATA=$data bash bench/recipe_run.sh $name $*" \
  --commit "$commit" --out "$res/summary.json"
cp "$out/metrics.jsonl" "$res/metrics.jsonl"
printf '{"name": "%s", "started": "%s", "finished": "%s", "data": "%s", "threads": %s, "cpu": "%s", "native_bf16": "%s", "commit": "%s", "args": "%s"}\n' \
  "$name" "$start" "$(date -u +%FT%TZ)" "$data" "${THREADS:-2}" "$cpu" "$bf16" "$commit" "$*" > "$res/run.json"
