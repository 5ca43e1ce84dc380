"""Predictions on new texts: label names and class probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset

from .errors import UserError
from .evaluation import predict_logits
from .methods import max_positions
from .metrics import DEFAULT_THRESHOLD, sigmoid


@dataclass
class Predictions:
    texts: list[str]
    labels: list  # per text: the predicted label name; multi-label: the list of labels; regression: the number
    probabilities: np.ndarray  # (n, num_labels): softmax (rows sum to 1), or one sigmoid per label; regression (n, 1)
    label_names: list[str]
    text_pairs: list[str] | None = None  # the second texts, for a model trained on text pairs

    def records(self) -> list[dict]:
        """One dict per text, e.g. for pandas.DataFrame(...)."""
        firsts = [{"text": t} for t in self.texts] if self.text_pairs is None else [
            {"text": t, "text_pair": p} for t, p in zip(self.texts, self.text_pairs)]
        if self.label_names == ["score"] and self.probabilities.shape[-1] == 1:  # regression: the number only
            return [{**first, "score": float(value)} for first, value in zip(firsts, self.labels)]
        return [
            {**first, "label": label, **{f"p({n})": float(p) for n, p in zip(self.label_names, probs)}}
            for first, label, probs in zip(firsts, self.labels, self.probabilities)
        ]


def _check_texts(texts, what: str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise UserError(f"predict() got no {what}s.")
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise UserError(f"{what} {empty[0]} is empty: every {what} needs at least one non-space character.")
    return texts


def predict(model, tokenizer, texts: list[str] | str, batch_size: int = 32, max_length: int = 512,
            text_pairs: list[str] | str | None = None) -> Predictions:
    """Classify `texts` with a (PEFT or plain) sequence-classification model; `text_pairs` gives the second text
    of each pair to a model trained on pairs (STS-B's sentence2), encoded together as in training."""
    texts = _check_texts(texts, "text")
    if text_pairs is not None:
        text_pairs = _check_texts(text_pairs, "text pair")
        if len(text_pairs) != len(texts):
            raise UserError(f"predict() got {len(texts)} texts but {len(text_pairs)} text pairs: give one each.")
    config = model.config
    limit = max_positions(config)
    max_length = min(max_length, limit) if limit else max_length
    encoded = Dataset.from_dict(dict(tokenizer(texts, text_pairs, truncation=True, max_length=max_length)))
    logits = predict_logits(model, tokenizer, encoded, batch_size, desc="Predicting")
    names = [config.id2label[i] for i in range(logits.shape[-1])]
    if config.problem_type == "regression":
        return Predictions(texts, [float(v) for v in logits[:, 0]], logits, names, text_pairs)
    if config.problem_type == "multi_label_classification":
        # the threshold tuned on validation and saved with the adapter (persistence.load_adapter puts it here)
        threshold = getattr(config, "decision_threshold", DEFAULT_THRESHOLD)
        probabilities = sigmoid(logits)
        labels = [[names[j] for j in np.flatnonzero(row >= threshold)] for row in probabilities]
        return Predictions(texts, labels, probabilities, names, text_pairs)
    probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    return Predictions(texts, [names[i] for i in probabilities.argmax(-1)], probabilities, names, text_pairs)


def load_for_prediction(adapter_dir: str | Path, base_model: str | None = None, device: str | None = None):
    """A saved adapter ready to classify, as the predict command loads it: persistence.load_adapter's model (the
    same checks). Returns (model, tokenizer)."""
    from .persistence import load_adapter

    model, tokenizer, _ = load_adapter(adapter_dir, base_model=base_model, device=device)
    return model, tokenizer


# --- Files ------------------------------------------------------------------------------------------------------

_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_EMPTY = pd.DataFrame()
_FILE_TYPES = (".csv", ".tsv", ".jsonl", ".parquet")


def _chunks(path: Path, chunk_size: int, columns: list[str] | None = None):
    """The file as DataFrames of at most `chunk_size` rows, read as written (CSV/TSV fields stay strings)."""
    suffix = path.suffix.lower()
    if suffix in _SEPARATORS:
        yield from pd.read_csv(path, sep=_SEPARATORS[suffix], dtype=str, keep_default_na=False, na_filter=False,
                               chunksize=chunk_size, usecols=columns, encoding="utf-8")
    elif suffix == ".jsonl":
        for chunk in pd.read_json(path, lines=True, dtype=False, chunksize=chunk_size, encoding="utf-8"):
            yield chunk if columns is None else chunk[columns]
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size, columns=columns):
            yield batch.to_pandas()


