#!/usr/bin/env bash
# The item-level power table of docs/stages.md: every named world, the default design
# (31 even checkpoints, 300 items in 25 answer clusters, 3 seeds, peak 0.5 at 20% of CPT,
# a 30% drop), SIMS simulations per curve (1000: ~1-2 h on 2 idle cores); results in
# docs/stage_power/*.json. Then the seed test's two more designs: the seed-level shock
# with 10 seeds (configs/overnight.yaml) and persistent churn with 6 seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-.venv/bin/babeltower}
for world in "independent" "persistent churn" "template-shared churn" "learn-and-stay" "seed-level shock"; do
  f="docs/stage_power/$(echo "$world" | tr ' ' '-').json"
  [ -f "$f" ] && continue
  $B stages power-items --churn "$world" --checkpoints 31 --items 300 --clusters 25 --seeds 3 \
     --base-acc 0.5 --drop 0.3 --peak-at 0.2 --curves effect,monotone --sims "${SIMS:-1000}" \
     --out "$f"
done
for spec in "seed-level shock:10" "persistent churn:6"; do
  world=${spec%:*}; seeds=${spec#*:}
  f="docs/stage_power/$(echo "$world" | tr ' ' '-')-$seeds-seeds.json"
  [ -f "$f" ] && continue
  $B stages power-items --churn "$world" --checkpoints 31 --items 300 --clusters 25 --seeds "$seeds" \
     --base-acc 0.5 --drop 0.3 --peak-at 0.2 --curves effect,monotone --sims "${SIMS:-1000}" \
     --out "$f"
done
