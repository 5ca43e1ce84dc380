"""Put a first cell into an executed copy of the notebook saying how it was made (`make executed` calls this).

    python tools/stamp_executed.py executed/LightweightFineTuning-smollm2.ipynb --model smollm2 --data-dir PATH
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import nbformat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()

    import peft
    import torch
    import transformers

    nb = nbformat.read(args.notebook, as_version=4)
    from peft_helpers.hardware import cpu_description

    device = (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
              else f"{os.cpu_count()} CPU cores ({cpu_description()}), no GPU")
    note = (
        f"**Executed copy** of `LightweightFineTuning.ipynb`, made by `make executed` on {time.strftime('%Y-%m-%d')}: "
        f"`model=\"{args.model}\"` (the offline packaged model, a real pretrained network), `data_dir=\"{args.data_dir}\"` "
        "(Rotten Tomatoes with the Hub's splits, rebuilt from the original files), `train_size=None`, `eval_size=None` "
        f"(the full 8,530 training and 1,066 test reviews), every other setting as in the parameters cell. Machine: "
        f"{device}; Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}. The source notebook in the repository's root is kept "
        "with its outputs cleared."
    )
    if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("**Executed copy**"):
        nb.cells[0].source = note
    else:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(note))
    nbformat.write(nb, args.notebook)


if __name__ == "__main__":
    main()
