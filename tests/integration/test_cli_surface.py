"""The ``dicomnode`` command line keeps its words and flags: every command path of the typer app, with its
arguments and options (flags, type, required, default, choices, help), equals ``tests/data/cli_commands.json``,
the listing taken of the command line before it moved to one typer app (argparse + typer then). A missing
optional dependency is one sentence naming how to install it."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import typer

from dicomnode.cli.main import app, missing_dependency

REPO = Path(__file__).resolve().parents[2]
EXPECTED = REPO / "tests" / "data" / "cli_commands.json"


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _type(param: Any) -> str:
    """``flag``, ``text``, ``integer``, ``path``, or the name of the parser function (``timestamp``)."""
    if getattr(param, "is_flag", False):
        return "flag"
    descriptor = param.type_descriptor
    parser = getattr(descriptor.parameter_info, "parser", None)
    if parser is not None:
        return str(parser.__name__).lstrip("_")
    annotation = typing.get_args(descriptor.annotation)[0] if descriptor.is_list else descriptor.annotation
    if descriptor.is_choice:
        return "text"
    return {str: "text", int: "integer", Path: "path"}.get(annotation, str(annotation))


def _choices(param: Any) -> list[Any] | None:
    choices = param.type_descriptor.choices
    return None if choices is None else [_plain(c) for c in choices]


def listing(command: Any, path: str, out: dict[str, Any]) -> dict[str, Any]:
    """``{command path: {help, arguments, options}}`` for ``command`` and every command below it."""
    arguments, options = [], []
    for param in command.params:
        entry = {"type": _type(param), "required": bool(param.required), "default": _plain(param.default),
                 "choices": _choices(param), "help": getattr(param, "help", None)}
        if param.param_type_name == "argument":
            nargs = param.nargs if param.nargs != -1 else ("+" if param.required else "*")
            arguments.append({"name": param.name, "nargs": nargs, **entry})
        else:
            options.append({"flags": [*param.opts, *param.secondary_opts], **entry})
    out[path] = {"help": command.help, "arguments": arguments, "options": sorted(options, key=lambda o: o["flags"])}
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        listing(sub, f"{path} {name}", out)
    return out


def test_every_command_keeps_its_words_and_flags() -> None:
    expected = json.loads(EXPECTED.read_text())
    actual = listing(typer.main.get_command(app), "dicomnode", {})
    assert sorted(actual) == sorted(expected)
    for path, command in expected.items():
        assert actual[path] == command, path


def test_help_options_are_h_and_help_everywhere() -> None:
    def walk(command: Any, ctx: Any) -> None:
        assert sorted(command.get_help_option(ctx).opts) == ["--help", "-h"], ctx.command_path
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, sub.make_context(name, [], parent=ctx, resilient_parsing=True))

    root = typer.main.get_command(app)
    walk(root, root.make_context("dicomnode", [], resilient_parsing=True))


def _without(module: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``dicomnode ARGS`` in a process where ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None; from dicomnode.cli.main import main; "
            "raise SystemExit(main(sys.argv[1:]))")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    environment |= {"DICOMNODE_DATA_DIR": str(tmp_path / "data"), "DICOMNODE_MODELS_DIR": str(tmp_path / "models"),
                    **env}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(("module", "args", "env", "names"), [
    ("flwr", ("fl", "server", "--rounds", "1", "--sites", "1"), {},
     ("flwr is not installed", "scripts/setup.sh --dev", "pip install --no-deps flwr==1.42.0", "fl extra",
      ".[fl]")),
    ("psycopg", ("db", "upgrade"), {"DICOMNODE_DATABASE_URL": "postgresql+psycopg://node@127.0.0.1:1/dicomnode"},
     ("psycopg is not installed", "postgresql+psycopg://", "postgres extra", "pip install 'dicomnode[postgres]'",
      "pip install -e '.[postgres]'")),
])
def test_a_missing_dependency_is_one_sentence_naming_its_extra(
        tmp_path: Path, module: str, args: tuple[str, ...], env: dict[str, str], names: tuple[str, ...]) -> None:
    done = _without(module, tmp_path, *args, **env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith("dicomnode: ")
    for name in names:
        assert name in line


@pytest.mark.parametrize(("module", "extra"), [("torch", "torch"), ("onnxruntime", "onnx"), ("grpc", "fl")])
def test_each_optional_module_names_its_extra(module: str, extra: str) -> None:
    sentence = missing_dependency(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert sentence.startswith(f"{module} is not installed: install the {extra} extra")
    assert f"pip install 'dicomnode[{extra}]'" in sentence and f"pip install -e '.[{extra}]'" in sentence
