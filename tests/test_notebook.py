"""The notebook runs top to bottom, offline, with injected parameters (tiny GPT-2, a small subset)."""

import json

import nbformat
import papermill

from conftest import ROOT

NOTEBOOK = ROOT / "LightweightFineTuning.ipynb"


def test_notebook_is_committed_clean_with_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("model", "data_dir", "train_size", "eval_size", "epochs", "output_dir", "seed"):
        assert f"\n{name} = " in "\n" + tagged[0].source


def test_notebook_executes_offline_with_tiny_gpt2(tiny_gpt2, rt_dir, tmp_path):
    out_nb, adapter = tmp_path / "executed.ipynb", tmp_path / "adapter"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out_nb), cwd=str(tmp_path), kernel_name="python3", progress_bar=False,
        parameters={"model": str(tiny_gpt2), "data_dir": str(rt_dir), "train_size": 64, "eval_size": 32,
                    "epochs": 1, "batch_size": 8, "output_dir": str(adapter), "seed": 1},
    )
    nb = nbformat.read(out_nb, as_version=4)
    text = "\n".join(
        o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images == 4  # confusion matrix, training curves, bar chart, both confusion matrices
    assert "largest logit difference, reloaded vs in memory" in text
    assert "Accuracy on 32 test reviews" in text
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "peft_helpers.json").is_file()
