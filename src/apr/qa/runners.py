"""Drive one cell through the real CLI: `apr run --json`, `apr chat --json` on stdin, `apr serve` + HTTP."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from apr.qa.infra import InfraCause
from apr.qa.invocation import Invocation
from apr.qa.procs import Children, Ending, ProcessResult, run_process
from apr.qa.serve_session import serve, wait_ready

# The serve cell's HTTP request gets whatever remains of the cell's deadline, but at least this.
MIN_REQUEST_S = 5.0
# After a failed request, how long to wait for a dying server to be reaped before judging it alive.
DEATH_GRACE_S = 2.0


@dataclass(frozen=True)
class CellRun:
    """What one cell produced: how the program ended, and the model's reply when there is one."""

    process: ProcessResult
    ending: Ending
    reason: str
    text: str | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    command: str = ""

    @property
    def decode_tok_s(self) -> float | None:
        value = self.timings.get("decode_tok_s")
        return float(value) if value is not None else None

    @property
    def infra_cause(self) -> InfraCause | None:
        """The machine cause when the machine, not the model, stopped the cell (see ``apr.qa.infra``)."""
        if self.ending is Ending.TIMEOUT:
            return InfraCause.DEADLINE
        if self.ending is Ending.INFRASTRUCTURE:
            return self.process.infra_cause or InfraCause.LOST_PROCESS
        return None


def _from_process(process: ProcessResult, command: str) -> CellRun:
    return CellRun(process=process, ending=process.ending, reason=process.reason(), command=command)


def json_document(stdout: str) -> dict[str, Any] | None:
    """The one JSON document on stdout (pretty-printed or a single last line)."""
    text = stdout.strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _reply_fields(document: dict[str, Any]) -> dict[str, Any]:
    timings = document.get("timings") or {}
    return {
        "text": document.get("text") if isinstance(document.get("text"), str) else None,
        "completion_tokens": document.get("completion_tokens"),
        "finish_reason": document.get("finish_reason"),
        "timings": {k: float(v) for k, v in timings.items() if isinstance(v, (int, float))},
    }


def _parsed(run: CellRun, document: dict[str, Any] | None, what: str) -> CellRun:
    if run.ending is not Ending.OK:
        return run
    if document is None or not isinstance(document.get("text"), str):
        excerpt = run.process.stdout.strip()[-200:] or "(empty)"
        return replace(
            run, ending=Ending.REFUSED, reason=f"exit 0 but {what} printed no JSON reply with a text field: {excerpt!r}"
        )
    return replace(run, **_reply_fields(document))


def run_cell_run(cell: Invocation, apr_argv: list[str], children: Children | None = None) -> CellRun:
    """`apr run MODEL --prompt P --json`: one prompt, one JSON document on stdout."""
    argv = [
        *apr_argv,
        "run",
        str(cell.model_path),
        "--prompt",
        cell.prompt,
        "--max-tokens",
        str(cell.max_tokens),
        "--temperature",
        "0",
        "--seed",
        str(cell.seed),
        *cell.engine_flags(),
        "--json",
    ]
    if not cell.use_chat_template:
        argv.append("--raw")  # a base model continues the text; there is no chat template to wrap it in
    process = run_process(argv, timeout_s=cell.timeout_s, env=cell.environment(), children=children)
    return _parsed(_from_process(process, "apr run"), json_document(process.stdout), "apr run")


def chat_turn(prompt: str) -> str:
    """The prompt as ONE stdin line of `apr chat`: a JSON message, which carries newlines and quotes exactly."""
    return json.dumps({"role": "user", "content": prompt}, ensure_ascii=False)


def run_cell_chat(cell: Invocation, apr_argv: list[str], children: Children | None = None) -> CellRun:
    """`apr chat MODEL --json` with the prompt as one user turn on stdin; the first JSON line is the reply."""
    argv = [
        *apr_argv,
        "chat",
        str(cell.model_path),
        *cell.engine_flags(),
        "--max-tokens",
        str(cell.max_tokens),
        "--seed",
        str(cell.seed),
        "--json",
    ]
    process = run_process(
        argv,
        timeout_s=cell.timeout_s,
        stdin_text=chat_turn(cell.prompt) + "\n",
        env=cell.environment(),
        children=children,
    )
    document = None
    for line in process.stdout.splitlines():
        document = json_document(line)
        if document is not None:
            break
    return _parsed(_from_process(process, "apr chat"), document, "apr chat")


