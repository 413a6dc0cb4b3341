"""`apr certify --endpoint URL`: a playbook's scenarios, oracles and API-level gates against a remote
OpenAI-compatible endpoint → evidence (provenance names the endpoint, the served model and the server's headers,
never the API key) → MQS (an endpoint's own kind of verdict: ``apr.qa.score``) → JUnit/HTML → tables.

Evidence order: the gates that do not apply (not-applicable records), golden output, stop behaviour, the scenario
cells (``concurrency`` at once), determinism (reruns of answered cells), the serve features (FIM, tool calls, JSON
mode, embeddings: ``features.py``), throughput and TTFT, then G1 (the served model answered). A run that finds the endpoint unreachable, refusing the key or not serving the model ends before
writing anything (exit 2); one whose endpoint dies mid-run ends INCONCLUSIVE (exit 3), never BLOCKED. Resumed
(``resume``), a run carries over the previous run's conclusive units and asks only the rest (``resume.py``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from apr.errors import AprError
from apr.qa import stages
from apr.qa.axes import Modality
from apr.qa.endpoint import checks
from apr.qa.endpoint.client import Answer, EndpointClient, EndpointUnusable, Listing, Refusal, Reply, Unanswered
from apr.qa.endpoint.resume import NOTHING, Carried, carried_over, record_unit, unit_of
from apr.qa.endpoint.spec import EndpointSpec
from apr.qa.evidence import EndpointProvenance, EvidenceWriter, read_evidence
from apr.qa.gates.catalog import ENDPOINT_GATES, GateId
from apr.qa.gates.golden import golden_verdict
from apr.qa.gates.stop import stop_reply_verdict
from apr.qa.measure import DECODE_TOKENS, MIN_REPS
from apr.qa.playbook import Playbook
from apr.qa.progress import RunProgress
from apr.qa.recording import Check, Recorder, Timer, falsified, inconclusive, skipped, stamp_all
from apr.qa.rundir import archive_previous_run
from apr.qa.scenarios import Prompt
from apr.qa.score import MqsResult, Status
from apr.settings import secret_from

DETERMINISM_TARGETS = 2  # answered cells asked again
SERVE_FEATURES = (GateId.FIM, GateId.TOOL_CALLS, GateId.JSON_MODE, GateId.EMBEDDINGS)
# A reply long enough to time the decode, in either API; the oracles never judge it.
THROUGHPUT_PROMPTS = {
    "chat": "Count from 1 to 100, separated by commas. Reply with the numbers only.",
    "completion": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
}
THROUGHPUT_TOKENS = 2 * DECODE_TOKENS
DEFAULT_ROOT = Path("certifications")


@dataclass(frozen=True)
class EndpointPlan:
    """What to certify: the endpoint, the name its evidence goes under, the playbook's scenarios and gates."""

    spec: EndpointSpec
    served_model: str
    playbook: Playbook
    output: Path
    explicit_output: bool = True  # False: the default folder under certifications/, whose tables cover every model
    progress: bool = True
    resume: bool = False  # carry over the conclusive units of the run in `output`; ask only the rest


@dataclass(frozen=True)
class EndpointResult:
    output: Path
    evidence: Path
    mqs: MqsResult
    seconds: float
    tables: Path
    archived: Path | None = None
    carried: int = 0  # records carried over from the resumed run

    @property
    def exit_code(self) -> int:
        """0 CERTIFIED or PROVISIONAL, 1 BLOCKED (evidence against the endpoint's model), 3 INCONCLUSIVE."""
        return {Status.BLOCKED: 1, Status.INCONCLUSIVE: 3}.get(self.mqs.status, 0)


def default_output(served_model: str, playbook: Playbook) -> Path:
    """``certifications/<served model>-endpoint`` (``-<tier>`` added for tiers other than mvp)."""
    slug = re.sub(r"[^a-z0-9.]+", "-", served_model.lower()).strip("-.") or "model"
    suffix = "" if playbook.tier.value == "mvp" else f"-{playbook.tier.value}"
    return DEFAULT_ROOT / f"{slug}-endpoint{suffix}"


def api_key(spec: EndpointSpec) -> str | None:
    """The API key from ``spec.api_key_env`` (None without one); AprError when the variable is not set."""
    if spec.api_key_env is None:
        return None
    key = secret_from(spec.api_key_env)
    if not key:
        raise AprError(f"--api-key-env {spec.api_key_env}: the environment variable is not set or empty; export it")
    return key


