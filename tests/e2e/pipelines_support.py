"""The fixture-model partition the pipeline e2e tests certify, and how to compare two runs' evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

MODEL = "fixture-llama"


def fixture_playbook(gguf: Path) -> str:
    """A small but complete playbook: all three formats, CPU, `apr run`, one prompt, the cheap gates."""
    return f"""\
apr_playbook: 1
name: {MODEL}-quick
version: 1.0.0
tier: quick
model:
  ref: {MODEL}
  path: {gguf}
  architecture: llama
  chat_template: true
matrix:
  formats: [gguf, safetensors, apr]
  backends: [cpu]
  modalities: [run]
scenarios:
  seed: 7
  max_tokens: 8
  pools: {{arithmetic: 1}}
  per_cell: 1
execution:
  timeout_s: 120
  failure_policy: collect_all
gates:
  CONTRACT-INVARIANTS:
  TOKENIZER-PARITY:
  THROUGHPUT: {{min_tok_s: {{cpu: 0.01, gpu: 1.0}}}}
"""


def materialize_graph(graph: dict, instance: dg.DagsterInstance) -> tuple[dg.ExecuteInProcessResult, ...]:
    """The fixture model's certification in process, then the table: what `python -m pipelines.materialize` does."""
    defs = graph["defs"]
    assets, resources = list(defs.assets), dict(defs.resources)
    per_model = dg.materialize(
        assets,
        selection=dg.AssetSelection.assets("certification").upstream(),
        partition_key=MODEL,
        instance=instance,
        resources=resources,
    )
    table = dg.materialize(
        assets, selection=[dg.AssetKey("certification_table")], instance=instance, resources=resources
    )
    return per_model, table


# What the machine decides, not the model: when and where a check ran, how long it took, how fast it went,
# and the throughput floor derived from that machine's calibration. Everything else is compared.
MACHINE_FIELDS = ("duration_s", "metrics", "measured", "reason", "output_excerpt")
MACHINE_PROVENANCE = ("host", "cpu", "kernels", "threads", "calibration", "started_at", "finished_at")
MACHINE_THRESHOLD_GATES = ("THROUGHPUT",)


def verdict_of(record: dict[str, Any]) -> dict[str, Any]:
    """An evidence record without its timings, host, pids and machine-derived numbers."""
    kept = {name: value for name, value in record.items() if name not in MACHINE_FIELDS}
    kept["provenance"] = {k: v for k, v in record["provenance"].items() if k not in MACHINE_PROVENANCE}
    if record["gate"] in MACHINE_THRESHOLD_GATES:
        kept.pop("threshold", None)
    return kept


def verdicts(evidence: Path) -> list[dict[str, Any]]:
    """Every record of an evidence file as ``verdict_of`` sees it, in file order."""
    lines = evidence.read_text(encoding="utf-8").splitlines()
    return [verdict_of(json.loads(line)) for line in lines if line.strip()]
