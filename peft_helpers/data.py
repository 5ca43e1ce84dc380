"""Loading, checking, subsetting and tokenizing text-classification data, from the Hub or local files.

Rules (README, "Data"):
- every row of a local file is either used or refused with its file and row; nothing is dropped silently;
- text is read as text: an empty field is empty, `NA` or `null` is the word itself;
- labels are all integers (any values, sorted into ids), all booleans, or all names (sorted); a mix is refused;
  names for integer labels can come from a `classes.txt` beside the data;
- a missing validation or test split is carved out of train (stratified, seeded) and the carving is printed;
- the problem follows the labels (or `problem`): one label per text (ClassLabel), several (several 0/1 columns, or
  a column of lists: a list of ClassLabel ids) or a number (a float column with many distinct values: regression).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value, load_dataset

from .compat import network_errors
from .errors import UserError

HUB_DATASET = "cornell-movie-review-data/rotten_tomatoes"
LABEL_NAMES = ["neg", "pos"]
SPLITS = ("train", "validation", "test")
CARVE_FRACTION = 0.1  # of all rows, for each missing validation/test split
CLASS_NAMES_FILE = "classes.txt"
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
# What a run learns, in transformers' words (config.problem_type); RunConfig.problem names them for the user.
PROBLEMS = {"single-label": "single_label_classification", "multi-label": "multi_label_classification",
            "regression": "regression"}
# A float label column with at least this many distinct values is a regression target when the problem is "auto".
REGRESSION_MIN_VALUES = 20
_INTEGER = re.compile(r"[+-]?\d+")
_BOOLEANS = {"true": True, "false": False}


# --- Rotten Tomatoes ------------------------------------------------------------------------------------------


def load_rotten_tomatoes(data_dir: str | Path | None = None) -> DatasetDict:
    """Rotten Tomatoes with the Hub's exact splits: from the Hub, or rebuilt from the original rt-polarity files."""
    if data_dir is None:
        try:
            return load_dataset(HUB_DATASET)
        except network_errors() as err:
            raise UserError(
                f"the Hugging Face Hub is unreachable ({type(err).__name__}), so {HUB_DATASET} cannot be loaded: "
                "give local data with --data-dir (data_dir=...), e.g. a folder holding rt-polarity.pos/.neg."
            ) from None
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


# --- Datasets by name (the Hub, or local folders load_dataset / load_from_disk read) ----------------------------

LABEL_TEXT_COLUMNS = ("{label}_text", "label_text", "{label}_name", "label_name")  # names beside integer labels


def load_named_dataset(
    name: str,
    config: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    splits: dict[str, str] | None = None,
    seed: int = 42,
    problem: str = "auto",
) -> DatasetDict:
    """A dataset by name, through the same `datasets.load_dataset` call for a Hub id (e.g. "SetFit/bbc-news") and a
    local folder of data files (e.g. Parquet); a folder written by `save_to_disk` is read with `load_from_disk`.
    `splits` maps our split names to the dataset's (default: the same names). Missing validation/test splits are
    carved out of train. Label names come from the ClassLabel feature or a `label_text`-style column."""
    raw = _load_by_name(name, config)
    splits = {split: (splits or {}).get(split) or split for split in SPLITS}
    splits = {ours: theirs for ours, theirs in splits.items() if theirs != "none"}  # "none": carve it instead
    missing = [theirs for ours, theirs in splits.items() if ours == "train" or theirs != ours]
    unknown = [theirs for theirs in missing if theirs not in raw]
    if unknown:
        raise UserError(f"{name} has no split {unknown[0]!r} (splits: {', '.join(raw)}); name the split with "
                        "--train-split/--validation-split/--test-split.")
    parts = {ours: raw[theirs] for ours, theirs in splits.items() if theirs in raw}
    columns = [c for c in (*text_column.split("+"), label_column, text_pair_column) if c]
    for split, ds in parts.items():
        absent = [c for c in columns if c not in ds.column_names]
        if absent:
            raise UserError(f"{name} ({split} split) has no column {absent[0]!r} (columns: {', '.join(ds.column_names)}): "
                            "pass --text-column/--label-column/--text-pair-column with the right names.")
    names, ids, problem = _named_labels(parts, label_column, name, problem)
    text_columns = {split: text_column for split in parts}
    return carve_missing_splits(_assemble(parts, text_columns, text_pair_column, names, ids, problem), seed)


