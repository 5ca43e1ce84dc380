"""Shared fixtures: a tiny random GPT-2 with the real GPT-2 tokenizer, and the local Rotten Tomatoes files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RT_DIR = SHARED / "data" / "rotten_tomatoes"
GPT2_TOKENIZER = SHARED / "tokenizers" / "gpt2"


def make_tiny_gpt2(folder: Path, n_embd: int = 32, n_layer: int = 2, seed: int = 0) -> Path:
    """A randomly initialised 2-layer GPT-2 saved with the real GPT-2 tokenizer: the exact GPT-2 code paths."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=2, n_positions=256, vocab_size=50257)
    GPT2LMHeadModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER).save_pretrained(folder)
    return folder


def make_tiny_bert(folder: Path) -> Path:
    """A 1-layer BERT with a 10-word WordPiece vocabulary: BERT-style code paths (the offline MiniLM's) in seconds.
    The tokenizer is built with the `tokenizers` library, which every supported transformers version loads."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "great", "dull"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=160)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def rt_dir() -> Path:
    if not RT_DIR.is_dir():
        pytest.fail(f"{RT_DIR} is missing: tests need ../shared beside the repository")
    return RT_DIR


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, so saved_adapters/ and runs/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