def _scan(path: Path, text_columns: list[str], chunk_size: int) -> int:
    """First pass, reading only the text column(s): the row count, or one error naming the empty rows."""
    rows, count, first = 0, 0, []
    try:
        columns = [str(c) for c in next(_chunks(path, 1), _EMPTY).columns]
        for name, flag in zip(text_columns, ("--text-column", "--text-pair-column")):
            if name not in columns:
                raise UserError(f"{path.name} has no column {name!r} (columns: {', '.join(columns) or 'none'}): "
                                f"pass {flag} with the text's column.")
        for chunk in _chunks(path, chunk_size, text_columns):
            bad = [rows + i for i, texts in enumerate(zip(*(chunk[c] for c in text_columns)))
                   if not all(isinstance(t, str) and t.strip() for t in texts)]
            count, first, rows = count + len(bad), (first + bad)[:5], rows + len(chunk)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 (bad byte at position {err.start}): re-save it as UTF-8.") from None
    except UserError:
        raise
    except Exception as err:  # pandas and pyarrow raise many types for malformed files
        raise UserError(f"could not read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if rows == 0:
        raise UserError(f"{path} holds no rows to classify.")
    if count:
        where = " or ".join(map(repr, text_columns))
        raise UserError(f"{path.name} has {count} empty text(s) in column {where} (data rows "
                        f"{', '.join(str(i + 1) for i in first)}{', ...' if count > len(first) else ''}): remove or "
                        "fill them; nothing was predicted.")
    return rows


def predict_file(model, tokenizer, input_path: str | Path, output_path: str | Path, text_column: str = "text",
                 chunk_size: int = 10_000, batch_size: int = 64, overwrite: bool = False,
                 text_pair_column: str | None = None) -> int:
    """Classify every row of a CSV/TSV/JSON Lines/Parquet file and write the input's columns plus
    `predicted_label` and one `p(<label>)` column per class, in the same format (`text_pair_column`: the second
    text of each pair, for a model trained on pairs). Reads and writes `chunk_size` rows
    at a time (memory does not grow with the file), sorts each chunk's texts by length for batching, and writes
    to a temporary file renamed into place at the end. Returns the number of rows."""
    import os
    import tempfile

    from tqdm.auto import tqdm

    from .persistence import make_shareable

    source, target = Path(input_path), Path(output_path)
    for path in (source, target):
        if path.suffix.lower() not in _FILE_TYPES:
            raise UserError(f"{path}: use a .csv, .tsv, .jsonl or .parquet file.")
    if not source.is_file():
        raise UserError(f"input file {source} does not exist.")
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists: pass --overwrite or choose another output file.")
    text_columns = [text_column] + ([text_pair_column] if text_pair_column else [])
    total = _scan(source, text_columns, chunk_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    writer, done = None, 0
    try:
        with tqdm(total=total, desc="Predicting", unit="row") as bar:
            for chunk in _chunks(source, chunk_size):
                pairs = list(chunk[text_pair_column]) if text_pair_column else None
                result = predict(model, tokenizer, list(chunk[text_column]), batch_size=batch_size, text_pairs=pairs)
                labels = [", ".join(x) if isinstance(x, list) else x for x in result.labels]
                chunk = chunk.assign(predicted_label=labels,
                                     **{f"p({n})": result.probabilities[:, i] for i, n in enumerate(result.label_names)})
                writer = _append(chunk, Path(tmp), target.suffix.lower(), writer, first=done == 0)
                done += len(chunk)
                bar.update(len(chunk))
        if writer is not None:
            writer.close()
        make_shareable(tmp)  # mkstemp creates the file private (0600); give it a plain write's permissions
        os.replace(tmp, target)
    except BaseException:
        if writer is not None:
            writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return done


def _append(chunk, path: Path, suffix: str, writer, first: bool):
    """Add a chunk to the output file; returns the Parquet writer (None for text formats)."""
    if suffix in _SEPARATORS:
        chunk.to_csv(path, sep=_SEPARATORS[suffix], index=False, header=first, mode="w" if first else "a")
    elif suffix == ".jsonl":
        with open(path, "w" if first else "a", encoding="utf-8") as f:
            f.write(chunk.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n") + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(chunk, preserve_index=False)
        writer = writer or pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table)
    return writer