def _load_by_name(name: str, config: str | None) -> DatasetDict:
    from datasets import load_from_disk
    from datasets.exceptions import DatasetNotFoundError

    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
            raw = load_from_disk(str(path))
        else:
            raw = load_dataset(str(path) if path.is_dir() else name, config)
    except DatasetNotFoundError:
        raise UserError(f"dataset {name!r} was not found on the Hub or on disk: check the name (e.g. "
                        "'SetFit/bbc-news'), or give local files with --data-dir.") from None
    except ValueError as err:  # a missing or unknown config, with the available ones in the message
        raise UserError(f"dataset {name!r}: {str(err).splitlines()[0]} (--dataset-config)") from None
    except network_errors() as err:
        raise UserError(f"the Hugging Face Hub is unreachable ({type(err).__name__}), so dataset {name!r} cannot be "
                        "loaded: give local data with --data-dir, or a folder written by save_to_disk.") from None
    if isinstance(raw, Dataset):
        raw = DatasetDict({"train": raw})
    return raw


def _text(value) -> str:
    """A field as text: a missing value (None, NaN) becomes empty, so that the empty-text check refuses it."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _texts(rows, text_column: str) -> list[str]:
    """The text of each row (a DataFrame or a Dataset); several columns (--text-column title+description) are
    joined in order."""
    columns = [rows[c] for c in text_column.split("+")]
    if len(columns) == 1:
        return [_text(t) for t in columns[0]]
    return [" ".join(t for t in map(_text, row) if t.strip()) for row in zip(*columns)]


def label_feature(problem: str, names: list[str]):
    """The label column's feature: a ClassLabel, a list of ClassLabel ids (multi-label), or a float (regression)."""
    if problem == "regression":
        return Value("float32")
    return Sequence(ClassLabel(names=names)) if problem == "multi-label" else ClassLabel(names=names)


def _assemble(parts: dict, text_columns: dict[str, str], text_pair_column: str | None, names: list[str],
              ids: dict[str, list], problem: str = "single-label") -> DatasetDict:
    """Our splits (text, optional text_pair, label) from each source split's rows; `text_columns` gives
    each split's text column (headerless files are detected one by one)."""
    features = {"text": Value("string"), "label": label_feature(problem, names)}
    if text_pair_column:
        features["text_pair"] = Value("string")
    data = {}
    for split, rows in parts.items():
        columns = {"text": _texts(rows, text_columns[split]), "label": ids[split]}
        if text_pair_column:
            columns["text_pair"] = _texts(rows, text_pair_column)
        data[split] = Dataset.from_dict(columns, features=Features(features))
    return DatasetDict(data)


def _named_labels(parts: dict[str, Dataset], label_column: str, name: str,
                  problem: str = "auto") -> tuple[list[str], dict[str, list], str]:
    for split, ds in parts.items():
        values = ds[label_column]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise UserError(f"{name} ({split} split) has {len(missing)} missing label(s), first at row {missing[0] + 1}: "
                            "drop those rows or choose another --label-column.")
    feature = parts["train"].features[label_column]
    raw = {split: list(ds[label_column]) for split, ds in parts.items()}
    if isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel) and problem in ("auto", "multi-label"):
        return list(feature.feature.names), {s: [sorted(set(v)) for v in values] for s, values in raw.items()}, "multi-label"
    problem = detect_problem(raw["train"], problem)
    if problem != "single-label":
        names, ids = (_label_lists if problem == "multi-label" else _targets)(raw)
        return names, ids, problem
    if isinstance(feature, ClassLabel):
        for split, ds in parts.items():
            if ds.features[label_column] != feature:
                raise UserError(f"{name}: the {split} split's labels {ds.features[label_column]} differ from train's.")
        ids = {split: list(ds[label_column]) for split, ds in parts.items()}
        for split, values in ids.items():
            hidden = sum(v < 0 for v in values)
            if hidden:
                raise UserError(f"{name}: the {split} split has {hidden} unlabeled rows (label -1, e.g. a benchmark's "
                                f"hidden test labels): pass --{split}-split none to carve it from train, or name a "
                                "labeled split.")
        used = sorted(set(ids["train"]))
        unknown = {split: sorted(set(v) - set(used)) for split, v in ids.items()}
        for split, values in unknown.items():
            if values:
                raise UserError(f"{split} split has labels {[feature.names[v] for v in values[:5]]} that the train split "
                                f"never shows: fix or drop those rows.")
        return list(feature.names), ids, problem
    text_columns = [c.format(label=label_column) for c in LABEL_TEXT_COLUMNS]
    names_column = next((c for c in text_columns if c in parts["train"].column_names), None)
    names, ids = encode_label_values({split: list(ds[label_column]) for split, ds in parts.items()})
    if names_column is not None and all(_label_kind(v) == "integer" for v in parts["train"][label_column][:100]):
        pairs = {(str(int(v)), str(t)) for v, t in zip(parts["train"][label_column], parts["train"][names_column])}
        mapping = dict(pairs)
        if len(mapping) == len(pairs):  # one name per label value
            print(f"Label names from the {names_column!r} column.")
            names = [mapping.get(n, n) for n in names]
    return names, ids, problem


