import numpy as np
import pytest
from transformers import EvalPrediction

from peft_helpers.metrics import classification_metrics, compute_metrics


def test_metrics_match_hand_computation():
    labels = [0, 0, 0, 1, 1, 1, 1, 1]
    preds = [0, 1, 0, 1, 1, 0, 1, 1]
    m = classification_metrics(labels, preds)
    # class 0: tp=2 fp=1 fn=1 -> p=2/3 r=2/3; class 1: tp=4 fp=1 fn=1 -> p=4/5 r=4/5
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["recall"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["confusion_matrix"] == [[2, 1], [1, 4]]


def test_constant_predictions_do_not_look_good():
    m = classification_metrics([0, 1, 1, 1], [1, 1, 1, 1], num_labels=2)
    assert m["accuracy"] == 0.75
    assert m["recall"] == pytest.approx(0.5)  # macro: class 0 recall is 0
    assert m["precision"] == pytest.approx(0.375)  # zero_division=0 for class 0
    assert m["confusion_matrix"] == [[0, 1], [0, 3]]


def test_compute_metrics_takes_logits():
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [0.5, 0.4]])
    out = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1])))
    assert out == pytest.approx({"accuracy": 2 / 3, "precision": 0.75, "recall": 0.75, "f1": 2 / 3})


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0])
