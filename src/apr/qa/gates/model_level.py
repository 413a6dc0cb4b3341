"""The model-level gates of one certification, in order: integrity, contract, plausibility, structure, tokenizer
parity, engine load, golden output, attention trace, numerics parity, format parity, reference parity.

Models are loaded one format at a time (an engine of the 1.5B model is gigabytes) and released before the
next; only the parity logits are kept. Each gate family's records are written as soon as it is done.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from apr.formats.model import CanonicalModel
from apr.qa.axes import Backend, Format
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import GateSet, ParityGate
from apr.qa.recording import Check, Recorder, Timer, skipped, stamp_all

if TYPE_CHECKING:
    from apr.qa.gates.second_opinion import ExactSecondOpinion

_S = TypeVar("_S")
Emit = Callable[[list], None]  # receives the stamped records of one gate family


@dataclass
class ModelGateInputs:
    """What the model-level gates run on."""

    artifacts: dict[Format, Path]
    digests: dict[Format, str]
    source: Format
    gates: GateSet
    expected_sha256: str | None = None
    chat: bool = True
    cuda_available: bool = False
    backends: tuple[Backend, ...] = (Backend.CPU,)
    done_gates: frozenset[GateId] = frozenset()  # already in the evidence (resume): not rerun
    conversion_failures: dict[Format, str] = field(default_factory=dict)
    pack_cache: bool = True  # load engines through the packed-weight cache
    ref: str | None = None  # the model the checkpoint claims to be (its reference config is looked up by it)


def _settings(value: _S | None) -> _S:
    """A wanted gate's settings: ``wanted()`` is true only for a gate the playbook lists, so they are set."""
    if value is None:
        raise AssertionError("a gate ran without settings")  # a bug in wanted(), never bad input
    return value