# --- Local files ----------------------------------------------------------------------------------------------


@dataclass
class Table:
    """One local file, read as the user sees it."""

    path: Path
    frame: pd.DataFrame  # every data row of the file, in file order
    header: bool  # whether the first line was a header (CSV/TSV)
    lines: list[int] | None = None  # the line each row starts on (CSV/TSV, where a quoted text can span lines)

    def where(self, i: int) -> str:
        """Row `i` (0-based, in file order) as the user finds it in an editor."""
        if self.lines is not None:
            return f"{self.path.name} data row {i + 1} (line {self.lines[i]})"
        if self.path.suffix.lower() == ".jsonl":
            return f"{self.path.name} line {i + 1}"
        return f"{self.path.name} row {i + 1}"


def load_text_classification(
    path: str | Path, text_column: str = "text", label_column: str = "label", seed: int = 42,
    text_pair_column: str | None = None, problem: str = "auto", splits: dict[str, str] | None = None,
) -> DatasetDict:
    """A local CSV/TSV(.txt)/JSON/JSONL/Parquet file (validation and test carved out of it, stratified), or a folder
    with a train file and optional validation/test files (missing ones are carved out of train). `splits` names
    the file of each split (e.g. {"test": "dev"} reads dev.tsv as the test split; "none" carves it). Several label
    columns (`label_column="anger,joy,..."`, each 0/1) or a column of lists make a multi-label dataset."""
    path = Path(path)
    names_of = {split: (splits or {}).get(split) or split for split in SPLITS}
    if path.is_file():
        files = {"train": path}
    elif path.is_dir():
        files = {split: f for split in SPLITS
                 if names_of[split] != "none" and (f := _find_split_file(path, names_of[split])) is not None}
        named = [name for split, name in names_of.items() if name not in (split, "none") and split not in files]
        if named:
            raise UserError(f"{path} holds no {named[0]}.csv/.tsv/.txt/.json/.jsonl/.parquet for the split named "
                            f"{named[0]!r}: check --train-split/--validation-split/--test-split.")
        if "train" not in files:
            # A folder holding a single data file under another name (AG News ships test.csv alone): use that file.
            # (.txt files count only by a split's name: a folder's readme.txt or classes.txt is not data)
            found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in _FORMATS
                           and f.suffix.lower() != ".txt")
            if len(found) != 1:
                raise UserError(
                    f"{path} holds no rt-polarity.pos/.neg and no train.csv/.tsv/.json/.jsonl/.parquet"
                    + (f" but {len(found)} data files ({', '.join(f.name for f in found[:5])})" if found else "")
                    + ": name one train.<ext> (and optional validation/test files), or point data_dir at a single file."
                )
            print(f"{path}: using its only data file, {found[0].name}, for all splits.")
            files = {"train": found[0]}
    else:
        raise UserError(f"data path {path} does not exist.")
    label_columns = label_column.split(",")
    tables = {split: _read_table(f, text_column, label_columns[0]) for split, f in files.items()}
    if len(label_columns) > 1:  # several 0/1 columns: multi-label
        columns = {split: (_columns(t, text_column, label_columns[0])[0], label_column) for split, t in tables.items()}
        for table in tables.values():
            for column in label_columns[1:]:  # every label column must exist
                _columns(table, text_column, column)
    else:
        columns = {split: _columns(t, text_column, label_column) for split, t in tables.items()}
    for split, table in tables.items():
        _check_rows(table, *columns[split])
        if text_pair_column is not None:
            if text_pair_column not in table.frame.columns:
                raise UserError(f"{table.path.name} has no column {text_pair_column!r} (columns: "
                                f"{', '.join(table.frame.columns)}): pass --text-pair-column with the right name.")
            _check_rows(table, text_pair_column, columns[split][1])
    frames = {split: table.frame for split, table in tables.items()}
    text_columns = {split: text for split, (text, _) in columns.items()}
    if len(label_columns) > 1:
        problem, (names, ids) = "multi-label", _label_columns(tables, label_columns)
    else:
        raw_labels = {split: list(table.frame[columns[split][1]]) for split, table in tables.items()}
        problem = detect_problem(raw_labels["train"], problem)
        if problem == "single-label":
            class_names = _class_names_file(path if path.is_dir() else path.parent)
            names, ids = encode_label_values(raw_labels, tables, class_names)
        else:
            names, ids = (_label_lists if problem == "multi-label" else _targets)(raw_labels, tables)
    return carve_missing_splits(_assemble(frames, text_columns, text_pair_column, names, ids, problem), seed)


