"""Loading, checking, subsetting and tokenizing text-classification data, from the Hub or local files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from .errors import UserError

HUB_DATASET = "cornell-movie-review-data/rotten_tomatoes"
LABEL_NAMES = ["neg", "pos"]
SPLITS = ("train", "validation", "test")
_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_rotten_tomatoes(data_dir: str | Path | None = None) -> DatasetDict:
    """Rotten Tomatoes with the Hub's exact splits: from the Hub, or rebuilt from the original rt-polarity files."""
    if data_dir is None:
        return load_dataset(HUB_DATASET)
    data_dir = Path(data_dir)
    pos, neg = (_read_lines(data_dir / f"rt-polarity.{kind}") for kind in ("pos", "neg"))
    if len(pos) != len(neg):
        raise UserError(f"{data_dir}: rt-polarity.pos has {len(pos)} lines but .neg has {len(neg)}; use the original files.")
    # The Hub loader's split rule (see the data folder's README): positives first in every split.
    i1, i2 = int(len(pos) * 0.8 + 0.5), int(len(pos) * 0.9 + 0.5)
    bounds = {"train": (0, i1), "validation": (i1, i2), "test": (i2, len(pos))}
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABEL_NAMES)})
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {"text": pos[a:b] + neg[a:b], "label": [1] * (b - a) + [0] * (b - a)}, features=features
            )
            for split, (a, b) in bounds.items()
        }
    )


def is_rotten_tomatoes_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "rt-polarity.pos").is_file() and (path / "rt-polarity.neg").is_file()


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path} is missing: data_dir must hold rt-polarity.pos and rt-polarity.neg.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # the original Cornell files are latin-1, as the Hub loader reads them
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_text_classification(
    path: str | Path, text_column: str = "text", label_column: str = "label", seed: int = 42
) -> DatasetDict:
    """A local CSV/JSON/Parquet file (split 80/10/10, stratified) or a folder of train/validation/test files."""
    path = Path(path)
    if path.is_file():
        data = DatasetDict({"train": _load_file(path)})
    elif path.is_dir():
        files = {split: _find_split_file(path, split) for split in SPLITS}
        if files["train"] is None:
            raise UserError(
                f"{path} holds no rt-polarity.pos/.neg and no train.csv/.json/.jsonl/.parquet: "
                "point data_dir at one of those, or at a single data file."
            )
        data = DatasetDict({split: _load_file(f) for split, f in files.items() if f is not None})
    else:
        raise UserError(f"data path {path} does not exist.")
    data = DatasetDict({split: _standardise(ds, split, text_column, label_column) for split, ds in data.items()})
    data = encode_labels(data)
    if set(data) != set(SPLITS):
        data = _split_missing(data, seed)
    return data


def _find_split_file(folder: Path, split: str) -> Path | None:
    for suffix in _FORMATS:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _load_file(path: Path) -> Dataset:
    builder = _FORMATS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .json, .jsonl or .parquet.")
    if builder != "parquet":
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(
                f"{path} is not UTF-8 (bad byte at position {err.start}): re-save it as UTF-8."
            ) from None
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types for malformed files
        if "corresponds to no data" in str(err):
            raise UserError(f"{path} holds no examples: add rows (a header alone is not enough).") from None
        raise UserError(f"could not read {path} as {builder}: {err}") from None


def _standardise(ds: Dataset, split: str, text_column: str, label_column: str) -> Dataset:
    missing = [c for c in (text_column, label_column) if c not in ds.column_names]
    if missing:
        raise UserError(
            f"{split} split has no column {missing[0]!r} (columns: {', '.join(ds.column_names)}); "
            "pass --text-column/--label-column (text_column/label_column) with the right names."
        )
    ds = ds.select_columns([text_column, label_column])
    renames = {old: new for old, new in ((text_column, "text"), (label_column, "label")) if old != new}
    return ds.rename_columns(renames) if renames else ds


def encode_labels(data: DatasetDict) -> DatasetDict:
    """Give every split the same ClassLabel, built from the train split's labels.

    String labels become class ids in sorted order; integer labels must already be 0..k-1.
    A label in validation/test that train never shows is an error: the model could not predict it.
    """
    train_labels = data["train"]["label"]
    if any(label is None for label in train_labels):
        raise UserError("train split has missing labels: every row needs a label.")
    if isinstance(data["train"].features["label"], ClassLabel):
        names = data["train"].features["label"].names
    elif all(isinstance(v, str) for v in train_labels):
        names = sorted(set(train_labels))
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in train_labels):
        values = sorted(set(train_labels))
        if values != list(range(len(values))):
            raise UserError(
                f"integer labels must be 0..k-1, found {values[:10]}: renumber them or use string label names."
            )
        names = [str(v) for v in values]
    else:
        raise UserError("labels must be all strings or all integers; found a mix or another type (e.g. floats).")
    if len(names) < 2:
        raise UserError(f"train split has only one label ({names}): classification needs at least two.")
    encoded = {}
    for split, ds in data.items():
        if isinstance(ds.features["label"], ClassLabel):
            if ds.features["label"].names != names:
                raise UserError(f"{split} split has labels {ds.features['label'].names}, train has {names}.")
            encoded[split] = ds
            continue
        unknown = sorted({str(v) for v in ds["label"]} - set(names))  # integer labels are named "0".."k-1"
        if unknown:
            raise UserError(
                f"{split} split has labels {unknown[:5]} that are not in the label set {names}: fix or drop those rows."
            )
        to_id = {name: i for i, name in enumerate(names)}
        features = Features({"text": ds.features["text"], "label": ClassLabel(names=names)})
        encoded[split] = ds.map(
            lambda batch: {"label": [to_id[str(v)] for v in batch["label"]]}, batched=True, features=features
        )
    return DatasetDict(encoded)


