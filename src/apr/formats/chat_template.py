"""Render chat templates with jinja2 the way Hugging Face transformers does, sandboxed and bounded.

A chat template comes with the model file, so it is untrusted code: it runs in jinja2's immutable sandbox
(no attribute tricks, no mutation), and a render is bounded in time, in output size and in the size of
what one `*`, `**` or `%` may build, so a hostile template ends with one error instead of a hang or an
out-of-memory kill.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from functools import lru_cache
from types import FrameType
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from apr.errors import FormatError

# A rendered prompt beyond this is no prompt any model here could take (128k tokens are ~0.5M characters).
MAX_RENDERED_CHARS = 4_000_000
# Real templates render in milliseconds; this bounds loops that produce nothing.
RENDER_TIME_LIMIT_S = 5.0
# Filename jinja2 gives the Python code it compiles a template string to.
_TEMPLATE_CODE = "<template>"
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\d+)?(?:\.(\d+))?")


class ChatTemplateError(FormatError, ValueError):
    """The model's chat template failed, or went past a limit, on these messages (a ValueError for callers)."""


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus size checks on the operators that can build a huge value from a small template."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > 8 * MAX_RENDERED_CHARS:
                raise ChatTemplateError(f"chat template computes {left} ** {right}, a number beyond its limits")
        elif operator == "%" and isinstance(left, str):
            widths = [int(w) for match in _FORMAT_WIDTH.finditer(left) for w in match.groups() if w]
            if any(width > MAX_RENDERED_CHARS for width in widths):
                raise ChatTemplateError("chat template formats a field wider than a prompt can be")
        return super().call_binop(context, operator, left, right)


def _check_repeat(sequence: Any, times: Any) -> None:
    if isinstance(sequence, (str, list, tuple)) and isinstance(times, int) and not isinstance(times, bool):
        if len(sequence) * times > MAX_RENDERED_CHARS:
            raise ChatTemplateError(
                f"chat template repeats a value {times} times ({len(sequence) * times} items), "
                f"beyond the {MAX_RENDERED_CHARS} a prompt may have"
            )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which chat templates do not expect.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def render_chat(
    source: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    special_tokens: dict[str, str | None],
    tools: list[dict[str, Any]] | None = None,
    time_limit_s: float = RENDER_TIME_LIMIT_S,
) -> str:
    """The prompt text for ``messages``; any failure of the template is a ChatTemplateError (a ValueError)
    with the template's message, one line."""
    try:
        template = compile_template(source)
        context = dict(messages=messages, add_generation_prompt=add_generation_prompt, tools=tools, **special_tokens)
        return _bounded_render(template, context, time_limit_s)
    except ChatTemplateError:
        raise
    except jinja2.exceptions.TemplateError as err:
        raise ChatTemplateError(f"chat template failed: {_one_line(err)}") from err
    except RecursionError:
        raise ChatTemplateError("chat template failed: it recurses without end (a macro calling itself)") from None
    except MemoryError:
        raise ChatTemplateError("chat template failed: it builds a value larger than memory allows") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as err:
        # Errors of the template's own expressions (1/0, a wrong type): the template is broken.
        raise ChatTemplateError(f"chat template failed: {type(err).__name__}: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _bounded_render(template: jinja2.Template, context: dict[str, Any], time_limit_s: float) -> str:
    """``template.render(context)``, stopped past ``time_limit_s`` or MAX_RENDERED_CHARS.

    The time bound traces only the template's own compiled code (line events in its frames), so a loop
    that renders nothing is stopped too; the output bound is checked as the template yields text."""
    deadline = time.monotonic() + time_limit_s

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise ChatTemplateError(f"chat template took longer than {time_limit_s:g} s to render")
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return on_line if frame.f_code.co_filename == _TEMPLATE_CODE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        pieces: list[str] = []
        size = 0
        for piece in template.generate(**context):
            size += len(piece)
            if size > MAX_RENDERED_CHARS:
                raise ChatTemplateError(f"chat template rendered more than {MAX_RENDERED_CHARS} characters")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        sys.settrace(previous)