def detect_problem(values: list, problem: str = "auto") -> str:
    """The problem a label column asks for: `problem` when given, otherwise multi-label for lists, regression for
    floats with many distinct values, single-label for the rest."""
    if problem != "auto":
        return problem
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in values[:100]):
        return "multi-label"
    kinds = {_label_kind(v) for v in values}
    if "float" in kinds and kinds <= {"float", "integer"} and len(set(map(str, values))) >= REGRESSION_MIN_VALUES:
        return "regression"
    return "single-label"


def _where(tables, split: str, i: int) -> str:
    return tables[split].where(i) if tables else f"{split} row {i + 1}"


def _label_columns(tables: dict[str, Table], columns: list[str]) -> tuple[list[str], dict[str, list[list[int]]]]:
    """Several 0/1 columns (one per label, e.g. SemEval's emotions): each row's list of the labels marked 1."""
    ids = {}
    for split, table in tables.items():
        rows = [[] for _ in range(len(table.frame))]
        for j, column in enumerate(columns):
            for i, value in enumerate(table.frame[column]):
                text = str(value).strip().lower()
                if text not in ("0", "1", "0.0", "1.0", "true", "false"):
                    raise UserError(f"multi-label column {column!r} holds {value!r} at {table.where(i)}: each label "
                                    "column must hold 0 or 1 (or true/false).")
                if text in ("1", "1.0", "true"):
                    rows[i].append(j)
        ids[split] = rows
    return list(columns), ids


def _label_lists(raw: dict[str, list], tables=None) -> tuple[list[str], dict[str, list[list[int]]]]:
    """A column of lists (JSON/Parquet), each naming the labels of its text; the train split defines the names."""
    for split, values in raw.items():
        for i, value in enumerate(values):
            if not isinstance(value, (list, tuple, np.ndarray)):
                raise UserError(f"multi-label needs a list of labels in every row, but {_where(tables, split, i)} "
                                f"holds {value!r}: write it as a list, e.g. [\"joy\"] or [].")
    names = sorted({str(v) for value in raw["train"] for v in value})
    if len(names) < 2:
        raise UserError(f"the train split's label lists name {len(names)} label(s): multi-label needs at least two.")
    index = {n: i for i, n in enumerate(names)}
    for split, values in raw.items():
        for i, value in enumerate(values):
            unknown = [str(v) for v in value if str(v) not in index]
            if unknown:
                raise UserError(f"{_where(tables, split, i)} names label {unknown[0]!r}, which the train split never "
                                f"shows (labels: {', '.join(names[:20])}): fix or drop that row.")
    return names, {split: [sorted({index[str(v)] for v in value}) for value in values] for split, values in raw.items()}


def _targets(raw: dict[str, list], tables=None) -> tuple[list[str], dict[str, list[float]]]:
    """Regression targets: every value a number; the train split's must vary."""
    out = {}
    for split, values in raw.items():
        targets = []
        for i, value in enumerate(values):
            try:
                number = float(str(value).strip())
            except ValueError:
                number = float("nan")
            if not np.isfinite(number):
                raise UserError(f"regression target {value!r} at {_where(tables, split, i)} is not a number: every "
                                "label must be one (e.g. 3.8).")
            targets.append(number)
        out[split] = targets
    if len(set(out["train"])) < 2:
        raise UserError(f"the train split's regression target is constant ({out['train'][0]:g}): there is nothing to "
                        "learn; is it the right --label-column?")
    return ["score"], out


def _find_split_file(folder: Path, split: str) -> Path | None:
    for suffix in _FORMATS:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_table(path: Path, text_column: str, label_column: str) -> Table:
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet.")
    if kind == "parquet":
        table = Table(path, pd.read_parquet(path), header=True)
    else:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark at the start is not part of the first column's name
        except UnicodeDecodeError as err:
            raise UserError(f"{path} is not UTF-8 (bad byte at position {err.start}): re-save it as UTF-8.") from None
        if not text.strip():
            raise UserError(f"{path} holds no examples: add rows.")
        if kind in ("csv", "tsv"):
            table = _read_delimited(path, text, "," if kind == "csv" else "\t", {text_column, label_column})
        else:
            try:
                frame = pd.read_json(io.StringIO(text), lines=kind == "jsonl" or _looks_like_json_lines(text), dtype=False,
                                     convert_dates=False)
            except ValueError as err:
                raise UserError(f"could not read {path} as {kind}: {str(err).splitlines()[0]}") from None
            table = Table(path, frame, header=True)
    if len(table.frame) == 0:
        raise UserError(f"{path} holds no examples: add rows (a header alone is not enough).")
    table.frame.columns = [str(c) for c in table.frame.columns]
    table.frame = table.frame.reset_index(drop=True)
    return table


