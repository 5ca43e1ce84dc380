#!/usr/bin/env bash
# The second GPU call of 2026-11-26 (H200): what benchmarks/gpu_check.sh found broken, checked again after the fixes,
# and what its phase 2 had no time left for. About 4 minutes, carrying .gpu (benchmarks/gpu_assets.sh):
#
#   bash benchmarks/gpu_followup.sh OUT_DIR
#
# At the same time: qlora on MiniLM (full data, 1 epoch: the compare row), AdaLoRA in fp32 and in bf16 (its reload
# check failed in bf16: is it the precision?), the tests that failed on CUDA, the notebook on MiniLM. Then, alone:
# SmolLM2-135M's architecture in bf16 and bf16 with torch.compile.
set -u
OUT=${1:-gpu-out}
mkdir -p "$OUT"
G=.gpu
W=${GPU_RUNS:-/tmp/gpu-runs2}
rm -rf "$W" && mkdir -p "$W/logs"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $G/whl/*.whl
cp -r $G/bnb/. /tmp/site/
export PYTHONPATH=$PWD:/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
[ -e ../shared ] || ln -s "$PWD/$G/shared" ../shared
RT=../shared/data/rotten_tomatoes
T0=$SECONDS
entry() {  # METHOD DIR [options]: one compare entry, full data, 1 epoch
  timeout "${PHASE1_S:-150}" python3 -m peft_helpers compare --model $G/minilm --data_dir $RT --epochs 1 --baselines none \
    --methods "$1" --compare_dir "$W/$2" "${@:3}" > "$W/logs/$2.log" 2>&1
  echo "$2 ended with status $? ($((SECONDS - T0)) s): $(grep -E 'differ|Error|^ *'$1' ' $W/logs/$2.log | tail -2)"; }
entry qlora qlora & entry adalora adalora-fp32 --precision fp32 & entry adalora adalora-bf16 --precision bf16 &
(timeout "${PHASE1_S:-150}" python3 -m pytest -q -p no:cacheprovider -rfEs -n 4 tests/test_methods.py::test_qlora_trains_saves_and_reloads_on_cuda \
   tests/test_methods.py::test_method_refusals tests/test_datasets.py::test_balanced_class_weights_reweight_the_loss \
   tests/test_reliability.py > "$OUT/tests.txt" 2>&1
 echo "tests ended with status $? ($((SECONDS - T0)) s): $(tail -n 1 $OUT/tests.txt)") &
(timeout "${PHASE1_S:-150}" python3 benchmarks/gpu_notebook.py -p model $G/minilm -p data_dir $RT -p train_size None \
   -p eval_size None -p output_dir $W/notebook-minilm > "$OUT/notebook.txt" 2>&1
 echo "notebook ended with status $? ($((SECONDS - T0)) s): $(grep -E 'Accuracy on|failed|largest logit|all code cells' $OUT/notebook.txt | tail -3)") &
wait
for d in qlora adalora-fp32 adalora-bf16; do cat $W/$d/comparison.md 2>/dev/null | tail -1; done | tee "$OUT/entries.md"
echo "== SmolLM2-135M architecture: bf16, bf16 + torch.compile ($((SECONDS - T0)) s)"
timeout "${PHASE2_S:-130}" python3 benchmarks/gpu_smollm2.py --shape $G/smollm2-shape --data-dir $RT --train-size 2048 \
  --precision bf16 bf16+compile 2>&1 | grep -oE '\{"(run|gpu)".*|GPU:.*|warning.*|[A-Za-z]*Error.*' | tee "$OUT/smollm2.txt"
tar czf "$OUT/results.tgz" $W/*/*/results.json $W/logs 2>/dev/null
echo "== done ($((SECONDS - T0)) s)"
