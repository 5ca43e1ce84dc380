"""Full fine-tuning (every weight trained) with the same data, pipeline and budget as a LoRA run, for comparison.

    python benchmarks/full_finetune.py --model minilm --data_dir ../shared/data/rotten_tomatoes --epochs 3 \
        --learning_rate 5e-5 > full.txt

Uses the package's data, Trainer set-up and evaluation; only the LoRA wrapping is left out. The last line is
`RESULT {json}` (accuracy, F1, parameters, train seconds and examples/s, learning curve); benchmarks/curves.py
reads it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import HfArgumentParser, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_helpers.config import RunConfig  # noqa: E402
from peft_helpers.evaluation import evaluate  # noqa: E402
from peft_helpers.modeling import count_parameters  # noqa: E402
from peft_helpers.reporting import learning_curve  # noqa: E402
from peft_helpers.training import device_summary, prepare_checkpoints, remove_checkpoints, train  # noqa: E402
from peft_helpers.workflow import prepare  # noqa: E402


def main() -> None:
    (cfg,) = HfArgumentParser((RunConfig,)).parse_args_into_dataclasses(look_for_args_file=False)
    if cfg.learning_rate is None:
        cfg.learning_rate = 5e-5  # full fine-tuning needs a far smaller rate than LoRA's tuned one
    set_seed(cfg.seed)
    p = prepare(cfg)  # epochs etc. resolved; the LoRA settings are unused here
    cfg, data, model, tokenizer, encoded = p.cfg, p.data, p.model, p.tokenizer, p.encoded
    params = count_parameters(model)
    trained = train(model, tokenizer, encoded, cfg, prepare_checkpoints(cfg, fresh=True))
    result = evaluate(model, tokenizer, encoded["test"], cfg.batch_size)
    remove_checkpoints(cfg)
    out = {"mode": "full", "model": cfg.model, "train_size": len(data["train"]), "eval_size": len(data["test"]),
           "epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "accuracy": result.metrics["accuracy"],
           "f1": result.metrics["f1"], "trainable_params": params.trainable, "total_params": params.total,
           "train_seconds": round(trained.seconds, 1), "train_samples_per_second": round(trained.samples_per_second, 1),
           "device": device_summary(),
           "learning_curve": learning_curve(trained.log_history)}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
