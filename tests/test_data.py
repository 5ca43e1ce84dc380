import pytest
from conftest import GPT2_TOKENIZER
from transformers import AutoTokenizer

from peft_helpers.data import (
    load_data,
    load_rotten_tomatoes,
    load_text_classification,
    stratified_subset,
    subsample,
    tokenize,
)
from peft_helpers.errors import UserError
from peft_helpers.reporting import label_balance


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
        (["good film,1", "bad film,0"] * 10 + ["odd,2.5"], "text,label", r"'2.5' at data.csv data row 21 \(line 22\) .* fractional"),
        (["good film,pos"] * 20, "text,label", "only one label"),
        (["good film,pos", "bad film,1"] * 10, "text,label", r"labels mix kinds: 'pos' \(name\), '1' \(integer\)"),
        (["good film,true", "bad film,neg"] * 10, "text,label", "labels mix kinds"),
        (["good film,pos", "bad film,"] * 10, "text,label", r"10 missing label.*data row 2 \(line 3\)"),
    ],
    ids=["no-label-column", "no-text-column", "empty-text", "fractional-label", "one-label", "mixed-name-number",
         "mixed-bool-name", "missing-label"],
)
def test_bad_files_give_clear_errors(tmp_path, rows, header, message):
    with pytest.raises(UserError, match=message):
        load_data(_csv(tmp_path, rows, header))


def test_label_outside_label_set_in_test_split(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"t{i},{'pos' if i % 2 else 'neg'}" for i in range(10)))
    (tmp_path / "test.csv").write_text("text,label\nt,pos\nu,meh\n")
    with pytest.raises(UserError, match=r"labels \['meh'\] that are not in the train split's label set \['neg', 'pos'\]"):
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


def test_empty_text_is_reported_at_its_file_row_before_any_split(tmp_path):
    rows = [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    rows[2] = "  ,pos"  # the third data row, line 4 of the file
    rows[30] = ",neg"
    with pytest.raises(UserError, match=r"data.csv has 2 empty or missing text\(s\), first at data.csv data row 3 \(line 4\)"):
        load_data(_csv(tmp_path, rows))


@pytest.mark.parametrize("word", ["NA", "null", "None", "nan", "N/A", "#N/A"])
def test_texts_that_look_like_missing_values_are_text(tmp_path, word):
    rows = [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(40)] + [f"{word},pos"]
    data = load_data(_csv(tmp_path, rows))
    texts = [t for split in data.values() for t in split["text"]]
    assert word in texts and len(texts) == 41


def test_missing_validation_split_is_carved_from_train_and_said(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"t{i},{'pos' if i % 4 else 'neg'}" for i in range(40)))
    (tmp_path / "test.csv").write_text("text,label\n" + "\n".join(f"u{i},{'pos' if i % 2 else 'neg'}" for i in range(10)))
    data = load_data(tmp_path, seed=5)
    assert {s: len(d) for s, d in data.items()} == {"train": 36, "validation": 4, "test": 10}
    assert "No validation split given: carved validation 4 rows out of 40 training rows (stratified, seed 5)" in capsys.readouterr().out
    assert sorted(data["validation"]["label"]) == [0, 1, 1, 1]  # 1 in 4 is 'neg', as in train
    assert set(data["train"]["text"]) | set(data["validation"]["text"]) == {f"t{i}" for i in range(40)}
    assert load_data(tmp_path, seed=5)["validation"]["text"] == data["validation"]["text"]


def test_single_file_rows_are_all_accounted_for_with_a_label_seen_once(tmp_path):
    rows = [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(40)] + ["the only one,meh"]
    data = load_data(_csv(tmp_path, rows))
    texts = sorted(t for split in data.values() for t in split["text"])
    assert texts == sorted(r.rsplit(",", 1)[0] for r in rows)
    assert "the only one" in data["train"]["text"]  # a label seen once stays in train
    assert data["train"].features["label"].names == ["meh", "neg", "pos"]


@pytest.mark.parametrize("labels, names", [
    (["1", "3", "5"], ["1", "3", "5"]),  # star ratings: any integers, sorted into ids
    (["-1", "1"], ["-1", "1"]),
    (["true", "false"], ["false", "true"]),
    (["TRUE", "False"], ["false", "true"]),
])
def test_label_sets(tmp_path, labels, names):
    rows = [f"review {i},{labels[i % len(labels)]}" for i in range(60)]
    data = load_data(_csv(tmp_path, rows))
    assert data["train"].features["label"].names == names
    first = data["train"].features["label"].int2str(data["train"][0]["label"])
    assert first.lower() == rows[int(data["train"][0]["text"].split()[1])].rsplit(",", 1)[1].lower()


def test_tsv_jsonl_bom_and_quoted_newlines(tmp_path):
    (tmp_path / "a.tsv").write_text("text\tlabel\n" + "\n".join(f"t {i}\t{i % 2}" for i in range(30)))
    assert sum(len(d) for d in load_data(tmp_path / "a.tsv").values()) == 30
    (tmp_path / "b.jsonl").write_text("\n".join(f'{{"text": "t {i}", "label": "{"ab"[i % 2]}"}}' for i in range(30)))
    assert load_data(tmp_path / "b.jsonl")["train"].features["label"].names == ["a", "b"]
    bom = "\ufefftext,label\n" + "\n".join(f'"line one\nline two {i}",{i % 2}' for i in range(30))
    (tmp_path / "c.csv").write_text(bom, encoding="utf-8")
    data = load_data(tmp_path / "c.csv")
    assert sum(len(d) for d in data.values()) == 30 and "line one\nline two" in data["train"][0]["text"]


def test_headerless_ag_news_with_class_names_file(capsys):
    from conftest import SHARED

    data = load_data(SHARED / "data" / "ag_news" / "test.csv")
    assert data["train"].features["label"].names == ["World", "Sports", "Business", "Sci/Tech"]
    assert {s: len(d) for s, d in data.items()} == {"train": 6080, "validation": 760, "test": 760}
    assert label_balance(data)["test"].tolist() == [190] * 4
    out = capsys.readouterr().out
    assert "no header row; using column 0 as labels and columns 1, 2 joined as text" in out
    assert "label 1 = 'World'" in out


@pytest.mark.parametrize("train_size, eval_size", [(8529, None), (None, 1065), (8530, 1066), (2, 2)])
def test_subset_sizes_at_the_edges(rt, train_size, eval_size):
    small = subsample(rt, train_size, eval_size, seed=0)
    assert len(small["train"]) == (train_size or 8530) and len(small["test"]) == (eval_size or 1066)
    assert set(small["train"]["label"]) == {0, 1}


def test_a_label_column_of_unique_values_is_refused(tmp_path):
    rows = [f"review {i},id-{i}" for i in range(1200)]
    with pytest.raises(UserError, match="the label column has 1200 distinct values: is it the right column"):
        load_data(_csv(tmp_path, rows))
