import pytest
import torch
from conftest import GPT2_TOKENIZER, make_tiny_bert
from transformers import AutoTokenizer

from peft_helpers.config import RunConfig
from peft_helpers.errors import UserError
from peft_helpers.modeling import count_parameters, create_lora_model, load_model, lora_config


@pytest.fixture
def tiny(tiny_gpt2):
    return load_model(str(tiny_gpt2), ["neg", "pos"], seed=0, device="cpu")


def test_gpt2_gets_a_pad_token_and_batches_match_single_rows(tiny):
    model, tokenizer = tiny
    assert tokenizer.pad_token == "<|endoftext|>" and model.config.pad_token_id == 50256 == tokenizer.pad_token_id
    assert model.config.id2label == {0: "neg", 1: "pos"}
    texts = ["a short one", "a much longer sentence that needs several more tokens than the first"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and (batch["input_ids"][0] == 50256).any()  # row 0 is padded
    model.eval()
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_lora_on_gpt2_conv1d_and_parameter_counts(tiny):
    model, _ = tiny
    base_total = sum(p.numel() for p in model.parameters())
    cfg = RunConfig(model="x", r=4).resolved("gpt2")
    config = lora_config(model, cfg)
    assert set(config.target_modules) == {"c_attn"} and config.fan_in_fan_out is True
    assert config.modules_to_save == ["score"]
    peft_model = create_lora_model(model, cfg)
    counts = count_parameters(peft_model)
    n_embd, n_layer, r = 32, 2, 4
    lora = n_layer * (r * n_embd + 3 * n_embd * r)  # A: r x in, B: out x r, with out = 3 * n_embd
    head = n_embd * 2  # score: no bias
    assert counts.trainable == lora + head
    assert counts.total == base_total + lora + head  # the head is trained as a copy
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "score" in n for n in trainable)
    assert "trainable%" in str(counts)


def test_bert_style_targets(tmp_path):
    make_tiny_bert(tmp_path)
    model, _ = load_model(str(tmp_path), ["a", "b", "c"], device="cpu")
    config = lora_config(model, RunConfig(model="x").resolved("bert"))
    assert set(config.target_modules) == {"query", "value"} and config.fan_in_fan_out is False
    assert config.modules_to_save == ["classifier"]
    with pytest.raises(UserError, match="match no module"):
        lora_config(model, RunConfig(model="x", target_modules=["c_attn"]).resolved("bert"))


def test_bad_models_give_clear_errors(tmp_path, tiny_gpt2):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match="is not a model folder"):
        load_model(str(tmp_path), ["a", "b"])
    with pytest.raises(UserError, match="does not exist"):
        load_model("./no/such/model", ["a", "b"])
    with pytest.raises(UserError, match="could not load model 'no-such-org/no-such-model'.*--model minilm"):
        load_model("no-such-org/no-such-model", ["a", "b"])
    with pytest.raises(UserError, match="exceeds the model's 256 positions"):
        load_model(str(tiny_gpt2), ["a", "b"], max_length=512)


def test_tokenizer_model_vocab_mismatch(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=1000)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="tokenizer has 50257 tokens but the model's embedding has 1000"):
        load_model(str(tmp_path), ["a", "b"])


