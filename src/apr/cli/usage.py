"""Command-line usage errors as one `error:` line naming the option and the values it accepts."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any

from typer._click.exceptions import BadParameter, MissingParameter, NoSuchOption, UsageError

# typer re-exports only BadParameter; the other classes live in its vendored click, the one it raises.
_EXTRA_ARGS = re.compile(r"^Got unexpected extra argument\S* \((?P<args>.*)\)$")
_NO_COMMAND = re.compile(r"^No such command '(?P<name>[^']*)'")
_NEEDS_VALUE = re.compile(r"^Option '(?P<opt>[^']+)' requires an? ")


def _command_path(err: UsageError, root: Any, argv: list[str]) -> tuple[str, Any]:
    """(``apr VERB``, the verb's click command) of the error; from argv when click gave no context."""
    if err.ctx is not None:
        return err.ctx.command_path, err.ctx.command
    verb = next((word for word in argv if not word.startswith("-")), None)
    commands = getattr(root, "commands", {})
    if verb in commands:
        return f"apr {verb}", commands[verb]
    return "apr", root


def _param_name(param: Any) -> str:
    """``--max-tokens`` for an option (its longest spelling), ``MODEL`` for an argument."""
    if getattr(param, "param_type_name", "") == "option":
        return max(param.opts, key=len)
    return (param.metavar or param.name or "ARGUMENT").upper()


def _annotation(param: Any) -> Any:
    descriptor = getattr(param, "type_descriptor", None)
    return getattr(descriptor, "annotation", None)


def accepted(param: Any) -> str:
    """What the parameter takes, in words: 'one of a, b, c', 'an integer from 1 to 64', 'a number'..."""
    descriptor = getattr(param, "type_descriptor", None)
    choices = getattr(descriptor, "choices", None) if descriptor is not None else None
    if choices:
        return "one of " + ", ".join(c.value if isinstance(c, Enum) else str(c) for c in choices)
    annotation = _annotation(param)
    info = getattr(descriptor, "parameter_info", None)
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a number"
        if low is not None and high is not None:
            return f"{kind} from {low} to {high}"
        if low is not None:
            return f"{kind} >= {low}"
        if high is not None:
            return f"{kind} <= {high}"
        return kind
    if annotation is Path:
        return "a path"
    if annotation is bool:
        return "no value (it is a flag)"
    described = " ".join((getattr(param, "help", None) or "").split())
    return described.rstrip(".") or "a text value"


def _given_value(argv: list[str], param: Any) -> str | None:
    """The text the user gave ``param`` on the command line, when it can be found."""
    opts = getattr(param, "opts", ()) if getattr(param, "param_type_name", "") == "option" else ()
    for index, word in enumerate(argv):
        for opt in opts:
            if word == opt and index + 1 < len(argv):
                return argv[index + 1]
            if opt.startswith("--") and word.startswith(opt + "="):
                return word[len(opt) + 1 :]
    return None


def _options_of(command: Any) -> str:
    params = getattr(command, "params", [])
    names = sorted(max(p.opts, key=len) for p in params if getattr(p, "param_type_name", "") == "option")
    return ", ".join(name for name in names if name not in ("--help",))


def usage_line(err: UsageError, argv: list[str], root: Any = None) -> str:
    """One line, starting with ``error:``, that says which option was wrong and what it accepts.

    ``root`` is the app's click group: it names the verb when click raised without a context."""
    where, command = _command_path(err, root, argv)
    help_hint = f"see `{where} -h`"
    param = getattr(err, "param", None)
    if isinstance(err, MissingParameter) and param is not None:
        kind = "option" if getattr(param, "param_type_name", "") == "option" else "argument"
        return f"error: {where}: missing {kind} {_param_name(param)} ({accepted(param)}); {help_hint}"
    if isinstance(err, BadParameter) and param is not None:
        given = _given_value(argv, param)
        shown = f" {given!r}" if given is not None else ""
        return f"error: {where}: {_param_name(param)}{shown} is not valid: expected {accepted(param)}"
    if isinstance(err, NoSuchOption):
        options = _options_of(command)
        return f"error: {where}: no such option {err.option_name}" + (f"; options: {options}" if options else "")
    message = " ".join(err.format_message().split())
    match = _NEEDS_VALUE.match(message)
    if match:
        name = match.group("opt")
        found = [p for p in getattr(command, "params", []) if name in getattr(p, "opts", ())]
        takes = f" ({accepted(found[0])})" if found else ""
        return f"error: {where}: {name} needs a value{takes}"
    extra = _EXTRA_ARGS.match(message)
    if extra:
        return f"error: {where}: unexpected extra argument(s) {extra.group('args')}; {help_hint}"
    no_command = _NO_COMMAND.match(message)
    if no_command:
        return f"error: no such command {no_command.group('name')!r}; commands: {', '.join(sorted(getattr(command, 'commands', {})))}"
    return f"error: {where}: {message.rstrip('.')}; {help_hint}"
