#!/usr/bin/env bash
# Everything this project checks on a CUDA GPU (issues #11 and #13), as two calls of about 5 minutes each on one
# warm machine (a device call may run 10 minutes at most):
#
#   bash benchmarks/gpu_assets.sh              # here, once: fills .gpu/ (wheels, MiniLM, SmolLM2's shape, ../shared)
#   bash benchmarks/gpu_check.sh OUT_DIR 1     # on the GPU machine, from the repository root: step 2
#   bash benchmarks/gpu_check.sh OUT_DIR 2     # then, on the same warm machine (no carry needed): steps 3 to 5
#
# Sizing, from the first try on an H200 (2026-11-26): six MiniLM processes sharing the card train at about
# 22 steps/s each, so one 3-epoch entry on the full data (1,602 steps) takes about 95 s with loading and
# evaluations, and step 2 about 5 minutes. That try ran everything in one call and ran out of time in step 2.
#
# 1. the card, versions and its bf16 matrix-product rate;
# 2. `compare` on MiniLM with the full Rotten Tomatoes data: every PEFT method and the baselines, seed 42, as six
#    processes sharing the GPU (each process's times are its own, measured while the others ran);
# 3. the three most accurate methods again with seeds 43 and 44 (the spread), and at the same time a learning-rate
#    check: six methods at 0.3x and 3x their default rate;
# 4. SmolLM2-135M's architecture (random weights) with LoRA in bf16 and fp16: examples/s, peak memory, utilisation;
# 5. the method, persistence and training tests on CUDA.
# Each step has its own time limit, so one slow step cannot take the others' time. GPU_SMOKE=1 runs the same
# steps on tiny sizes (to try the script on a CPU machine).
set -u
OUT=${1:-gpu-out}
PART=${2:-all}
mkdir -p "$OUT"
G=.gpu
W=${GPU_RUNS:-/tmp/gpu-runs}  # outside the repository: kept between the two calls on a warm machine
LOGS=$W/logs
mkdir -p $LOGS
SIZES=()
if [ "${GPU_SMOKE:-0}" = 1 ]; then SIZES=(--train_size 48 --eval_size 24 --epochs 1); fi
if [ "${GPU_SMOKE:-0}" != 1 ]; then  # the GPU image lacks datasets and gguf; nothing can be downloaded there
  [ -d /tmp/site/datasets ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $G/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
[ -e ../shared ] || ln -s "$PWD/$G/shared" ../shared
RT=../shared/data/rotten_tomatoes
CMP=$W/compare-minilm

echo "== 1. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import sys, torch, transformers, peft, datasets; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__)"
python3 -c "from peft_helpers.environment import unsupported_message as u; print('environment check:', u() or 'ok')"

if [ "$PART" != 2 ]; then
echo "== 2. compare, MiniLM, full data, seed 42 (six processes)"
shard() { timeout "${STEP_S:-300}" python3 -m peft_helpers compare --model $G/minilm --data_dir $RT "${SIZES[@]}" \
            --compare_dir $CMP --baselines "$2" --methods "$1" "${@:4}" > "$LOGS/shard-$3.log" 2>&1 || echo "shard $3 ($1 $2) ended with status $?: $(tail -c 300 $LOGS/shard-$3.log)"; }
shard lora,ia3 random_head 1 & shard dora,vera none 2 & shard rslora,prompt_tuning linear_probe 3 &
shard pissa,p_tuning none 4 & shard loha,adalora none 5 & shard lokr,prefix_tuning full 6 &
wait
python3 -m peft_helpers compare --model $G/minilm --data_dir $RT "${SIZES[@]}" --compare_dir $CMP \
  --baselines random_head,linear_probe,full,zero_shot --collect_only 2>&1 | tail -22
cp $CMP/comparison.md "$OUT/comparison-seed42.md"; cp $CMP/comparison.csv "$OUT/comparison-seed42.csv"
cp $CMP/comparison.png "$OUT/comparison-seed42.png"
fi
[ "$PART" = 1 ] && exit 0

echo "== 3. the three best methods with seeds 43 and 44; learning rates 0.3x and 3x"
TOP=$(python3 -c "
import pandas as pd; t = pd.read_csv('$CMP/comparison.csv').dropna(subset=['accuracy'])
t = t[t.method.isin('lora dora rslora pissa loha lokr adalora ia3 vera prompt_tuning p_tuning prefix_tuning'.split())]
print(','.join(t.sort_values('accuracy', ascending=False).method.head(3)))")
echo "top 3: $TOP"
i=0
for m in ${TOP//,/ }; do for s in 43 44; do i=$((i+1))
  STEP_S=${SEED_S:-150} shard "$m" none "seed$i" --seeds $s &
done; done
python3 -c "
from peft_helpers.config import RunConfig
for m in 'lora ia3 vera prompt_tuning p_tuning lokr'.split():
    for f in (0.3, 3):
        print(m, f, RunConfig(method=m).resolved('bert').learning_rate * f)" > $LOGS/sweep-plan.txt
while read -r m f LR; do
  (timeout "${SEED_S:-150}" python3 -m peft_helpers compare --model $G/minilm --data_dir $RT "${SIZES[@]}" \
     --compare_dir $W/sweep/$m-x$f --baselines none --methods $m --learning_rate $LR > "$LOGS/sweep-$m-$f.log" 2>&1 \
     || echo "sweep $m x$f ended with status $?") &
done < $LOGS/sweep-plan.txt
wait
python3 - <<PYEOF | tee "$OUT/lr-sweep.txt"
import json, pathlib
rows = []
for f in sorted(pathlib.Path("$W").glob("*/*/results.json")) + sorted(pathlib.Path("$W/sweep").glob("*/*/results.json")):
    r = json.loads(f.read_text())
    if r.get("seed") == 42 and "config" in r:
        rows.append((r["method"], r["config"]["learning_rate"], r["finetuned"]["accuracy"], r["finetuned"]["f1"], str(f.parent)))
for row in sorted(set(rows)):
    print(f"{row[0]:<14} lr {row[1]:<10.3g} accuracy {row[2]:.4f} macro F1 {row[3]:.4f}  {row[4]}")
PYEOF
python3 -m peft_helpers compare --model $G/minilm --data_dir $RT "${SIZES[@]}" --compare_dir $CMP --baselines none \
  --methods "$TOP" --seeds 42,43,44 --collect_only 2>&1 | tail -12
cp $CMP/comparison.md "$OUT/comparison-top3-seeds.md"

echo "== 4. SmolLM2-135M architecture, LoRA, bf16 and fp16"
SMOL_W=${GPU_RUNS:-/tmp/gpu-runs}  # outside the repository: kept between the two calls on a warm machine
LOGS=$W/logs
mkdir -p $LOGS
SIZES=()
if [ "${GPU_SMOKE:-0}" = 1 ]; then SMOL_SIZES=(--train-size 48 --eval-size 24); fi
timeout "${SMOL_S:-150}" python3 benchmarks/gpu_smollm2.py --shape $G/smollm2-shape --data-dir $RT "${SMOL_SIZES[@]}" \
  2>&1 | grep -v "it/s\]" | tail -5 | tee "$OUT/smollm2.txt"

echo "== 5. tests on CUDA"
timeout "${TEST_S:-90}" python3 -m pytest -q -x -p no:cacheprovider tests/test_methods.py tests/test_persistence.py \
  tests/test_training.py > "$OUT/tests.txt" 2>&1; tail -4 "$OUT/tests.txt"
tar czf "$OUT/results.tgz" $CMP/*/results.json $W/sweep/*/*/results.json 2>/dev/null
ls "$OUT"
