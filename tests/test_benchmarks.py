"""The experiment scripts under benchmarks/ that BENCHMARKS.md quotes: their logic, on tiny inputs."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make_tiny_bert


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_mean_pooling_ignores_padding(tmp_path):
    from transformers import BertConfig

    pooling = _load("pooling")
    make_tiny_bert(tmp_path)
    config = BertConfig.from_pretrained(tmp_path, num_labels=2)
    torch.manual_seed(0)
    model = pooling.BertMeanPooledForSequenceClassification.from_pretrained(tmp_path, config=config).eval()
    ids = torch.tensor([[2, 5, 7, 3]])
    alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    padded = torch.tensor([[2, 5, 7, 3, 0, 0], [2, 6, 3, 0, 0, 0]])
    mask = (padded != 0).long()
    batch = model(input_ids=padded, attention_mask=mask).logits
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=0)
    with torch.no_grad():  # the logits are the classifier applied to the masked mean of the token vectors
        hidden = model.bert(input_ids=padded[1:, :3]).last_hidden_state.mean(1)
        torch.testing.assert_close(batch[1], model.classifier(hidden)[0], atol=1e-5, rtol=0)
    out = model(input_ids=padded, attention_mask=mask, labels=torch.tensor([0, 1]))
    assert out.loss.item() > 0 and out.loss.requires_grad


def test_curves_table_reads_run_and_full_finetune_results(tmp_path):
    curves = _load("curves")
    history = [
        {"step": 5, "epoch": 0.5, "loss": 0.69},
        {"step": 10, "epoch": 1.0, "loss": 0.41},
        {"step": 10, "epoch": 1.0, "eval_loss": 0.4, "eval_accuracy": 0.8, "eval_f1": 0.8},
    ]
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"finetuned": {"accuracy": 0.79}, "learning_curve": history}))
    full = tmp_path / "full.txt"
    full.write_text("{'loss': '0.69', 'epoch': '0.5'}\nRESULT " + json.dumps({"accuracy": 0.81, "learning_curve": history[:1]}) + "\n")
    runs = dict(curves.read(spec) for spec in [f"LoRA r=8={run}", str(full)])
    assert list(runs) == ["LoRA r=8", "full"]
    lines = curves.table(runs).splitlines()
    assert lines[2] == "| LoRA r=8 | 1: 80.00% | 0.410 | 79.00% |"
    assert lines[3] == "| full | - | 0.690 | 81.00% |"


def test_flop_counts_and_matmul_rate_on_a_tiny_model(tiny_gpt2, rt_dir, tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    bench = _load("bench")
    assert bench.matmul_gflops(threads=1, n=64, repeats=2) > 0
    args = SimpleNamespace(model=str(tiny_gpt2), data_dir=str(rt_dir), train_size=64, eval_size=32, batch_size=8,
                           max_length=64, threads=1, rate_size=256, case="flops")
    counts = bench.run_case(args)
    # a training step (forward + backward) costs about three forwards; LoRA's frozen weights skip their weight
    # gradients, so somewhat less
    assert 1.5 < counts["train_flops_per_token"] / counts["eval_flops_per_token"] < 3.5
    assert counts["matmul_gflops"] > 0


def test_bench_pipeline_counts_the_tokens_it_trains_and_evaluates_on(tiny_gpt2, rt_dir, tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    bench = _load("bench")
    args = SimpleNamespace(model=str(tiny_gpt2), data_dir=str(rt_dir), train_size=64, eval_size=None, batch_size=8,
                           max_length=64, threads=1, case="pipeline")
    result = bench.run_case(args)
    # every training example once (one epoch), padded to its batch's longest row; the test split once, as
    # predict_logits batches it (the evaluation batch is 4 x the training batch, the package's default)
    assert 0 < result["train_real_tokens"] <= result["train_total_tokens"]
    assert result["eval_total_tokens"] == _padded_tokens(_test_lengths(tiny_gpt2, rt_dir), 4 * 8)
    assert 0 < result["eval_real_tokens"] <= result["eval_total_tokens"]


def _test_lengths(model: str, data_dir) -> list[int]:
    from peft_helpers.config import RunConfig
    from peft_helpers.workflow import prepare

    return prepare(RunConfig(model=str(model), data_dir=str(data_dir), max_length=64), device="cpu").encoded["test"]["length"]


def test_demo_time_estimate_splits_the_matrix_products_from_the_rest():
    demo_time = _load("demo_time")
    # 5 TFLOP of products at 100 GFLOP/s: 50 s of a 180 s demo here, 130 s of everything else
    times = demo_time.estimate(matmul_flops=5e12, seconds=180, rate_gflops=100, target_gflops=50, other_slowdown=1.2)
    assert times == pytest.approx({"matmul_seconds_here": 50, "other_seconds_here": 130,
                                   "estimate_low_seconds": 100 + 130,  # only the products at half the rate
                                   "estimate_high_seconds": 360,  # everything at half the rate
                                   "estimate_seconds": 100 + 156})  # and the rest 1.2x slower


def test_profile_step_reports_rate_matrix_product_share_top_operators_and_the_products_alone(tiny_gpt2, rt_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--model", str(tiny_gpt2),
                           "--data-dir", str(rt_dir), "--threads", "1", "--no-dropout", "--rows", "100",
                           "--rate-size", "256"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("dropout off"))
    found = re.search(r"then ([\d.]+) training examples/s; matrix products \(mm, addmm, bmm\) ([\d.]+)% of the "
                      r"profiled time, running at (\d+) GFLOP/s = ([\d.]+) of the fp32 rate", lines[header])
    assert found, lines[header]
    assert float(found[1]) > 0 and 0 < float(found[2]) < 100 and float(found[3]) > 0
    last = next(i for i, line in enumerate(lines) if line.startswith("the same products alone"))
    rows = lines[header + 1:last]
    assert len(rows) >= 5 and all(re.search(r"\d+\.\d%\s+\d+ calls$", row) for row in rows), rows
    alone = re.search(r"^the same products alone \(each of the (\d+) shapes and layouts timed by itself, (\d+) calls\): "
                      r"(\d+) GFLOP/s = ([\d.]+) of the 256\^3 rate; ([\d.]+) s, against ([\d.]+) s", lines[last])
    assert alone, lines[last]
    # every product the profiler saw in the 20 steps (all operators are listed here) was recorded and replayed
    profiled = sum(int(re.search(r"(\d+) calls$", row)[1]) for row in rows if re.match(r"\s+aten::(mm|addmm|bmm)\s", row))
    assert profiled > 0 and int(alone[2]) == profiled
    assert 0 < int(alone[1]) <= int(alone[2]) and float(alone[3]) > 0 and float(alone[5]) > 0


@pytest.mark.parametrize("shape, stride", [((3, 4), (4, 1)), ((3, 4), (1, 3)), ((3, 4), (0, 1)), ((2, 3, 4), (0, 4, 1))],
                         ids=["row-major", "column-major", "expanded rows", "expanded batch"])
def test_profile_step_replays_products_on_any_layout_even_shared_memory(shape, stride):
    """The short last layer's backward hands mm an expanded operand (stride 0), which normal_() cannot fill: the
    replay must still build random operands laid out exactly as recorded."""
    operand = _load("profile_step")._random_strided(shape, stride)
    assert operand.shape == shape and operand.stride() == stride
    assert torch.isfinite(operand).all() and operand.std() > 0
    if 0 in stride:  # elements along a stride-0 dimension share memory: equal values
        assert (operand == operand.select(stride.index(0), 0).unsqueeze(stride.index(0))).all()


def _padded_tokens(lengths, batch_size: int) -> int:
    """Tokens an evaluation processes, padding included, by predict_logits' rule: rows sorted by length, longest
    first, each batch padded to its longest row (the expected value of the benchmarks' token counts)."""
    ordered = sorted(lengths, reverse=True)
    return sum(ordered[start] * len(ordered[start : start + batch_size]) for start in range(0, len(ordered), batch_size))


def test_padded_tokens_pads_each_length_sorted_batch_to_its_longest_row():
    assert _padded_tokens([5, 3, 4, 1, 2], batch_size=2) == 5 * 2 + 3 * 2 + 1 * 1
    assert _padded_tokens([7], batch_size=64) == 7


@pytest.mark.parametrize("batch_size", [3, 64])
def test_padded_tokens_is_what_an_evaluation_feeds_the_model(tiny_gpt2, rt_dir, batch_size):
    from peft_helpers.config import RunConfig
    from peft_helpers.evaluation import predict_logits
    from peft_helpers.workflow import prepare

    p = prepare(RunConfig(model=str(tiny_gpt2), data_dir=str(rt_dir), train_size=16, eval_size=40), device="cpu")
    fed = []
    p.model.register_forward_pre_hook(lambda module, args, kwargs: fed.append(kwargs["attention_mask"].numel()),
                                      with_kwargs=True)
    predict_logits(p.model, p.tokenizer, p.encoded["test"], batch_size)
    assert sum(fed) == _padded_tokens(p.encoded["test"]["length"], batch_size)
    assert len(fed) == -(-len(p.encoded["test"]) // batch_size)


def test_levers_compiled_and_unmerged_evaluation_match_eager_and_report_their_costs(tiny_gpt2, rt_dir):
    cases = ["evaluation batch 64", "compiled evaluation (inductor, frozen weights), batch 64",
             "OpenMP threads spin (OMP_WAIT_POLICY=ACTIVE)", "evaluation batch 64, LoRA not merged (before)"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "levers.py"), "--model", str(tiny_gpt2),
                           "--data-dir", str(rt_dir), "--train-size", "64", "--threads", "1", "--rate-size", "256",
                           "--cases", *cases],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {row["case"]: row for row in report["rows"]}
    assert list(rows) == cases, proc.stdout[-2000:]
    eager, compiled, spinning, unmerged = (rows[name] for name in cases)
    # The same trained adapter, evaluated eagerly and compiled, LoRA merged or not: the same predictions.
    assert compiled["accuracy"] == eager["accuracy"] == spinning["accuracy"] == unmerged["accuracy"]
    # Merged, a forward does the base model's products only: fewer FLOPs per token than with the adapters' own.
    per_token = report["flops_per_token"]
    assert per_token["eval_flops_per_token"] < per_token["eval_unmerged_flops_per_token"]
    assert compiled["compile_seconds"] > 0 and eager["compile_seconds"] is None
    assert spinning["environment"] == {"OMP_WAIT_POLICY": "ACTIVE"} and eager["environment"] == {}


def test_demo_time_slow_cpu_runs_on_one_thread_without_avx512():
    demo_time = _load("demo_time")
    env = demo_time.demo_environment(slow_cpu=True)
    assert env["HF_HUB_OFFLINE"] == "1" and demo_time.demo_environment(slow_cpu=False).get("OMP_NUM_THREADS") == \
        os.environ.get("OMP_NUM_THREADS")
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads(), "
                           "torch.backends.cpu.get_cpu_capability())"], capture_output=True, text=True, env=env)
    threads, capability = proc.stdout.split()
    assert threads == "1" and capability in ("AVX2", "DEFAULT"), proc.stdout


