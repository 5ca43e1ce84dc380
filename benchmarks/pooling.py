"""Does a sentence-embedding model classify better with another pooling than BERT's [CLS] pooler?

    python benchmarks/pooling.py --model minilm --data_dir ../shared/data/rotten_tomatoes --pooling mean

all-MiniLM-L6-v2 was trained as a sentence embedder with mean pooling; BertForSequenceClassification classifies
from the [CLS] token through a pooler layer that this training never used (and LoRA leaves frozen). This script
trains the same LoRA (tuned defaults, same data, seed and pipeline) with one change:
  --pooling mean     a BERT classifier that averages the real token vectors instead of using [CLS];
  --pooling pooler   the stock classifier, with the pooler layer trained in full next to the head.
It is an experiment, not a package feature: the saved-adapter workflow (AutoPeftModelForSequenceClassification)
only knows the stock classes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from torch import nn
from transformers import BertModel, BertPreTrainedModel, HfArgumentParser, set_seed
from transformers.modeling_outputs import SequenceClassifierOutput

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_helpers.config import RunConfig  # noqa: E402
from peft_helpers.evaluation import evaluate  # noqa: E402
from peft_helpers.modeling import count_parameters, create_lora_model, lora_config  # noqa: E402
from peft_helpers.offline import offline_model_name, offline_model_path  # noqa: E402
from peft_helpers.reporting import learning_curve  # noqa: E402
from peft_helpers.training import device_summary, prepare_checkpoints, remove_checkpoints, train  # noqa: E402
from peft_helpers.workflow import prepare, write_json  # noqa: E402


class BertMeanPooledForSequenceClassification(BertPreTrainedModel):
    """BertForSequenceClassification with the [CLS] pooler replaced by a mean over the real (unmasked) tokens,
    the pooling sentence-transformers uses."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype) if attention_mask is not None else torch.ones_like(hidden[..., :1])
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@dataclass
class Args:
    pooling: str = field(default="mean", metadata={"help": "mean, or pooler (train the [CLS] pooler too)."})
    results: str | None = field(default=None, metadata={"help": "Also write the result as JSON here."})


def main() -> None:
    cfg, args = HfArgumentParser((RunConfig, Args)).parse_args_into_dataclasses(look_for_args_file=False)
    set_seed(cfg.seed)
    p = prepare(cfg)  # data, tokens and the tuned settings of the stock model's family
    cfg, stock = p.cfg, p.model
    if stock.config.model_type != "bert":
        raise SystemExit(f"this experiment is for BERT-style models; {cfg.model} is {stock.config.model_type!r}")
    if args.pooling == "mean":
        folder = offline_model_path(cfg.model) if offline_model_name(cfg.model) else cfg.model
        set_seed(cfg.seed)  # the head is initialised from the same seed as the stock model's
        model = BertMeanPooledForSequenceClassification.from_pretrained(folder, config=stock.config)
        peft_model = create_lora_model(model, cfg)
    elif args.pooling == "pooler":
        config = lora_config(stock, cfg)
        config.modules_to_save = [*config.modules_to_save, "pooler"]
        set_seed(cfg.seed)
        peft_model = get_peft_model(stock, config)
    else:
        raise SystemExit(f"--pooling {args.pooling!r}: use mean or pooler")
    params = count_parameters(peft_model)
    print(params)
    trained = train(peft_model, p.tokenizer, p.encoded, cfg, prepare_checkpoints(cfg, fresh=True))
    result = evaluate(peft_model, p.tokenizer, p.encoded["test"], cfg.batch_size)
    remove_checkpoints(cfg)
    out = {"mode": f"lora, pooling={args.pooling}", "model": cfg.model, "train_size": len(p.data["train"]),
           "eval_size": len(p.data["test"]), "epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "r": cfg.r,
           "alpha": cfg.alpha, "accuracy": result.metrics["accuracy"], "f1": result.metrics["f1"],
           "trainable_params": params.trainable, "total_params": params.total,
           "train_seconds": round(trained.seconds, 1), "train_samples_per_second": round(trained.samples_per_second, 1),
           "device": device_summary(), "learning_curve": learning_curve(trained.log_history)}
    if args.results:
        write_json(args.results, out)
    print("RESULT " + json.dumps({k: v for k, v in out.items() if k != "learning_curve"}))


if __name__ == "__main__":
    main()
