"""Every `msc-france` command written in the README and the docs is one the CLI accepts, and the
offline ones run as written (store paths pointed at a store built from the tiny demo world).

Commands are taken from shell blocks and from inline code spans; synopsis notation is read the
usual way: ``[...]`` optional (kept), ``a|b`` alternatives (the first is used), UPPERCASE
placeholders stand for a value.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import pytest

from msc_france.cli import cli, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Commands that only read a store, or read nothing: run for real.
OFFLINE = {"regions", "sensors", "info", "validate", "index", "preview", "export"}


def _commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S)
        lines: list[str] = []
        for b in blocks:  # a synopsis continued on indented lines is one command
            for ln in b.replace("\\\n", " ").splitlines():
                if ln.startswith(" ") and lines and ln.strip().startswith("["):
                    lines[-1] += " " + ln.strip()
                else:
                    lines.append(ln)
        lines += re.findall(r"`(msc-france [^`]+)`", text)
        for line in lines:
            for part in re.split(r"&&|;", line.split("#", 1)[0]):
                part = part.strip()
                if part.startswith("msc-france "):
                    found.append((doc.name, part))
    return found


def _args(command: str) -> list[str]:
    text = command.replace("[", " ").replace("]", " ").replace("...", " ")
    out = []
    for tok in shlex.split(text)[1:]:
        out.append(tok.split("|")[0] if "|" in tok and not tok.startswith("|") else tok)
    return [a for a in out if a]


def _command(args: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command named by ``args`` and the arguments after its name."""
    cmd: click.Command = cli
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        found = cmd.get_command(click.Context(cmd), rest[0])
        if found is None:
            raise click.UsageError(f"no command '{rest[0]}'")
        cmd, rest = found, rest[1:]
    return cmd, rest


def _parse(command: str) -> None:
    """Let click parse the command (options, choices, arguments) without running it. A bare
    reference (``msc-france build`` in prose) names a command; an elided one (``...``) must use
    options that exist.
    """
    args = _args(command)
    cmd, rest = _command(args)
    if not rest:
        return
    if "..." in command:
        known = {o for p in cmd.params for o in p.opts}
        for a in rest:
            if a.startswith("--") and a.split("=")[0] not in known:
                raise click.UsageError(f"no such option: {a}")
        return
    cmd.make_context(cmd.name or "", _fill_placeholders(cmd, rest))


def _fill_placeholders(cmd: click.Command, rest: list[str]) -> list[str]:
    """An UPPERCASE placeholder after an option becomes a value of the option's type."""
    params = {o: p for p in cmd.params for o in p.opts}
    out = list(rest)
    for i in range(1, len(out)):
        p = params.get(out[i - 1])
        if p is None or not re.fullmatch(r"[A-Z][A-Z0-9_]*", out[i]):
            continue
        if isinstance(p.type, click.Choice):
            out[i] = str(p.type.choices[0])
        elif isinstance(p.type, click.IntRange | click.types.IntParamType):
            out[i] = str(getattr(p.type, "min", None) or 1)
    return out


COMMANDS = _commands()


def test_the_docs_show_commands() -> None:
    names = {_args(c)[0] for _, c in COMMANDS if _args(c)}
    assert {"regions", "sensors", "plan", "build", "info", "validate", "index", "preview", "export",
            "catalog"} <= names


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_parses(doc: str, command: str) -> None:
    try:
        _parse(command)
    except click.UsageError as e:
        pytest.fail(f"{doc}: `{command}` is not accepted by the CLI: {e.format_message()}")


def test_offline_documented_commands_run(tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.zarr"
    shutil.copytree(tiny_store, store)
    monkeypatch.chdir(tmp_path)
    ran = 0
    for doc, command in COMMANDS:
        args = _args(command)
        if len(args) < 2 and args[:1] != ["regions"] and args[:1] != ["sensors"]:
            continue  # a bare reference in prose
        if args[0] not in OFFLINE or any(re.fullmatch(r"[A-Z][A-Z0-9_]*", a) for a in args):
            continue  # synopsis lines (placeholders) are checked by the parse test
        args = [str(store) if a.endswith(".zarr") else a for a in args]
        code = main(args)
        out = capsys.readouterr()
        assert code == 0, f"{doc}: `{command}` exited {code}: {out.err.strip()}"
        ran += 1
    assert ran >= 5
