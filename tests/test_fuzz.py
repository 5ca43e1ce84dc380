"""Bad-input fuzzing: generated CSV/TSV/JSON Lines files through the real loading path and the command line.
Every file either loads with exactly its rows accounted for, or gives one `error:` line and exit status 2.
Never a traceback, never a silent drop."""

import csv
import io
import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from peft_helpers.cli import main
from peft_helpers.data import load_data

CASES = 300  # generated files per run (README, "Bad input and failure cases")

ODD_TEXTS = ["", "  ", "NA", "null", "None", "nan", '"quoted"', "a,b", "line\nbreak", "tab\there", "ÿ café ☃", "\r", "\r\n"]
LABEL_SETS = [["pos", "neg"], ["pos", "neg", "neutral"], ["0", "1"], ["1", "2", "5"], ["-1", "1"], ["true", "false"]]
ODD_LABELS = ["", " ", "NA", "2.5", "1e3", "pos", "1", "TRUE"]


@st.composite
def rows(draw):
    """Mostly well-formed files (one label set, real-looking texts) with a few odd rows mixed in, so both the
    loading and the refusing paths are exercised."""
    label_set = draw(st.sampled_from(LABEL_SETS))
    # No NUL: Python 3.10's csv writer cannot write it ("need to escape"), so no such file is made by it.
    good_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30).filter(lambda t: t.strip())
    data = draw(st.lists(st.tuples(good_text, st.sampled_from(label_set)), min_size=0, max_size=40))
    odd = st.tuples(st.one_of(good_text, st.sampled_from(ODD_TEXTS)), st.one_of(st.sampled_from(label_set), st.sampled_from(ODD_LABELS)))
    for row in draw(st.lists(odd, max_size=2)):
        data.insert(draw(st.integers(0, len(data))), row)
    return data


def _write(tmp_path, fmt: str, data: list[tuple[str, str]], bom: bool):
    if fmt == "jsonl":
        body = "\n".join(json.dumps({"text": t, "label": lab}) for t, lab in data)
    else:
        buffer = io.StringIO()
        # "\r\n" (the csv module's default) makes the writer quote every field holding \r or \n; with "\n" a bare \r
        # would be written unquoted, and any reader would take it for a line break.
        writer = csv.writer(buffer, delimiter="," if fmt == "csv" else "\t", lineterminator="\r\n")
        writer.writerow(["text", "label"])
        writer.writerows(data)
        body = buffer.getvalue()
    path = tmp_path / f"data.{fmt}"
    path.write_bytes((("\ufeff" if bom else "") + body).encode("utf-8"))
    return path


@settings(max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["csv", "tsv", "jsonl"]), data=rows(), bom=st.booleans())
def test_generated_files_load_exactly_or_fail_in_one_line(tmp_path, capsys, fmt, data, bom):
    path = _write(tmp_path, fmt, data, bom)
    capsys.readouterr()
    status = main(["data", "--data-dir", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if status == 0:
        total = next(line for line in out.splitlines() if line.endswith(" in all"))
        assert int(total.split("; ")[1].split()[0].replace(",", "")) == len(data), (out, data)
        loaded = load_data(path)
        assert sorted(t for split in loaded.values() for t in split["text"]) == sorted(t for t, _ in data)
        event("loaded")
    else:
        assert status == 2
        lines = [line for line in err.strip().splitlines() if line]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        event("refused: " + " ".join(w for w in lines[0][7:].split()[:6] if "/" not in w and "data." not in w))
