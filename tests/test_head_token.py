"""The last encoder layer computed for the classifier's token alone (head_token.py): the stock model's logits and
gradients, in either attention kernel, in training and evaluation, on padded rows; the weights and saved adapter
untouched; models it does not know left as they are."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from peft_helpers.config import RunConfig
from peft_helpers.errors import UserError
from peft_helpers.head_token import compute_head_token_only, last_layer, uses_head_token_only


def _bert(attention: str, dropout: float = 0.0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, num_labels=3, attn_implementation=attention)
    return BertForSequenceClassification(config)


def _lora(model):
    from peft import LoraConfig, TaskType, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                  target_modules=["query", "value"], lora_dropout=0.0))
    for name, parameter in peft_model.named_parameters():  # LoRA's B starts at zero: give it values to check
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return peft_model


def _padded_batch():
    ids = torch.randint(5, 64, (4, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, length in enumerate((9, 6, 3, 7)):  # rows of different lengths: the mask matters
        mask[row, length:] = 0
        ids[row, length:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def _last_layer_positions(model, batch) -> int:
    """How many positions the last encoder layer put out in a plain forward call (the short path: 1)."""
    seen = []

    def record(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).shape[1])

    hook = last_layer(model).register_forward_hook(record)
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_short_last_layer_gives_the_stock_logits_and_lora_gradients(attention):
    stock = _lora(_bert(attention))
    short = copy.deepcopy(stock)
    assert compute_head_token_only(short) and uses_head_token_only(short) and not uses_head_token_only(stock)
    assert type(last_layer(short)).__name__ == "HeadTokenBertLayer"
    batch = _padded_batch()
    assert (_last_layer_positions(short, batch), _last_layer_positions(stock, batch)) == (1, 9)
    for model in (stock, short):
        model.train()
        model(**batch).loss.backward()
    torch.testing.assert_close(short(**batch).logits, stock(**batch).logits, atol=1e-5, rtol=0)
    trained = {name: p.grad for name, p in stock.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trained) and all(g is not None for g in trained.values())
    for name, parameter in short.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, trained[name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # and in evaluation
        torch.testing.assert_close(short.eval()(**batch).logits, stock.eval()(**batch).logits, atol=1e-5, rtol=0)
    assert short.state_dict().keys() == stock.state_dict().keys()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_short_last_layer_runs_under_bf16_autocast_as_the_stock_one(attention):
    # --precision bf16 trains under autocast: the products run in bf16 while transformers builds the mask in fp32
    stock = _lora(_bert(attention))
    short = copy.deepcopy(stock)
    compute_head_token_only(short)
    batch = _padded_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        short_out, stock_out = short.train()(**batch), stock.train()(**batch)
    assert short_out.logits.dtype == stock_out.logits.dtype
    torch.testing.assert_close(short_out.logits.float(), stock_out.logits.float(), atol=0.05, rtol=0)
    short_out.loss.backward()
    assert all(p.grad is not None for p in short.parameters() if p.requires_grad)


def test_the_short_last_layer_keeps_training_dropout_and_its_output_covers_the_classifiers_token():
    model = _bert("sdpa", dropout=0.5)
    stock = copy.deepcopy(model)
    compute_head_token_only(model)
    batch = _padded_batch()
    model.train()
    first, second = model(**batch).logits, model(**batch).logits
    assert not torch.equal(first, second)  # attention and hidden dropout still draw masks while training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, stock.eval()(**batch).logits, atol=1e-5, rtol=0)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        assert model.bert(**inputs).last_hidden_state.shape == (4, 1, 32)  # the last layer's output: [CLS] alone


def test_the_trainers_steps_and_evaluation_take_the_short_path(tmp_path, rt_dir):
    # the Trainer hands num_items_in_batch to the model, and transformers 5 passes it down to every layer: the
    # short layer must not take that for a call it does not cover
    from conftest import make_tiny_bert

    from peft_helpers.training import prepare_checkpoints, train
    from peft_helpers.workflow import add_adapter, prepare

    cfg = RunConfig(model=str(make_tiny_bert(tmp_path / "bert")), data_dir=str(rt_dir), train_size=32, eval_size=16,
                    epochs=1, batch_size=8, output_dir=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "runs"))
    p = prepare(cfg, device="cpu")
    peft_model = add_adapter(p)
    positions = []
    last_layer(peft_model).register_forward_hook(
        lambda module, args, output: positions.append((output[0] if isinstance(output, tuple) else output).shape[1]))
    train(peft_model, p.tokenizer, p.encoded, p.cfg, prepare_checkpoints(p.cfg, fresh=True))
    assert len(positions) == 4 + 1 and set(positions) == {1}  # 4 training steps, then the validation batch (16 <= 32)
    positions.clear()
    p.evaluate_test(peft_model, "test")
    assert positions and set(positions) == {1}


@pytest.mark.parametrize("ask", ["output_attentions", "output_hidden_states"])
def test_a_call_asking_for_attentions_or_hidden_states_gets_the_stock_models(ask):
    # the short layer runs the stock forward for such a call, so what it returns is the stock model's; on a deep
    # copy of the model too (the flag is set on the copy's own layer)
    stock = _bert("eager")
    model = copy.deepcopy(stock)
    compute_head_token_only(model)
    model = copy.deepcopy(model)
    batch = _padded_batch()
    with torch.no_grad():
        out = model.eval()(**batch, **{ask: True})
        reference = stock.eval()(**batch, **{ask: True})
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=0)
    maps, stock_maps = (out.attentions, reference.attentions) if ask == "output_attentions" else (
        out.hidden_states, reference.hidden_states)
    assert len(maps) == len(stock_maps)
    torch.testing.assert_close(maps[-1], stock_maps[-1], atol=1e-5, rtol=0)


def test_models_it_does_not_know_compute_every_position(tiny_gpt2):
    from transformers import AutoModelForSequenceClassification

    gpt2 = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    assert not compute_head_token_only(gpt2) and not uses_head_token_only(gpt2)
    assert type(gpt2.transformer.h[-1]).__name__ == "GPT2Block"
    relative = _bert("eager")
    relative.config.position_embedding_type = "relative_key"  # the attention adds positions the short path lacks
    assert not compute_head_token_only(relative)
    assert type(last_layer(relative)).__name__ == "BertLayer"


@pytest.mark.parametrize("last_layer_choice", ["head-token", "all-tokens"])
def test_run_config_last_layer_chooses_whether_the_prepared_model_computes_the_head_token_alone(
        last_layer_choice, tmp_path, rt_dir):
    from conftest import make_tiny_bert

    from peft_helpers.workflow import prepare

    p = prepare(RunConfig(model=str(make_tiny_bert(tmp_path / "bert")), data_dir=str(rt_dir), train_size=32,
                          eval_size=16, last_layer=last_layer_choice), device="cpu")
    assert uses_head_token_only(p.model) == (last_layer_choice == "head-token")
    assert RunConfig(last_layer=last_layer_choice).run_identity() == RunConfig().run_identity()
    with pytest.raises(UserError, match=r"last_layer='cls' is invalid: use head-token or all-tokens"):
        RunConfig(model="x", last_layer="cls")


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, rt_dir) -> dict:
    """The results of one short run of a tiny BERT (an adapter trained and saved with the short last layer)."""
    from conftest import make_tiny_bert

    from peft_helpers.workflow import run

    folder = tmp_path_factory.mktemp("bert_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the run's logs and plots go under the working folder
        return run(RunConfig(model=str(make_tiny_bert(folder / "bert")), data_dir=str(rt_dir), train_size=64,
                             eval_size=32, epochs=1, validation=False, output_dir=str(folder / "out")))


def test_a_run_with_the_short_last_layer_saves_an_adapter_the_stock_loader_scores_alike(bert_run):
    # the run scores the trained model with the short layer and checks the reloaded (stock) one against it;
    # a fresh process with peft's own loader then gets the same predictions
    results = bert_run
    assert results["reload_max_logit_diff"] <= 1e-5
    adapter = results["adapter_dir"]
    script = (
        "import json, sys, torch\n"
        "from peft import AutoPeftModelForSequenceClassification\n"
        "from transformers import AutoTokenizer\n"
        "from peft_helpers.head_token import last_layer\n"
        f"m = AutoPeftModelForSequenceClassification.from_pretrained({adapter!r}).eval()\n"
        f"t = AutoTokenizer.from_pretrained({adapter!r})\n"
        "assert type(last_layer(m)).__name__ == 'BertLayer'\n"
        "b = t(['a good film', 'dull', 'great great film'], padding=True, return_tensors='pt')\n"
        "with torch.no_grad(): print(json.dumps(m(**b).logits.tolist()))\n"
    )
    stock_logits = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    from peft_helpers.persistence import load_adapter

    model, tokenizer, _ = load_adapter(adapter)
    compute_head_token_only(model)
    batch = tokenizer(["a good film", "dull", "great great film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        short = model.eval()(**batch).logits
    torch.testing.assert_close(short, torch.tensor(json.loads(stock_logits.strip().splitlines()[-1])),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["texts", "file"])
def test_the_predict_command_classifies_with_the_short_last_layer_and_gives_the_stock_probabilities(
        bert_run, mode, tmp_path, monkeypatch, capsys):
    import pandas as pd

    from peft_helpers import inference
    from peft_helpers.cli import main
    from peft_helpers.persistence import load_adapter

    adapter = bert_run["adapter_dir"]
    texts = ["a good film", "dull and far too long", "great great film", "not bad", "the worst of the year"]
    loaded = []  # the model the command classified with

    def spy(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    real = inference.load_for_prediction
    monkeypatch.setattr(inference, "load_for_prediction", spy)
    stock, tokenizer, _ = load_adapter(adapter)
    expected = inference.predict(stock, tokenizer, texts)
    assert not uses_head_token_only(stock)
    if mode == "texts":
        assert main(["predict", adapter, *texts]) == 0
        printed = capsys.readouterr().out.strip().splitlines()[-len(texts):]
        assert [line.split()[0] for line in printed] == expected.labels
    else:
        pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
        assert main(["predict", adapter, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv")]) == 0
        written = pd.read_csv(tmp_path / "out.csv")
        assert list(written["predicted_label"]) == expected.labels
        columns = [f"p({name})" for name in expected.label_names]
        assert abs(written[columns].to_numpy() - expected.probabilities).max() <= 1e-5
    assert len(loaded) == 1 and uses_head_token_only(loaded[0][0])


def _attention_inputs(mask_kind: str):
    generator = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn(3, 4, 7, 8, generator=generator, requires_grad=True) for _ in range(3))
    keep = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    keep[0, ..., 5:] = False  # padded positions
    keep[2, ..., 3:] = False
    mask = {"boolean": keep, "additive": torch.zeros(3, 1, 1, 7).masked_fill(~keep, torch.finfo(torch.float32).min),
            "none": None}[mask_kind]
    return query, key, value, mask


@pytest.mark.parametrize("mask_kind", ["boolean", "additive", "none"])
def test_attention_dropout_through_the_module_is_torchs_attention_with_that_mask(mask_kind):
    """The attention probabilities dropped by the module's 16-bit mask: torch's own math kernel given the same mask
    (its scale 1 / (1 - p) and the module's 1 / the rounded keep probability differ by 1e-6), forward and backward."""
    from peft_helpers.dropout_masks import WORD_VALUES, SixteenBitMaskDropout, sixteen_bit_keep_mask
    from peft_helpers.head_token import _attention

    attn = torch.nn.Module()
    attn.dropout = SixteenBitMaskDropout(0.3).train()
    query, key, value, mask = _attention_inputs(mask_kind)
    torch.manual_seed(9)
    out = _attention(attn, query, key, value, mask)
    torch.manual_seed(9)
    kept = sixteen_bit_keep_mask(torch.Size([3, 4, 7, 7]), 0.3)
    assert 0.6 < kept.float().mean() < 0.8
    if mask is not None and mask.dtype == torch.bool:  # F.scaled_dot_product_attention makes it additive first
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    reference, _ = torch.ops.aten._scaled_dot_product_attention_math(
        query, key, value, mask, dropout_p=round(0.3 * WORD_VALUES) / WORD_VALUES, dropout_mask=kept)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.sum(), (query, key, value))
    reference_grads = torch.autograd.grad(reference.sum(), (query, key, value))
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad, reference_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["evaluation", "torch's masks"])
def test_attention_without_16_bit_masks_is_sdpa(case):
    from peft_helpers.dropout_masks import SixteenBitMaskDropout
    from peft_helpers.head_token import _attention

    attn = torch.nn.Module()
    attn.dropout = (SixteenBitMaskDropout(0.3).eval() if case == "evaluation" else torch.nn.Dropout(0.3).train())
    query, key, value, mask = _attention_inputs("boolean")
    torch.manual_seed(4)
    out = _attention(attn, query, key, value, mask)
    torch.manual_seed(4)
    reference = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                                 dropout_p=attn.dropout.p * attn.dropout.training)
    assert torch.equal(out, reference)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_layers_that_drop_attention_through_the_module_give_the_stock_models_logits_and_gradients(attention):
    """Every layer of a model with 16-bit masks computes its attention through the module while training. At
    p = 1/65536 with a seed that drops nothing, the only difference from the stock model's evaluation pass is the
    kept elements' scale 65536/65535, applied at each dropout."""
    from peft_helpers.dropout_masks import SixteenBitMaskDropout, draw_sixteen_bit_dropout_masks

    stock = _lora(_bert(attention, dropout=1 / 65536))
    model = copy.deepcopy(stock)
    compute_head_token_only(model)
    assert draw_sixteen_bit_dropout_masks(model) > 0
    names = [type(layer).__name__ for layer in model.get_base_model().bert.encoder.layer]
    assert names == ["AttentionDropoutBertLayer", "HeadTokenBertLayer"]
    drawn = []
    for module in model.modules():
        if isinstance(module, SixteenBitMaskDropout):
            module.register_forward_hook(lambda m, args, out: drawn.append((args[0] != 0).sum() - (out != 0).sum()))
    batch = _padded_batch()
    torch.manual_seed(0)
    model.train()(**batch).loss.backward()
    # per layer: attention and two hidden; the embeddings and the classifier: none dropped
    assert len(drawn) == 2 * 3 + 2 and sum(drawn) == 0
    torch.manual_seed(0)
    logits = model(**batch).logits
    stock.eval()(**batch).loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(logits, stock(**batch).logits, atol=2e-4, rtol=0)
    stock_grads = dict(stock.named_parameters())
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, stock_grads[name].grad, atol=2e-4, rtol=1e-3)


def test_a_training_call_asking_for_attentions_gets_every_layers_stock_maps():
    """While training with 16-bit masks every layer computes itself, which records no attention maps: a call that
    asks for them runs the stock layers (each layer's map over every position)."""
    from peft_helpers.dropout_masks import draw_sixteen_bit_dropout_masks

    model = _bert("eager", dropout=0.1)
    compute_head_token_only(model)
    draw_sixteen_bit_dropout_masks(model)
    out = model.train()(**_padded_batch(), output_attentions=True)
    assert [tuple(m.shape) for m in out.attentions] == [(4, 4, 9, 9)] * 2
