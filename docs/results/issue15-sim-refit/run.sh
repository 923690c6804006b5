#!/bin/bash
# usage: run.sh NAME CONFIG [--set ...]
name=$1; cfg=$2; shift 2
cd "$(git rev-parse --show-toplevel)"
python3 -m dlion simulate $cfg --out /tmp/sim/$name --overwrite "$@" > /tmp/sim/$name.log 2>&1
python3 - "$name" <<'PY'
import json,sys,glob
n=sys.argv[1]; s=json.load(open(f"/tmp/sim/{n}/summary.json"))
samples=0; rounds=None
for f in glob.glob(f"/tmp/sim/{n}/peer-*.jsonl"):
    for l in open(f):
        e=json.loads(l)
        if e["ev"]=="final": samples+=e.get("samples",0); rounds=max(rounds or 0,e.get("it",0))
print(f"{n:40s} ttt={s.get('time_to_target_s')} final={s.get('final_accuracy')} worst={s.get('worst_final_accuracy')} train_s={s.get('train_s')} samples={samples} rounds={rounds} bytes={s.get('bytes_sent_total')}")
PY
