#!/usr/bin/env bash
# Trains bertkit's Chinese models on one GPU with `bertkit` only:
#   1. bertkit-zh-mini: two pretraining runs from scratch side by side (peak lr 5e-4 and 1e-3),
#      keeping the one with the better held-out masked-token accuracy;
#   2. from it, a Soft-Masked BERT spelling corrector and its plain-BERT baseline (the equal-steps
#      pair of data/models/README.md; the shipped bertkit-zh-csc came from an earlier recipe, kept
#      there), on the same data and step budget, in the paper's two stages: stage 1 (synthetic
#      errors plus the SIGHAN pairs) at each learning rate in CORRECT_LRS, all side by side; for
#      each kind the run with the better dev correction F1 goes on to stage 2 (SIGHAN pairs alone)
#      with each schedule in STAGE2_RUNS, again side by side (each stage starts from the previous
#      stage's best-on-dev checkpoint, which the trainer keeps); each stage-2 model gets its default
#      threshold tuned on dev, and the better of each kind is copied to $RUNS/csc-soft and
#      $RUNS/csc-plain.  Both kinds get the same steps (unless a time cap stops a run) and the same
#      choices, picked on dev alone.
# A tiny model is far too small to fill a GPU, so runs share it; each run is CPU-bound by its
# batch building and uses two threads.  --max-minutes caps each run's wall time: a slower machine
# stops early (the best-on-dev weights are kept, and --resume continues).
#
#   CORPUS=runs/corpus/zh_pretrain.txt CSC=runs/csc RUNS=runs/gpu bash examples/train_models_gpu.sh
#   BASE=data/models/bertkit-zh-mini CSC=runs/csc RUNS=runs/gpu3 bash examples/train_models_gpu.sh  # correctors only
#
# CORPUS comes from examples/make_pretrain_corpus.py, CSC (train.tsv, dev.tsv, synthetic.txt)
# from examples/make_csc_data.py.
set -u -o pipefail
CORPUS=${CORPUS:-runs/corpus/zh_pretrain.txt}
CSC=${CSC:-runs/csc}
RUNS=${RUNS:-runs/gpu}
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-4.3}
CORRECT_LRS=${CORRECT_LRS:-1e-4 2e-4}
STAGE1_STEPS=${STAGE1_STEPS:-4000}
STAGE1_MINUTES=${STAGE1_MINUTES:-3.4}
STAGE2_RUNS=${STAGE2_RUNS:-1800:5e-5:200 3600:5e-5:300 3600:1e-4:300}  # steps:peak lr:eval-every
STAGE2_MINUTES=${STAGE2_MINUTES:-3.5}
BERTKIT=(python3 -m bertkit.cli)
# every pick below reads the runs' own files: a folder holding earlier runs would mix them in
if [ -n "$(ls -A "$RUNS" 2>/dev/null)" ]; then echo "$RUNS is not empty: give RUNS a new folder"; exit 1; fi
mkdir -p "$RUNS"

# a few steps of each command on a slice of the data, so a broken setup fails in seconds
smoke_pretrain() {
    head -n 2000 "$CORPUS" > "$RUNS/smoke_corpus.txt"
    "${BERTKIT[@]}" pretrain "$RUNS/smoke_corpus.txt" -o "$RUNS/smoke-pre" --prune-vocab --max-steps 5 \
        --batch-size 16 --eval-every 5 --compute bfloat16 --save-fp16 --dev-fraction 0.02
}
smoke_correct_kind() {  # $1 = base model, $2 = soft or plain: both stages, with the real runs' options
    local opts=(--detector-lr 10 --residual-init 0)
    [ "$2" = plain ] && opts=(--plain)
    "${BERTKIT[@]}" train --task correct --synthetic "$RUNS/smoke_synthetic.txt" --dev "$CSC/dev.tsv" \
        -m "$1" -o "$RUNS/smoke-$2" --max-steps 5 --batch-size 16 --eval-every 5 --compute bfloat16 "${opts[@]}" || return 1
    [ "$2" = soft ] && opts=(--detector-lr 10)
    "${BERTKIT[@]}" train --task correct "$CSC/train.tsv" --dev "$CSC/dev.tsv" -m "$RUNS/smoke-$2" \
        -o "$RUNS/smoke-$2-2" --max-steps 5 --batch-size 16 --eval-every 5 --compute bfloat16 "${opts[@]}"
}
smoke_correct() {  # $1 = base model
    head -n 2000 "$CSC/synthetic.txt" > "$RUNS/smoke_synthetic.txt"
    smoke_correct_kind "$1" soft > "$RUNS/smoke-soft.log" 2>&1 & local soft=$!
    smoke_correct_kind "$1" plain > "$RUNS/smoke-plain.log" 2>&1 & local plain=$!
    local ok=0
    wait $soft || { tail -n 30 "$RUNS/smoke-soft.log"; ok=1; }
    wait $plain || { tail -n 30 "$RUNS/smoke-plain.log"; ok=1; }
    return $ok
}

