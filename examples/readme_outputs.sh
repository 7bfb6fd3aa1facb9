#!/usr/bin/env bash
# Runs the README's examples (shortened to minutes) and writes what each prints into OUT_DIR, so
# that a refactor can be checked to change no output: run it on the old and the new checkout and
# diff the two folders. Training runs are compared by the sha256 of the weights they write.
#
#   bash examples/readme_outputs.sh OUT_DIR [CHECKOUT]     # CHECKOUT: default, this one
#   git worktree add /tmp/old OLD_COMMIT && bash examples/readme_outputs.sh before /tmp/old \
#     && bash examples/readme_outputs.sh after && diff -r before after
set -u
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
ROOT=$(cd "${2:-$(dirname "$0")/..}" && pwd)
SH=${BERTKIT_SHARED_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
cd "$ROOT"
export PYTHONPATH=$ROOT OMP_NUM_THREADS=2 BERTKIT_SHARED_DATA=$SH
W=$(mktemp -d)
head -301 "$SH/sts/zh_stsb_dev.tsv" | tail -300 > "$W/sts_dev.tsv"
cut -f1 "$SH/sts/zh_stsb_train.tsv" | head -400 > "$W/fit.txt"
head -201 "$SH/csc/sighan15_test.tsv" > "$W/s15.tsv"
head -2000 "$SH/corpus/wiki_zh_200.txt" > "$W/corpus.txt"
run() {  # name, args: stdout, exit code and any error line
    local name=$1; shift
    python -m bertkit.cli "$@" > "$OUT/$name.out" 2> "$W/$name.err"
    echo "rc=$?" >> "$OUT/$name.out"
    grep -E "^error|Traceback" "$W/$name.err" >> "$OUT/$name.out"
}
weights() { sha256sum "$@" | cut -c1-16; }
run correct correct examples/typos.txt
run correct_details correct examples/typos.txt --details
run correct_all correct examples/typos.txt --candidates all --threshold 0.3
run correct_eval eval "$W/s15.tsv" --task correct
run train train data/demo/news_train.tsv --dev data/demo/news_dev.tsv -o "$W/news" --max-steps 12 --eval-every 6 --batch-size 16
weights "$W/news/model.safetensors" >> "$OUT/train.out"
python -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['step'], s['best_step'], s['best_metric'], s['history'])" \
    "$W/news/trainer_state.json" >> "$OUT/train.out"
run predict predict data/demo/news_texts.txt -m "$W/news"
run eval eval data/demo/news_dev.tsv -m "$W/news"
run train_recompute train data/demo/news_train.tsv -o "$W/news_rc" --max-steps 3 --batch-size 8 --recompute full
weights "$W/news_rc/model.safetensors" >> "$OUT/train_recompute.out"
run embed_mean embed data/demo/news_texts.txt
run embed_fla embed data/demo/news_texts.txt --pooling first-last-avg --normalize --precision int8
run embed_eval eval "$W/sts_dev.tsv" --all-poolings --fit "$W/fit.txt"
run embed_fit embed --fit "$W/fit.txt" --pooling whitening-64 -o "$W/white"
run embed_white embed data/demo/news_texts.txt -m "$W/white"
run pretrain pretrain "$W/corpus.txt" -o "$W/pt" --max-steps 4 --batch-size 8 --layers 2 --hidden 64 --heads 2 --prune-vocab
weights "$W/pt/model.safetensors" >> "$OUT/pretrain.out"
run csc_train train --task correct "$W/s15.tsv" -m "$W/pt" -o "$W/csc" --max-steps 3 --batch-size 8 --dev "$W/s15.tsv" \
    --detector-lr 10 --residual-init 0
weights "$W/csc/model.safetensors" "$W/csc/detector.safetensors" >> "$OUT/csc_train.out"
run err_predict predict data/demo/news_texts.txt -m data/models/bertkit-zh-mini
run err_correct correct examples/typos.txt -m data/models/bertkit-zh-mini
run err_embed embed -m /nonexistent data/demo/news_texts.txt
run err_train train /nonexistent.tsv -o "$W/x"
run err_both correct examples/typos.txt --eval "$W/s15.tsv"
rm -rf "$W"
echo "outputs in $OUT" >&2
