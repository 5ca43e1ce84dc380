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
