import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, make_tiny_bert, make_tiny_gpt2

from peft_helpers.config import RunConfig
from peft_helpers.data import load_rotten_tomatoes, subsample, tokenize
from peft_helpers.errors import UserError
from peft_helpers.evaluation import predict_logits
from peft_helpers.modeling import create_peft_model, load_model
from peft_helpers.persistence import METADATA_FILE, base_model_metadata, load_adapter, save_adapter
from peft_helpers.training import train


@pytest.fixture(scope="module")
def trained(tiny_gpt2, rt_dir, tmp_path_factory):
    """A tiny GPT-2 LoRA model trained for one short epoch, and the data it was evaluated on."""
    work = tmp_path_factory.mktemp("trained")
    cfg = RunConfig(model=str(tiny_gpt2), train_size=64, eval_size=32, batch_size=8, learning_rate=1e-3,
                    output_dir=str(work / "adapter"), checkpoint_dir=str(work / "runs")).resolved("gpt2")
    data = subsample(load_rotten_tomatoes(rt_dir), cfg.train_size, cfg.eval_size, cfg.seed)
    model, tokenizer = load_model(cfg.model, ["neg", "pos"], cfg.seed, device="cpu")
    encoded = tokenize(data, tokenizer, cfg.max_length)
    peft_model = create_peft_model(model, cfg)
    train(peft_model, tokenizer, encoded, cfg)
    metadata = base_model_metadata(peft_model, cfg.model, ["neg", "pos"])
    return peft_model, tokenizer, encoded["test"], metadata, work


def _save(trained, folder, **kwargs):
    model, tokenizer, _, metadata, _ = trained
    return save_adapter(model, tokenizer, folder, metadata, **kwargs)


def test_saved_files_and_metadata(trained, tmp_path):
    folder = _save(trained, tmp_path / "a")
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", METADATA_FILE, "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["architecture"] == "GPT2ForSequenceClassification" and meta["vocab_size"] == 50257
    assert meta["label_names"] == ["neg", "pos"] and "torch" in meta["versions"]
    assert not list(tmp_path.glob(".a.*"))  # no temporary folder left behind
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # shareable like any file, weights included


