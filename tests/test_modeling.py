import pytest
import torch
from conftest import GPT2_TOKENIZER, make_tiny_bert
from transformers import AutoTokenizer

from peft_helpers.config import RunConfig
from peft_helpers.errors import UserError
from peft_helpers.methods import peft_config
from peft_helpers.modeling import count_parameters, create_peft_model, load_model


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
    config = peft_config(model, cfg)
    assert set(config.target_modules) == {"c_attn"} and config.fan_in_fan_out is True
    assert config.modules_to_save == ["score"]
    peft_model = create_peft_model(model, cfg)
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
    config = peft_config(model, RunConfig(model="x").resolved("bert"))
    assert set(config.target_modules) == {"query", "value"} and config.fan_in_fan_out is False
    assert config.modules_to_save == ["classifier"]
    with pytest.raises(UserError, match="match no module"):
        peft_config(model, RunConfig(model="x", target_modules=["c_attn"]).resolved("bert"))


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


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_model_dropout_builds_the_model_with_that_dropout_and_none_keeps_its_own(arch, tiny_gpt2, tmp_path):
    """--model-dropout goes through from_pretrained's config overrides: transformers builds the model with it."""
    folder = str(tiny_gpt2) if arch == "gpt2" else str(make_tiny_bert(tmp_path / "bert"))
    own, _ = load_model(folder, ["neg", "pos"], device="cpu")
    off, _ = load_model(folder, ["neg", "pos"], device="cpu", model_dropout=0.0)
    rates = [[m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] for model in (own, off)]
    assert rates[0] and max(rates[0]) == pytest.approx(0.1) and set(rates[1]) == {0.0}
    keys = [k for k in off.config.to_dict() if "dropout" in k or k.endswith("pdrop")]
    assert keys and all(getattr(off.config, k) in (0.0, None) for k in keys)
    with pytest.raises(UserError, match=r"model_dropout=1\.5 is invalid"):
        RunConfig(model="x", model_dropout=1.5)
