"""The `apr chat` REPL: history, /reset, /exit, clean Ctrl-C/Ctrl-D, and piped stdin for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apr.engine import Engine, SamplingParams

HELP = "commands: /reset forgets the conversation, /exit leaves (Ctrl-D too)"


def _lines(interactive: bool) -> Iterator[str]:
    """User turns: prompted input on a terminal, one line per turn from a pipe; stops at EOF or Ctrl-C."""
    try:
        if interactive:
            while True:
                yield input(">>> ")
        else:
            for line in sys.stdin:
                yield line.rstrip("\r\n")
    except (EOFError, KeyboardInterrupt):
        if interactive:
            print(file=sys.stderr)
        return


def chat_loop(engine: "Engine", params: "SamplingParams", *, as_json: bool, system: str | None,
              load_s: float) -> None:
    from apr.cli.engine_session import prompt_ids, result_json

    interactive = sys.stdin.isatty()
    templated = engine.tokenizer.has_chat_template
    if interactive:
        print(f"apr chat · {engine.describe()['architecture']} on {engine.device} · loaded in {load_s:.1f} s · {HELP}",
              file=sys.stderr)
    if not templated:
        print("note: this model has no chat template; turns are appended to one raw transcript", file=sys.stderr)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    transcript = ""
    for line in _lines(interactive):
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = history[:1] if system else []
            transcript = ""
            print("(history cleared)", file=sys.stderr)
            continue
        if text.startswith("/") and text.split()[0] in ("/help", "/?"):
            print(HELP, file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        transcript += text
        ids = prompt_ids(engine, history, None if templated else transcript)
        try:
            reply = _reply(engine, ids, params, show=not as_json)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply.text})
        transcript += reply.text
        if as_json:
            sys.stdout.write(json.dumps(result_json(reply), ensure_ascii=False) + "\n")
            sys.stdout.flush()


def _reply(engine: "Engine", ids: list[int], params: "SamplingParams", show: bool):
    if not show:
        return engine.generate(ids, params)
    from apr.cli.engine_session import stream_to_stdout

    return stream_to_stdout(engine, ids, params)