def _read_delimited(path: Path, text: str, sep: str, expected: set[str]) -> Table:
    """CSV/TSV with Python's csv module: every field is a string, exactly as written (no missing-value guessing,
    the same on every pandas version), quoted fields may span lines, and each row keeps the line it starts on.
    A tab-separated file whose rows only line up with quotes read as text (GLUE's STS-B: a sentence may start
    with a quote it never closes) is read so."""
    try:
        return _read_records(path, text, sep, expected, csv.QUOTE_MINIMAL)
    except UserError:
        if sep != "\t":
            raise
        return _read_records(path, text, sep, expected, csv.QUOTE_NONE)


def _read_records(path: Path, text: str, sep: str, expected: set[str], quoting: int) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    records, lines, previous = [], [], 0
    try:
        for record in reader:
            if record:  # a blank line is not a row
                records.append(record)
                lines.append(previous + 1)
            previous = reader.line_num
    except csv.Error as err:
        raise UserError(f"could not read {path.name} near line {reader.line_num}: {err}") from None
    header = _has_header(records[0], text, sep, expected)
    names = records[0] if header else [str(i) for i in range(len(records[0]))]
    body, body_lines = (records[1:], lines[1:]) if header else (records, lines)
    for record, line in zip(body, body_lines):
        if len(record) != len(names):
            raise UserError(f"{path.name} line {line} has {len(record)} fields but the {'header' if header else 'first row'} "
                            f"has {len(names)}: quote texts that contain {'a comma' if sep == ',' else 'a tab'}.")
    return Table(path, pd.DataFrame(body, columns=names, dtype=object), header, body_lines)


def _looks_like_json_lines(text: str) -> bool:
    return not text.lstrip().startswith("[")


def _has_header(first: list[str], text: str, sep: str, expected: set[str]) -> bool:
    """A header when the first row names an expected column, otherwise as the csv module's sniffer judges
    (a first row whose cells look like the data below them is data: e.g. AG News starts with `"3","Fears..."`)."""
    if expected & {cell.strip() for cell in first}:
        return True
    try:
        return csv.Sniffer().has_header("\n".join(text.splitlines()[:50]))
    except csv.Error:
        return True


def _columns(table: Table, text_column: str, label_column: str) -> tuple[str, str]:
    """The text and label columns: the named ones, or, in a file without a header, detected (printed)."""
    columns = list(table.frame.columns)
    wanted = [*text_column.split("+"), label_column]
    if all(c in columns for c in wanted):
        return text_column, label_column
    if table.header:
        missing = next(c for c in wanted if c not in columns)
        raise UserError(
            f"{table.path.name} has no column {missing!r} (columns: {', '.join(columns)}); "
            "pass --text-column/--label-column (text_column/label_column) with the right names."
        )
    label, texts = _detect_columns(table.frame)
    text = "+".join(texts)
    what = f"column {text} as text" if len(texts) == 1 else f"columns {', '.join(texts)} joined as text"
    print(f"{table.path.name}: no header row; using column {label} as labels and {what} (by position, counting "
          f"from 0; override with --label-column/--text-column, e.g. --text-column {texts[-1]})")
    return text, label


def _detect_columns(frame: pd.DataFrame) -> tuple[str, list[str]]:
    """(label, text columns) of a headerless file: labels are the column with fewest distinct values; the text is
    every other column whose values are not numbers, in order (AG News: title and description)."""
    if frame.shape[1] < 2:
        raise UserError("a headerless file needs at least two columns (label and text).")
    distinct = {c: frame[c].nunique() for c in frame.columns}
    label = min(frame.columns, key=lambda c: (distinct[c], list(frame.columns).index(c)))
    texts = [c for c in frame.columns if c != label and not all(_label_kind(v) in ("integer", "float") for v in frame[c][:100])]
    if not texts:
        raise UserError("a headerless file needs a text column: none of its columns holds text.")
    return label, texts


def _check_rows(table: Table, text_column: str, label_column: str) -> None:
    """Refuse empty texts and missing labels, naming the file, the first row and the count."""
    checks = [(text_column, "empty or missing text(s)"), *((c, "missing label(s)") for c in label_column.split(","))]
    for column, what in checks:
        empty = [i for i, v in enumerate(_texts(table.frame, column)) if not v.strip()]
        if empty:
            raise UserError(f"{table.path.name} has {len(empty)} {what}, first at {table.where(empty[0])}: "
                            "fill in or remove those rows.")