def test_levers_slow_cpu_runs_its_cases_on_the_emulated_cpu(tiny_gpt2, rt_dir):
    """--slow-cpu starts levers.py again in the emulated CPU's environment: the rate it measures and each case's
    process run on one thread without AVX-512, and no bf16 rate is measured for fp32 cases."""
    cases = ["evaluation batch 64", "evaluation batch 128"]
    env = {key: value for key, value in os.environ.items() if key not in _load("bench").SLOW_CPU}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "levers.py"), "--model", str(tiny_gpt2),
                           "--data-dir", str(rt_dir), "--train-size", "64", "--slow-cpu", "--rate-size", "256",
                           "--cases", *cases],
                          capture_output=True, text=True, timeout=900, env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["slow_cpu"] == _load("bench").SLOW_CPU and list(report["rates_gflops"]) == ["fp32"]
    assert report["rate_size"] == 256 and "matrix products (256^3, 1 threads on the emulated" in proc.stdout
    assert "on the emulated slow CPU (OMP_NUM_THREADS=1 " in proc.stdout
    assert [row["case"] for row in report["rows"]] == cases
    for row in report["rows"]:
        assert row["threads"] == 1 and row["cpu_capability"] in ("AVX2", "DEFAULT"), row
        assert row["fp32_gflops_around_case"] > 0  # each case against the rate measured around it
    # Both evaluate the same adapter: the batch size changes the speed, not the predictions.
    assert report["rows"][0]["accuracy"] == report["rows"][1]["accuracy"]


