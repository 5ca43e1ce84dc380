"""Evaluation with LoRA folded into the weights (evaluation.lora_merged): the same logits as the unmerged model,
only the base layers run, and the model leaves bit for bit as it came, errors included."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_bert
from transformers import DataCollatorWithPadding

from peft_helpers.config import RunConfig
from peft_helpers.data import load_rotten_tomatoes, subsample, tokenize
from peft_helpers.evaluation import lora_merged, predict_logits
from peft_helpers.modeling import create_peft_model, load_model, set_padding_side


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def adapted(arch, method, tiny_gpt2, tiny_bert, rt_dir):
    """A freshly wrapped model whose adapters are not the identity (B is zero at initialisation), its tokenizer
    and 24 test reviews."""
    model, tokenizer = load_model(str(tiny_gpt2 if arch == "gpt2" else tiny_bert), ["neg", "pos"], seed=0, device="cpu")
    cfg = RunConfig(method=method).resolved(model.config.model_type)
    set_padding_side(tokenizer, model, method)
    peft_model = create_peft_model(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    test = tokenize(subsample(load_rotten_tomatoes(rt_dir), 24, 24, seed=0), tokenizer, 64)["test"]
    return peft_model.eval(), tokenizer, test


def unmerged_logits(model, tokenizer, test):
    """The model's own forward, one review at a time: no merging, no batching."""
    collator = DataCollatorWithPadding(tokenizer)
    rows = test.select_columns(["input_ids", "attention_mask"])
    with torch.no_grad():
        return np.concatenate([model(**collator([rows[i]])).logits.numpy() for i in range(len(rows))])


def base_weights(model):
    return {name: p for name, p in model.named_parameters() if "lora_" not in name}


def lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def lora_a_calls(model) -> list:
    calls = []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("arch", ["gpt2", "bert"])  # GPT-2's Conv1D stores its weight transposed (fan_in_fan_out)
def test_merged_evaluation_gives_the_unmerged_logits_and_leaves_the_weights_untouched(arch, tiny_gpt2, tiny_bert,
                                                                                      rt_dir):
    model, tokenizer, test = adapted(arch, "lora", tiny_gpt2, tiny_bert, rt_dir)
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in base_weights(model).items()}
    expected = unmerged_logits(model, tokenizer, test)
    calls = lora_a_calls(model)

    logits = predict_logits(model, tokenizer, test, batch_size=8)

    assert calls == []  # the adapters' products did not run: their update was in the weights
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
    for name, p in base_weights(model).items():
        address, values = before[name]
        assert p.data_ptr() == address and torch.equal(p.data, values), name  # the same tensor, bit for bit
    assert not any(m.merged for m in lora_layers(model))
    np.testing.assert_array_equal(unmerged_logits(model, tokenizer, test), expected)  # the adapters run again


def test_merged_weights_are_put_back_after_an_error(tiny_gpt2, tiny_bert, rt_dir):
    model, _, _ = adapted("bert", "lora", tiny_gpt2, tiny_bert, rt_dir)
    before = {name: p.detach().clone() for name, p in base_weights(model).items()}
    with pytest.raises(RuntimeError, match="interrupted"), lora_merged(model):
        assert any(m.merged for m in lora_layers(model))
        raise RuntimeError("interrupted")
    assert all(torch.equal(p, before[name]) for name, p in base_weights(model).items())
    assert not any(m.merged for m in lora_layers(model))


@pytest.mark.parametrize("method", ["dora", "ia3"])  # a LoRA variant and another method: nothing to fold
def test_methods_that_are_not_plain_lora_evaluate_unmerged(method, tiny_gpt2, tiny_bert, rt_dir):
    model, tokenizer, test = adapted("bert", method, tiny_gpt2, tiny_bert, rt_dir)
    before = {name: p.data_ptr() for name, p in base_weights(model).items()}
    with lora_merged(model):
        assert all(p.data_ptr() == before[name] for name, p in base_weights(model).items())  # nothing replaced
    np.testing.assert_allclose(predict_logits(model, tokenizer, test, batch_size=8),
                               unmerged_logits(model, tokenizer, test), atol=1e-5, rtol=0)


def test_disabled_adapters_evaluate_the_base_model(tiny_gpt2, tiny_bert, rt_dir):
    """peft's forward unmerges a merged layer whose adapters are disabled, by subtracting the update: nothing is
    merged there (the subtraction would round the weights the evaluation runs on)."""
    model, tokenizer, test = adapted("gpt2", "lora", tiny_gpt2, tiny_bert, rt_dir)
    before = {name: p.detach().clone() for name, p in base_weights(model).items()}
    with model.disable_adapter():
        expected = unmerged_logits(model, tokenizer, test)
        logits = predict_logits(model, tokenizer, test, batch_size=8)
        with lora_merged(model):
            assert not any(m.merged for m in lora_layers(model))
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
    assert all(torch.equal(p, before[name]) for name, p in base_weights(model).items())
