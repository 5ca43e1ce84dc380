import pytest
from transformers import AutoTokenizer

from peft_helpers.data import (
    label_balance,
    load_data,
    load_rotten_tomatoes,
    load_text_classification,
    stratified_subset,
    subsample,
    tokenize,
)
from peft_helpers.errors import UserError

from conftest import GPT2_TOKENIZER


@pytest.fixture(scope="module")
def rt(rt_dir):
    return load_rotten_tomatoes(rt_dir)


def test_rotten_tomatoes_reproduces_hub_splits(rt):
    assert {s: len(d) for s, d in rt.items()} == {"train": 8530, "validation": 1066, "test": 1066}
    assert rt["train"].features["label"].names == ["neg", "pos"]
    first = rt["train"][0]
    assert first["text"].startswith("the rock is destined to be the 21st century's new \" conan \" and")
    assert first["label"] == 1
    # positives first in each split, then negatives, half and half
    for split, n in (("train", 4265), ("validation", 533), ("test", 533)):
        labels = rt[split]["label"]
        assert labels[:n] == [1] * n and labels[n:] == [0] * n
    assert rt["test"][0]["label"] == 1 and rt["test"][533]["label"] == 0


def test_non_ascii_lines_decode_like_the_hub(rt):
    texts = [t for split in ("train", "validation", "test") for t in rt[split]["text"]]
    non_ascii = [t for t in texts if not t.isascii()]
    assert len(non_ascii) == 229
    assert not any("\ufffd" in t for t in non_ascii)


def test_csv_with_string_labels_is_split_and_encoded(tmp_path):
    rows = ["review,sentiment"] + [f"text number {i},{'good' if i % 2 else 'bad'}" for i in range(100)]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows))
    data = load_text_classification(path, text_column="review", label_column="sentiment", seed=1)
    assert {s: len(d) for s, d in data.items()} == {"train": 80, "validation": 10, "test": 10}
    assert data["train"].features["label"].names == ["bad", "good"]  # sorted, so ids are stable
    for split in data.values():
        assert sorted(split["label"]).count(0) == len(split) // 2  # stratified
    assert data["train"].column_names == ["text", "label"]


def test_folder_of_split_files(tmp_path):
    for split, n in (("train", 20), ("validation", 6), ("test", 6)):
        lines = [f'{{"text": "{split} example {i}", "label": {i % 2}}}' for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines))
    data = load_data(tmp_path)
    assert {s: len(d) for s, d in data.items()} == {"train": 20, "validation": 6, "test": 6}
    assert data["test"][1] == {"text": "test example 1", "label": 1}


def _csv(tmp_path, rows, header="text,label"):
    path = tmp_path / "data.csv"
    path.write_text("\n".join([header, *rows]))
    return path


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (["good film,1"] * 20, "text,stars", "no column 'label'"),
        (["good film,1", "bad film,0"] * 10, "review,label", "no column 'text'"),
        (["good film,1", "bad film,0"] * 9 + ["   ,1", "fine,0"], "text,label", "empty or missing text"),
        (["good film,1", "bad film,0"] * 10 + ["odd,2.5"], "text,label", "all strings or all integers"),
        (["good film,1", "bad film,3"] * 10, "text,label", "must be 0..k-1"),
        (["good film,pos"] * 20, "text,label", "only one label"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, rows, header, message):
    with pytest.raises(UserError, match=message):
        load_data(_csv(tmp_path, rows, header))


def test_label_outside_label_set_in_test_split(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"t{i},{'pos' if i % 2 else 'neg'}" for i in range(10)))
    (tmp_path / "test.csv").write_text("text,label\nt,pos\nu,meh\n")
    with pytest.raises(UserError, match=r"labels \['meh'\] that are not in the label set \['neg', 'pos'\]"):
        load_data(tmp_path)


def test_non_utf8_file_is_refused(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 film,1\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_data(path)


def test_missing_data_dir_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(tmp_path / "nope")
    with pytest.raises(UserError, match="no rt-polarity.pos"):
        load_data(tmp_path)


def test_empty_split_is_refused(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\n")
    (tmp_path / "validation.csv").write_text("text,label\na,0\n")
    (tmp_path / "test.csv").write_text("text,label\n")
    with pytest.raises(UserError, match="test.csv holds no examples"):
        load_data(tmp_path)
    (tmp_path / "test.csv").write_text("text,label\nb,1\n")
    assert len(load_data(tmp_path)["test"]) == 1
    (tmp_path / "validation.csv").write_text("text,label\n")
    with pytest.raises(UserError, match="validation.csv holds no examples"):
        load_data(tmp_path)


def test_subsample_is_stratified_seeded_and_checked(rt):
    small = subsample(rt, train_size=100, eval_size=50, seed=3)
    assert [len(small[s]) for s in ("train", "validation", "test")] == [100, 50, 50]
    assert sum(small["train"]["label"]) == 50 and sum(small["test"]["label"]) == 25
    again = subsample(rt, train_size=100, eval_size=50, seed=3)
    assert small["train"]["text"] == again["train"]["text"]
    assert subsample(rt, 100, 50, seed=4)["train"]["text"] != small["train"]["text"]
    with pytest.raises(UserError, match="asks for 9000 examples but the split has 8530"):
        stratified_subset(rt["train"], 9000, 0, "train_size")
    with pytest.raises(UserError, match="smaller than the number of labels"):
        stratified_subset(rt["train"], 1, 0, "train_size")


def test_tokenize_truncates_without_padding(rt):
    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    with pytest.raises(UserError, match="no pad token"):
        tokenize(subsample(rt, 10, 10, 0), tokenizer, 16)
    tokenizer.pad_token = tokenizer.eos_token
    out = tokenize(subsample(rt, 10, 10, 0), tokenizer, 16)
    lengths = [len(ids) for ids in out["train"]["input_ids"]]
    assert max(lengths) == 16 and min(lengths) < 16  # truncated, and not padded
    assert out["train"]["length"] == lengths
    assert "text" not in out["train"].column_names
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]


def test_label_balance(rt):
    table = label_balance(rt)
    assert table.loc["pos", "train"] == 4265 and table.loc["neg", "test"] == 533
    assert list(table.columns) == ["train", "validation", "test"]


def test_check_dataset_refuses_empty_or_incomplete_data(rt):
    from datasets import DatasetDict

    from peft_helpers.data import check_dataset

    with pytest.raises(UserError, match="test split is empty"):
        check_dataset(DatasetDict({**rt, "test": rt["test"].select([])}))
    with pytest.raises(UserError, match="no 'validation' split"):
        check_dataset(DatasetDict({"train": rt["train"], "test": rt["test"]}))
    with pytest.raises(UserError, match="no 'label' column"):
        check_dataset(DatasetDict({k: v.remove_columns("label") for k, v in rt.items()}))
