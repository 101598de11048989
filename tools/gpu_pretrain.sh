#!/usr/bin/env bash
# Run the toy pretraining on a lent GPU (the device tool) and evaluate the result there.
# The same command and seed as on CPU; only the device differs. Outputs land in $OUT as tarballs + logs.
set -u
nvidia-smi -L
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
run() {  # run NAME SCALE
  local name=$1 scale=$2
  timeout 500 python3 -m ddpo_study.toy.pretrain --out /tmp/$name --scale "$scale" >"$OUT/$name.log" 2>&1 &&
    python3 -m ddpo_study.toy.evaluate --model /tmp/$name --device cuda --out /tmp/$name/base_eval.json \
      --guidance 1.5 2 3 5 >>"$OUT/$name.log" 2>&1
  tar -C /tmp -cf "$OUT/$name.tar" "$name"
}
run m1 1.0 &
run m2 0.6 &
wait
ls -la "$OUT"
