"""The exact second opinion: a greedy reply that apr's fast engine got wrong is asked again of the float32 engine.

apr's default numerics (int8 activations on the native kernels) round differently from the reference, and on a
small model a last-bit difference can move a greedy reply onto another path (smollm2:135m answered "What is the
capital of France?" with "L'Étoile…" in fast mode and "Paris" in exact mode after a rounding-only kernel change).
A reply gate judges the checkpoint, so its verdict is the exact engine's whenever the fast one fails: a defect in
the weights fails both (the exact engine dequantizes every tensor), a rounding flip fails only the fast one. The
flip is not lost: it is kept here and recorded under NUMERICS-PARITY (P1: it costs parity points, it does not
block), which is the gate that judges apr's fast numerics.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from apr.formats.model import CanonicalModel
from apr.qa.axes import Backend, Format
from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.recording import Check, falsified

if TYPE_CHECKING:
    from apr.engine import Engine

EXACT = "exact"


@dataclass(frozen=True)
class ReplyFlip:
    """A reply check the fast engine failed and the exact engine passed."""

    gate: GateId
    check: str
    prompt: str
    fast_reason: str
    fast_output: str
    exact_reason: str
    format: Format | None


@dataclass
class ExactSecondOpinion:
    """Loads the exact engine of ``model`` on first use (gigabytes for a 1.5B model: only when a reply failed, or
    for NUMERICS-PARITY), collects the reply flips, and releases the engine on ``close``."""

    model: CanonicalModel
    flips: list[ReplyFlip] = field(default_factory=list)
    _engine: Engine | None = None

    def engine(self) -> Engine:
        if self._engine is None:
            from apr.engine import load_engine

            self._engine = load_engine(self.model, device="cpu", numerics=EXACT, pack_cache=False)
        return self._engine

    def close(self) -> None:
        self._engine = None
        gc.collect()

    def judge(self, fast_engine: Engine, fast: Check, ask_exact: Callable[[Engine], Check]) -> Check:
        """``fast`` as it stands when it passed or the fast engine already computes exactly; else the exact
        engine's check (``ask_exact`` runs the same prompt on it), with the fast reply in its reason."""
        if fast.outcome is not Outcome.FALSIFIED or fast_engine.describe().get("numerics") == EXACT:
            return fast
        exact = ask_exact(self.engine())
        if exact.outcome is Outcome.CORROBORATED:
            self.flips.append(
                ReplyFlip(fast.gate, fast.check, fast.prompt or "", fast.reason, fast.output, exact.reason, fast.format)
            )
            reason = (
                f"exact float32 engine: {exact.reason}; the fast engine's reply failed ({fast.reason}): a numerics "
                f"finding (NUMERICS-PARITY reply:{fast.check}), not the model's"
            )
        else:
            reason = f"{fast.reason}; the exact float32 engine too: {exact.reason}"
        return replace(exact, reason=reason, numerics=EXACT, backend=fast.backend)

    def flip_checks(self) -> list[Check]:
        """NUMERICS-PARITY records of the flips: the fast numerics changed a reply the model gets right."""
        return [
            numerics_flip(
                f"reply:{flip.check}",
                f"greedy reply fails {flip.gate} {flip.check} ({flip.fast_reason})",
                flip.exact_reason,
                format=flip.format,
                backend=Backend.CPU,
                prompt=flip.prompt,
                output=flip.fast_output,
            )
            for flip in self.flips
        ]


def numerics_flip(check: str, fast_failure: str, exact_reason: str, **fields) -> Check:
    """The NUMERICS-PARITY record of one reply that only the fast engine fails; ``fields`` name the scenario and
    carry the fast reply as ``output``."""
    return falsified(
        GateId.NUMERICS_PARITY,
        check,
        f"the fast engine's {fast_failure} where the exact float32 engine passes it ({exact_reason}): apr's fast "
        f"numerics change this model's answer",
        **fields,
    )


def judge_cell(fast: list[Check], exact: list[Check], *, record_flips: bool) -> list[Check]:
    """A matrix cell's checks once its program ran again with ``--numerics exact`` (``exact``: that run's checks).

    Each oracle (G4) the fast run failed takes the exact run's verdict: passed there, it is a numerics flip
    (the check passes with numerics ``exact``; with ``record_flips`` a NUMERICS-PARITY record keeps the fast
    reply); failed there too, it stays falsified with both reasons; stopped by the machine there, it is
    inconclusive with that cause (the fast failure alone no longer says whose it is). G2 and G3 stay the fast
    run's (it is the program under test) and G3 stays last: a cell is finished when its G3 is written."""
    exact_by_check = {check.check: check for check in exact if check.gate is GateId.G4_QUALITY}
    judged: list[Check] = []
    flips: list[Check] = []
    for check in fast:
        second = exact_by_check.get(check.check)
        if check.gate is not GateId.G4_QUALITY or check.outcome is not Outcome.FALSIFIED or second is None:
            judged.append(check)
        elif second.outcome is Outcome.CORROBORATED:
            judged.append(
                replace(
                    second,
                    numerics=EXACT,
                    reason=f"exact float32 engine: {second.reason}; the fast engine's reply failed ({check.reason}): "
                    f"a numerics finding, not the model's",
                )
            )
            flips.append(
                numerics_flip(
                    f"reply:{check.check}:{check.format}/{check.backend}/{check.modality}/{check.prompt_id}/seed{check.seed}",
                    f"reply fails {check.check} ({check.reason})",
                    second.reason,
                    format=check.format,
                    backend=check.backend,
                    prompt=check.prompt,
                    output=check.output,
                )
            )
        elif second.outcome.is_infrastructure:
            judged.append(
                replace(
                    second,
                    numerics=EXACT,
                    reason=f"the fast engine's reply failed ({check.reason}); its exact second opinion was stopped "
                    f"by the machine: {second.reason}",
                )
            )
        else:
            judged.append(replace(check, reason=f"{check.reason}; the exact float32 engine too: {second.reason}"))
    if record_flips and flips:
        judged[-1:-1] = flips  # before G3, the cell's last record
    return judged
