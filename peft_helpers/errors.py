"""One exception type for mistakes a user can fix, so the CLI and notebook can show one clear line."""

from __future__ import annotations

import contextlib


class UserError(ValueError):
    """Bad input or settings; the message says what to do."""


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError a CPU ("can't allocate memory") or Apple GPU ("MPS backend out
    of memory") allocation raises."""
    import torch

    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@contextlib.contextmanager
def batch_size_advice(batch_size: int, what: str, flag: str = "--batch-size"):
    """Turn running out of memory while `what` runs with `batch_size` into one line that says which batch size to
    try, and with which option (`flag`); the process's memory is released first, checkpoints written so far stay on
    disk."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not (isinstance(err, MemoryError) or is_out_of_memory(err)):
            raise
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        smaller = max(1, batch_size // 2)
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        advice = (f"try {flag} {smaller} (halve it until it fits)" if batch_size > 1 else
                  "batch size 1 does not fit either: lower --max-length, or use a smaller model or a larger device")
        raise UserError(f"{what} with batch size {batch_size} ran out of memory ({detail}): {advice}.") from None
