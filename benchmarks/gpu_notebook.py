"""Execute LightweightFineTuning.ipynb where no Jupyter kernel is installed (the borrowed GPU machines have PyTorch,
transformers and peft but no papermill, nbclient or ipykernel; nothing can be installed there beyond carried wheels).

    python benchmarks/gpu_notebook.py -p model FOLDER -p data_dir FOLDER -p train_size None ...

The code cells run in order in one namespace, as a kernel would run them: the parameters cell first, then the
given values (papermill's way), IPython magics (`%matplotlib`, `!pip`) left out, figures drawn off-screen. Each
cell's printed output and the value of its last expression are printed under the cell's number; the first error
stops the run with the cell's number (exit status 1). Where papermill is installed, prefer `make executed`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_value(text: str):
    """papermill's -p: a Python literal where it is one (None, 3, 1e-3, True), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def cell_source(cell: dict) -> str:
    lines = "".join(cell["source"]).splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def run_cell(source: str, namespace: dict) -> None:
    """exec the cell; like a kernel, show the value of a last bare expression (unless it ends with ';')."""
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body else None
    show = isinstance(last, ast.Expr) and not source.rstrip().endswith(";")
    if show:
        tree.body = tree.body[:-1]
    exec(compile(tree, "<cell>", "exec"), namespace)
    if show:
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
        if value is not None and not type(value).__module__.startswith("matplotlib"):
            print(value.data if hasattr(value, "data") and hasattr(value, "format") else value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--notebook", default=str(ROOT / "LightweightFineTuning.ipynb"))
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    cells = json.loads(Path(args.notebook).read_text())["cells"]
    overrides = "\n".join(f"{name} = {parse_value(value)!r}" for name, value in args.p)
    namespace: dict = {"__name__": "__main__", "display": print}  # IPython's display, as plain text
    start = time.perf_counter()
    for number, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = cell_source(cell)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source += "\n" + overrides
        if not source.strip():
            continue
        print(f"--- cell {number} ({time.perf_counter() - start:.0f} s)", flush=True)
        try:
            with contextlib.redirect_stderr(sys.stdout):
                run_cell(source, namespace)
        except BaseException as err:  # SystemExit from the environment check included
            print(f"cell {number} failed: {type(err).__name__}: {err}", flush=True)
            return 1
    print(f"--- all code cells ran in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
