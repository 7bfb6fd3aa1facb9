#!/usr/bin/env bash
# The CPU equal-steps control of Soft-Masked BERT vs plain BERT, once per seed: both kinds from the
# shipped bertkit-zh-mini with the same data, steps and schedule, the two kinds side by side on one
# thread each (about 25 minutes a seed on 2 cores):
#   stage 1: 800 steps of 32 on synthetic errors plus the SIGHAN pairs (lr 1e-4);
#   stage 2: 300 steps of 32 on the SIGHAN pairs alone (lr 5e-5), from stage 1's best-on-dev checkpoint;
#   then each model's default threshold is tuned on dev.
# The Soft-Masked runs use --detector-lr 10 --residual-init 0, as the GPU recipe does.
#
#   python examples/make_csc_data.py -o runs/csc
#   CSC=runs/csc bash examples/train_csc_control.sh runs/control 1 2 3 4
#   python examples/benchmarks/csc_seeds.py --runs runs/control
set -u -o pipefail
if [ $# -lt 2 ]; then echo "usage: $0 RUNS SEED [SEED ...]"; exit 2; fi
CSC=${CSC:-runs/csc}
BASE=${BASE:-data/models/bertkit-zh-mini}
RUNS=$1; shift
mkdir -p "$RUNS"

one() {  # $1 = soft or plain, $2 = seed
    local kind=$1 seed=$2 opts=(--detector-lr 10 --residual-init 0)
    [ "$kind" = plain ] && opts=(--plain)
    local common=(--batch-size 32 --save-every 100 --seed "$seed" --threads 1 --compute bfloat16 --save-fp16 --dev "$CSC/dev.tsv")
    bertkit train --task correct "$CSC/train.tsv" --synthetic "$CSC/synthetic.txt" -m "$BASE" \
        -o "$RUNS/s1-$kind-$seed" --max-steps 800 --lr 1e-4 --warmup 0.06 --eval-every 200 "${common[@]}" "${opts[@]}" || return 1
    [ "$kind" = soft ] && opts=(--detector-lr 10)
    bertkit train --task correct "$CSC/train.tsv" -m "$RUNS/s1-$kind-$seed" \
        -o "$RUNS/s2-$kind-$seed" --max-steps 300 --lr 5e-5 --warmup 0.1 --eval-every 100 "${common[@]}" "${opts[@]}" || return 1
    bertkit eval "$CSC/dev.tsv" -m "$RUNS/s2-$kind-$seed" --tune --threads 1
}

status=0
for seed in "$@"; do
    for kind in soft plain; do
        if [ -e "$RUNS/s1-$kind-$seed" ]; then echo "$RUNS/s1-$kind-$seed exists: give RUNS a new folder or other seeds"; exit 1; fi
    done
    one soft "$seed" > "$RUNS/soft-$seed.log" 2>&1 & soft=$!
    one plain "$seed" > "$RUNS/plain-$seed.log" 2>&1 & plain=$!
    wait $soft || { echo "seed $seed: soft run failed, see $RUNS/soft-$seed.log"; status=1; }
    wait $plain || { echo "seed $seed: plain run failed, see $RUNS/plain-$seed.log"; status=1; }
done
exit $status
