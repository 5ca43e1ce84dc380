"""Predictions on new texts: label names and class probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from .errors import UserError
from .evaluation import predict_logits
from .modeling import max_positions


@dataclass
class Predictions:
    texts: list[str]
    labels: list[str]  # the predicted label name per text
    probabilities: np.ndarray  # (n, num_labels), rows sum to 1
    label_names: list[str]

    def records(self) -> list[dict]:
        """One dict per text, e.g. for pandas.DataFrame(...)."""
        return [
            {"text": text, "label": label, **{f"p({n})": float(p) for n, p in zip(self.label_names, probs)}}
            for text, label, probs in zip(self.texts, self.labels, self.probabilities)
        ]


def predict(model, tokenizer, texts: list[str] | str, batch_size: int = 32, max_length: int = 512) -> Predictions:
    """Classify `texts` with a (PEFT or plain) sequence-classification model."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise UserError("predict() got no texts.")
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise UserError(f"text {empty[0]} is empty: every text needs at least one non-space character.")
    config = model.config
    limit = max_positions(config)
    max_length = min(max_length, limit) if limit else max_length
    encoded = Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=max_length)))
    logits = predict_logits(model, tokenizer, encoded, batch_size, desc="Predicting")
    probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    names = [config.id2label[i] for i in range(logits.shape[-1])]
    return Predictions(texts, [names[i] for i in probabilities.argmax(-1)], probabilities, names)
