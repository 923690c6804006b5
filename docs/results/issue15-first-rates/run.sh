#!/bin/bash
for round in 1 2; do
for v in a b; do
  cd /tmp/wt-$v && PYTHONPATH=/tmp/wt-$v python3 scripts/compare.py configs/scenarios/hetero-4.yaml --presets full --repeats 3 --out /tmp/res-fr/$v$round > /tmp/res-fr/$v$round.log 2>&1
done
done
echo done > /tmp/res-fr/finished