def _sequence_classifier(arch: str) -> torch.nn.Module:
    """A tiny random classifier whose pretrained part has dropout 0.1 everywhere it has dropout at all."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, pad_token_id=0))
    if arch == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=64))
    return LlamaForSequenceClassification(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=2, num_key_value_heads=2,
                                                      intermediate_size=64, attention_dropout=0.1, pad_token_id=0))


def _train_mode_logits_differ(model) -> bool:
    """Two training-mode forwards of the same batch: different only where some dropout is active."""
    model.train()
    ids = torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
def test_model_dropout_zero_turns_off_the_pretrained_models_dropout_but_not_the_adapters(arch):
    from peft import LoraConfig, get_peft_model

    from peft_helpers.modeling import set_model_dropout

    model = _sequence_classifier(arch)
    assert _train_mode_logits_differ(model)  # the model's own dropout is on
    set_model_dropout(model, 0.0)
    assert not _train_mode_logits_differ(model)  # every dropout of the model is off, attention's included
    targets = {"gpt2": ["c_attn"], "bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}[arch]
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_dropout=0.5, target_modules=targets,
                                                      init_lora_weights=False))  # B != 0: its dropout shows
    adapter_dropouts = [m for n, m in peft_model.named_modules() if n.endswith("lora_dropout.default")]
    assert adapter_dropouts and all(m.p == 0.5 for m in adapter_dropouts)  # the adapter's own setting is kept
    assert _train_mode_logits_differ(peft_model)  # ... and still drops


def test_model_dropout_none_leaves_the_model_as_it_is():
    from peft_helpers.modeling import set_model_dropout

    model = _sequence_classifier("bert")
    set_model_dropout(model, None)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}


def test_run_config_model_dropout_reaches_the_prepared_model(tiny_gpt2, rt_dir):
    from peft_helpers.workflow import prepare

    p = prepare(RunConfig(model=str(tiny_gpt2), data_dir=str(rt_dir), train_size=32, eval_size=16, model_dropout=0.0),
                device="cpu")
    assert {m.p for m in p.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    with pytest.raises(UserError, match=r"model_dropout=1\.5 is invalid"):
        RunConfig(model="x", model_dropout=1.5)


def _attention_operators(model, batch) -> set[str]:
    from torch.profiler import profile

    with torch.inference_mode(), profile() as prof:
        model(**batch)
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_run_config_attention_chooses_the_kernel_the_prepared_model_runs_with_the_same_logits(attention, tiny_gpt2,
                                                                                              rt_dir):
    from peft_helpers.workflow import prepare

    settings = {"model": str(tiny_gpt2), "data_dir": str(rt_dir), "train_size": 32, "eval_size": 16}
    chosen = prepare(RunConfig(**settings, attention=attention), device="cpu")
    default = prepare(RunConfig(**settings), device="cpu")  # auto: the model's own, SDPA for GPT-2
    assert (chosen.model.config._attn_implementation, default.model.config._attn_implementation) == (attention, "sdpa")
    texts = list(chosen.data["test"]["text"][:4])  # of different lengths: padded rows, the attention mask matters
    batch = chosen.tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    assert bool(_attention_operators(chosen.model, batch)) == (attention == "sdpa")  # the kernel really switched
    with torch.no_grad():
        torch.testing.assert_close(chosen.model.eval()(**batch).logits, default.model.eval()(**batch).logits,
                                   atol=1e-5, rtol=0)
    with pytest.raises(UserError, match=r"attention='flash' is invalid: use auto, sdpa or eager"):
        RunConfig(model="x", attention="flash")


def _training_step_flops(model, ids) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=torch.zeros(len(ids), dtype=torch.long)).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("method", ["lora", "dora", "adalora", "vera"])
def test_layers_puts_the_adapter_in_those_layers_only_and_skips_the_backward_below(tiny_gpt2, method):
    from peft_helpers.modeling import create_peft_model

    ids = torch.randint(0, 50257, (4, 16), generator=torch.Generator().manual_seed(0))
    flops = {}
    for layers in (None, [1]):
        model, _ = load_model(str(tiny_gpt2), ["neg", "pos"], seed=0, device="cpu")
        cfg = RunConfig(model="x", method=method, layers=layers, **({"r": 4} if method == "vera" else {})).resolved("gpt2")
        peft_model = create_peft_model(model, cfg)
        adapted = {n.split(".h.")[1].split(".")[0] for n, p in peft_model.named_parameters()
                   if p.requires_grad and ".h." in n}
        assert adapted == ({"0", "1"} if layers is None else {"1"})
        flops[str(layers)] = _training_step_flops(peft_model, ids)
    assert flops["[1]"] < flops["None"]  # layer 0 is not back-propagated through


@pytest.mark.parametrize(("settings", "message"), [
    pytest.param({"layers": [2]}, r"layers \[2\]: this model has 2 layers, numbered 0 to 1", id="layers2-this-model-has-2"),
    pytest.param({"layers": [0], "method": "ia3"}, r"layers is not an option of method ia3", id="ia3"),
    pytest.param({"layers": [-1]}, r"layers=\[-1\] is invalid", id="negative"),
    pytest.param({"layers": []}, r"layers=\[\] is invalid", id="empty"),
])
def test_bad_layers_are_refused_in_one_line(tiny_gpt2, settings, message):
    from peft_helpers.modeling import check_method_before_loading

    with pytest.raises(UserError, match=message):
        check_method_before_loading(RunConfig(model=str(tiny_gpt2), **settings).resolved("gpt2"))
