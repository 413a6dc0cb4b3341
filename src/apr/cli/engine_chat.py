"""The `apr chat` REPL: history, /reset, /exit, clean Ctrl-C/Ctrl-D, and piped stdin for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apr.engine import Engine, LookupConfig, PrefixCache, SamplingParams

HELP = (
    'commands: /reset forgets the conversation, /exit leaves (Ctrl-D too); """ on its own line opens '
    "and closes a turn of several lines"
)
BLOCK = '"""'


@dataclass(frozen=True)
class Turn:
    """One user turn; ``literal`` turns (several lines, or JSON) are never read as /commands."""

    text: str
    literal: bool = False


def _line_reader(interactive: bool) -> Callable[[str], str]:
    """input() on a terminal; on a pipe the next stdin line (its prompt unused). EOFError at the end."""
    if interactive:
        return input
    stream = iter(sys.stdin)

    def next_line(_prompt: str) -> str:
        try:
            return next(stream).rstrip("\r\n")
        except StopIteration:
            raise EOFError from None

    return next_line


def read_turns(read_line: Callable[[str], str], *, piped: bool) -> Iterator[Turn]:
    """User turns, until EOF or Ctrl-C. A line is a turn. A line starting with three double quotes opens
    a turn of several lines, closed by a line ending with them (as in Ollama). Piped, a line holding a JSON
    object with a string "content" ({"role": "user", "content": "..."}) is one turn of exactly that text,
    so a script can send any text (code with docstrings included) on one line."""
    try:
        while True:
            line = read_line(">>> ")
            if piped and line.lstrip().startswith("{"):
                content = _json_content(line)
                if content is not None:
                    yield Turn(content, literal=True)
                    continue
            if not line.lstrip().startswith(BLOCK):
                yield Turn(line)
                continue
            parts, body = [], line.lstrip()[len(BLOCK) :]
            while not body.rstrip().endswith(BLOCK):
                parts.append(body)
                try:
                    body = read_line("... ")
                except EOFError:
                    print(f"note: input ended inside a {BLOCK} turn; sending what was read", file=sys.stderr)
                    body = BLOCK
            parts.append(body.rstrip()[: -len(BLOCK)])
            if parts and not parts[0].strip():
                parts.pop(0)  # the opening quotes on their own line
            if parts and not parts[-1].strip():
                parts.pop()  # the closing quotes on theirs
            yield Turn("\n".join(parts), literal=True)
    except (EOFError, KeyboardInterrupt):
        if not piped:
            print(file=sys.stderr)
        return


def _json_content(line: str) -> str | None:
    try:
        document = json.loads(line)
    except ValueError:
        return None
    content = document.get("content") if isinstance(document, dict) else None
    return content if isinstance(content, str) else None


def chat_loop(
    engine: Engine,
    params: SamplingParams,
    *,
    as_json: bool,
    system: str | None,
    load_s: float,
    lookup: LookupConfig | None = None,
) -> None:
    from apr.cli.engine_session import prompt_ids, result_json

    interactive = sys.stdin.isatty()
    templated = engine.tokenizer.has_chat_template
    if interactive:
        print(
            f"apr chat · {engine.describe()['architecture']} on {engine.device} · loaded in {load_s:.1f} s · {HELP}",
            file=sys.stderr,
        )
    if not templated:
        print("note: this model has no chat template; turns are appended to one raw transcript", file=sys.stderr)
    from apr.engine import PrefixCache

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    transcript = ""
    # Each turn starts from the cache the previous one left: only what follows the shared prefix (the new
    # message, the template's markers) is prefilled, so a long conversation does not re-read its past.
    prefix = PrefixCache()
    for turn in read_turns(_line_reader(interactive), piped=not interactive):
        text = turn.text.strip()
        if not text:
            continue
        if not turn.literal and text == "/exit":
            break
        if not turn.literal and text == "/reset":
            history = history[:1] if system else []
            transcript = ""
            prefix.clear()
            print("(history cleared)", file=sys.stderr)
            continue
        if not turn.literal and text.startswith("/") and text.split()[0] in ("/help", "/?"):
            print(HELP, file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        transcript += text
        ids = prompt_ids(engine, history, None if templated else transcript)
        try:
            reply = _reply(engine, ids, params, prefix, show=not as_json, lookup=lookup)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply.text})
        transcript += reply.text
        if as_json:
            document = {**result_json(reply), "cached_prompt_tokens": prefix.reused}
            sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
            sys.stdout.flush()


def _reply(
    engine: Engine,
    ids: list[int],
    params: SamplingParams,
    prefix: PrefixCache,
    show: bool,
    lookup: LookupConfig | None,
):
    if not show:
        return engine.generate(ids, params, prefix, lookup)
    from apr.cli.engine_session import lookup_line, stream_to_stdout

    reply = stream_to_stdout(engine, ids, params, prefix, lookup)
    if reply.lookup is not None and sys.stderr.isatty():
        print(lookup_line(reply), file=sys.stderr)
    return reply
