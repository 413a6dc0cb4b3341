"""The verdict of a serve-feature oracle (FIM, tool call, JSON schema, embedding similarity): pass or fail, why."""

from __future__ import annotations

from dataclasses import dataclass, field

from apr.qa.evidence import MetricValue


@dataclass(frozen=True)
class FeatureVerdict:
    """What one serve-feature oracle concluded about one reply; never a pass without something compared."""

    passed: bool
    reason: str
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    output: str = ""  # what the model replied (the evidence's output excerpt); the caller fills it in


def passed(reason: str, **metrics: MetricValue) -> FeatureVerdict:
    return FeatureVerdict(True, reason, dict(metrics))


def failed(reason: str, **metrics: MetricValue) -> FeatureVerdict:
    return FeatureVerdict(False, reason, dict(metrics))
