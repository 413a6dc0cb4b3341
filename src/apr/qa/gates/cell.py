"""Turn what one cell produced into the checks of gates G2 (inference), G3 (stability) and G4 (oracles).

A cell the machine stopped (deadline, OOM, killed from outside, full disk: ``CellRun.infra_cause``) says
nothing about the model: every check of it is ``inconclusive``, naming the cause and what the machine delivered.
"""

from __future__ import annotations

from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.infra import InfraCause
from apr.qa.matrix import Cell
from apr.qa.oracles import evaluate
from apr.qa.oracles.base import Generation
from apr.qa.procs import Ending
from apr.qa.recording import Check, inconclusive
from apr.qa.runners import CellRun
from apr.qa.scenarios import Prompt

G2, G3, G4 = GateId.G2_INFERENCE, GateId.G3_STABILITY, GateId.G4_QUALITY


def _cell_fields(cell: Cell) -> dict:
    return {
        "format": cell.format,
        "backend": cell.backend,
        "modality": cell.modality,
        "prompt_id": cell.prompt.id,
        "prompt": cell.prompt.text,
        "seed": cell.seed,
    }


def _run_metrics(run: CellRun) -> dict:
    metrics = {
        "exit_code": run.process.returncode,
        "wall_s": round(run.process.duration_s, 3),
        "completion_tokens": run.completion_tokens,
        "finish_reason": run.finish_reason,
    }
    metrics.update({key: round(value, 4) for key, value in run.timings.items()})
    return metrics


def skipped_cell_checks(cell: Cell, reason: str) -> list[Check]:
    """Every check a cell would have made, recorded as skipped: the cell could not run here (never a pass)."""
    fields = _cell_fields(cell)
    checks = [
        Check(G2, "reply", Outcome.SKIPPED, reason, **fields),
        Check(G3, "process", Outcome.SKIPPED, reason, **fields),
    ]
    checks += [Check(G4, f"oracle:{name}", Outcome.SKIPPED, reason, **fields) for name in cell.prompt.oracle_names]
    return checks


def _stability(run: CellRun, fields: dict, metrics: dict) -> Check:
    tail = run.process.stderr_tail()
    if run.ending is Ending.CRASHED:
        return Check(
            G3,
            "process",
            Outcome.CRASHED,
            f"{run.command}: {run.reason}",
            n_compared=1,
            metrics=metrics,
            output=tail,
            **fields,
        )
    return Check(
        G3,
        "process",
        Outcome.CORROBORATED,
        f"{run.command} ended without crash or timeout ({run.process.duration_s:.1f}s)",
        n_compared=1,
        metrics=metrics,
        **fields,
    )


def _inference(cell: Cell, run: CellRun, fields: dict, metrics: dict) -> Check:
    allows_refusal = cell.prompt.allows_refusal
    if run.ending is Ending.OK and run.text is not None:
        if run.text.strip():
            return Check(
                G2,
                "reply",
                Outcome.CORROBORATED,
                f"{run.command} replied with {len(run.text)} characters",
                n_compared=1,
                metrics=metrics,
                output=run.text,
                **fields,
            )
        if allows_refusal:
            return Check(
                G2,
                "reply",
                Outcome.CORROBORATED,
                f"{run.command} gave an empty reply to a prompt that allows one",
                n_compared=1,
                metrics=metrics,
                **fields,
            )
        return Check(
            G2,
            "reply",
            Outcome.FALSIFIED,
            f"{run.command} exited cleanly but the reply is empty",
            n_compared=1,
            metrics=metrics,
            **fields,
        )
    if (
        allows_refusal
        and run.ending is Ending.REFUSED
        and run.process.returncode == 0
        and not run.process.stdout.strip()
    ):
        # e.g. `apr chat` given only an empty line: no turn was taken, nothing was answered, nothing broke.
        return Check(
            G2,
            "reply",
            Outcome.CORROBORATED,
            f"{run.command} took no turn for this input and exited 0, which this prompt allows",
            n_compared=1,
            metrics=metrics,
            **fields,
        )
    if run.ending is Ending.REFUSED and allows_refusal and run.process.returncode == 2:
        return Check(
            G2,
            "reply",
            Outcome.CORROBORATED,
            f"{run.command} refused cleanly (exit 2), which this prompt allows: {run.reason}",
            n_compared=1,
            metrics=metrics,
            output=run.process.stderr_tail(),
            **fields,
        )
    return Check(
        G2,
        "reply",
        Outcome.FALSIFIED,
        f"{run.command} gave no reply: {run.reason}",
        n_compared=1,
        metrics=metrics,
        output=run.process.stderr_tail(),
        **fields,
    )


def _quality(cell: Cell, run: CellRun, fields: dict) -> list[Check]:
    names = cell.prompt.oracle_names
    if run.ending is not Ending.OK or run.text is None:
        return [
            Check(G4, f"oracle:{name}", Outcome.SKIPPED, f"no reply to judge: {run.reason}", **fields) for name in names
        ]
    return oracle_checks(cell.prompt, run.text, run.finish_reason, run.completion_tokens, fields)


def oracle_checks(
    prompt: Prompt, text: str, finish_reason: str | None, completion_tokens: int | None, fields: dict
) -> list[Check]:
    """One G4 check per oracle of ``prompt`` on the reply ``text`` (also how an endpoint's replies are judged)."""
    generation = Generation(
        text=text,
        finish_reason=finish_reason,
        completion_tokens=completion_tokens,
        max_tokens=prompt.max_tokens,
    )
    checks = []
    for name in prompt.oracle_names:
        result = evaluate(name, prompt, generation)
        checks.append(
            Check(
                G4,
                f"oracle:{name}",
                result.outcome,
                result.reason,
                n_compared=1 if result.outcome is not Outcome.SKIPPED else 0,
                metrics=dict(result.metrics),
                output=text,
                **fields,
            )
        )
    return checks


def _inconclusive(cell: Cell, run: CellRun, cause: InfraCause, note: str, fields: dict, metrics: dict) -> list[Check]:
    reason = f"{run.command}: {run.reason}" + (f" — {note}" if note else "")
    tail = run.process.stderr_tail()
    checks = [inconclusive(G2, "reply", cause, reason, metrics=metrics, output=tail, **fields)]
    checks += [inconclusive(G4, f"oracle:{name}", cause, reason, **fields) for name in cell.prompt.oracle_names]
    checks.append(inconclusive(G3, "process", cause, reason, metrics=metrics, output=tail, **fields))
    return checks


def cell_checks(cell: Cell, run: CellRun, *, attempts: int = 1, machine_note: str = "") -> list[Check]:
    """G2, G4 (one per oracle of the prompt), then G3 — G3 last, so a cell counts as finished only when whole.
    ``run`` is the last of ``attempts``; ``machine_note`` explains a machine cause (the deadlines, the machine)."""
    fields = _cell_fields(cell)
    if run.process.argv:
        fields["device"] = cell.backend.device
    metrics = _run_metrics(run)
    if attempts > 1:
        metrics["attempts"] = attempts
    cause = run.infra_cause
    if cause is not None:
        return _inconclusive(cell, run, cause, machine_note, fields, metrics)
    return [_inference(cell, run, fields, metrics), *_quality(cell, run, fields), _stability(run, fields, metrics)]
