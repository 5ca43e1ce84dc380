import pytest

from peft_helpers.config import RunConfig, model_slug
from peft_helpers.errors import UserError


def test_defaults_and_derived_folders():
    cfg = RunConfig()
    assert (cfg.model, cfg.data_dir, cfg.epochs) == ("gpt2", None, 1.0)
    assert cfg.output_dir == "saved_adapters/gpt2-lora"
    assert cfg.checkpoint_dir == "runs/gpt2-lora"
    assert RunConfig(model="openai-community/gpt2").output_dir == "saved_adapters/gpt2-lora"
    assert model_slug("/some/dir/my model/") == "my-model"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_size": 0}, "train_size=0"),
        ({"eval_size": -5}, "eval_size=-5"),
        ({"epochs": 0}, "epochs=0"),
        ({"learning_rate": 2}, "learning_rate=2"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"max_length": 1}, "max_length=1"),
        ({"r": 0}, "r=0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"target_modules": []}, "target_modules is an empty list"),
        ({"model": " "}, "model is empty"),
        ({"data_dir": "/no/such/folder"}, "does not exist"),
    ],
)
def test_invalid_values_fail_before_anything_loads(kwargs, message):
    with pytest.raises(UserError, match=message):
        RunConfig(**kwargs)
