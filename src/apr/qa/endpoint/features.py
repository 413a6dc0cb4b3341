"""FIM, TOOL-CALLS, JSON-MODE and EMBEDDINGS against a remote endpoint: the same cases and oracles as against a
local `apr serve` (``apr.qa.gates.serve_features``), asked through the official openai client.

An endpoint has no files to read applicability from, so its answers decide it: a gate whose first case the endpoint
refuses as a request it does not take (HTTP 400/404/405/422/501: no /v1/embeddings, no ``suffix``, no ``tools``) is
``not_applicable`` (one record, the refusal quoted; the gate leaves the MQS plan). A refusal after the endpoint
answered an earlier case of the same gate is falsified (it serves the feature, then not). An answer is judged by the
gate's oracle: a wrong one is falsified. A transport failure (connection refused or dropped, a timeout, 429, 5xx) is
inconclusive with its cause (``apr.qa.infra``), never a verdict on the model.
"""

from __future__ import annotations

from typing import Any

from apr.qa.axes import Modality
from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.gates.serve_features import GATES, Probe, Undecided, lazy_sandbox, probes
from apr.qa.gates.thresholds import GateSet
from apr.qa.infra import InfraCause
from apr.qa.recording import Check, inconclusive, verdict

FEATURE_REFUSALS = frozenset({400, 404, 405, 422, 501})  # "I do not take this request", not "I failed"
WHERE = "endpoint"


def endpoint_feature_checks(gates: GateSet, client: Any, served_model: str, timeout_s: float) -> list[Check]:
    """The records of the enabled serve-feature gates against ``client``'s endpoint (an ``openai.OpenAI``)."""
    wanted = tuple(gate for gate in GATES if gate in gates.enabled())
    found: list[Check] = []
    answered: set[GateId] = set()
    refused: set[GateId] = set()
    for probe in probes(gates, wanted, WHERE, lazy_sandbox()):
        if probe.gate in refused:
            continue
        refusal, check = _ask(probe, client, served_model, timeout_s)
        if check is not None:
            if check.outcome in (Outcome.CORROBORATED, Outcome.FALSIFIED):
                answered.add(probe.gate)
            found.append(check)
        elif probe.gate not in answered:
            refused.add(probe.gate)
            why = f"the endpoint does not take {probe.gate} requests ({refusal}): the feature is not served"
            found.append(Check(probe.gate, "applicable", Outcome.NOT_APPLICABLE, why, **_fields(probe)))
        else:
            why = f"refused ({refusal}) after answering an earlier {probe.gate} case: served, then not"
            found.append(Check(probe.gate, probe.check, Outcome.FALSIFIED, why, 1, **_fields(probe)))
    return found


def _fields(probe: Probe) -> dict[str, Any]:
    return {"modality": Modality.SERVE, "prompt_id": probe.prompt_id, "prompt": probe.prompt}


def _ask(probe: Probe, client: Any, model: str, timeout_s: float) -> tuple[str | None, Check | None]:
    """(the refusal as a phrase, None) when the endpoint does not take the request; else (None, the case's record)."""
    from openai import APIConnectionError, APIError, APIStatusError, APITimeoutError

    fields = _fields(probe)
    try:
        judged = probe.ask(client, model, timeout_s)
    except APIStatusError as err:
        said = f"HTTP {err.status_code}: {err.message[:300]}"
        if err.status_code in FEATURE_REFUSALS:
            return said, None
        if err.status_code == 429:
            return None, inconclusive(probe.gate, probe.check, InfraCause.RATE_LIMITED, said, **fields)
        # 5xx, or 401/403 mid-run (a key revoked): the endpoint's side, not the model's answer.
        return None, inconclusive(probe.gate, probe.check, InfraCause.ENDPOINT_ERROR, said, **fields)
    except APITimeoutError as err:
        return None, inconclusive(probe.gate, probe.check, InfraCause.DEADLINE, f"no answer in time: {err}", **fields)
    except APIConnectionError as err:
        why = f"the connection failed: {err}"
        return None, inconclusive(probe.gate, probe.check, InfraCause.ENDPOINT_UNREACHABLE, why, **fields)
    except APIError as err:  # HTTP 200 whose body is no OpenAI response: the endpoint broke the protocol
        return None, Check(probe.gate, probe.check, Outcome.FALSIFIED, f"not an OpenAI response: {err}", 1, **fields)
    if isinstance(judged, Undecided):
        return None, inconclusive(probe.gate, probe.check, InfraCause.DEADLINE, judged.reason, **fields)
    passed, reason, metrics, output = judged.passed, judged.reason, judged.metrics, judged.output
    return None, verdict(probe.gate, probe.check, passed, reason, 1, metrics=metrics, output=output, **fields)
