"""Differences between the supported library versions, each a small named shim saying which version needs it.

Supported: transformers 4.46 to 5.x, peft 0.14 to current, datasets 2.20 to current, torch 2.4 on
(requirements.txt; `make test-compat` runs the notebook and the command line on the oldest and newest).
Everything else in the package is written against the API these versions share.
"""

from __future__ import annotations

import importlib.metadata

from packaging.version import Version


def installed(package: str) -> Version:
    return Version(importlib.metadata.version(package))


TRANSFORMERS = installed("transformers")


def dtype_kwarg(dtype) -> dict:
    """`from_pretrained(dtype=...)`: transformers 4.56 renamed `torch_dtype` to `dtype` (5.x warns on the old name)."""
    return {"dtype": dtype} if TRANSFORMERS >= Version("4.56") else {"torch_dtype": dtype}


def group_by_length() -> dict:
    """TrainingArguments for the Trainer's own length-grouped sampler (batches of texts of similar length, so dynamic
    padding adds little): transformers 5 replaced `group_by_length=True` by `train_sampling_strategy`."""
    if TRANSFORMERS >= Version("5"):
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the Hub could not be reached". huggingface_hub < 1.0 talks through `requests` (its
    errors are OSErrors), 1.x through `httpx`, 2.x through `httpx2`; each client's base error is included when
    that client is installed."""
    import importlib

    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:  # huggingface_hub < 0.23 kept them in huggingface_hub.utils
        from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled
    errors += [HfHubHTTPError, OfflineModeIsEnabled]
    for module, name in (("requests", "RequestException"), ("httpx", "HTTPError"), ("httpx2", "HTTPError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def rng_state_loading():
    """Context for the Trainer's `_load_rng_state` (resuming a checkpoint). torch 2.6 made `torch.load` default to
    weights_only=True, which refuses the NumPy RNG state in rng_state.pth; transformers allowlists those NumPy
    types itself from 4.51 (huggingface/transformers#36991), so only older versions need this allowlist."""
    import contextlib

    import numpy as np
    import torch

    if TRANSFORMERS >= Version("4.51") or Version(torch.__version__).release < (2, 6):
        return contextlib.nullcontext()
    np_core = np._core if Version(np.__version__) >= Version("2.0") else np.core
    allowlist = [np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return torch.serialization.safe_globals(allowlist)


def optimizer_state_loading():
    """Context for the Trainer's `_load_optimizer_and_scheduler` (resuming a checkpoint). In a launch of several
    CPU processes, transformers 4.x (seen with 4.46.3) loads the optimizer state with map_location=args.device,
    `cpu:0` there, which torch.load cannot restore ("don't know how to restore data location ... cpu:0"); 5.x
    (5.24) works. Any CPU device becomes "cpu"."""
    import contextlib
    from unittest import mock

    import torch

    if TRANSFORMERS >= Version("5"):
        return contextlib.nullcontext()
    original = torch.load

    def load(*args, map_location=None, **kwargs):
        if isinstance(map_location, (str, torch.device)) and torch.device(map_location).type == "cpu":
            map_location = "cpu"
        return original(*args, map_location=map_location, **kwargs)

    return mock.patch.object(torch, "load", load)
