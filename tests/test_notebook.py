"""The notebook runs top to bottom, offline, with injected parameters (tiny GPT-2, a small subset), spells out
the library calls the rubric grades, and trains exactly what the command line trains."""

import json
import subprocess
import sys

import nbformat
import papermill
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

NOTEBOOK = ROOT / "LightweightFineTuning.ipynb"
SETTINGS = {"train_size": 64, "eval_size": 32, "epochs": 1, "batch_size": 8, "seed": 1}


def _code() -> str:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_notebook_is_committed_clean_with_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("model", "data_dir", "train_size", "eval_size", "epochs", "output_dir", "seed", "method"):
        assert f"\n{name} = " in "\n" + tagged[0].source


@pytest.mark.parametrize("call", [
    'load_dataset("rotten_tomatoes")', "AutoTokenizer.from_pretrained(", "AutoModelForSequenceClassification.from_pretrained(",
    "peft_config = LoraConfig(\n    task_type=TaskType.SEQ_CLS,", "lora_alpha=cfg.alpha", "lora_dropout=cfg.dropout",
    "target_modules=targets", "fan_in_fan_out=", "modules_to_save=[", "get_peft_model(base_model, peft_config)",
    "peft_model.print_trainable_parameters()", "args = TrainingArguments(", "num_train_epochs=cfg.epochs",
    "trainer = Trainer(\n    model=peft_model,", "data_collator=DataCollatorWithPadding(tokenizer)",
    "compute_metrics=compute_metrics", "trainer.train()", "peft_model.save_pretrained(folder)",
    "AutoPeftModelForSequenceClassification.from_pretrained(",
])
def test_notebook_spells_out_the_graded_calls(call):
    assert call in _code()


def test_notebook_is_short_and_imports_few_helpers():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert len(nb.cells) <= 35
    imported = [name for line in _code().splitlines() if line.startswith("from peft_helpers")
                for name in line.split(" import ")[1].split(",")]
    assert len(imported) <= 16, imported


@pytest.fixture(scope="module")
def notebook_run(tiny_gpt2, rt_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("notebook")
    out_nb, adapter = tmp_path / "executed.ipynb", tmp_path / "adapter"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out_nb), cwd=str(tmp_path), kernel_name="python3", progress_bar=False,
        parameters={"model": str(tiny_gpt2), "data_dir": str(rt_dir), "output_dir": str(adapter), **SETTINGS,
                    "search_trials": 2},  # the optional search of section 12, two trials
    )
    return nbformat.read(out_nb, as_version=4), adapter


@pytest.mark.e2e
@pytest.mark.core
def test_notebook_executes_offline_with_tiny_gpt2(notebook_run):
    nb, adapter = notebook_run
    text = "\n".join(
        o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images == 2  # training curves; bars and both confusion matrices
    assert "largest logit difference, reloaded vs in memory" in text
    assert "Accuracy on 32 test reviews" in text
    assert "trainable params:" in text  # print_trainable_parameters()
    assert "test accuracy: best trial" in text and (adapter.parent / "adapter-search" / "best").is_dir()
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "peft_helpers.json").is_file()