@pytest.mark.e2e
@pytest.mark.core
def test_reload_in_a_fresh_process_gives_identical_logits(trained, tmp_path):
    model, tokenizer, test, _, _ = trained
    folder = _save(trained, tmp_path / "adapter")
    expected = predict_logits(model, tokenizer, test, batch_size=8)
    test.save_to_disk(str(tmp_path / "test"))
    script = f"""
import numpy as np
from datasets import load_from_disk
from peft_helpers.persistence import load_adapter
from peft_helpers.evaluation import predict_logits
model, tokenizer, _ = load_adapter({str(folder)!r}, device="cpu")
np.save({str(tmp_path / "reloaded.npy")!r}, predict_logits(model, tokenizer, load_from_disk({str(tmp_path / "test")!r}), 5))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    reloaded = np.load(tmp_path / "reloaded.npy")
    assert reloaded.shape == (32, 2)
    np.testing.assert_allclose(reloaded, expected, atol=1e-5, rtol=0)
    assert np.abs(expected).max() > 0  # the comparison is not trivially zero


def test_existing_adapter_is_never_overwritten_unless_asked(trained, tmp_path):
    folder = _save(trained, tmp_path / "adapter")
    before = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "marker.txt").write_text("old")
    with pytest.raises(UserError, match="already holds an adapter: pass --overwrite"):
        _save(trained, folder)
    assert (folder / "marker.txt").read_text() == "old"
    _save(trained, folder, overwrite=True)
    assert not (folder / "marker.txt").exists()  # replaced as a whole, not merged
    assert (folder / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_failed_write_keeps_the_previous_adapter(trained, tmp_path, monkeypatch):
    model, tokenizer, _, _, _ = trained
    folder = _save(trained, tmp_path / "adapter")
    (folder / "marker.txt").write_text("old")
    snapshot = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _save(trained, folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # the temporary folder is gone


def test_other_labels_are_refused(trained, tmp_path):
    folder = _save(trained, tmp_path / "adapter")
    with pytest.raises(UserError, match=r"trained for labels \['neg', 'pos'\], not \['bad', 'good'\]"):
        load_adapter(folder, label_names=["bad", "good"])


@pytest.mark.parametrize("other, message", [
    (dict(n_embd=48), r"differs: hidden_size 32 \(adapter\) vs 48"),
    (dict(n_layer=1), r"differs: num_hidden_layers 2 \(adapter\) vs 1"),
    (dict(seed=1), r"has other weights \(same size, different files\)"),
], ids=["wider", "fewer-layers", "same-shapes-other-weights"])
def test_another_base_model_is_refused(trained, tmp_path, other, message):
    folder = _save(trained, tmp_path / "adapter")
    base = make_tiny_gpt2(tmp_path / "other-gpt2", **other)
    with pytest.raises(UserError, match=message):
        load_adapter(folder, base_model=str(base))


def test_another_architecture_is_refused(trained, tmp_path):
    folder = _save(trained, tmp_path / "adapter")
    bert = make_tiny_bert(tmp_path / "bert")
    with pytest.raises(UserError, match="was trained on .*GPT2ForSequenceClassification.*BertForSequenceClassification"):
        load_adapter(folder, base_model=str(bert))


def test_adapter_file_with_extra_or_missing_tensors_is_refused(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _save(trained, tmp_path / "adapter")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    extra = {**weights, "base_model.model.transformer.h.7.attn.c_attn.lora_A.weight": torch.zeros(8, 32)}
    save_file(extra, str(folder / "adapter_model.safetensors"))
    with pytest.raises(UserError, match=r"0 adapter weights missing .*1 unexpected"):
        load_adapter(folder)
    for missing in ("lora_A", "score"):  # peft itself only warns about the first and raises a KeyError on the second
        dropped = next(k for k in sorted(weights) if missing in k)
        fewer = {k: v for k, v in weights.items() if k != dropped}
        save_file(fewer, str(folder / "adapter_model.safetensors"))
        with pytest.raises(UserError, match=r"1 adapter weights missing|does not fit .*KeyError"):
            load_adapter(folder)


def test_interrupted_swap_is_recovered_on_the_next_save(trained, tmp_path):
    folder = _save(trained, tmp_path / "adapter")
    (folder / "marker.txt").write_text("old")
    folder.rename(tmp_path / ".adapter.old-abc")  # killed between the two renames of a save
    (tmp_path / ".adapter.tmp-def").mkdir()  # and a half-written temporary folder
    with pytest.raises(UserError, match="already holds an adapter"):  # the old adapter is back, and protected
        _save(trained, tmp_path / "adapter")
    assert (folder / "marker.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_only_safetensors_adapters_with_metadata_are_loaded(trained, tmp_path):
    folder = _save(trained, tmp_path / "adapter")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(UserError, match="only safetensors adapters are loaded"):
        load_adapter(folder)
    (folder / "adapter_model.bin").rename(folder / "adapter_model.safetensors")
    (folder / METADATA_FILE).unlink()
    with pytest.raises(UserError, match="AutoPeftModelForSequenceClassification"):
        load_adapter(folder)
    with pytest.raises(UserError, match="does not exist"):
        load_adapter(tmp_path / "missing")


@pytest.mark.e2e
def test_packaged_model_adapter_records_its_hub_id_and_loads_elsewhere(tmp_path):
    """An adapter on the packaged MiniLM names the public Hub id (not a path in this venv) in adapter_config.json,
    the model card and peft_helpers.json; in a fresh process, from another folder, with an empty Hugging Face
    cache and no Hub, both stock AutoPeftModel and load_adapter find the packaged copy by that id."""
    from peft_helpers.offline import HUB_IDS, offline_model_path

    cfg = RunConfig(model="minilm", output_dir=str(tmp_path / "adapter")).resolved("bert")
    model, tokenizer = load_model("minilm", ["neg", "pos"], cfg.seed, device="cpu")
    peft_model = create_peft_model(model, cfg)
    with torch.no_grad():  # an adapter that changes the logits (LoRA's B starts at zero)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    from peft_helpers.workflow import portable_model_name

    folder = save_adapter(peft_model, tokenizer, cfg.output_dir,
                          base_model_metadata(peft_model, portable_model_name("minilm"), ["neg", "pos"]))
    hub_id, packaged = HUB_IDS["minilm"], str(offline_model_path("minilm"))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    assert json.loads((folder / METADATA_FILE).read_text())["base_model"] == hub_id
    assert f"base_model: {hub_id}" in (folder / "README.md").read_text()
    assert not any(packaged in p.read_text() or "site-packages" in p.read_text() for p in folder.glob("*.json"))
    texts = ["a gripping film", "dull and slow"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    expected = peft_model.eval()(**batch).logits.detach().numpy()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "adapter"
    folder.rename(moved)
    code = f"""
import json, numpy as np, sys
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer
from peft_helpers.modeling import from_pretrained_kwargs
from peft_helpers.persistence import load_adapter
texts = {texts!r}
stock = AutoPeftModelForSequenceClassification.from_pretrained("adapter", num_labels=2,
    **from_pretrained_kwargs("lora", source={hub_id!r})).eval()
tokenizer = AutoTokenizer.from_pretrained("adapter")
ours, _, _ = load_adapter("adapter")
out = [m(**tokenizer(texts, padding=True, return_tensors="pt")).logits.detach().numpy().tolist() for m in (stock, ours)]
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stock, ours = (np.array(x) for x in json.loads(proc.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(stock, expected, atol=1e-5)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