def test_levers_slow_cpu_cases_leave_out_bf16_and_thread_settings():
    levers = _load("levers")
    assert set(levers.SLOW_CPU_CASES) <= set(levers.CASES) and "default" in levers.SLOW_CPU_CASES
    for name in levers.SLOW_CPU_CASES:
        assert not levers.CASES[name].get("bf16") and "env" not in levers.CASES[name] and \
            "interop" not in levers.CASES[name], name


def test_eval_merge_times_merged_and_unmerged_evaluation_in_alternating_pairs(tiny_gpt2, rt_dir):
    """eval_merge.py: the same predictions merged and not, the passes alternate in order round by round, and the
    merged forward counts fewer FLOPs (the adapters' products are gone)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_merge.py"), "--model", str(tiny_gpt2),
                           "--data-dir", str(rt_dir), "--train-size", "16", "--rounds", "2", "--threads", "1",
                           "--rate-size", "256"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["same_predictions"] and report["max_logit_difference"] < 1e-5 and report["rate_size"] == 256
    assert [p["mode"] for p in report["passes"]] == ["merged", "unmerged", "unmerged", "merged"]
    assert all(p["seconds"] > 0 and p["rate"] > 0 for p in report["passes"])
    per_token = report["flops_per_token"]
    assert per_token["eval_flops_per_token"] < per_token["eval_unmerged_flops_per_token"]
    assert report["examples"] == 1066 and "merged over unmerged, per round" in proc.stdout


def test_predict_speed_times_the_short_and_stock_last_layer_in_alternating_pairs(tmp_path, rt_dir, tiny_gpt2):
    """predict_speed.py: the same labels from the predict command's model and the stock one, the passes alternating
    in order round by round; a model the short layer does not apply to is refused rather than timed twice."""
    command = [sys.executable, str(ROOT / "benchmarks" / "predict_speed.py"), "--data-dir", str(rt_dir), "--texts",
               "96", "--rounds", "2", "--threads", "1", "--rate-size", "256"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*command, "--model", str(make_tiny_bert(tmp_path / "bert"))], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["same_labels"] and report["max_probability_difference"] < 1e-5 and report["texts"] == 96
    assert [p["mode"] for p in report["passes"]] == ["short", "stock", "stock", "short"]
    assert all(p["seconds"] > 0 and p["rate"] > 0 for p in report["passes"])
    assert "short over stock, per round" in proc.stdout
    refused = subprocess.run([*command, "--model", str(tiny_gpt2)], capture_output=True, text=True, timeout=600, env=env)
    assert refused.returncode == 1 and "the short last layer does not apply" in refused.stderr


def test_attention_kernels_times_each_kernel_against_its_products_at_the_rate():
    """attention_kernels.py: a row per length with every kernel's time and the products' time at the measured rate
    (6 products of 2 x L x L x d FLOPs per head and row)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention_kernels.py"), "--lengths", "8", "12",
                           "--batch-size", "2", "--heads", "2", "--head-size", "4", "--repeats", "2", "--threads", "1",
                           "--rate-size", "256"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [row["length"] for row in report["rows"]] == [8, 12] and report["threads"] == 1
    for row in report["rows"]:
        assert row["flops"] == 6 * 2 * 2 * 2 * row["length"] ** 2 * 4
        assert row["at_rate_ms"] == pytest.approx(row["flops"] / report["rate"] / 1e6)
        assert all(row[kernel] > 0 for kernel in ("sdpa", "eager", "math", "sdpa_dropout", "module_dropout"))
    assert sum(line.startswith("| 8 |") or line.startswith("| 12 |") for line in proc.stdout.splitlines()) == 2


