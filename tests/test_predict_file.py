"""Batch prediction from files: every format, the input's columns kept, probabilities equal predict()'s, chunks,
and bad input in one line with nothing written."""

import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from peft_helpers.cli import main
from peft_helpers.inference import predict, predict_file
from peft_helpers.persistence import load_adapter

TEXTS = ["a gripping film", "dull and slow", "NA", 'great, "quoted" fun', "line\nbreak", "ok"] * 5


@pytest.fixture(scope="module")
def adapter(tiny_gpt2, rt_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "adapter"
    assert main(["run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--train-size", "16", "--eval-size", "8",
                 "--batch-size", "8", "--output-dir", str(out), "--checkpoint-dir", str(out.parent / "runs")]) == 0
    return load_adapter(out, device="cpu")[:2], out


def _write(path, frame):
    suffix = path.suffix
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(path, sep="," if suffix == ".csv" else "\t", index=False)


def _read(path):
    suffix = path.suffix
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_csv(path, sep="," if suffix == ".csv" else "\t", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_predict_file_in_chunks_keeps_columns_and_matches_predict(adapter, tmp_path, suffix):
    (model, tokenizer), _ = adapter
    frame = pd.DataFrame({"id": [str(i) for i in range(len(TEXTS))], "review": TEXTS})
    source, target = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    _write(source, frame)
    assert predict_file(model, tokenizer, source, target, text_column="review", chunk_size=7, batch_size=4) == len(TEXTS)
    out = _read(target)
    assert list(out.columns) == ["id", "review", "predicted_label", "p(neg)", "p(pos)"]
    assert out["id"].astype(str).tolist() == frame["id"].tolist() and out["review"].tolist() == TEXTS
    expected = predict(model, tokenizer, TEXTS)
    assert out["predicted_label"].tolist() == expected.labels
    np.testing.assert_allclose(out[["p(neg)", "p(pos)"]].astype(float).to_numpy(), expected.probabilities, atol=1e-6)
    assert not list(tmp_path.glob(".out*"))  # the temporary file was renamed into place
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable like any written file, not mkstemp's 0600


@pytest.mark.parametrize("case, message", [
    ("missing-column", r"has no column 'review' \(columns: id, text\)"),
    ("empty-rows", r"has 2 empty text\(s\) in column 'review' \(data rows 2, 4\): .* nothing was predicted"),
    ("not-utf8", "is not UTF-8"),
    ("output-exists", "exists: pass --overwrite"),
], ids=["missing-column", "empty-rows", "not-utf8", "output-exists"])
def test_predict_file_bad_input_one_line(adapter, tmp_path, capsys, case, message):
    _, folder = adapter
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    if case == "missing-column":
        source.write_text("id,text\n1,fine\n")
    elif case == "empty-rows":
        source.write_text("id,review\n1,fine\n2,\n3,good\n4,  \n")
    elif case == "not-utf8":
        source.write_bytes("id,review\n1,caf\xe9\n".encode("latin-1"))
    else:
        source.write_text("id,review\n1,fine\n")
        target.write_text("mine")
    assert main(["predict", str(folder), "--input", str(source), "--output", str(target), "--text-column", "review"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and re.search(message, err), err
    assert (target.read_text() == "mine") if case == "output-exists" else not target.exists()
    assert not list(tmp_path.glob(".out*"))


def test_predict_command_writes_a_file(adapter, tmp_path, capsys):
    _, folder = adapter
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS[:4]))
    assert main(["predict", str(folder), "--input", str(source), "--output", str(target)]) == 0
    assert "4 rows classified" in capsys.readouterr().out
    assert len(target.read_text().strip().splitlines()) == 4
