"""Hyperparameter search with Optuna: `python -m peft_helpers tune ...`.

setup (resolve the settings, load the data once, check the budget) -> search (trials on train, scored on
validation, weak ones pruned after each epoch; the study in <output_dir>/study.db, so --resume continues it) ->
finish (the best trial re-trained and saved as a normal adapter with one test evaluation, the tuned defaults beside
it, the trials table and plots). The test split is never seen by a trial.
"""

from __future__ import annotations

import gc
import math
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from transformers import TrainerCallback

from .config import RunConfig
from .errors import UserError
from .methods import get_method

STUDY_FILE = "study.db"
# Values each search parameter takes: learning_rate on a log scale around the tuned rate, alpha as a multiple of r.
RANKS = (4, 8, 16, 32)
ALPHA_PER_RANK = (1, 2, 4)
VIRTUAL_TOKENS = (10, 20, 40)
DROPOUT_RANGE = (0.0, 0.3)
LR_FACTOR = 5.0  # the tuned rate divided and multiplied by this
# Where the architecture offers a choice of LoRA targets: the attention's value path alone up to every projection.
TARGET_CHOICES = {
    "gpt2": ("c_attn", "c_attn,c_proj", "c_attn,c_proj,c_fc"),
    "bert": ("query,value", "query,key,value", "query,key,value,dense"),
    "llama": ("q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj",
              "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
}
SEARCHABLE = ("learning_rate", "epochs", "r", "alpha", "dropout", "target_modules", "num_virtual_tokens")


@dataclass
class TuneOptions:
    trials: int = field(default=20, metadata={"help": "Stop after this many finished trials (pruned ones count)."})
    time_budget: str | None = field(
        default=None, metadata={"help": "Stop starting trials after this long, e.g. 20m, 1h30m, 600s; the best "
                                        "trial's re-training and the defaults' run come after it."})
    search: str | None = field(
        default=None, metadata={"help": "Comma-separated parameters to search (default: all the method takes): "
                                        + ", ".join(SEARCHABLE) + "."})
    resume: bool = field(default=False, metadata={"help": "Continue the study in output_dir/study.db."})
    overwrite: bool = field(default=False, metadata={"help": "Start again: delete the study and results in output_dir."})


def parse_budget(text: str | None) -> float | None:
    """'20m', '1h30m', '90s', '600' (seconds) -> seconds."""
    if text is None:
        return None
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise UserError(f"time_budget={text!r}: write it as 20m, 1h30m or 600s.")
    hours, minutes, seconds = (float(g or 0) for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def search_space(cfg: RunConfig, model_type: str, names: str | None) -> list[str]:
    """The parameters searched for this method and architecture (`names` restricts them)."""
    spec = get_method(cfg.method)
    available = ["learning_rate", "epochs", *(k for k in ("r", "alpha", "dropout", "num_virtual_tokens")
                                              if k in spec.options)]
    if "alpha" in spec.options and model_type in TARGET_CHOICES:
        available.append("target_modules")
    if names is None:
        return available
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for name in chosen:
        if name not in SEARCHABLE:
            raise UserError(f"search parameter {name!r} is not known: use {', '.join(SEARCHABLE)}.")
        if name not in available:
            raise UserError(f"search parameter {name!r} does not apply to method {cfg.method} on {model_type}: "
                            f"searchable here: {', '.join(available)}.")
    if not chosen:
        raise UserError("search is empty: name at least one parameter, or leave it out to search them all.")
    return chosen


def suggest(trial, space: list[str], base: RunConfig, model_type: str) -> dict:
    """The RunConfig settings of one trial; parameters not searched keep the base's (tuned) values."""
    settings = {}
    if "learning_rate" in space:
        settings["learning_rate"] = trial.suggest_float("learning_rate", base.learning_rate / LR_FACTOR,
                                                        min(0.5, base.learning_rate * LR_FACTOR), log=True)
    if "epochs" in space:
        settings["epochs"] = float(trial.suggest_int("epochs", 1, max(2, math.ceil(base.epochs) + 1)))
    r = trial.suggest_categorical("r", RANKS) if "r" in space else base.r
    if "r" in space:
        settings["r"] = r
    if "alpha" in space:
        settings["alpha"] = r * trial.suggest_categorical("alpha_per_r", ALPHA_PER_RANK)
    elif "r" in space and base.alpha is not None:
        settings["alpha"] = r * base.alpha / base.r  # keep the tuned scale alpha / r
    if "dropout" in space:
        settings["dropout"] = trial.suggest_float("dropout", *DROPOUT_RANGE)
    if "target_modules" in space:
        settings["target_modules"] = trial.suggest_categorical("target_modules", TARGET_CHOICES[model_type]).split(",")
    if "num_virtual_tokens" in space:
        settings["num_virtual_tokens"] = trial.suggest_categorical("num_virtual_tokens", VIRTUAL_TOKENS)
    return settings


class ReportToOptuna(TrainerCallback):
    """After each epoch's validation: report the headline metric to the trial and stop a trial that the pruner
    finds weak (the median of earlier trials at the same epoch)."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import optuna

        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None:
            return
        self.trial.report(value, step=round(state.epoch))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation {self.metric} {value:.4f} after epoch {round(state.epoch)}")


def task_identity(p, space: list[str]) -> dict:
    """What a study belongs to: a study file is only continued for the same model, method, data and search."""
    from .distributed import data_fingerprint

    # the data by its rows, not its path (a moved copy is the same task)
    settings = {k: v for k, v in p.cfg.run_identity().items() if k not in ("data_dir", "dataset", *space, "alpha")}
    return {"model": p.cfg.model, "method": p.cfg.method, "problem": p.problem, "search": sorted(space),
            "data": data_fingerprint(settings, {s: p.encoded[s] for s in ("train", "validation")})}


def open_study(folder: Path, identity: dict, options: TuneOptions, seed: int, metric: str):
    """The study in folder/study.db: a new one, or with --resume the interrupted one, refused if it belongs to
    another task."""
    import optuna

    db = folder / STUDY_FILE
    if db.exists() and not options.resume:
        raise UserError(f"{db} holds a study: pass --resume to continue it, or --overwrite to start again.")
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{db.resolve()}"
    if db.exists():
        study = optuna.load_study(study_name="tune", storage=storage,
                                  sampler=optuna.samplers.TPESampler(seed=seed),
                                  pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
        recorded = study.user_attrs.get("task")
        if recorded != identity:
            changed = sorted(k for k in identity if (recorded or {}).get(k) != identity[k])
            raise UserError(f"{db} is a study of another task (differs in {', '.join(changed) or 'everything'}): "
                            "use another --output-dir, or --overwrite to start again.")
        return study
    study = optuna.create_study(study_name="tune", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    study.set_user_attr("task", identity)
    study.set_user_attr("metric", metric)
    return study


def seconds_per_epoch(p) -> float:
    """How long one epoch of training takes here, from three timed training steps (forward and backward) of the
    run's method on real batches, plus a validation pass: the budget check's estimate."""
    import torch
    from transformers import DataCollatorWithPadding

    from .modeling import create_peft_model, load_model

    model, tokenizer = load_model(p.cfg.model, p.label_names, p.cfg.seed, p.cfg.max_length, method=p.cfg.method,
                                  problem=p.problem)
    peft_model = create_peft_model(model, p.cfg, p.cfg.total_steps(len(p.encoded["train"])))
    collate, rows = DataCollatorWithPadding(tokenizer), p.encoded["train"].shuffle(seed=p.cfg.seed)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids", "label") if c in rows.column_names]
    device = next(peft_model.parameters()).device
    times = []
    for i in range(4):  # the first step warms up
        batch = rows.select(range(i * p.cfg.batch_size, (i + 1) * p.cfg.batch_size)).select_columns(columns)
        inputs = {k: v.to(device) for k, v in collate([dict(r) for r in batch]).items()}
        start = time.perf_counter()
        peft_model(**inputs).loss.backward()
        times.append(time.perf_counter() - start)
    del peft_model, model
    gc.collect()
    per_example = sum(times[1:]) / (3 * p.cfg.batch_size) + (1e-3 if not torch.cuda.is_available() else 0.0)
    return per_example * (len(p.encoded["train"]) + len(p.encoded["validation"]) / 3)


def check_budget(p, budget: float | None) -> None:
    """Refuse a time budget that cannot hold one trial of one epoch."""
    if budget is None:
        return
    needed = seconds_per_epoch(p)
    if budget < needed:
        raise UserError(f"time_budget {budget:g} s is less than one trial needs here (about {needed:.2g} s for one "
                        f"epoch of {len(p.encoded['train']):,} texts and a validation pass): give at least "
                        f"{math.ceil(needed / 60)}m, or fewer texts with --train-size.")


def objective(p, space: list[str], model_type: str, folder: Path):
    """One trial: a fresh model with the trial's settings, trained on train, scored on validation after each epoch
    (pruned if weak); returns the last validation score (multi-label: at the threshold tuned on validation)."""
    from .evaluation import evaluate
    from .metrics import tune_threshold
    from .modeling import create_peft_model, load_model
    from .training import build_trainer

    def run_trial(trial) -> float:
        settings = suggest(trial, space, p.cfg, model_type)
        cfg = replace(p.cfg, **settings, checkpoint_dir=str(folder / "trials" / f"trial-{trial.number}"),
                      metric_for_best=None, early_stopping_patience=None, validation=True)
        model, tokenizer = load_model(cfg.model, p.label_names, cfg.seed, cfg.max_length, method=cfg.method,
                                      model_dropout=cfg.model_dropout, problem=p.problem)
        peft_model = create_peft_model(model, cfg, cfg.total_steps(len(p.encoded["train"])))
        trainer = build_trainer(peft_model, tokenizer, p.encoded, cfg, callbacks=[ReportToOptuna(trial, p.headline)],
                                eval_strategy="epoch", eval_steps=None, save_strategy="no", report_to="none")
        start = time.perf_counter()
        try:
            trainer.train()
            validation = evaluate(peft_model, tokenizer, p.encoded["validation"], cfg.eval_batch_size,
                                  desc=f"Trial {trial.number}")
            if p.problem == "multi-label":
                threshold = tune_threshold(validation.logits, validation.labels)
                trial.set_user_attr("threshold", threshold)
                validation = evaluate(peft_model, tokenizer, p.encoded["validation"], cfg.eval_batch_size,
                                      desc=f"Trial {trial.number}", threshold=threshold)
            return validation.metrics[p.headline]
        finally:  # pruned (optuna.TrialPruned from ReportToOptuna) or not: the seconds, and the memory back
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            del trainer, peft_model, model
            gc.collect()

    return run_trial


def trials_table(study):
    """One row per trial: its settings, validation score, seconds and state (complete, pruned, failed, or
    interrupted for a trial a stopped search left running)."""
    import pandas as pd

    rows = []
    for t in study.trials:
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "interrupted"}.get(
            t.state.name, t.state.name.lower())
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                     if t.intermediate_values else None)
        rows.append({"trial": t.number, "state": state, f"validation {study.user_attrs.get('metric', '')}": value,
                     **t.params, "seconds": t.user_attrs.get("seconds")})
    return pd.DataFrame(rows).set_index("trial")


def save_plots(study, folder: Path) -> list[str]:
    """Optuna's optimization-history and parameter-importance plots as PNG files (importance needs at least two
    finished trials that differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as plots

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, plot in (("history.png", plots.plot_optimization_history),
                           ("importance.png", plots.plot_param_importances)):
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as err:  # too few finished trials for importances
                print(f"{name}: not drawn ({str(err).splitlines()[0]})")
                continue
            figure = ax.figure if hasattr(ax, "figure") else ax[0].figure
            figure.tight_layout()
            figure.savefig(folder / name, dpi=110)
            written.append(name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return written


def tune(cfg: RunConfig, options: TuneOptions) -> dict:
    """Search, then re-train the best trial (saved to <output_dir>/best) and the tuned defaults
    (<output_dir>/defaults), each evaluated once on the test split; writes trials.csv, trials.md, the plots and
    summary.json to output_dir. Returns the summary."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("optuna") is None:
        raise UserError("tune needs Optuna: pip install optuna (or pip install -e '.[tune]').")
    import optuna

    from .compare import markdown
    from .modeling import load_config
    from .workflow import prepare, run, write_json

    # setup: every refusal before any trial
    budget = parse_budget(options.time_budget)
    if options.trials < 1:
        raise UserError(f"trials={options.trials}: give at least 1.")
    folder = Path(cfg.output_dir)
    if options.overwrite and folder.exists():
        shutil.rmtree(folder)
    model_type = load_config(cfg.model).model_type
    space = search_space(cfg, model_type, options.search)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    p = prepare(replace(cfg, output_dir=str(folder / "best")))
    identity = task_identity(p, space)
    study = open_study(folder, identity, options, cfg.seed, p.headline)
    check_budget(p, budget)

    # search
    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    print(f"Searching {', '.join(space)} for {p.cfg.method} on {model_type}: validation {p.headline}, "
          f"{options.trials} trials" + (f" or {budget:.0f} s" if budget else "") + f" ({done} done before)")
    if done < options.trials:
        study.optimize(objective(p, space, model_type, folder), n_trials=options.trials - done, timeout=budget,
                       catch=(RuntimeError,), gc_after_trial=True)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not finished:
        raise UserError("no trial finished (each was pruned or failed): see trials.csv; widen the search or the budget.")
    table = trials_table(study)
    table.to_csv(folder / "trials.csv")
    (folder / "trials.md").write_text(markdown(table.reset_index()))
    print(table.to_string(float_format="{:.4g}".format))
    plots = save_plots(study, folder)

    # finish: the best trial and the tuned defaults, each trained on train and evaluated once on test
    best = study.best_trial
    settings = suggest(optuna.trial.FixedTrial(best.params), space, p.cfg, model_type)
    print(f"Best trial {best.number}: validation {p.headline} {best.value:.4f} with {settings}")
    best_results = run(replace(p.cfg, **settings, checkpoint_dir=None), overwrite=True)
    defaults_results = run(replace(p.cfg, output_dir=str(folder / "defaults"), checkpoint_dir=None), overwrite=True)
    metric = p.headline
    summary = {
        "metric": metric, "search": space, "trials": len(study.trials),
        "complete": len(finished), "pruned": int((table["state"] == "pruned").sum()),
        "best_trial": best.number, "best_validation": best.value, "best_settings": settings,
        "test": {"best": best_results["finetuned"][metric], "defaults": defaults_results["finetuned"][metric]},
        "search_seconds": round(sum(t.user_attrs.get("seconds") or 0 for t in study.trials), 1),
        "plots": plots, "best_adapter": best_results["adapter_dir"], "defaults_adapter": defaults_results["adapter_dir"],
    }
    write_json(folder / "summary.json", summary)
    print(f"\nTest {metric}: best trial {summary['test']['best']:.4f}, tuned defaults {summary['test']['defaults']:.4f} "
          f"({len(finished)} trials finished, {summary['pruned']} pruned); best adapter in {best_results['adapter_dir']}")
    return summary
