"""pds_nerfstudio.commands, the runner of the demo, the benchmarks and the edit check: its environment and output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pds_nerfstudio import commands


def test_the_commands_environment_is_offline_and_one_thread_per_process_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cpu, gpu = commands.command_env(), commands.command_env(one_thread=False)
    assert cpu["HF_HUB_OFFLINE"] == gpu["HF_HUB_OFFLINE"] == "1" and cpu["PYTHONUNBUFFERED"] == "1"
    assert cpu["OMP_NUM_THREADS"] == cpu["MKL_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in gpu
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # a user's own setting wins
    assert commands.command_env()["OMP_NUM_THREADS"] == "4"


def test_without_the_plugin_installed_ns_train_finds_pds_through_nerfstudios_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "entry_points", lambda group: type("EntryPoints", (), {"names": ()})())
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = commands.command_env()
    assert env["PYTHONPATH"].split(":") == [str(commands.REPO), "/elsewhere"]
    # nerfstudio 1.1.5 reads "name=module:attribute,..." from it; under other names, so the entry points cannot stand in.
    definitions = dict(definition.split("=") for definition in env["NERFSTUDIO_METHOD_CONFIGS"].split(","))
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(commands.REPO / "pyproject.toml", "rb") as file:
        declared = tomllib.load(file)["project"]["entry-points"]["nerfstudio.method_configs"]
    assert definitions == declared  # every method of the plugin: pds-splat too
    monkeypatch.setenv("NERFSTUDIO_METHOD_CONFIGS", ",".join(f"{name}-from-variable={target}" for name, target in definitions.items()))
    from nerfstudio.plugins.registry import discover_methods

    methods, _ = discover_methods()
    assert {name: methods[f"{name}-from-variable"].method_name for name in definitions} == {name: name for name in definitions}


def test_a_command_is_shown_as_typed_and_its_output_goes_to_the_console_and_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    script = [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]
    seconds, status = commands.run_command(script, commands.command_env(), tmp_path / "logs" / "a.log", echo=True)
    printed = capfd.readouterr().out
    assert status == 3 and seconds >= 0
    assert printed.startswith("$ python -c ") and "out\n" in printed and "err\n" in printed
    assert sorted((tmp_path / "logs" / "a.log").read_text().split()) == ["err", "out"]
    assert commands.log_tail(tmp_path / "logs" / "a.log", lines=1) in ("out", "err")
    _, status = commands.run_command(script, commands.command_env(), tmp_path / "b.log", echo=False)
    assert status == 3 and capfd.readouterr().out.splitlines() == [f"$ {commands.shown(script)}"]  # the log only
    assert commands.shown([commands.BIN / "ns-train", "pds", "--data", "my scene"]) == "ns-train pds --data 'my scene'"