def test_thread_setting_times_processes_with_and_without_the_call_in_alternating_order(tmp_path, rt_dir):
    """thread_setting.py: fresh processes, one per regime and round, the order alternating; both run with the same
    number of threads (only the call differs), and each reports the attention kernels and the training rate."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "thread_setting.py"), "--model",
                           str(make_tiny_bert(tmp_path / "bert")), "--data-dir", str(rt_dir), "--train-size", "160",
                           "--steps", "2", "--rounds", "2", "--rate-size", "256"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["round"], r["regime"]) for r in results] == [(0, "untouched"), (0, "set"), (1, "set"), (1, "untouched")]
    assert len({r["threads"] for r in results}) == 1
    assert all(r["sdpa_ms"] > 0 and r["eager_ms"] > 0 and r["examples_per_s"] > 0 and r["eval_examples_per_s"] > 0
               and r["rate"] > 0 for r in results)
    assert "untouched over set, training examples/s per round" in proc.stdout


def test_use_threads_calls_torch_only_to_change_the_count(monkeypatch):
    """torch.set_num_threads also pins MKL's threading (hardware.use_threads): the same count must not call it."""
    from peft_helpers.hardware import matmul_gflops, use_threads

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    current = torch.get_num_threads()
    use_threads(current)
    use_threads(None)
    assert matmul_gflops(current, n=64, repeats=2) > 0 and calls == []
    use_threads(current + 1)
    assert calls == [current + 1]


@pytest.mark.parametrize("bf16_units", [False, True])
def test_cpu_instructions_name_torchs_kernel_level_and_bf16_units(monkeypatch, bf16_units):
    """The demo's rate line and bench.py's hardware line tell two CPUs of one name apart (hardware.cpu_instructions)."""
    from peft_helpers import hardware

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: bf16_units)
    level = torch.backends.cpu.get_cpu_capability()
    assert hardware.cpu_instructions() == (f"{level} with bf16 units" if bf16_units else level)
    assert hardware.cpu_description().endswith(f"; {hardware.cpu_instructions()}")
    assert f"({hardware.cpu_description()})" in _load("bench").hardware()