pretrain() {  # $1 = peak learning rate
    timeout 420 "${BERTKIT[@]}" pretrain "$CORPUS" -o "$RUNS/zh-mini-lr$1" --prune-vocab \
        --hidden 256 --layers 4 --heads 4 --max-length 128 --batch-size 256 --lr "$1" --warmup 0.06 \
        --max-steps 10000 --max-minutes "$PRETRAIN_MINUTES" --eval-every 500 --save-every 1000 \
        --save-fp16 --seed 42 --threads 2 --compute bfloat16 > "$RUNS/zh-mini-lr$1.log" 2>&1
}

held_out_accuracy() {
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['best_metric'] or 0)" "$1/trainer_state.json" 2>/dev/null || echo 0
}

stage1() {  # $1 = run name, $2 = peak learning rate, then the kind's options
    local name=$1 lr=$2; shift 2
    timeout 330 "${BERTKIT[@]}" train --task correct "$CSC/train.tsv" --synthetic "$CSC/synthetic.txt" \
        --dev "$CSC/dev.tsv" -m "$BASE" -o "$RUNS/$name" --max-steps "$STAGE1_STEPS" --max-minutes "$STAGE1_MINUTES" \
        --batch-size 64 --lr "$lr" --warmup 0.06 --eval-every 500 --save-every 500 --seed 42 --threads 2 \
        --compute bfloat16 --save-fp16 "$@" > "$RUNS/$name.log" 2>&1
}

stage2() {  # $1 = run name, $2 = stage-1 corrector, $3 = steps:lr:eval-every, then the kind's options
    local name=$1 from=$2 steps lr every; IFS=: read -r steps lr every <<< "$3"; shift 3
    timeout 300 "${BERTKIT[@]}" train --task correct "$CSC/train.tsv" --dev "$CSC/dev.tsv" -m "$from" \
        -o "$RUNS/$name" --max-steps "$steps" --max-minutes "$STAGE2_MINUTES" --batch-size 32 --lr "$lr" \
        --warmup 0.1 --eval-every "$every" --save-every "$every" --seed 42 --threads 2 --compute bfloat16 --save-fp16 "$@" \
        > "$RUNS/$name.log" 2>&1
}

tuned_f1() {  # $1 = corrector: sets its default threshold on dev (confusion-set decoding), prints dev correction F1
    "${BERTKIT[@]}" eval "$CSC/dev.tsv" -m "$1" --tune 2>/dev/null | tail -n 1 |
        python3 -c "import json,sys; print(json.loads(sys.stdin.read())['cor_f1'])" 2>/dev/null || echo -1
}

report() {  # prints "name step dev-correction-F1" of each finished run named
    local name
    for name in "$@"; do
        python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], s['step'], s['best_metric'] or 0)" \
            "$RUNS/$name/trainer_state.json" "$name" 2>/dev/null || echo "$name did not finish" >&2
    done
}

best_run() {  # the finished run among those named with the best dev correction F1 (ties: the first named)
    report "$@" | sort -s -k3,3gr | head -n 1 | cut -d' ' -f1
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

soft=() plain=()
for lr in $CORRECT_LRS; do
    stage1 "csc-soft-lr$lr" "$lr" --detector-lr 10 --residual-init 0 & soft+=("csc-soft-lr$lr")
    stage1 "csc-plain-lr$lr" "$lr" --plain & plain+=("csc-plain-lr$lr")
done
wait
echo "stage 1 (run, step, dev correction F1):"; report "${soft[@]}" "${plain[@]}"
best_soft=$(best_run "${soft[@]}") best_plain=$(best_run "${plain[@]}")
[ -n "$best_soft" ] && [ -n "$best_plain" ] || { echo "a kind has no finished stage-1 run"; exit 1; }
for run in $STAGE2_RUNS; do
    stage2 "csc-soft-s2-${run//:/-}" "$RUNS/$best_soft" "$run" --detector-lr 10 &
    stage2 "csc-plain-s2-${run//:/-}" "$RUNS/$best_plain" "$run" --plain &
done
wait
# each kind's final model: the stage-2 run with the best dev correction F1 at its own tuned threshold
for kind in soft plain; do
    best=-1
    for run in $STAGE2_RUNS; do
        name=csc-$kind-s2-${run//:/-}
        f1=$(tuned_f1 "$RUNS/$name")
        echo "stage 2 $name: dev correction F1 $f1 (tuned threshold)"
        if python3 -c "import sys; sys.exit(not float(sys.argv[1]) > float(sys.argv[2]))" "$f1" "$best"; then
            best=$f1; rm -rf "$RUNS/csc-$kind"; cp -r "$RUNS/$name" "$RUNS/csc-$kind"
        fi
    done
    [ "$best" != -1 ] || { echo "no stage-2 $kind run finished"; exit 1; }
    echo "final csc-$kind: dev correction F1 $best"
done