class ModelGateRun:
    """Runs the enabled gates and hands every family's records to ``emit`` as it finishes."""

    def __init__(
        self, inputs: ModelGateInputs, recorder: Recorder, emit: Emit, on_step: Callable[[str], None] | None = None
    ) -> None:
        self.inputs = inputs
        self.recorder = recorder
        self.emit = emit
        self.on_step = on_step  # told what starts now (a progress display), before each long step
        self.models: dict[Format, CanonicalModel] = {}
        self.parity_ids: list[list[int]] = []  # token ids of the parity prompts (source tokenizer)

    def _step(self, what: str) -> None:
        if self.on_step is not None:
            self.on_step(what)

    def wanted(self, gate: GateId) -> bool:
        return gate not in self.inputs.done_gates and gate in self.inputs.gates.enabled()

    def _emit(self, checks: list[Check], timer: Timer) -> None:
        if checks:
            self.emit(stamp_all(self.recorder, checks, timer))

    def _per_model(self, gate: GateId, make: Callable[[CanonicalModel, Format], list[Check]]) -> None:
        if not self.wanted(gate):
            return
        timer = Timer()
        checks: list[Check] = []
        for fmt in self.inputs.artifacts:
            if fmt in self.models:
                checks += make(self.models[fmt], fmt)
            else:
                checks.append(
                    skipped(gate, f"all:{fmt}", f"{fmt} artifact did not read (see G0): not checked", format=fmt)
                )
        self._emit(checks, timer)

    def integrity(self) -> None:
        from apr.qa.gates.integrity import integrity_checks
        from apr.qa.recording import falsified

        self._step("integrity: read and hash every artifact")
        timer = Timer()
        checks, self.models = integrity_checks(
            self.inputs.artifacts, self.inputs.digests, self.inputs.source, self.inputs.expected_sha256
        )
        if self.wanted(GateId.G0_INTEGRITY):
            from apr.qa.gates.reference_weights import reference_weights_check

            self._step("integrity: every tensor against the published checkpoint's fingerprint")
            weights = [reference_weights_check(model, fmt, self.inputs.ref) for fmt, model in self.models.items()]
            checks += [check for check in weights if check is not None]
        checks += [
            falsified(GateId.G0_INTEGRITY, f"convert:{fmt}", f"conversion to {fmt} failed: {why}", format=fmt)
            for fmt, why in self.inputs.conversion_failures.items()
        ]
        if self.wanted(GateId.G0_INTEGRITY):
            self._emit(checks, timer)

    def static_gates(self) -> None:
        from apr.qa.gates.stop import stop_static_checks
        from apr.qa.gates.structure import structure_checks

        self._step("contract, plausibility, structure, tokenizer parity")
        self._per_model(GateId.CONTRACT_INVARIANTS, self._contract_checks)
        self._per_model(GateId.METADATA_PLAUSIBILITY, self._metadata_checks)
        self._per_model(GateId.STRUCTURE, structure_checks)
        self._per_model(GateId.STOP_BEHAVIOR, stop_static_checks)
        if self.wanted(GateId.TOKENIZER_PARITY):
            from apr.qa.gates.parity import tokenizer_parity_checks

            timer = Timer()
            corpus = _settings(self.inputs.gates.tokenizer_parity).corpus
            self._emit(
                tokenizer_parity_checks(self.models, self.inputs.source, corpus, tuple(self.inputs.artifacts)), timer
            )

    def _contract_checks(self, model: CanonicalModel, fmt: Format) -> list[Check]:
        """The tensor contract, and the published tokenizer where the model is a known one."""
        from apr.qa.gates.contract import contract_checks
        from apr.qa.gates.reference_weights import reference_tokenizer_check

        reference = reference_tokenizer_check(model, fmt, self.inputs.ref)
        return contract_checks(model, fmt) + ([reference] if reference is not None else [])

    def _metadata_checks(self, model: CanonicalModel, fmt: Format) -> list[Check]:
        """Plausibility bounds, and the reference config where the model is a known one."""
        from apr.qa.gates.reference_config import reference_config_check
        from apr.qa.gates.structure import metadata_checks

        reference = reference_config_check(model, fmt, self.inputs.ref)
        return metadata_checks(model, fmt) + ([reference] if reference is not None else [])

    def _parity_prompts(self) -> tuple[str, ...]:
        settings = self.inputs.gates.format_parity or self.inputs.gates.reference_parity or ParityGate()
        return settings.prompts

    def engine_gates(self) -> dict[Format, list]:
        """G1 per format × backend, golden output and attention trace on the source; returns parity logits."""
        from apr.qa.gates.load import load_engine_check
        from apr.qa.gates.parity import encode_prompts, prompt_logits

        engine_gates = (
            GateId.G1_LOAD,
            GateId.GOLDEN_OUTPUT,
            GateId.STOP_BEHAVIOR,
            GateId.PERPLEXITY,
            GateId.ATTENTION_TRACE,
            GateId.NUMERICS_PARITY,
            GateId.FORMAT_PARITY,
            GateId.REFERENCE_PARITY,
        )
        if not any(self.wanted(gate) for gate in engine_gates):
            return {}  # all recorded already (resume): loading gigabytes of engines would decide nothing
        source_model = self.models.get(self.inputs.source)
        ids = encode_prompts(source_model, self._parity_prompts()) if source_model else []
        self.parity_ids = ids
        logits: dict[Format, list] = {}
        load_checks: list[Check] = []
        load_timer = Timer()
        for fmt in self.inputs.artifacts:
            for backend in self.inputs.backends:
                if fmt not in self.models:
                    load_checks.append(
                        skipped(
                            GateId.G1_LOAD,
                            f"engine:{fmt}",
                            f"{fmt} artifact did not read (G0)",
                            format=fmt,
                            backend=backend,
                        )
                    )
                    continue
                self._step(f"load the {fmt} engine on {backend} (G1), then its parity logits")
                check, engine = load_engine_check(
                    self.models[fmt], fmt, backend, self.inputs.cuda_available, pack_cache=self.inputs.pack_cache
                )
                load_checks.append(check)
                if backend is Backend.GPU and fmt is self.inputs.source:
                    self._device_gates(engine, fmt, backend)  # the GPU's numerics, or skipped twins without CUDA
                if engine is None:
                    continue
                if backend is Backend.CPU:
                    logits[fmt] = prompt_logits(engine, ids)
                    if fmt is self.inputs.source:
                        self._source_engine_gates(engine, fmt)
                del engine
                gc.collect()
        if self.wanted(GateId.G1_LOAD):
            self._emit(load_checks, load_timer)
        return logits

    def _source_engine_gates(self, engine, fmt: Format) -> None:
        """The reply gates judge the checkpoint: a reply the fast engine fails is asked again of the exact engine,
        whose verdict stands; the flips it finds go to NUMERICS-PARITY (apr.qa.gates.second_opinion)."""
        from apr.qa.gates.second_opinion import ExactSecondOpinion

        second = ExactSecondOpinion(self.models[fmt])
        try:
            self._source_engine_gates_with(engine, fmt, second)
        finally:
            second.close()

    def _source_engine_gates_with(self, engine, fmt: Format, second: ExactSecondOpinion) -> None:
        gates = self.inputs.gates
        if self.wanted(GateId.GOLDEN_OUTPUT):
            from apr.qa.gates.golden import golden_checks

            self._step(f"golden output on {fmt}")
            timer = Timer()
            self._emit(golden_checks(engine, _settings(gates.golden_output), self.inputs.chat, fmt, second), timer)
        if self.wanted(GateId.STOP_BEHAVIOR):
            from apr.qa.gates.stop import stop_reply_checks

            timer = Timer()
            self._emit(stop_reply_checks(engine, _settings(gates.stop_behavior), self.inputs.chat, fmt, second), timer)
        if self.wanted(GateId.PERPLEXITY):
            from apr.qa.gates.perplexity import perplexity_checks

            timer = Timer()
            self._emit(perplexity_checks(engine, _settings(gates.perplexity), fmt), timer)
        if self.wanted(GateId.ATTENTION_TRACE):
            from apr.qa.gates.attention import TRACE_PROMPT, attention_checks
            from apr.qa.gates.parity import encode_prompts

            self._step(f"attention trace on {fmt}")
            timer = Timer()
            ids = encode_prompts(self.models[fmt], (TRACE_PROMPT,))[0]
            self._emit(attention_checks(engine, ids, _settings(gates.attention_trace), fmt), timer)
        if self.wanted(GateId.NUMERICS_PARITY):
            from apr.qa.gates.numerics import numerics_checks

            self._step(f"numerics parity on {fmt}: an exact float32 engine beside the fast one")
            timer = Timer()
            self._emit(numerics_checks(self.models[fmt], engine, _settings(gates.numerics_parity), fmt, second), timer)

    def _device_gates(self, engine, fmt: Format, backend: Backend) -> None:
        """Perplexity and stop behaviour on a second backend: they judge that backend's numerics too (so no exact
        second opinion here). Without an engine there (no CUDA) each is recorded skipped, never passed."""
        from apr.qa.gates.perplexity import perplexity_checks
        from apr.qa.gates.stop import stop_reply_checks

        gates = self.inputs.gates
        for gate in (GateId.PERPLEXITY, GateId.STOP_BEHAVIOR):
            if not self.wanted(gate) or (gate is GateId.STOP_BEHAVIOR and not self.inputs.chat):
                continue  # a base model plans no reply checks (apr.qa.gates.stop)
            timer = Timer()
            if engine is None:
                checks = [
                    skipped(gate, f"{backend}:{fmt}", f"no {backend} engine (see G1-LOAD)", format=fmt, backend=backend)
                ]
            elif gate is GateId.PERPLEXITY:
                checks = perplexity_checks(engine, _settings(gates.perplexity), fmt)
            else:
                checks = stop_reply_checks(engine, _settings(gates.stop_behavior), self.inputs.chat, fmt)
            self._emit([replace(c, backend=backend) for c in checks], timer)

    def parity_gates(self, logits: dict[Format, list]) -> None:
        gates = self.inputs.gates
        if self.wanted(GateId.FORMAT_PARITY):
            from apr.qa.gates.parity import format_parity_checks

            timer = Timer()
            settings = _settings(gates.format_parity)
            self._emit(
                format_parity_checks(
                    logits,
                    self.inputs.source,
                    settings.min_top1_agreement,
                    settings.max_kl,
                    tuple(self.inputs.artifacts),
                ),
                timer,
            )
        if self.wanted(GateId.REFERENCE_PARITY):
            from apr.qa.gates.reference import reference_parity_checks

            self._step("reference parity: transformers on the SafeTensors artifact")
            timer = Timer()
            self._emit(
                reference_parity_checks(
                    self.inputs.artifacts.get(Format.SAFETENSORS),
                    logits.get(Format.SAFETENSORS),
                    self.parity_ids,
                    _settings(gates.reference_parity),
                ),
                timer,
            )

    def run(self) -> dict[Format, CanonicalModel]:
        self.integrity()
        self.static_gates()
        self.parity_gates(self.engine_gates())
        return self.models
