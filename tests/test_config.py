import pytest

from peft_helpers.config import RunConfig, model_slug
from peft_helpers.errors import UserError


def test_defaults_and_derived_folders():
    cfg = RunConfig()
    assert (cfg.model, cfg.data_dir, cfg.epochs) == ("gpt2", None, None)
    gpt2 = cfg.resolved("gpt2")
    assert (gpt2.epochs, gpt2.learning_rate, gpt2.r, gpt2.alpha, gpt2.target_modules) == (1.0, 5e-4, 8, 16, None)
    assert RunConfig(r=4).resolved("gpt2").alpha == 8 and RunConfig(epochs=2).resolved("bert").epochs == 2
    assert cfg.output_dir == "saved_adapters/gpt2-lora"
    assert cfg.checkpoint_dir == "saved_adapters/gpt2-lora-checkpoints"
    # checkpoints follow the whole output path: two runs with the same last folder name never share them
    assert RunConfig(output_dir="exp1/model").checkpoint_dir != RunConfig(output_dir="exp2/model").checkpoint_dir
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
        ({"eval_batch_size": 0}, "eval_batch_size=0"),
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


def test_auto_sizes_use_a_cpu_subset_only_without_gpu():
    from peft_helpers.config import CPU_EVAL_SIZE, CPU_TRAIN_SIZE, auto_sizes

    assert auto_sizes("auto", "auto", has_gpu=True) == (None, None)
    assert auto_sizes("auto", "auto", has_gpu=False) == (CPU_TRAIN_SIZE, CPU_EVAL_SIZE)
    assert auto_sizes(100, None, has_gpu=False) == (100, None)  # explicit choices are kept


def test_family_defaults_fill_only_unset_settings():
    llama = RunConfig().resolved("llama")
    assert llama.learning_rate == 2e-4 and "down_proj" in llama.target_modules and llama.r == 8
    bert = RunConfig(learning_rate=3e-4).resolved("bert")
    assert (bert.learning_rate, bert.r, bert.alpha, bert.epochs) == (3e-4, 16, 32, 3.0)
    assert RunConfig(target_modules=["q_proj"]).resolved("llama").target_modules == ["q_proj"]
    unknown = RunConfig().resolved("some_new_architecture")
    assert (unknown.epochs, unknown.r, unknown.target_modules) == (1.0, 8, None)


def test_evaluation_batch_is_four_training_batches_unless_set_and_not_part_of_a_runs_identity():
    from peft_helpers.config import EVAL_BATCH_FACTOR

    assert RunConfig(batch_size=8).resolved("bert").eval_batch_size == EVAL_BATCH_FACTOR * 8 == 32
    assert RunConfig(batch_size=8, eval_batch_size=5).resolved("bert").eval_batch_size == 5
    assert not RunConfig(epochs=1, learning_rate=1e-3, r=8, alpha=16, dropout=0.1).is_resolved()  # eval batch unset
    # a checkpoint may be resumed with another evaluation batch: it does not change what training computes
    assert RunConfig(eval_batch_size=4).run_identity() == RunConfig(eval_batch_size=64).run_identity()
    assert RunConfig(batch_size=4).run_identity() != RunConfig(batch_size=8).run_identity()


def test_validation_is_part_of_a_runs_identity():
    # a validation pass draws from torch's generator, so the batches after it differ: a checkpoint of a validated
    # run is resumed only with validation (test_cli.py::test_no_validation_trains_without_validation_passes)
    assert RunConfig().validation is True
    assert RunConfig(validation=False).run_identity() != RunConfig().run_identity()