def _split_missing(data: DatasetDict, seed: int) -> DatasetDict:
    """Carve missing validation/test splits out of train (10% each, stratified)."""
    train = data["train"]
    out = {}
    for split in ("test", "validation"):
        if split in data:
            out[split] = data[split]
            continue
        if len(train) < 10:
            raise UserError(f"only {len(train)} rows: too few to carve out a {split} split; add rows or a {split} file.")
        parts = train.train_test_split(test_size=0.1 if split == "test" else 1 / 9, stratify_by_column="label", seed=seed)
        train, out[split] = parts["train"], parts["test"]
    return DatasetDict({"train": train, "validation": out["validation"], "test": out["test"]})


def load_data(data_dir: str | Path | None, text_column: str = "text", label_column: str = "label", seed: int = 42) -> DatasetDict:
    """The dataset a run asks for: Hub Rotten Tomatoes, local rt-polarity files, or a generic local dataset."""
    if data_dir is not None and not Path(data_dir).exists():
        raise UserError(f"data_dir {str(data_dir)!r} does not exist.")
    if data_dir is None or is_rotten_tomatoes_dir(data_dir):
        data = load_rotten_tomatoes(data_dir)
    else:
        data = load_text_classification(data_dir, text_column, label_column, seed)
    check_dataset(data)
    return data


def check_dataset(data: DatasetDict) -> None:
    """Refuse data a run would silently mistrain on: missing splits or columns, empty splits, empty texts."""
    for split in SPLITS:
        if split not in data:
            raise UserError(f"dataset has no {split!r} split (splits: {', '.join(data)}).")
        ds = data[split]
        for column in ("text", "label"):
            if column not in ds.column_names:
                raise UserError(f"{split} split has no {column!r} column (columns: {', '.join(ds.column_names)}).")
        if len(ds) == 0:
            raise UserError(f"{split} split is empty: it needs at least one example.")
        if not isinstance(ds.features["label"], ClassLabel):
            raise UserError(f"{split} split's label column is not a ClassLabel; load it with load_data() or encode_labels().")
        bad = [i for i, text in enumerate(ds["text"]) if not isinstance(text, str) or not text.strip()]
        if bad:
            raise UserError(
                f"{split} split has {len(bad)} empty or missing text(s) (first at row {bad[0]}): remove those rows."
            )


def label_balance(data: DatasetDict) -> pd.DataFrame:
    """Examples per label and split: a skewed split makes accuracy misleading."""
    names = label_names(data)
    counts = {split: [0] * len(names) for split in data}
    for split, ds in data.items():
        for label in ds["label"]:
            counts[split][label] += 1
    return pd.DataFrame(counts, index=names).rename_axis("label")


def label_names(data: DatasetDict) -> list[str]:
    return list(data["train"].features["label"].names)


def stratified_subset(ds: Dataset, size: int | None, seed: int, what: str = "split") -> Dataset:
    """A seeded subset with the same label balance as `ds`; None keeps everything."""
    if size is None or size == len(ds):
        return ds
    if size > len(ds):
        raise UserError(f"{what} asks for {size} examples but the split has {len(ds)}: use at most {len(ds)}, or None.")
    n_labels = len(set(ds["label"]))
    if size < n_labels:
        raise UserError(f"{what}={size} is smaller than the number of labels ({n_labels}): use at least {n_labels}.")
    return ds.train_test_split(train_size=size, stratify_by_column="label", seed=seed)["train"]


def subsample(data: DatasetDict, train_size: int | None, eval_size: int | None, seed: int) -> DatasetDict:
    """Apply a run's train_size/eval_size; validation is capped at its own size, test must be large enough."""
    return DatasetDict(
        {
            "train": stratified_subset(data["train"], train_size, seed, "train_size"),
            "validation": stratified_subset(
                data["validation"], None if eval_size is None else min(eval_size, len(data["validation"])), seed
            ),
            "test": stratified_subset(data["test"], eval_size, seed, "eval_size"),
        }
    )


def tokenize(data: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Truncate only; padding happens per batch in the collator (dynamic padding). Adds a `length` column
    so length-grouped sampling and length-sorted evaluation need no second pass."""
    if tokenizer.pad_token is None:
        raise UserError("the tokenizer has no pad token: call modeling.ensure_pad_token(tokenizer, model) first.")

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    return data.map(encode, batched=True, remove_columns=["text"], desc="Tokenizing")