def _class_names_file(folder: Path) -> list[str] | None:
    file = folder / CLASS_NAMES_FILE
    if not file.is_file():
        return None
    names = [line.strip() for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return names or None


def _label_kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, np.integer)):
        return "integer"
    if isinstance(value, (float, np.floating)):
        return "integer" if float(value).is_integer() else "float"
    text = str(value).strip()
    if _INTEGER.fullmatch(text):
        return "integer"
    if text.lower() in _BOOLEANS:
        return "boolean"
    try:
        float(text)
        return "float"
    except ValueError:
        return "name"


def _label_value(value, kind: str):
    if kind == "integer":
        return int(float(value)) if not isinstance(value, str) else int(value.strip())
    if kind == "boolean":
        return bool(value) if not isinstance(value, str) else _BOOLEANS[value.strip().lower()]
    return str(value)


def encode_label_values(
    raw: dict[str, list], tables: dict[str, Table] | None = None, class_names: list[str] | None = None
) -> tuple[list[str], dict[str, list[int]]]:
    """(label names, ids per split) from raw label values. The train split defines the label set."""
    kinds = {}
    for split, values in raw.items():
        for i, value in enumerate(values):
            kind = _label_kind(value)
            if kind == "float":
                where = tables[split].where(i) if tables else f"{split} row {i + 1}"
                raise UserError(f"label {value!r} at {where} is a fractional number: class labels must be whole "
                                "numbers, true/false, or names; for a number to predict pass --problem regression.")
            kinds.setdefault(kind, (split, i, value))
    if len(kinds) > 1:
        examples = ", ".join(f"{value!r} ({kind})" for kind, (_, _, value) in kinds.items())
        raise UserError(f"labels mix kinds: {examples}; use all numbers, all true/false, or all names.")
    kind = next(iter(kinds))
    values = {split: [_label_value(v, kind) for v in vals] for split, vals in raw.items()}
    train_values = sorted(set(values["train"]))
    if len(train_values) < 2:
        raise UserError(f"train split has only one label ({train_values}): classification needs at least two.")
    if len(train_values) > 1000:
        raise UserError(f"the label column has {len(train_values)} distinct values: is it the right column? "
                        "Pass --label-column with the column that holds the classes.")
    for split, vals in values.items():
        unknown = sorted(set(vals) - set(train_values), key=str)
        if unknown:
            raise UserError(f"{split} split has labels {unknown[:5]} that are not in the train split's label set "
                            f"{train_values[:20]}: fix or drop those rows.")
    names = [str(v).lower() if kind == "boolean" else str(v) for v in train_values]
    if class_names is not None and kind == "integer":
        names = _apply_class_names(train_values, class_names)
    to_id = {v: i for i, v in enumerate(train_values)}
    return names, {split: [to_id[v] for v in vals] for split, vals in values.items()}


def _apply_class_names(values: list[int], class_names: list[str]) -> list[str]:
    """classes.txt lists one name per line, for labels numbered from 1 (AG News) or from 0."""
    for first in (1, 0):
        if all(first <= v < first + len(class_names) for v in values):
            names = [class_names[v - first] for v in values]
            print(f"{CLASS_NAMES_FILE}: label {values[0]} = {names[0]!r}, ..., {values[-1]} = {names[-1]!r}")
            return names
    raise UserError(f"{CLASS_NAMES_FILE} has {len(class_names)} names but the labels are {values[:10]}: "
                    "it needs one line per class, for labels numbered from 0 or from 1.")


# --- Splits and subsets ---------------------------------------------------------------------------------------