def _ask_server(base_url: str, cell: Invocation, timeout_s: float) -> dict[str, Any]:
    """One real request with the official openai client; returns text, tokens, finish reason."""
    import httpx
    from openai import OpenAI

    # The server is local: a proxy from the environment must never sit between the two.
    # openai's annotations name its own vendored client class; an httpx.Client is what it takes at run time.
    http_client: Any = httpx.Client(trust_env=False, timeout=timeout_s)
    client = OpenAI(
        base_url=f"{base_url}/v1", api_key="apr-qa", timeout=timeout_s, max_retries=0, http_client=http_client
    )
    model_id = client.models.list().data[0].id
    started = time.monotonic()
    if cell.serve_api == "chat":
        chat = client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": cell.prompt}],
            max_tokens=cell.max_tokens,
            temperature=0,
            seed=cell.seed,
        )
        text, usage, finish = chat.choices[0].message.content, chat.usage, chat.choices[0].finish_reason
    else:
        completion = client.completions.create(
            model=model_id,
            prompt=cell.prompt,
            max_tokens=cell.max_tokens,
            temperature=0,
            seed=cell.seed,
        )
        text, usage, finish = completion.choices[0].text, completion.usage, completion.choices[0].finish_reason
    elapsed = time.monotonic() - started
    tokens = usage.completion_tokens if usage else None
    timings = {"request_s": elapsed}
    if tokens and elapsed > 0:
        timings["request_tok_s"] = tokens / elapsed  # includes prefill and HTTP: a lower bound on decode speed
    return {"text": text or "", "completion_tokens": tokens, "finish_reason": finish, "timings": timings}


def _await_exit(session, seconds: float) -> None:
    import subprocess

    try:
        session.proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return  # still serving: the failure was the request's, not the process's


def run_cell_serve(cell: Invocation, apr_argv: list[str], children: Children | None = None) -> CellRun:
    """`apr serve MODEL --port 0`, then one request over real HTTP; the server is always stopped."""
    argv = [*apr_argv, "serve", str(cell.model_path), "--host", "127.0.0.1", "--port", "0", *cell.engine_flags()]
    deadline = time.monotonic() + cell.timeout_s
    try:
        return _serve_and_ask(cell, argv, deadline, children)
    except OSError as err:  # the server could not be started: fork or exec failed
        process = ProcessResult(tuple(argv), None, "", "", 0.0, False, start_error=str(err))
        return _from_process(process, "apr serve")


def _serve_and_ask(cell: Invocation, argv: list[str], deadline: float, children: Children | None) -> CellRun:
    from openai import APIError

    with serve(argv, env=cell.environment(), children=children) as session:
        if not wait_ready(session, deadline):
            timed_out = session.alive()
            result = session.result(timed_out=timed_out)
            if not timed_out and result.ending is Ending.OK:
                return CellRun(
                    process=result,
                    ending=Ending.REFUSED,
                    command="apr serve",
                    reason="apr serve exited 0 without printing its ready line",
                )
            return _from_process(result, "apr serve")
        try:
            assert session.base_url is not None  # wait_ready returned True only after reading it
            reply = _ask_server(session.base_url, cell, max(MIN_REQUEST_S, deadline - time.monotonic()))
        except APIError as err:
            _await_exit(session, DEATH_GRACE_S)  # a dropped connection may be the server dying: let it finish
            if not session.alive():
                session.proc.wait()
                result = session.result()
                return (
                    _from_process(result, "apr serve")
                    if result.ending in (Ending.CRASHED, Ending.INFRASTRUCTURE)
                    else CellRun(
                        process=result,
                        ending=Ending.CRASHED,
                        command="apr serve",
                        reason=f"server died during the request ({type(err).__name__}); {result.reason()}",
                    )
                )
            status = getattr(err, "status_code", None)
            if status is not None and status >= 500:
                # The server stayed up but its code raised: a crash of the request, with the server's log tail.
                return CellRun(
                    process=session.result(),
                    ending=Ending.CRASHED,
                    command="apr serve",
                    reason=f"HTTP {status} from the server; stderr: {session.result().stderr_tail() or '(empty)'}",
                )
            late = time.monotonic() >= deadline
            return CellRun(
                process=session.result(timed_out=late),
                command="apr serve",
                ending=Ending.TIMEOUT if late else Ending.REFUSED,
                reason=f"HTTP request failed: {type(err).__name__}: {str(err)[:300]}",
            )
        return CellRun(
            process=session.result(),
            ending=Ending.OK,
            command="apr serve",
            reason=f"HTTP 200 from {session.base_url}",
            **reply,
        )


RUNNERS = {"run": run_cell_run, "chat": run_cell_chat, "serve": run_cell_serve}


def run_cell(cell: Invocation, apr_argv: list[str], children: Children | None = None) -> CellRun:
    return RUNNERS[cell.modality](cell, apr_argv, children)
