"""Dropout masks of 16-bit words (dropout_masks.py): Bernoulli dropout at the rounded p, unbiased, seeded, with
the backward of the mask it drew; evaluation and what it does not cover run torch's own; a run's Trainer steps
draw them; the weights and their names stay as they were."""

from __future__ import annotations

import copy
import os
from unittest import mock

import pytest
import torch
from torch import nn

from peft_helpers.config import RunConfig
from peft_helpers.dropout_masks import (
    WORD_VALUES,
    SixteenBitMaskDropout,
    draw_sixteen_bit_dropout_masks,
    sixteen_bit_dropout_scale,
    sixteen_bit_keep_mask,
    uses_sixteen_bit_dropout_masks,
)
from peft_helpers.errors import UserError


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_it_drops_each_element_with_the_rounded_p_and_scales_the_kept_ones_to_keep_the_mean(p):
    dropout = nn.Dropout(p)
    draw_sixteen_bit_dropout_masks(dropout)
    torch.manual_seed(0)
    x = torch.rand(2_000_000) + 0.5
    out = dropout.train()(x)
    dropped = round(p * WORD_VALUES) / WORD_VALUES
    share = (out == 0).double().mean().item()
    # binomial: within 5 standard deviations of the rounded p
    assert abs(share - dropped) < 5 * (dropped * (1 - dropped) / x.numel()) ** 0.5
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / (1 - dropped))
    assert abs(out.double().mean().item() / x.double().mean().item() - 1) < 0.01


def test_the_backward_passes_the_gradient_through_the_kept_elements_scaled_alike():
    dropout = nn.Dropout(0.25)
    draw_sixteen_bit_dropout_masks(dropout)
    x = torch.randn(64, 48, requires_grad=True)
    weights = torch.randn(64, 48)
    out = dropout.train()(x)
    (out * weights).sum().backward()
    kept = out != 0
    torch.testing.assert_close(x.grad, torch.where(kept, weights / (1 - round(0.25 * WORD_VALUES) / WORD_VALUES), 0.0))


def test_the_masks_follow_torchs_seed():
    torch.manual_seed(3)
    first = sixteen_bit_keep_mask(torch.Size([7, 33]), 0.3)
    torch.manual_seed(3)
    again = sixteen_bit_keep_mask(torch.Size([7, 33]), 0.3)
    torch.manual_seed(4)
    other = sixteen_bit_keep_mask(torch.Size([7, 33]), 0.3)
    assert first.dtype == torch.bool and first.shape == (7, 33)
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("case", ["evaluation", "p=0", "p=1", "in place"])
def test_what_it_does_not_cover_runs_torchs_own_dropout(case):
    p = {"p=0": 0.0, "p=1": 1.0}.get(case, 0.2)
    dropout = nn.Dropout(p, inplace=case == "in place")
    stock = copy.deepcopy(dropout)
    draw_sixteen_bit_dropout_masks(dropout)
    dropout.train(case != "evaluation")
    stock.train(case != "evaluation")
    x = torch.randn(40, 40)
    torch.manual_seed(5)
    out = dropout(x.clone())
    torch.manual_seed(5)
    assert torch.equal(out, stock(x.clone()))  # the same random draws as torch's dropout: its own forward ran


def test_it_keeps_the_dtype_under_bf16_autocast():
    dropout = nn.Dropout(0.1)
    draw_sixteen_bit_dropout_masks(dropout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dropout.train()(torch.randn(8, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and bool((out == 0).any())


def test_a_lora_model_keeps_its_weights_names_and_evaluation_and_other_dropout_kinds_stay():
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64, num_labels=2))
    model = get_peft_model(bert, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"],
                                            lora_dropout=0.1))
    model.channel_dropout = nn.Dropout1d(0.5)  # drops whole channels: not a plain dropout, left alone
    stock = copy.deepcopy(model)
    plain = sum(type(m) is nn.Dropout for m in model.modules())
    assert draw_sixteen_bit_dropout_masks(model) == plain and plain >= 2 * 4 + 2  # model's and LoRA's, per layer
    assert uses_sixteen_bit_dropout_masks(copy.deepcopy(model)) and not uses_sixteen_bit_dropout_masks(stock)
    assert type(model.channel_dropout) is nn.Dropout1d
    assert list(model.state_dict()) == list(stock.state_dict())
    ids = torch.randint(5, 64, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, stock.eval()(input_ids=ids).logits,
                                   atol=0, rtol=0)
        drawn = model.train()(input_ids=ids).logits
    assert not torch.allclose(drawn, stock.eval()(input_ids=ids).logits)  # training draws masks