def stratified_indices(labels, size: int, seed: int, every_label: bool = False) -> np.ndarray:
    """`size` row indices drawn at random (seeded) with each label's share of `labels` (largest remainder).

    Written out rather than taken from scikit-learn/datasets' `train_test_split(stratify=...)`, which refuses a
    label seen once and a remainder smaller than the number of labels (e.g. 8,529 of 8,530 rows).
    `every_label` gives each label at least one row (a training subset must show every class)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(int)
    if every_label:
        take = np.maximum(take, 1)
        while take.sum() > size:  # give back a row from the label furthest above its share (keeping one)
            take[np.argmax(np.where(take > 1, take - exact, -np.inf))] -= 1
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return rng.permutation(np.concatenate(chosen))


def _strata(ds: Dataset):
    """What subsets keep the balance of: the class of each row; multi-label and regression rows are one stratum
    (a plain seeded random draw)."""
    return ds["label"] if isinstance(ds.features["label"], ClassLabel) else np.zeros(len(ds), dtype=int)


def _split_off(ds: Dataset, size: int, seed: int) -> tuple[Dataset, Dataset]:
    """(rest, part): `size` rows taken out of `ds`, stratified by label."""
    part = stratified_indices(_strata(ds), size, seed)
    rest = np.setdiff1d(np.arange(len(ds)), part)
    return ds.select(rest), ds.select(np.sort(part))


def carve_missing_splits(data: DatasetDict, seed: int) -> DatasetDict:
    """Make missing validation/test splits from train: CARVE_FRACTION of the rows each, stratified and seeded.
    Prints what was carved, so the user sees that the splits were made and not found."""
    train, out = data["train"], dict(data)
    missing = [split for split in ("test", "validation") if split not in data]
    total = len(train)
    for split in missing:
        size = max(1, round(CARVE_FRACTION * total))
        if len(train) - size < 2:
            raise UserError(f"only {total} rows: too few to carve out a {split} split; add rows or a {split} file.")
        train, out[split] = _split_off(train, size, seed)
    how = "stratified, " if isinstance(train.features["label"], ClassLabel) else ""
    if missing:
        print(f"No {' or '.join(missing)} split given: carved {', '.join(f'{s} {len(out[s]):,}' for s in missing)} "
              f"rows out of {total:,} training rows ({how}seed {seed}); train keeps {len(train):,}.")
    out["train"] = train
    return DatasetDict({split: out[split] for split in SPLITS})


def load_data(
    data_dir: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 42,
    *,
    dataset: str | None = None,
    dataset_config: str | None = None,
    text_pair_column: str | None = None,
    splits: dict[str, str] | None = None,
    problem: str = "auto",
) -> DatasetDict:
    """The dataset a run asks for: a dataset by name (`dataset`: Hub id or local folder), local files
    (`data_dir`: rt-polarity files or CSV/TSV/JSON/JSONL/Parquet), or by default the Hub's Rotten Tomatoes."""
    if dataset is not None and data_dir is not None:
        raise UserError("give either dataset (a Hub name) or data_dir (local files), not both.")
    if data_dir is not None and not Path(data_dir).exists():
        raise UserError(f"data_dir {str(data_dir)!r} does not exist.")
    if dataset is not None:
        data = load_named_dataset(dataset, dataset_config, text_column, label_column, text_pair_column, splits, seed,
                                  problem)
    elif data_dir is None or is_rotten_tomatoes_dir(data_dir):
        data = load_rotten_tomatoes(data_dir)
    else:
        data = load_text_classification(data_dir, text_column, label_column, seed, text_pair_column, problem, splits)
    check_dataset(data)
    return data


