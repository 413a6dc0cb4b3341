"""FIM, TOOL-CALLS, JSON-MODE, EMBEDDINGS: one real `apr serve` per format under test, asked what code tools ask.

Each format's artifact is served once (CPU, a real subprocess) and the enabled gates' fixed cases
(``apr.qa.coder_cases``) go to it over real HTTP with the official openai client, greedy. Every case is one
record, judged by its oracle (``apr.qa.oracles.fim``/``tool_call``/``json_schema``/``embedding``).

Applicability is a property of the checkpoint as given (the source artifact), read from its tokenizer before
anything is served: FIM needs FIM tokens in the vocabulary, TOOL-CALLS a chat template that renders tools,
JSON-MODE a chat template. A gate whose feature the checkpoint lacks gets one ``not_applicable`` record and
leaves the MQS plan (``apr.qa.score``). A feature the checkpoint has and a converted format refuses (a 4xx:
FIM tokens lost in conversion) is falsified. Who decided an outcome follows the cells' rules: a 5xx or a server
that died of its own defect is crashed; a deadline, OOM or outside kill is inconclusive (``apr.qa.infra``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apr.errors import AprError
from apr.qa import coder_cases as cases
from apr.qa.axes import Backend, Format
from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import EmbeddingsGate, FimGate, GateSet, JsonModeGate, ToolCallsGate
from apr.qa.infra import InfraCause
from apr.qa.oracles import embedding, fim, json_schema, tool_call
from apr.qa.oracles.feature import FeatureVerdict
from apr.qa.procs import Ending, ProcessResult, child_env
from apr.qa.recording import Check, inconclusive, skipped, verdict

if TYPE_CHECKING:
    from apr.eval.sandbox import Sandbox
    from apr.qa.serve_session import ServeSession
    from apr.qa.stages import Subject

GATES = (GateId.FIM, GateId.TOOL_CALLS, GateId.JSON_MODE, GateId.EMBEDDINGS)


@dataclass(frozen=True)
class Support:
    """Which serve features the checkpoint's tokenizer provides."""

    fim: bool
    chat: bool
    tools: bool

    def lacks(self, gate: GateId) -> str | None:
        """Why ``gate`` does not apply to this checkpoint, or None when it does."""
        if gate is GateId.FIM and not self.fim:
            return "the vocabulary has no FIM tokens (<|fim_prefix|>, <fim_prefix>, ...): FIM is not served"
        if gate in (GateId.TOOL_CALLS, GateId.JSON_MODE) and not self.chat:
            return "the model has no chat template: chat features (tools, response_format) are not served"
        if gate is GateId.TOOL_CALLS and not self.tools:
            return "the chat template does not render tools: tool calls are not served"
        return None


def support_of(path: Path) -> Support:
    """Read the checkpoint's tokenizer (no weights are loaded) for its FIM tokens and chat template."""
    from apr.formats import load_model
    from apr.serve.fim import find_fim_tokens

    tokenizer = load_model(path).tokenizer
    template = tokenizer.chat_template or ""
    return Support(
        fim=find_fim_tokens(tokenizer) is not None,
        chat=tokenizer.has_chat_template,
        tools="tools" in template,  # the server's own test (apr.serve.admission)
    )


@dataclass(frozen=True)
class Undecided:
    """The machine decided nothing about the model (a sandbox that could not run, a kill at its wall clock)."""

    reason: str


Asked = FeatureVerdict | Undecided
Ask = Callable[[Any, str, float], Asked]  # (openai client, model id, timeout) -> what the oracle concluded


@dataclass(frozen=True)
class Probe:
    """One case to ask: its gate, check name, the prompt shown in the evidence, and how to ask and judge it."""

    gate: GateId
    check: str
    prompt_id: str
    prompt: str
    ask: Ask


def probes(gates: GateSet, wanted: tuple[GateId, ...], where: str, sandbox: Callable[[], Sandbox]) -> list[Probe]:
    """Every case of the wanted gates against one server, in gate order; ``where`` names it in the check names
    (``gguf/cpu`` for a format apr serves here, ``endpoint`` for a remote one)."""
    found: list[Probe] = []
    if GateId.FIM in wanted and gates.fim is not None:
        found += _fim_probes(gates.fim, where, sandbox)
    if GateId.TOOL_CALLS in wanted and gates.tool_calls is not None:
        found += _tool_probes(gates.tool_calls, where)
    if GateId.JSON_MODE in wanted and gates.json_mode is not None:
        found += _json_probes(gates.json_mode, where)
    if GateId.EMBEDDINGS in wanted and gates.embeddings is not None:
        found.append(_embedding_probe(gates.embeddings, where))
    return found