@pytest.mark.e2e
@pytest.mark.core
def test_notebook_and_command_line_train_the_same_adapter(notebook_run, tiny_gpt2, rt_dir, tmp_path):
    """No drift: the notebook's written-out LoraConfig/TrainingArguments/Trainer and `python -m peft_helpers run`
    with the same settings give the same adapter config, training arguments, batches and weights."""
    _, notebook_adapter = notebook_run
    cli_adapter = tmp_path / "cli-adapter"
    cli_run(tiny_gpt2, rt_dir, cli_adapter, tmp_path, SETTINGS)
    configs = [json.loads((a / "adapter_config.json").read_text()) for a in (notebook_adapter, cli_adapter)]
    assert configs[0] == configs[1]
    meta = [json.loads((a / "peft_helpers.json").read_text()) for a in (notebook_adapter, cli_adapter)]
    assert meta[0]["training_arguments"] == meta[1]["training_arguments"]
    assert meta[0]["training_arguments"]["trainer"] == "Trainer"  # the stock one
    assert meta[0]["training_arguments"]["eval_strategy"] == "steps"  # validated a few times: a curve
    assert meta[0]["training_arguments"]["data_collator"] == "DataCollatorWithPadding"
    cfg = [{k: v for k, v in m["config"].items() if k not in ("output_dir", "checkpoint_dir")} for m in meta]
    assert cfg[0] == cfg[1]
    weights = [load_file(str(a / "adapter_model.safetensors")) for a in (notebook_adapter, cli_adapter)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert (weights[0][key] == weights[1][key]).all(), key
    assert meta[0]["metrics"] == meta[1]["metrics"]


def cli_run(model, rt_dir, out, cwd, settings: dict) -> None:
    flags = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    proc = subprocess.run([sys.executable, "-m", "peft_helpers", "run", "--model", str(model), "--data-dir",
                           str(rt_dir), "--output-dir", str(out), *flags], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["pissa", "adalora", "prompt_tuning"])
def test_notebook_trains_other_methods_as_the_command_line_does(method, tiny_gpt2, rt_dir, tmp_path):
    """method= in the parameters: the three methods with their own steps (PiSSA's initial adapter and conversion,
    AdaLoRA's schedule and budget callback, prompt tuning's left padding and learning rate) give the same adapter
    as `run --method`, and the notebook's stock AutoPeft reload reproduces it."""
    settings = {**SETTINGS, "method": method}
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"), cwd=str(tmp_path), kernel_name="python3", progress_bar=False,
        parameters={"model": str(tiny_gpt2), "data_dir": str(rt_dir), "output_dir": str(tmp_path / "nb"), **settings},
    )
    cli_run(tiny_gpt2, rt_dir, tmp_path / "cli", tmp_path, settings)
    adapters = [tmp_path / "nb", tmp_path / "cli"]
    configs = [json.loads((a / "adapter_config.json").read_text()) for a in adapters]
    assert configs[0] == configs[1] and configs[0]["peft_type"] == {"pissa": "LORA", "adalora": "ADALORA"}.get(method, "PROMPT_TUNING")
    weights = [load_file(str(a / "adapter_model.safetensors")) for a in adapters]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert (weights[0][key] == weights[1][key]).all(), key
    meta = [json.loads((a / "peft_helpers.json").read_text()) for a in adapters]
    assert meta[0]["metrics"] == meta[1]["metrics"] and meta[0]["config"]["method"] == method


@pytest.mark.e2e
def test_executed_copy_is_stamped_with_how_it_was_made(notebook_run, tmp_path):
    nb, _ = notebook_run
    copy = tmp_path / "copy.ipynb"
    nbformat.write(nb, copy)
    for _ in range(2):  # stamping twice replaces the stamp instead of adding another
        subprocess.run([sys.executable, str(ROOT / "tools" / "stamp_executed.py"), str(copy), "--model", "tiny",
                        "--data-dir", "somewhere"], check=True)
    cells = nbformat.read(copy, as_version=4).cells
    assert cells[0].source.startswith("**Executed copy**") and '`model="tiny"`' in cells[0].source
    if not torch.cuda.is_available():  # the machine line names the CPU's vector instructions, as bench.py's does
        from peft_helpers.hardware import cpu_description

        assert f"CPU cores ({cpu_description()}), no GPU" in cells[0].source
    assert not cells[1].source.startswith("**Executed copy**") and len(cells) == len(nb.cells) + 1


@pytest.mark.e2e
def test_notebook_runs_on_the_ag_news_folder_with_its_four_names(tiny_gpt2, tmp_path):
    """A headerless four-class CSV with classes.txt, given as nothing but its folder."""
    from conftest import SHARED

    out_nb = tmp_path / "ag.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out_nb), cwd=str(tmp_path), kernel_name="python3", progress_bar=False,
        parameters={"model": str(tiny_gpt2), "data_dir": str(SHARED / "data" / "ag_news"), "output_dir": str(tmp_path / "a"),
                    "train_size": 64, "eval_size": 32, "epochs": 1, "batch_size": 8},
    )
    meta = json.loads((tmp_path / "a" / "peft_helpers.json").read_text())
    assert meta["label_names"] == ["World", "Sports", "Business", "Sci/Tech"]
    text = json.dumps([o for c in nbformat.read(out_nb, as_version=4).cells if c.cell_type == "code" for o in c.outputs])
    assert "Sci/Tech" in text and "no header row" in text


@pytest.mark.e2e
def test_notebook_reloads_a_base_stored_in_half_precision(tiny_gpt2, rt_dir, tmp_path):
    """A base whose weights are stored in fp16 (as many on the Hub are, in fp16 or bf16): training loads it in
    float32, and so must the notebook's AutoPeft reload, or transformers 5 (which loads a checkpoint in its stored
    dtype) gives other logits and the reload check fails (found on an H200 with MiniLM stored in fp16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    half = tmp_path / "gpt2-fp16"
    AutoModelForCausalLM.from_pretrained(str(tiny_gpt2)).to(torch.float16).save_pretrained(half)
    AutoTokenizer.from_pretrained(str(tiny_gpt2)).save_pretrained(half)
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"), cwd=str(tmp_path), kernel_name="python3", progress_bar=False,
        parameters={"model": str(half), "data_dir": str(rt_dir), "output_dir": str(tmp_path / "adapter"), **SETTINGS},
    )  # the notebook's check_reload raises if the reloaded logits differ
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
