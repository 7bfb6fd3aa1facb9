#!/usr/bin/env bash
# Trains the shipped Chinese models on one GPU in about nine minutes, with `bertkit` only:
#   1. bertkit-zh-mini: two pretraining runs from scratch side by side (peak lr 5e-4 and 1e-3),
#      keeping the one with the better held-out masked-token accuracy;
#   2. from it, stage 1 of the Soft-Masked BERT corrector (bertkit-zh-csc) and of the plain-BERT
#      baseline, side by side, on the same data and budget (stage 2, SIGHAN-only fine-tuning,
#      runs on a CPU: data/models/README.md, or examples/benchmarks/csc.py --train for all of it).
# A tiny model is far too small to fill a GPU, so runs share it; each run is CPU-bound by its
# batch building and uses two threads.  --max-minutes caps each run's wall time: a slower machine
# stops early (the best-on-held-out weights are kept, and --resume continues).
#
#   CORPUS=runs/corpus/zh_pretrain.txt CSC=runs/csc RUNS=runs/gpu bash examples/train_models_gpu.sh
#   BASE=runs/gpu/zh-mini-lr1e-3 CSC=runs/csc RUNS=runs/gpu bash examples/train_models_gpu.sh  # correctors only
#
# CORPUS comes from examples/make_pretrain_corpus.py, CSC (train.tsv, dev.tsv, synthetic.txt)
# from examples/make_csc_data.py.
set -u -o pipefail
CORPUS=${CORPUS:-runs/corpus/zh_pretrain.txt}
CSC=${CSC:-runs/csc}
RUNS=${RUNS:-runs/gpu}
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-4.3}
CORRECT_MINUTES=${CORRECT_MINUTES:-2.4}
BERTKIT=(python3 -m bertkit.cli)
mkdir -p "$RUNS"

# a few steps of each command on a slice of the data, so a broken setup fails in seconds
smoke_pretrain() {
    head -n 2000 "$CORPUS" > "$RUNS/smoke_corpus.txt"
    "${BERTKIT[@]}" pretrain "$RUNS/smoke_corpus.txt" -o "$RUNS/smoke-pre" --prune-vocab --max-steps 5 \
        --batch-size 16 --eval-every 5 --bf16 --save-fp16 --dev-fraction 0.02
}
smoke_correct() {  # $1 = base model
    head -n 2000 "$CSC/synthetic.txt" > "$RUNS/smoke_synthetic.txt"
    "${BERTKIT[@]}" train --task correct --synthetic "$RUNS/smoke_synthetic.txt" --dev "$CSC/dev.tsv" \
        -m "$1" -o "$RUNS/smoke-csc" --max-steps 5 --batch-size 16 --eval-every 5 --bf16
}

pretrain() {  # $1 = peak learning rate
    timeout 420 "${BERTKIT[@]}" pretrain "$CORPUS" -o "$RUNS/zh-mini-lr$1" --prune-vocab \
        --hidden 256 --layers 4 --heads 4 --max-length 128 --batch-size 256 --lr "$1" --warmup 0.06 \
        --max-steps 10000 --max-minutes "$PRETRAIN_MINUTES" --eval-every 500 --save-every 1000 \
        --save-fp16 --seed 42 --threads 2 --bf16 > "$RUNS/zh-mini-lr$1.log" 2>&1
}

held_out_accuracy() {
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['best_metric'] or 0)" "$1/trainer_state.json" 2>/dev/null || echo 0
}

correct() {  # $1 = name, then extra options (--plain)
    local name=$1; shift
    timeout 240 "${BERTKIT[@]}" train --task correct "$CSC/train.tsv" --synthetic "$CSC/synthetic.txt" \
        --dev "$CSC/dev.tsv" -m "$BASE" -o "$RUNS/$name" --max-steps 6000 --max-minutes "$CORRECT_MINUTES" \
        --batch-size 64 --lr 1e-4 --warmup 0.06 --eval-every 1000 --save-every 1000 --seed 42 --threads 2 \
        --bf16 --save-fp16 "$@" > "$RUNS/$name.log" 2>&1
}

if [ -n "${BASE:-}" ]; then  # correctors only, from the given base model
    smoke_correct "$BASE" > "$RUNS/smoke.log" 2>&1 || { tail -n 30 "$RUNS/smoke.log"; echo "corrector smoke test failed"; exit 1; }
else
    smoke_pretrain > "$RUNS/smoke.log" 2>&1 || { tail -n 30 "$RUNS/smoke.log"; echo "pretraining smoke test failed"; exit 1; }
    correct_ok=1
    smoke_correct "$RUNS/smoke-pre" >> "$RUNS/smoke.log" 2>&1 ||
        { tail -n 30 "$RUNS/smoke.log"; echo "corrector smoke test failed: pretraining only"; correct_ok=0; }

    pretrain 5e-4 & pretrain 1e-3 & wait
    best_acc=-1 BASE=
    for lr in 5e-4 1e-3; do
        acc=$(held_out_accuracy "$RUNS/zh-mini-lr$lr")
        echo "pretrain lr $lr: best held-out masked-token accuracy $acc"
        if python3 -c "import sys; sys.exit(not float(sys.argv[1]) > float(sys.argv[2]))" "$acc" "$best_acc"; then
            best_acc=$acc BASE=$RUNS/zh-mini-lr$lr
        fi
    done
    [ -n "$BASE" ] || { echo "no pretraining run finished"; exit 1; }
    [ "$correct_ok" = 1 ] || exit 1
fi
echo "base: $BASE"

correct csc-soft --detector-lr 10 --residual-init 0 & correct csc-plain --plain & wait
for name in csc-soft csc-plain; do
    python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], 'step', s['step'], 'dev cor_f1', s['best_metric'])" \
        "$RUNS/$name/trainer_state.json" "$name" 2>/dev/null || echo "$name did not finish"
done
