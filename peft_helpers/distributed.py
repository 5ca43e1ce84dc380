"""A run launched as several processes (`torchrun --nproc_per_node N -m peft_helpers run ...`, or
`accelerate launch -m peft_helpers run ...`): which process this is, and the few collective steps the workflow
needs around the Trainer, which does the rest itself (gradients averaged across processes, batches and the
validation split sharded, checkpoints written once).

The rule: every process loads the data and the model and trains; only the main process (rank 0) touches files
and evaluates on the test split; its outcome, a result or a UserError, is sent to every process, so all of them
return the same results or fail with the same line, and none waits forever for one that failed. A single process
(no launcher) runs every step itself, with none of this.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from typing import TypeVar

from .errors import UserError

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def start() -> None:
    """Join the launch's process group now rather than when the Trainer first needs it, so the checks before
    training can talk: accelerate's PartialState (the Trainer's own) picks gloo on CPUs and NCCL on GPUs."""
    if not is_distributed():
        return
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if torch.cuda.is_available():
        torch.cuda.set_device(state.device)


def _broadcast(payload):
    import torch.distributed as dist

    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(step: Callable[[], T]) -> T:
    """Run `step` on the main process only and give every process its result; a UserError it raises is raised on
    every process (anything else ends the main process with its traceback, and the others with a short line)."""
    if not is_distributed():
        return step()
    outcome: tuple[str, object] = ("error", "the main process failed; its output above says why")
    if is_main():
        try:
            outcome = ("ok", step())
        except UserError as err:
            outcome = ("user", str(err))
            raise
        finally:
            _broadcast(outcome)
    else:
        outcome = _broadcast(None)
    kind, value = outcome
    if kind == "ok":
        return value  # type: ignore[return-value]
    raise UserError(str(value))


def data_fingerprint(settings: dict, encoded) -> str:
    """What every process must agree on before training: the run's settings and the exact tokenized rows of
    each split (labels and token ids)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for split in sorted(encoded):
        digest.update(split.encode())
        digest.update(repr(list(encoded[split]["label"])).encode())  # a list: datasets 4+ abbreviates a Column
        for ids in encoded[split]["input_ids"]:
            digest.update(repr(ids).encode())
    return digest.hexdigest()


def check_same_data(fingerprint: str, sizes: dict[str, int]) -> None:
    """Refuse, on every process and before any training step, a launch whose processes loaded different data or
    settings (a different --train-size on one node, another copy of the files): their gradients would be averaged
    over different problems."""
    if not is_distributed():
        return
    import torch.distributed as dist

    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, (fingerprint, sizes))
    if len({f for f, _ in gathered}) > 1:
        seen = "; ".join(f"rank {r}: " + ", ".join(f"{k} {v:,}" for k, v in s.items()) + f" ({f[:8]})"
                         for r, (f, s) in enumerate(gathered))
        raise UserError(f"the {world_size()} processes of this launch loaded different data or settings ({seen}): "
                        "launch every process with the same options and the same data files.")


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def stop() -> None:
    """Leave the launch's process group once every process is done: a process that exits with the group still
    alive can abort while another is finishing ("terminate called without an active exception", SIGABRT; seen
    with gloo when rank 1 returned while rank 0 was still checking the saved adapter)."""
    if is_distributed():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


@contextlib.contextmanager
def main_first():
    """The main process goes first (downloads, dataset caches), the others then find its files."""
    if is_distributed() and not is_main():
        barrier()
    try:
        yield
    finally:
        if is_distributed() and is_main():
            barrier()


@contextlib.contextmanager
def quiet_unless_main():
    """Print once: the other processes' standard output is dropped, and their library logs and warnings below
    errors are silenced (their tracebacks still show)."""
    if is_main():
        yield
        return
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        warnings.simplefilter("ignore")
        yield

