#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what benchmarks/gpu_check.sh needs on a GPU machine that has no network and
# takes at most 64 MiB of files: wheels it may lack (datasets 4.x and its two pure-Python needs, gguf), MiniLM's
# files with its weights stored in fp16 (43 MB instead of 87 MB; loaded as fp32, a rounding of about 1e-3 relative
# per weight), SmolLM2's config and tokenizer (its weights are too large to travel: gpu_smollm2.py uses random
# ones), and a copy of ../shared. Run from the repository root with the project's venv built (make venv).
set -eu
G=.gpu
PY=${PY:-.venv/bin/python}
rm -rf $G && mkdir -p $G/whl $G/minilm $G/smollm2-shape $G/bnb
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d $G/whl "datasets>=4,<5" "dill<0.4.2" "multiprocess<0.70.20" gguf
# bitsandbytes (for --method qlora) without the kernels of the CUDA versions the image does not have: the wheel is
# 43 MB, the package with only its CUDA 13.0 and CPU kernels 4.5 MB unpacked (the image's torch is built for CUDA 13.0).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 -d $G/bnb-wheel "bitsandbytes==0.50.2"
python3 -m zipfile -e $G/bnb-wheel/bitsandbytes-*.whl $G/bnb && rm -rf $G/bnb-wheel
find $G/bnb/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*_cpu.so' -delete
cp -r ../shared $G/shared
$PY - <<'PYEOF'
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from peft_helpers.offline import offline_model_path

minilm, smol = offline_model_path("minilm"), offline_model_path("smollm2")
for f in list(minilm.glob("*.json")) + [minilm / "vocab.txt"]:
    shutil.copy(f, ".gpu/minilm/")
weights = load_file(str(minilm / "model.safetensors"))
save_file({k: v.to(torch.float16) for k, v in weights.items()}, ".gpu/minilm/model.safetensors", metadata={"format": "pt"})
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    if (smol / name).is_file():
        shutil.copy(smol / name, ".gpu/smollm2-shape/")
PYEOF
du -sh $G
