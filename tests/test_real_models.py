"""Checks on the real offline models (minutes, not seconds): `make test-slow`."""

import numpy as np
import pytest

from peft_helpers.config import RunConfig
from peft_helpers.workflow import run

pytestmark = pytest.mark.slow


def test_minilm_lora_learns_rotten_tomatoes(rt_dir, in_tmp):
    cfg = RunConfig(model="minilm", data_dir=str(rt_dir), train_size=2000, eval_size=500, seed=0)
    results = run(cfg)
    assert results["finetuned"]["accuracy"] >= results["baseline"]["accuracy"] + 0.15
    assert results["finetuned"]["accuracy"] >= 0.70
    assert results["reload_max_logit_diff"] <= 1e-5
    assert results["trainable_params"] / results["total_params"] < 0.01


def test_smollm2_converts_and_trains_with_llama_targets(rt_dir, in_tmp):
    from peft_helpers.methods import peft_config
    from peft_helpers.modeling import load_model
    from peft_helpers.offline import offline_model_path

    folder = offline_model_path("smollm2")
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    model, tokenizer = load_model("smollm2", ["neg", "pos"], device="cpu")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    config = peft_config(model, RunConfig(model="smollm2").resolved("llama"))
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not config.fan_in_fan_out
    assert config.modules_to_save == ["score"]
    cfg = RunConfig(model="smollm2", data_dir=str(rt_dir), train_size=96, eval_size=48, batch_size=8)
    results = run(cfg)
    assert results["reload_max_logit_diff"] <= 1e-5
    assert np.array(results["finetuned"]["confusion_matrix"]).sum() == 48