def load_run_data(cfg, loaded: DatasetDict | None = None) -> DatasetDict:
    """The data of a run (`config.RunConfig`), checked and subset as configured: what the command line and the
    notebook use. `loaded`: the Hub's Rotten Tomatoes as the notebook loads it with load_dataset; otherwise the
    data cfg names is loaded here."""
    if loaded is not None:
        check_dataset(loaded)
        data = loaded
    else:
        data = load_data(cfg.data_dir, cfg.text_column, cfg.label_column, cfg.seed, dataset=cfg.dataset,
                         dataset_config=cfg.dataset_config, text_pair_column=cfg.text_pair_column,
                         splits={"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split},
                         problem=cfg.problem)
    return subsample(data, cfg.train_size, cfg.eval_size, cfg.seed)


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
        if problem_of(ds) is None:
            raise UserError(f"{split} split's label column is not a ClassLabel, a list of ClassLabel ids or a float; "
                            "load it with load_data().")
        bad = [i for i, text in enumerate(ds["text"]) if not isinstance(text, str) or not text.strip()]
        if bad:
            raise UserError(
                f"{split} split has {len(bad)} empty or missing text(s) (first at row {bad[0] + 1}): remove those rows."
            )


def problem_of(ds: Dataset) -> str | None:
    """single-label, multi-label or regression, from the label column's feature (None: none of them)."""
    feature = ds.features["label"]
    if isinstance(feature, ClassLabel):
        return "single-label"
    if isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
        return "multi-label"
    if isinstance(feature, Value) and feature.dtype.startswith("float"):
        return "regression"
    return None


def label_names(data: DatasetDict) -> list[str]:
    """The class names (single- and multi-label), or ["score"] for regression (one output)."""
    feature = data["train"].features["label"]
    if isinstance(feature, Sequence):
        feature = feature.feature
    return list(feature.names) if isinstance(feature, ClassLabel) else ["score"]


def stratified_subset(ds: Dataset, size: int | None, seed: int, what: str = "split") -> Dataset:
    """A seeded subset with the same label balance as `ds` (every label kept); None keeps everything."""
    if size is None or size == len(ds):
        return ds
    if size > len(ds):
        raise UserError(f"{what} asks for {size} examples but the split has {len(ds)}: use at most {len(ds)}, or None.")
    n_labels = len(set(_strata(ds)))
    if size < n_labels:
        raise UserError(f"{what}={size} is smaller than the number of labels ({n_labels}): use at least {n_labels}.")
    return ds.select(stratified_indices(_strata(ds), size, seed, every_label=True))


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


TRUNCATION = ("head", "tail", "head+tail")


def tokenize(data: DatasetDict, tokenizer, max_length: int, truncation: str = "head") -> DatasetDict:
    """Truncate only; padding happens per batch in the collator (dynamic padding). Adds a `length` column
    so length-grouped sampling and length-sorted evaluation need no second pass.

    `truncation` says which tokens a text longer than max_length keeps: "head" the first ones, "tail" the last
    ones, "head+tail" the first quarter and the last three quarters of the budget (Sun et al. 2019, "How to
    Fine-Tune BERT for Text Classification?", found head+tail best for long reviews). A text pair
    (`text_pair` column) is truncated longest-first from the chosen side."""
    if tokenizer.pad_token is None:
        raise UserError("the tokenizer has no pad token: call modeling.ensure_pad_token(tokenizer, model) first.")
    if truncation not in TRUNCATION:
        raise UserError(f"truncation={truncation!r}: use one of {', '.join(TRUNCATION)}.")
    pairs = "text_pair" in next(iter(data.values())).column_names
    if pairs and truncation == "head+tail":
        raise UserError("head+tail truncation works on single texts: use head or tail with a text pair column.")

    def encode(batch):
        texts = batch["text"] if truncation != "head+tail" else _head_and_tail(batch["text"], tokenizer, max_length)
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "left" if truncation == "tail" else "right"
        try:
            enc = tokenizer(texts, batch["text_pair"] if pairs else None, truncation=True, max_length=max_length)
        finally:
            tokenizer.truncation_side = side
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        if multi_hot is not None:  # BCE wants one 0/1 float per label
            enc["label"] = [[float(i in set(ids)) for i in range(multi_hot)] for ids in batch["label"]]
        return enc

    first = next(iter(data.values()))
    multi_hot = len(first.features["label"].feature.names) if problem_of(first) == "multi-label" else None
    drop = ["text", "text_pair"] if pairs else ["text"]
    features = None
    if multi_hot is not None:
        features = first.features.copy()
        features["label"] = Sequence(Value("float32"), length=multi_hot)
    out = data.map(encode, batched=True, remove_columns=drop, desc="Tokenizing")
    return out if features is None else out.cast_column("label", features["label"])


def _special_tokens(tokenizer) -> int:
    return len(tokenizer("a")["input_ids"]) - len(tokenizer("a", add_special_tokens=False)["input_ids"])


def _head_and_tail(texts: list[str], tokenizer, max_length: int) -> list[str]:
    """Cut each too-long text to its first and last tokens, at the tokens' character offsets (so it works with
    every tokenizer version); the caller re-tokenizes with truncation as a guard for the seam."""
    budget = max_length - _special_tokens(tokenizer)
    head = budget // 4
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        if len(offsets) <= budget:
            out.append(text)
        else:
            head_text = text[: offsets[head - 1][1]] if head else ""
            tail_text = text[offsets[len(offsets) - (budget - head)][0] :]
            # Byte-level BPE (GPT-2) counts the space before a word as part of its token: add one only if missing.
            joint = "" if not head_text or tail_text[:1].isspace() or head_text[-1:].isspace() else " "
            out.append(head_text + joint + tail_text)
    return out


def truncation_summary(data: DatasetDict, tokenizer, max_length: int) -> pd.DataFrame:
    """Per split: how many texts max_length truncates, by how many tokens on average, and the longest text."""
    rows = {}
    for split, ds in data.items():
        pairs = ds["text_pair"] if "text_pair" in ds.column_names else None
        lengths = np.array([len(ids) for ids in tokenizer(list(ds["text"]), list(pairs) if pairs else None)["input_ids"]])
        cut = lengths[lengths > max_length] - max_length
        rows[split] = {"examples": len(lengths), "truncated": len(cut), "mean tokens cut": float(cut.mean()) if len(cut) else 0.0,
                       "longest": int(lengths.max())}
    return pd.DataFrame.from_dict(rows, orient="index")