def _fim_probes(settings: FimGate, where: str, sandbox: Callable[[], Sandbox]) -> list[Probe]:
    def make(case: cases.FimCase) -> Ask:
        def ask(client: Any, model: str, timeout_s: float) -> Asked:
            reply = client.completions.create(
                model=model,
                prompt=case.prefix,
                suffix=case.suffix,
                max_tokens=settings.max_tokens,
                temperature=0,
                seed=0,
                timeout=timeout_s,
            )
            middle, finish = reply.choices[0].text or "", reply.choices[0].finish_reason
            parsed = replace(fim.check(case, middle, finish), output=middle)
            if not parsed.passed or not case.test or not settings.run_tests:
                return parsed
            execution = sandbox().run(fim.program(case, middle), case.test)
            judged = fim.check_execution(execution)
            if judged is None:
                return Undecided(f"the sandbox decided nothing ({execution.status}): {execution.error[-200:]}")
            return replace(judged, output=middle)

        return ask

    chosen = cases.FIM_CASES[: settings.cases]
    made = []
    for index, case in enumerate(chosen):
        prompt_id = cases.case_id("fim", index, case.prefix + case.suffix)
        check = f"fim:{where}/{prompt_id}"
        shown = f"{case.prefix}<FILL>{case.suffix}"
        made.append(Probe(GateId.FIM, check, prompt_id, shown, make(case)))
    return made


def _tool_probes(settings: ToolCallsGate, where: str) -> list[Probe]:
    def make(case: cases.ToolCase) -> Ask:
        def ask(client: Any, model: str, timeout_s: float) -> FeatureVerdict:
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": case.request}],
                tools=list(cases.TOOLS),
                tool_choice=settings.tool_choice,
                max_tokens=settings.max_tokens,
                temperature=0,
                seed=0,
                timeout=timeout_s,
            )
            message = reply.choices[0].message
            calls = [tool_call.ToolCall(c.function.name, c.function.arguments) for c in message.tool_calls or []]
            judged = tool_call.check(case, calls, message.content, reply.choices[0].finish_reason)
            shown = {
                "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls],
                "content": message.content,
            }
            return replace(judged, output=json.dumps(shown, ensure_ascii=False))

        return ask

    made = []
    for index, case in enumerate(cases.TOOL_CASES[: settings.cases]):
        prompt_id = cases.case_id("tools", index, case.request)
        made.append(Probe(GateId.TOOL_CALLS, f"tool-call:{where}/{prompt_id}", prompt_id, case.request, make(case)))
    return made


def _json_probes(settings: JsonModeGate, where: str) -> list[Probe]:
    def make(case: cases.JsonCase) -> Ask:
        def ask(client: Any, model: str, timeout_s: float) -> FeatureVerdict:
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": case.request}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": case.name, "schema": case.schema, "strict": True},
                },
                max_tokens=settings.max_tokens,
                temperature=0,
                seed=0,
                timeout=timeout_s,
            )
            choice = reply.choices[0]
            judged = json_schema.check(choice.message.content, choice.finish_reason, case.schema)
            return replace(judged, output=choice.message.content or "")

        return ask

    made = []
    for index, case in enumerate(cases.JSON_CASES[: settings.cases]):
        prompt_id = cases.case_id("json", index, case.request)
        made.append(Probe(GateId.JSON_MODE, f"json-schema:{where}/{prompt_id}", prompt_id, case.request, make(case)))
    return made


def _embedding_probe(settings: EmbeddingsGate, where: str) -> Probe:
    texts = [text for t in cases.EMBEDDING_TRIPLES for text in (t.anchor, t.paraphrase, t.unrelated)]

    def ask(client: Any, model: str, timeout_s: float) -> FeatureVerdict:
        reply = client.embeddings.create(model=model, input=texts, timeout=timeout_s)
        vectors = [item.embedding for item in sorted(reply.data, key=lambda item: item.index)]
        triples = [(vectors[i], vectors[i + 1], vectors[i + 2]) for i in range(0, len(vectors) - 2, 3)]
        return embedding.check(triples, settings.min_ordered_fraction, settings.min_margin)

    prompt_id = cases.case_id("embeddings", 0, "\n".join(texts))
    return Probe(GateId.EMBEDDINGS, f"similarity:{where}", prompt_id, " | ".join(texts[:3]) + " | ...", ask)


# ---- running them -----------------------------------------------------------------------------------------


def serve_feature_checks(subject: Subject, wanted: tuple[GateId, ...]) -> list[Check]:
    """The records of the ``wanted`` serve-feature gates: not applicable ones once, the rest per format."""
    source = subject.artifacts.source
    source_path = subject.artifacts.paths.get(source) if source is not None else None
    if source_path is None:
        return [skipped(gate, "serve", "no source artifact to read the model's features from") for gate in wanted]
    try:
        support = support_of(source_path)
    except AprError as err:  # an unreadable checkpoint: the integrity and load gates say so; nothing to ask here
        return [skipped(gate, "serve", f"the model's tokenizer could not be read: {err}") for gate in wanted]
    checks = [
        Check(gate, "applicable", Outcome.NOT_APPLICABLE, why)
        for gate in wanted
        if (why := support.lacks(gate)) is not None
    ]
    applicable = tuple(gate for gate in wanted if support.lacks(gate) is None)
    if not applicable:
        return checks
    sandbox = lazy_sandbox()
    for fmt in subject.formats:
        path = subject.artifacts.paths.get(fmt)
        if path is None:
            checks += [skipped(g, f"serve:{fmt}/cpu", f"no {fmt} artifact", format=fmt) for g in applicable]
            continue
        checks += _serve_format(subject, fmt, path, probes(subject.gates, applicable, f"{fmt}/cpu", sandbox))
    return checks


