#!/usr/bin/env bash
# What early stopping saves: the default toy-tree DPO run (examples/toy-tree-dpo.toml, 2,000
# steps, peak at step 200) with `early_stopping = true` against the same run without it,
# alternating, π_init cached. Prints each run's wall and CPU seconds, where it stopped, and the
# medians.
#   scripts/bench-early-stopping.sh [repeats]   (default 3; BIN=… picks the binary,
#                                                 default ./target/release/goodhart)
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
bin="${BIN:-./target/release/goodhart}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOODHART_CACHE_DIR="$work/cache"
cp examples/toy-tree-dpo.toml "$work/full.toml"
{ cat examples/toy-tree-dpo.toml; echo 'early_stopping = true'; echo 'load_best_model_at_end = true'; } > "$work/early.toml"
# Build π_init once, outside the timings.
{ cat examples/toy-tree-dpo.toml; echo 'max_steps = 1'; } > "$work/warm.toml"
"$bin" train --config "$work/warm.toml" --output-dir "$work/warm" >/dev/null 2>&1
for i in $(seq "$repeats"); do
  for kind in early full; do
    out="$work/$kind-$i"
    /usr/bin/time -f "%e %U %S" -o "$work/time" "$bin" train --config "$work/$kind.toml" --output-dir "$out" >/dev/null 2>&1
    read -r wall user sys < "$work/time"
    last=$(cd "$out" && ls -d checkpoint-* | sed 's/checkpoint-//' | sort -n | tail -1)
    echo "$kind run $i: ${wall} s wall, $(echo "$user + $sys" | bc) s CPU; last step $last"
    echo "$kind $wall $(echo "$user + $sys" | bc)" >> "$work/all"
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
for kind in early full; do
  w=$(awk -v k="$kind" '$1 == k {print $2}' "$work/all" | median)
  c=$(awk -v k="$kind" '$1 == k {print $3}' "$work/all" | median)
  echo "$kind: median ${w} s wall, ${c} s CPU over $repeats runs"
done