@pytest.mark.parametrize("masks", ["16-bit", "bernoulli"])
def test_run_config_dropout_masks_chooses_what_the_trainers_steps_draw(masks, tmp_path, rt_dir):
    from conftest import make_tiny_bert

    from peft_helpers.training import prepare_checkpoints, train
    from peft_helpers.workflow import add_adapter, prepare

    cfg = RunConfig(model=str(make_tiny_bert(tmp_path / "bert")), data_dir=str(rt_dir), train_size=32, eval_size=16,
                    epochs=1, batch_size=8, dropout_masks=masks, output_dir=str(tmp_path / "out"),
                    checkpoint_dir=str(tmp_path / "runs"))
    p = prepare(cfg, device="cpu")
    peft_model = add_adapter(p)
    calls = []
    for module in peft_model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            module.register_forward_hook(lambda m, args, out: calls.append((type(m), m.training, m)))
    train(peft_model, p.tokenizer, p.encoded, p.cfg, prepare_checkpoints(p.cfg, fresh=True))
    expected = SixteenBitMaskDropout if masks == "16-bit" else nn.Dropout
    assert {kind for kind, training, _ in calls if training} == {expected}
    # the attention probabilities' dropout: through the module with 16-bit masks, inside SDPA with torch's
    attention_dropouts = {id(layer.attention.self.dropout) for layer in peft_model.get_base_model().bert.encoder.layer}
    called = {id(module) for _, training, module in calls if training}
    assert attention_dropouts <= called if masks == "16-bit" else not attention_dropouts & called
    assert uses_sixteen_bit_dropout_masks(peft_model) == (masks == "16-bit")
    assert RunConfig(dropout_masks=masks).run_identity() == RunConfig().run_identity()


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "torch_compile"])
def test_a_trainer_that_compiles_the_model_leaves_torchs_masks(compile_, tmp_path):
    """Under the Trainer's torch_compile the generated code draws its own masks: the trainer must not swap the
    dropout class (nothing is compiled here: the swap happens, or not, when the trainer is built)."""
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    from peft_helpers.training import LengthGroupedTrainer

    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=2))
    plain = sum(type(m) is nn.Dropout for m in model.modules())
    # torch_compile=True puts ACCELERATE_DYNAMO_* in os.environ, where every later Trainer of this process (and
    # every process it starts) would read it and compile: put the environment back afterwards
    with mock.patch.dict(os.environ):
        args = TrainingArguments(output_dir=str(tmp_path), torch_compile=compile_, report_to="none", use_cpu=True)
        LengthGroupedTrainer(model=model, args=args, dropout_masks="16-bit")
    assert plain == 8 and uses_sixteen_bit_dropout_masks(model) == (not compile_)
    assert sum(type(m) is nn.Dropout for m in model.modules()) == (plain if compile_ else 0)


def test_run_config_refuses_other_dropout_masks_in_one_line():
    with pytest.raises(UserError, match=r"dropout_masks='mkl' is invalid: use 16-bit or bernoulli"):
        RunConfig(model="x", dropout_masks="mkl")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_the_factor_is_the_keep_masks_draws_times_one_over_the_keep_probability(dtype):
    torch.manual_seed(7)
    keep = sixteen_bit_keep_mask(torch.Size([5, 301]), 0.1)
    torch.manual_seed(7)
    factor = sixteen_bit_dropout_scale(torch.Size([5, 301]), 0.1, dtype)
    scale = WORD_VALUES / (WORD_VALUES - round(0.1 * WORD_VALUES))
    assert factor.dtype == dtype
    assert torch.equal(factor, keep.to(dtype) * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["float32", "bfloat16", "float16"])
def test_the_output_is_bit_for_bit_the_mask_then_the_scale(dtype):
    """The factor is one multiplication where the mask and the scale were two (and the previous code's): the same
    bits, so adapters trained before and after it are the same."""
    dropout = nn.Dropout(0.1)
    draw_sixteen_bit_dropout_masks(dropout)
    x = torch.randn(16, 28, 96).to(dtype)
    torch.manual_seed(11)
    out = dropout.train()(x)
    torch.manual_seed(11)
    keep = sixteen_bit_keep_mask(x.shape, 0.1)
    assert out.dtype == dtype
    assert torch.equal(out, (x * keep).mul_(WORD_VALUES / (WORD_VALUES - round(0.1 * WORD_VALUES))))
