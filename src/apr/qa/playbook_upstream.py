"""Translate an upstream apr-model-qa-playbook YAML into our playbook format, reporting every key not used.

Upstream silently ignored most of its own fields (seed, timeout_ms, gates, oracles...); here each
field is either translated or listed by name in ``unused`` (``key.path (line N)``) — never dropped
silently. Translation (upstream → ours):

- ``model.hf_repo`` → ``model.ref: hf://REPO``; ``local_path`` → ``model.path``; ``family``; ``size_variant`` → ``parameters``
- ``model.formats`` → ``matrix.formats``; ``test_matrix.{modalities,backends}`` → ``matrix``
- ``test_matrix.prompts`` → custom prompts (oracles: arithmetic when the prompt holds ``a OP b``; always
  non-empty and garbage); ``scenario_count`` → ``scenarios.per_cell``; ``seed``; ``timeout_ms`` → ``execution.timeout_s``
- ``gates.g1..g4`` → the gateways (always on here); ``oracles[garbage].config`` → ``G4-QUALITY`` thresholds
- ``profile_ci`` (enabled) → ``THROUGHPUT`` (``min_throughput[_cpu|_gpu]``); ``contract_tests`` → ``CONTRACT-INVARIANTS``;
  ``differential_tests.inference_compare`` (enabled) → ``FORMAT-PARITY``; ``failure_policy``
- ``metadata.tier`` (else the file-name tier) → ``tier``
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from apr.qa.oracles.arithmetic import parse_question
from apr.qa.playbook_yaml import Loc, SourceMap

_MISSING = object()
_FILE_TIER = re.compile(r"-(mvp|smoke|quick|ci|full|nightly|release)\.playbook\.ya?ml$")
_TIERS = {
    "mvp": "mvp",
    "smoke": "smoke",
    "quick": "quick",
    "ci": "standard",
    "standard": "standard",
    "deep": "full",
    "full": "full",
    "nightly": "full",
    "release": "full",
}
_POLICIES = {
    "collect_all": "collect_all",
    "stop_on_p0": "stop_on_first_p0",
    "stop_on_first": "stop_on_first_p0",
    "fail_fast": "stop_on_first_p0",
}
_TRUE = {True, "true", "yes", "on"}


def is_upstream(data: dict[str, Any]) -> bool:
    return "apr_playbook" not in data and "test_matrix" in data


class _Translation:
    def __init__(self, data: dict[str, Any], source: SourceMap) -> None:
        self.data, self.source = data, source
        self.out: dict[str, Any] = {"apr_playbook": 1}
        self.lines: dict[Loc, tuple[Path, int]] = {}
        self.used: set[Loc] = set()

    def take(self, *path: str | int) -> Any:
        node: Any = self.data
        for key in path:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            else:
                return _MISSING
        self.used.add(path)
        return node

    def put(self, target: Loc, value: Any, origin: Loc) -> None:
        node = self.out
        for key in target[:-1]:
            node = node.setdefault(str(key), {})  # targets are mapping keys: upstream's layout has no lists
        node[str(target[-1])] = value
        position = self.source.locate(origin)
        if position is not None:
            for end in range(1, len(target) + 1):
                self.lines.setdefault(target[:end], position)

    def move(self, origin: Loc, target: Loc, convert=lambda v: v) -> Any:
        value = self.take(*origin)
        if value is not _MISSING:
            self.put(target, convert(value), origin)
        return value

    def unused(self) -> list[str]:
        found: list[str] = []

        def visit(node: Any, path: Loc) -> None:
            if path in self.used:
                return
            consumed_below = any(u[: len(path)] == path and len(u) > len(path) for u in self.used)
            if consumed_below and isinstance(node, (dict, list)):
                items = node.items() if isinstance(node, dict) else enumerate(node)
                for key, value in items:
                    visit(value, (*path, key))
                return
            position = self.source.locate(path)
            line = f" (line {position[1]})" if position else ""
            found.append(".".join(str(p) for p in path) + line)

        for key, value in self.data.items():
            visit(value, (key,))
        return found


def _oracles_for(prompt: str) -> list[dict[str, Any]]:
    oracles: list[dict[str, Any]] = [{"name": "non_empty"}, {"name": "garbage"}]
    if parse_question(prompt) is not None:
        oracles.insert(0, {"name": "arithmetic"})
    return oracles


def _lower_list(value: Any) -> Any:
    return [str(v).lower() for v in value] if isinstance(value, list) else value


def translate(data: dict[str, Any], source: SourceMap, path: Path) -> tuple[dict[str, Any], SourceMap, tuple[str, ...]]:
    t = _Translation(data, source)
    t.move(("name",), ("name",))
    t.move(("version",), ("version",))
    t.move(("description",), ("description",))
    t.move(("model", "hf_repo"), ("model", "ref"), lambda repo: f"hf://{repo}")
    t.move(("model", "local_path"), ("model", "path"))
    t.move(("model", "family"), ("model", "family"))
    t.move(("model", "size_variant"), ("model", "parameters"), str)
    t.move(("model", "formats"), ("matrix", "formats"), _lower_list)
    t.move(("test_matrix", "modalities"), ("matrix", "modalities"), _lower_list)
    t.move(("test_matrix", "backends"), ("matrix", "backends"), _lower_list)
    t.move(("test_matrix", "seed"), ("scenarios", "seed"))
    t.move(("test_matrix", "scenario_count"), ("scenarios", "per_cell"))
    t.move(
        ("test_matrix", "timeout_ms"),
        ("execution", "timeout_s"),
        lambda ms: ms / 1000 if isinstance(ms, (int, float)) else ms,
    )
    prompts = t.take("test_matrix", "prompts")
    prompts = ["What is 2+2?"] if prompts is _MISSING else prompts  # upstream's default prompt list
    custom = [{"text": p, "oracles": _oracles_for(p)} if isinstance(p, str) else p for p in prompts]
    t.put(("scenarios", "prompts"), custom, ("test_matrix", "prompts"))
    t.put(("scenarios", "pools"), {}, ("test_matrix",))
    t.put(("gates",), {}, ("gates",))
    for gate in ("g1_model_loads", "g2_basic_inference", "g3_no_crashes", "g4_output_quality"):
        t.take("gates", gate)  # the gateways always run here
    oracles = data.get("oracles")
    if isinstance(oracles, list):
        for index, oracle in enumerate(oracles):
            if isinstance(oracle, dict) and oracle.get("type") == "garbage" and isinstance(oracle.get("config"), dict):
                t.take("oracles", index, "type")
                for key in ("max_repetition_ratio", "min_unique_chars"):
                    t.move(("oracles", index, "config", key), ("gates", "G4-QUALITY", key))
    t.move(("failure_policy",), ("execution", "failure_policy"), lambda p: _POLICIES.get(str(p), p))
    if t.take("profile_ci", "enabled") in _TRUE:
        minimums: dict[str, float] = {}
        for backend in ("cpu", "gpu"):
            value = t.take("profile_ci", "assertions", f"min_throughput_{backend}")
            generic = t.take("profile_ci", "assertions", "min_throughput")
            chosen = value if value is not _MISSING else generic
            if chosen is not _MISSING:
                minimums[backend] = chosen
        t.put(("gates", "THROUGHPUT"), {"min_tok_s": minimums}, ("profile_ci",))
    if t.take("contract_tests") is not _MISSING:
        t.put(("gates", "CONTRACT-INVARIANTS"), {}, ("contract_tests",))
    if t.take("differential_tests", "inference_compare", "enabled") in _TRUE:
        t.put(("gates", "FORMAT-PARITY"), {}, ("differential_tests", "inference_compare"))
    tier = t.take("metadata", "tier")
    if tier is _MISSING:
        match = _FILE_TIER.search(path.name)
        tier = match.group(1) if match else "standard"
        t.put(("tier",), _TIERS[tier], ())
    else:
        t.put(("tier",), _TIERS.get(str(tier), tier), ("metadata", "tier"))
    return t.out, SourceMap(t.lines), tuple(t.unused())