def lazy_sandbox() -> Callable[[], Sandbox]:
    made: list[Sandbox] = []

    def get() -> Sandbox:
        if not made:
            from apr.eval.sandbox import Sandbox

            made.append(Sandbox())
        return made[0]

    return get


def _serve_format(subject: Subject, fmt: Format, path: Path, asked: list[Probe]) -> list[Check]:
    from apr.qa.serve_session import serve, wait_ready

    argv = [*subject.plan().apr_argv, "serve", str(path), "--host", "127.0.0.1", "--port", "0", "--device", "cpu"]
    threads = subject.calibration.threads if subject.calibration is not None else subject.threads
    env = child_env({"OMP_NUM_THREADS": str(threads)} if threads else None)
    try:
        with serve(argv, env=env) as session:
            # The server gets the playbook's per-cell deadline to start, and each request as much again.
            if not wait_ready(session, time.monotonic() + subject.timeout_s):
                result = session.result(timed_out=session.alive())
                return [_process_check(p, fmt, result, "apr serve did not become ready") for p in asked]
            assert session.base_url is not None  # wait_ready returned True only after reading it
            client = _client(session.base_url, subject.timeout_s)
            # The server answers to the path it was started on (docs/serve.md, /v1/models).
            return [_ask(probe, fmt, client, str(path), session, subject.timeout_s) for probe in asked]
    except OSError as err:  # fork or exec failed: the machine could not start the server
        result = ProcessResult(tuple(argv), None, "", "", 0.0, False, start_error=str(err))
        return [_process_check(p, fmt, result, "apr serve could not start") for p in asked]


def _client(base_url: str, timeout_s: float) -> Any:
    import httpx
    from openai import OpenAI

    # The server is local: a proxy from the environment must never sit between the two.
    http_client: Any = httpx.Client(trust_env=False, timeout=timeout_s)
    return OpenAI(
        base_url=f"{base_url}/v1", api_key="apr-qa", timeout=timeout_s, max_retries=0, http_client=http_client
    )


def _ask(probe: Probe, fmt: Format, client: Any, model: str, session: ServeSession, timeout_s: float) -> Check:
    from openai import APIError, APIStatusError

    fields: dict[str, Any] = {"format": fmt, "backend": Backend.CPU, "prompt_id": probe.prompt_id}
    fields["prompt"] = probe.prompt
    deadline = time.monotonic() + timeout_s
    try:
        judged = probe.ask(client, model, timeout_s)
    except APIStatusError as err:
        if err.status_code >= 500:
            tail = session.result().stderr_tail() or "(empty)"
            return Check(
                probe.gate, probe.check, Outcome.CRASHED, f"HTTP {err.status_code}; stderr: {tail}", 1, **fields
            )
        # The checkpoint has the feature (applicability was read from it): a served format refusing it is wrong.
        return Check(
            probe.gate, probe.check, Outcome.FALSIFIED, f"HTTP {err.status_code}: {err.message[:300]}", 1, **fields
        )
    except APIError as err:
        try:
            session.proc.wait(timeout=2.0)  # a dropped connection may be the server dying: let it finish
        except subprocess.TimeoutExpired:  # still serving: the request failed, not the process
            late = time.monotonic() >= deadline
            why = f"request failed ({type(err).__name__}){' at the deadline' if late else ''}: {str(err)[:200]}"
            if late:
                return inconclusive(probe.gate, probe.check, InfraCause.DEADLINE, why, **fields)
            return Check(probe.gate, probe.check, Outcome.CRASHED, why, 1, **fields)
        return _process_check(probe, fmt, session.result(), "the server died during the request")
    if isinstance(judged, Undecided):
        return inconclusive(probe.gate, probe.check, InfraCause.DEADLINE, judged.reason, **fields)
    return verdict(
        probe.gate, probe.check, judged.passed, judged.reason, 1, metrics=judged.metrics, output=judged.output, **fields
    )


def _process_check(probe: Probe, fmt: Format, result: ProcessResult, what: str) -> Check:
    """The record of a case the server's process decided: crashed, or inconclusive when the machine stopped it."""
    fields: dict[str, Any] = {"format": fmt, "backend": Backend.CPU, "prompt_id": probe.prompt_id}
    reason = f"{what}: {result.reason()}"
    ending = result.ending
    if ending in (Ending.TIMEOUT, Ending.INFRASTRUCTURE):
        cause = result.infra_cause or InfraCause.DEADLINE
        return inconclusive(probe.gate, probe.check, cause, reason, output=result.stderr_tail(), **fields)
    if ending is Ending.CRASHED:
        return Check(probe.gate, probe.check, Outcome.CRASHED, reason, 1, output=result.stderr_tail(), **fields)
    # exit 2 (it could not load this format) or exit 0 without serving: the format cannot be served.
    return Check(probe.gate, probe.check, Outcome.FALSIFIED, reason, 1, output=result.stderr_tail(), **fields)
