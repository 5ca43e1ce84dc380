"""How fast GPT-2 (124M) trains and evaluates with the pipeline on this machine, without its Hub weights.

    python benchmarks/gpt2_cpu_speed.py [--train-size 512]

Speed does not depend on the weights' values, so a randomly initialised model with GPT-2's exact configuration
and the real GPT-2 tokenizer (../shared/tokenizers/gpt2) measures what the notebook's defaults cost on a CPU.
The accuracy it prints is meaningless (random weights); the examples/s are the point. This is what sets the
notebook's CPU-sized subset (config.CPU_TRAIN_SIZE).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--eval-size", type=int, default=512)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared" / "tokenizers" / "gpt2"))
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from peft_helpers.config import RunConfig
    from peft_helpers.evaluation import evaluate
    from peft_helpers.modeling import count_parameters, create_lora_model
    from peft_helpers.training import device_summary, train
    from peft_helpers.workflow import prepare

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp)  # GPT-2 small: 12 layers, 768 wide, 124M
        AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(tmp)
        cfg = RunConfig(model=tmp, data_dir=args.data_dir, train_size=args.train_size, eval_size=args.eval_size,
                        output_dir=f"{tmp}/adapter", checkpoint_dir=f"{tmp}/runs", save_steps=10**9)
        p = prepare(cfg)
        cfg, model, tokenizer, encoded = p.cfg, p.model, p.tokenizer, p.encoded
        model = create_lora_model(model, cfg)
        trained = train(model, tokenizer, encoded, cfg)
        validation = sum(r.get("eval_runtime", 0) for r in trained.log_history)
        result = evaluate(model, tokenizer, encoded["test"], cfg.batch_size)
    train_rate = len(encoded["train"]) * cfg.epochs / (trained.seconds - validation)
    print(f"\nGPT-2 124M (random weights, real tokenizer) + LoRA {cfg.r}/{cfg.alpha} on c_attn, {device_summary()}")
    print(f"{count_parameters(model)}")
    print(f"train: {train_rate:.1f} examples/s ({len(encoded['train'])} examples, batch {cfg.batch_size})")
    print(f"eval:  {result.samples_per_second:.1f} examples/s ({len(encoded['test'])} examples)")
    print(f"full train split (8,530) would take about {8530 / train_rate / 60:.1f} min per epoch; "
          f"CPU subset of {2000}: {2000 / train_rate / 60:.1f} min")


if __name__ == "__main__":
    main()
