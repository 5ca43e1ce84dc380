"""The supported-version check behind the notebook's set-up cell and the command line."""

import pytest
from packaging.version import Version

from peft_helpers import environment


def test_requirements_declare_the_supported_range():
    ranges = {r.name: str(r.specifier) for r in environment.requirements()}
    assert ranges["transformers"] == "<6,>=4.46" and ranges["peft"] == "<1,>=0.14" and ranges["datasets"] == "<6,>=2.20"
    assert "torch" not in ranges  # never installed by the set-up step


def test_installed_versions_are_supported():
    assert environment.problems() == {} and environment.torch_problem() is None


@pytest.mark.parametrize("versions, expected", [
    ({"transformers": Version("4.40.0")}, {"transformers": "4.40.0 installed, <6,>=4.46 needed"}),
    ({"peft": None}, {"peft": "missing"}),
    ({"transformers": Version("4.46.0"), "peft": Version("0.14.0"), "datasets": Version("2.20.0")}, {}),
    ({"transformers": Version("6.0.0")}, {"transformers": "6.0.0 installed, <6,>=4.46 needed"}),
], ids=["too-old", "missing", "oldest-supported", "too-new"])
def test_problems_name_each_package(versions, expected):
    installed = {r.name: environment.installed_version(r.name) for r in environment.requirements()}
    assert environment.problems(versions={**installed, **versions}) == expected


def test_old_torch_is_reported_not_installed():
    assert "older than 2.4" in environment.torch_problem(Version("2.3.1"))
    assert environment.torch_problem(Version("2.4.0+cu121")) is None


def test_install_command_touches_only_what_is_needed_and_pins_torch():
    command = environment.install_command(["peft"])
    assert command[-2:] == ["peft<1,>=0.14", f"torch=={environment.installed_version('torch')}"]
    assert "--upgrade" not in command and not any(c.startswith("transformers") for c in command)


@pytest.mark.parametrize("problem, imported, restart", [
    ("0.12.0 installed, <1,>=0.14 needed", True, True),  # the old version is in memory: restart
    ("0.12.0 installed, <1,>=0.14 needed", False, False),  # upgraded before anything imported it
    ("missing", False, False),  # e.g. a fresh image: installed, importable at once
], ids=["upgraded-after-import", "upgraded-before-import", "missing"])
def test_ensure_supported_asks_for_a_restart_only_after_upgrading_an_imported_package(
        monkeypatch, capsys, problem, imported, restart):
    import sys
    import types

    calls = []
    monkeypatch.setattr(environment, "problems", lambda path=None: {"peft": problem})
    monkeypatch.setattr(environment.subprocess, "check_call", calls.append)
    if imported:
        monkeypatch.setitem(sys.modules, "peft", types.ModuleType("peft"))
    else:
        monkeypatch.delitem(sys.modules, "peft", raising=False)
    assert environment.ensure_supported() is (not restart)
    assert calls and calls[0][-2:] == ["peft<1,>=0.14", f"torch=={environment.installed_version('torch')}"]
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "peft" in out and ("restart the runtime" in out) is restart