class EndpointCertification:
    """One endpoint run: the requests in order, each family's records written as it finishes."""

    def __init__(self, plan: EndpointPlan) -> None:
        self.plan = plan
        self.spec = plan.spec
        self.playbook = plan.playbook
        self.evidence = plan.output / "evidence.jsonl"
        self.seed = plan.playbook.scenarios.seed
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self.carried: Carried = NOTHING

    def run(self) -> EndpointResult:
        started = time.monotonic()
        timeout = self.spec.request_timeout_s or self.playbook.execution.timeout_s
        client = EndpointClient(self.spec, self.plan.served_model, api_key(self.spec), timeout)
        try:
            with RunProgress(self.plan.progress) as progress:
                listing = self._preflight(client)
                if self.plan.resume:
                    self.carried = carried_over(self.evidence, self.plan.served_model, self.playbook.name)
                archived = archive_previous_run(self.plan.output)
                if archived is not None:
                    progress.say(f"apr certify: kept the previous run of {self.plan.output} in {archived}")
                if self.plan.resume:
                    progress.say(
                        f"apr certify: resuming: {len(self.carried.records)} record(s) carried over, "
                        f"{self.carried.dropped} inconclusive one(s) to ask again"
                    )
                progress.say(
                    f"apr certify: {self.playbook.name} ({self.playbook.tier}) on the endpoint {self.spec.url}, "
                    f"model {self.plan.served_model!r}, server {client.headers.get('server', 'unnamed')}"
                )
                with EvidenceWriter(self.evidence) as writer:
                    for record in self.carried.records:
                        writer.append(record)
                    self._certify(client, self._recorder(client), writer, listing, progress)
        finally:
            client.close()
        records = read_evidence(self.evidence).records
        mqs = stages.score(records)
        title = f"{self.plan.served_model} at {self.spec.url} — {self.playbook.tier} (endpoint)"
        stages.report(records, mqs, self.plan.output, title=title, evidence=self.evidence)
        tables = self.plan.output if self.plan.explicit_output else self.plan.output.parent
        stages.tables(tables)
        seconds = time.monotonic() - started
        carried = len(self.carried.records)
        return EndpointResult(self.plan.output, self.evidence, mqs, seconds, tables, archived, carried)

    def _preflight(self, client: EndpointClient) -> Listing:
        try:
            listing = client.served_models()
        except EndpointUnusable as err:
            raise AprError(str(err)) from None
        listed = listing.models
        # A list that names other models means a typo; an empty one (servers that load on demand) proves nothing.
        if listed and self.plan.served_model not in listed:
            shown = ", ".join(repr(m) for m in listed[:10])
            raise AprError(
                f"{self.spec.url}: does not serve the model {self.plan.served_model!r} (GET /models lists {shown}); "
                "pass one of those with --served-model"
            )
        return listing

    def _recorder(self, client: EndpointClient) -> Recorder:
        endpoint = EndpointProvenance(
            url=self.spec.url,
            served_model=self.plan.served_model,
            api=self.spec.api,
            server=client.headers,
            api_key_env=self.spec.api_key_env,
            concurrency=self.spec.concurrency,
            rate_limit_rps=self.spec.rate_limit_rps,
        )
        return Recorder(
            model=self.plan.served_model,
            playbook=self.playbook.name,
            tier=self.playbook.tier,
            # Only what an endpoint can be judged by is planned: the rest is recorded not applicable, never scored.
            gates=tuple(gate for gate in self.playbook.gates.enabled() if gate in ENDPOINT_GATES),
            default_device="endpoint",
            endpoint=endpoint,
        )

    # ---- the families, in evidence order -------------------------------------------------------------------------

    def _certify(
        self,
        client: EndpointClient,
        recorder: Recorder,
        writer: EvidenceWriter,
        listing: Listing,
        progress: RunProgress,
    ) -> None:
        def emit(found: list[Check], timer: Timer) -> None:
            for record in stamp_all(recorder, found, timer):
                if not self.carried.done(record_unit(record)):  # a resumed run never records a unit twice
                    writer.append(record)

        gates = self.playbook.gates
        done = self.carried.done
        emit(checks.not_applicable_checks(gates.enabled()), Timer())
        if gates.golden_output is not None:
            self._family(progress, "golden output", self._golden(client), emit)
        if gates.stop_behavior is not None and self.spec.api == "chat":
            self._family(progress, "stop behavior", self._stops(client), emit)
        replies = self._cells(client, emit, progress)
        if gates.determinism is not None and not done(unit_of(GateId.DETERMINISM, "", None)):
            self._family(progress, "determinism", [lambda: self._determinism(client, replies)], emit)
        features = [gate for gate in SERVE_FEATURES if gate in gates.enabled() and not self.carried.finished_gate(gate)]
        if features:
            self._family(progress, "serve features", [lambda: self._features(client, features)], emit)
        if gates.throughput is not None and not done(unit_of(GateId.THROUGHPUT, checks.THROUGHPUT_CHECK, None)):
            self._family(progress, "throughput", [lambda: [self._throughput(client)]], emit)
        if not done(unit_of(GateId.G1_LOAD, checks.LOAD_CHECK, None)):
            if not self.answers:  # everything else carried over: G1 needs this run's endpoint to answer once
                first = self.playbook.prompts()[0]
                self._ask(client, first.text, first.max_tokens)
            emit([checks.load_check(self.answers, listing, self.plan.served_model)], Timer())

    def _family(
        self,
        progress: RunProgress,
        name: str,
        steps: list[Callable[[], list[Check]]],
        emit: Callable[[list[Check], Timer], None],
    ) -> None:
        phase = progress.phase(name, len(steps))
        for step in steps:
            phase.start(name)
            timer = Timer()
            found = step()
            emit(found, timer)
            phase.finish(f"{name}: " + ", ".join(f"{c.check} {c.outcome}" for c in found))
        phase.close()

    def _ask(self, client: EndpointClient, prompt: str, max_tokens: int, api: str | None = None) -> Answer:
        answer = client.ask(prompt, max_tokens, self.seed, api=api)
        with self._lock:
            self.answers.append(answer)
        return answer

    def _golden(self, client: EndpointClient) -> list[Callable[[], list[Check]]]:
        settings = self.playbook.gates.golden_output
        assert settings is not None  # the caller checked

        def case_step(index: int) -> Callable[[], list[Check]]:
            case = settings.cases[index]

            def step() -> list[Check]:
                answer = self._ask(client, case.prompt, settings.max_tokens)
                if isinstance(answer, Reply):
                    return [
                        golden_verdict(index, case, answer.text, answer.completion_tokens, answer.finish_reason, None)
                    ]
                return [_no_reply(GateId.GOLDEN_OUTPUT, f"golden:{index}", answer, prompt=case.prompt)]

            return step

        cases = range(len(settings.cases))
        return [
            case_step(i) for i in cases if not self.carried.done(unit_of(GateId.GOLDEN_OUTPUT, f"golden:{i}", None))
        ]

    def _stops(self, client: EndpointClient) -> list[Callable[[], list[Check]]]:
        settings = self.playbook.gates.stop_behavior
        assert settings is not None  # the caller checked

        def prompt_step(index: int) -> Callable[[], list[Check]]:
            prompt = settings.prompts[index]

            def step() -> list[Check]:
                answer = self._ask(client, prompt, settings.max_tokens, api="chat")
                if isinstance(answer, Reply):
                    return [
                        stop_reply_verdict(
                            index, prompt, settings, answer.text, answer.finish_reason, answer.completion_tokens
                        )
                    ]
                return [_no_reply(GateId.STOP_BEHAVIOR, f"stops:{index}", answer, prompt=prompt)]

            return step

        steps = range(len(settings.prompts))
        return [
            prompt_step(i) for i in steps if not self.carried.done(unit_of(GateId.STOP_BEHAVIOR, f"stops:{i}", None))
        ]

    def _cells(
        self, client: EndpointClient, emit: Callable[[list[Check], Timer], None], progress: RunProgress
    ) -> list[tuple[Prompt, Reply]]:
        """Every scenario prompt once (an endpoint has one format, one backend, one modality: the matrix's
        ``per_cell`` rotation does not apply), ``concurrency`` requests at once."""
        prompts = self.playbook.prompts()
        phase = progress.phase("cells", len(prompts))
        replies: dict[int, Reply] = {}
        asked = [i for i, p in enumerate(prompts) if not self.carried.done(unit_of(GateId.G3_STABILITY, "", p.id))]

        def one(index: int) -> None:
            prompt = prompts[index]
            phase.start(f"{Modality.SERVE}/{prompt.id}")
            timer = Timer()
            answer = self._ask(client, prompt.text, prompt.max_tokens)
            found = checks.cell_checks(prompt, self.seed, answer)
            emit(found, timer)
            if isinstance(answer, Reply) and answer.text.strip():
                replies[index] = answer
            status = "no answer" if isinstance(answer, Unanswered) else type(answer).__name__.lower()
            cause = f" ({answer.cause})" if isinstance(answer, Unanswered) else ""
            phase.finish(f"endpoint/{prompt.id}: {status}{cause}", seconds=timer.elapsed)

        with ThreadPoolExecutor(max_workers=self.spec.concurrency, thread_name_prefix="apr-endpoint") as pool:
            for future in [pool.submit(one, index) for index in asked]:
                future.result()
        phase.close()
        return [(prompts[index], replies[index]) for index in sorted(replies)]

    def _determinism(self, client: EndpointClient, replies: list[tuple[Prompt, Reply]]) -> list[Check]:
        settings = self.playbook.gates.determinism
        assert settings is not None  # the caller checked
        if len(replies) < DETERMINISM_TARGETS:  # resumed: prompts answered in the earlier run, asked for a first reply
            by_id = {prompt.id: prompt for prompt in self.playbook.prompts()}
            for prompt_id in self.carried.replied()[: DETERMINISM_TARGETS - len(replies)]:
                prompt = by_id[prompt_id]
                first = self._ask(client, prompt.text, prompt.max_tokens)
                if isinstance(first, Reply) and first.text.strip():
                    replies.append((prompt, first))
        if not replies:
            return [skipped(GateId.DETERMINISM, "rerun:serve", "no answered cell to rerun", modality=Modality.SERVE)]
        found = []
        for prompt, first in replies[:DETERMINISM_TARGETS]:
            for _ in range(settings.repeats - 1):
                again = self._ask(client, prompt.text, prompt.max_tokens)
                found.append(checks.rerun_check(prompt, self.seed, first, again))
        return found

    def _features(self, client: EndpointClient, features: list[GateId]) -> list[Check]:
        """FIM, TOOL-CALLS, JSON-MODE, EMBEDDINGS (those planned and not carried over) against the endpoint."""
        from apr.qa.endpoint.features import endpoint_feature_checks

        only = self.playbook.gates.model_copy(
            update={
                field: None
                for field, info in type(self.playbook.gates).model_fields.items()
                if info.alias in {str(g) for g in SERVE_FEATURES if g not in features}
            }
        )
        return endpoint_feature_checks(only, client.client, self.plan.served_model, client.timeout_s)

    def _throughput(self, client: EndpointClient) -> Check:
        settings = self.playbook.gates.throughput
        assert settings is not None  # the caller checked
        minimum = self.spec.min_decode_tok_s or min(settings.min_tok_s.values())
        prompt = THROUGHPUT_PROMPTS[self.spec.api]
        self._ask(client, prompt, THROUGHPUT_TOKENS)  # warmup: caches, compilation, connection
        runs = [self._ask(client, prompt, THROUGHPUT_TOKENS) for _ in range(MIN_REPS)]
        burst: list[Answer] = []
        burst_s = None
        if self.spec.concurrency > 1 and not any(isinstance(a, Unanswered) for a in runs):
            began = time.monotonic()
            with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
                burst = list(
                    pool.map(lambda _: self._ask(client, prompt, THROUGHPUT_TOKENS), range(self.spec.concurrency))
                )
            burst_s = time.monotonic() - began
        return checks.throughput_check(runs, burst, burst_s, minimum, self.spec.concurrency)


def _no_reply(gate: GateId, name: str, answer: Answer, **fields) -> Check:
    """A gate's check whose request got no reply: inconclusive when nothing answered, falsified otherwise."""
    if isinstance(answer, Unanswered):
        return inconclusive(gate, name, answer.cause, f"no answer: {answer.reason}", **fields)
    why = f"HTTP {answer.status}: {answer.message}" if isinstance(answer, Refusal) else getattr(answer, "reason", "")
    return falsified(gate, name, f"no reply: {why}", **fields)


def certify_endpoint(plan: EndpointPlan) -> EndpointResult:
    return EndpointCertification(plan).run()