def test_attention_times_sdpa_and_eager_in_alternating_pairs_or_says_why_it_cannot(tiny_gpt2, rt_dir):
    """attention.py: both kernels really run (the profiler sees SDPA in one and not in the other), the same
    predictions, the order alternating by round; on a transformers that fixes the attention at load, one line and
    exit status 2 instead of timing one kernel twice."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"), "--model", str(tiny_gpt2),
                           "--data-dir", str(rt_dir), "--train-size", "160", "--rounds", "2", "--steps", "2",
                           "--threads", "1", "--rate-size", "256"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode == 2:  # transformers < 4.48: GPT-2's attention class is chosen when the model loads
        assert proc.stderr.strip().splitlines()[-1].startswith("error: this transformers version fixes the attention")
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any("scaled_dot_product" in k for k in report["kernels"]["sdpa"])
    assert not any("scaled_dot_product" in k for k in report["kernels"]["eager"])
    assert report["same_predictions"] and report["max_logit_difference"] < 1e-4
    for part in ("train", "evaluation"):
        assert [p["mode"] for p in report[part]] == ["sdpa", "eager", "eager", "sdpa"], part
    assert report["train_eager_over_sdpa"] > 0 and 0 < report["eval_mfu_sdpa"] and report["rate_size"] == 256


def test_dropout_masks_times_each_kind_of_mask_in_alternating_order_on_every_dropout(tiny_gpt2, rt_dir):
    """dropout_masks.py: each kind of mask drawn by every dropout of the model and adapter, the order alternating by
    round, each pass with the rate around it and a utilisation; the model left with run's default masks."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dropout_masks.py"), "--model", str(tiny_gpt2),
                           "--data-dir", str(rt_dir), "--train-size", "160", "--rounds", "2", "--steps", "2",
                           "--threads", "1", "--rate-size", "256"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # GPT-2's attention dropout is SDPA's in every kind (only BERT-type layers apply it through the module)
    assert report["dropouts"]["16-bit"] == report["dropouts"]["16-bit-sdpa"] == report["dropouts"]["bernoulli"] > 0
    assert [p["mode"] for p in report["passes"]] == ["16-bit", "16-bit-sdpa", "bernoulli",
                                                     "bernoulli", "16-bit-sdpa", "16-bit"]
    assert all(p["mfu"] > 0 and p["rate"] > 0 for p in report["passes"])
    assert report["sixteen_bit_over_bernoulli"] > 0 and report["sixteen_bit_over_16_bit_sdpa"] > 0
    assert all(s > 0 for s in report["one_mask_seconds"].values())
    assert "16-bit over bernoulli per round" in proc.stdout and "16-bit over 16-bit-sdpa per round" in proc.stdout


def test_demo_variants_runs_the_demos_settings_with_each_value_in_alternating_order(tiny_gpt2, rt_dir, tmp_path):
    """demo_variants.py: `run` with the offline demo's settings (2 epochs, dropout off, no validation) plus the
    option under test, in fresh processes, a, b then b, a, each with the rate measured around it."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_variants.py"), "--option", "attention",
                           "--values", "eager", "sdpa", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir),
                           "--threads", "1", "--rate-size", "256", "--workdir", str(tmp_path),
                           "--train-size", "32", "--eval-size", "16"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    assert [(p["round"], p["mode"]) for p in report["passes"]] == [(0, "eager"), (0, "sdpa"), (1, "sdpa"), (1, "eager")]
    for p in report["passes"]:
        assert p["rate"] > 0 and 0 < p["train_seconds"] < p["seconds"]
        assert p["train_examples_per_s_per_gflops"] == pytest.approx(p["train_examples_per_s"] / p["rate"])
        config = json.loads((tmp_path / f"attention-{p['mode']}-{p['round']}.json").read_text())["config"]
        assert (config["attention"], config["model"], config["train_size"]) == (p["mode"], str(tiny_gpt2), 32)
        assert (config["epochs"], config["model_dropout"], config["dropout"], config["validation"]) == (2.0, 0.0, 0.0, False)
    assert set(report["medians"]) == {"eager", "sdpa"} and report["rate_size"] == 256
    speed = {(p["round"], p["mode"]): p["train_examples_per_s"] for p in report["passes"]}
    assert report["per_round_ratios"] == pytest.approx([speed[r, "eager"] / speed[r, "sdpa"] for r in (0, 1)])
    assert "eager over sdpa, training examples/s per round: " in proc.stdout
