#!/usr/bin/env bash
# What Pareto checkpoints cost: the default toy-tree DPO run (examples/toy-tree-dpo.toml, 2,000
# steps, 81 exact evaluations) with save_strategy = "pareto" (its default) against the same run with
# save_strategy = "steps", alternating, π_init cached. Prints each run's wall and CPU seconds and
# the medians, and the checkpoints each kept.
#   scripts/bench-pareto.sh [repeats]        (default 3; needs ./target/release/goodhart)
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
bin=./target/release/goodhart
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOODHART_CACHE_DIR="$work/cache"
cp examples/toy-tree-dpo.toml "$work/pareto.toml"
{ cat examples/toy-tree-dpo.toml; echo 'save_strategy = "steps"'; } > "$work/steps.toml"
# Build π_init once, outside the timings.
"$bin" train --config "$work/steps.toml" --output-dir "$work/warm" >/dev/null 2>&1
for i in $(seq "$repeats"); do
  for kind in pareto steps; do
    out="$work/$kind-$i"
    /usr/bin/time -f "%e %U %S" -o "$work/time" "$bin" train --config "$work/$kind.toml" --output-dir "$out" >/dev/null 2>&1
    read -r wall user sys < "$work/time"
    kept=$(cd "$out" && ls -d checkpoint-* | sed 's/checkpoint-//' | sort -n | tr '\n' ' ')
    echo "$kind run $i: ${wall} s wall, $(echo "$user + $sys" | bc) s CPU; checkpoints kept: $kept"
    echo "$kind $wall $(echo "$user + $sys" | bc)" >> "$work/all"
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
for kind in pareto steps; do
  w=$(awk -v k="$kind" '$1 == k {print $2}' "$work/all" | median)
  c=$(awk -v k="$kind" '$1 == k {print $3}' "$work/all" | median)
  echo "$kind: median ${w} s wall, ${c} s CPU over $repeats runs"
done
