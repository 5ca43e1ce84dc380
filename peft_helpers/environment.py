"""Are the installed libraries inside the supported range? Imports nothing heavy, so the notebook's set-up cell
and the command line can ask before transformers or peft is imported.

The range is requirements.txt itself (one source): each line `name>=low,<high` is checked with
importlib.metadata. torch is not in requirements.txt (images bring their own build); it is checked here against
TORCH_MINIMUM and never installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
TORCH_MINIMUM = Version("2.4")
# Distribution names whose import name differs, for the messages.
_SHORT = {"scikit-learn": "sklearn"}


def requirements(path: str | Path = REQUIREMENTS) -> list[Requirement]:
    lines = Path(path).read_text().splitlines()
    return [Requirement(re.sub(r"\s+#.*", "", line).strip()) for line in lines if line.strip() and not line.startswith(("#", "-"))]


def installed_version(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def problems(path: str | Path = REQUIREMENTS, versions: dict[str, Version | None] | None = None) -> dict[str, str]:
    """{package: what is wrong} for every requirement that is missing or outside its range ({} = all fine).
    `versions` replaces the installed versions (for tests)."""
    found = {}
    for req in requirements(path):
        version = versions.get(req.name) if versions is not None else installed_version(req.name)
        if version is None:
            found[req.name] = "missing"
        elif not req.specifier.contains(version, prereleases=True):
            found[req.name] = f"{version} installed, {req.specifier} needed"
    return found


def torch_problem(version: Version | None = None) -> str | None:
    version = version if version is not None else installed_version("torch")
    if version is None:
        return "PyTorch is not installed: install it for your machine (https://pytorch.org), then run this again."
    if Version(version.base_version) < TORCH_MINIMUM:
        return f"PyTorch {version} is older than {TORCH_MINIMUM}: upgrade it (pip install -U torch), then restart."
    return None


def install_command(names: list[str], path: str | Path = REQUIREMENTS) -> list[str]:
    """pip installing only `names`, each with its range from requirements.txt (pip moves an installed version
    into the range and leaves every other package alone), with the installed torch pinned so that it is never
    reinstalled."""
    wanted = [str(req) for req in requirements(path) if req.name in names]
    torch = installed_version("torch")
    return [sys.executable, "-m", "pip", "install", "-q", *wanted] + ([f"torch=={torch}"] if torch is not None else [])


def ensure_supported(path: str | Path = REQUIREMENTS, install: bool = True) -> bool:
    """The notebook's set-up step. Installs what is missing or outside the range (if `install`), and returns False
    only when the runtime must be restarted: when a package that this Python process has already imported was
    upgraded (the old version stays in memory). A package that was missing is importable at once."""
    torch_message = torch_problem()
    if torch_message:
        raise RuntimeError(torch_message)
    found = problems(path)
    if not found:
        return True
    listing = "; ".join(f"{name}: {what}" for name, what in found.items())
    if not install:
        print(f"Outside the supported range ({listing}): pip install -r {path}, then restart.")
        return False
    subprocess.check_call(install_command(list(found), path))
    importlib.invalidate_caches()
    stale = [name for name, what in found.items() if what != "missing" and _SHORT.get(name, name).replace("-", "_") in sys.modules]
    if stale:
        print(f"Installed or upgraded {', '.join(found)} ({listing}); {', '.join(stale)} was already imported: restart "
              "the runtime now (Colab: Runtime > Restart session), then run all cells again.")
        return False
    print(f"Installed {', '.join(found)} ({listing}).")
    return True


def unsupported_message(path: str | Path = REQUIREMENTS) -> str | None:
    """One line for the command line when a library is outside the range, else None."""
    torch_message = torch_problem()
    if torch_message:
        return torch_message
    found = problems(path)
    if not found:
        return None
    listing = "; ".join(f"{_SHORT.get(name, name)} {what}" for name, what in found.items())
    return f"unsupported library versions ({listing}): run pip install -r {path}"
