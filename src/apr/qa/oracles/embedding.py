"""Embedding oracle: over (anchor, paraphrase, unrelated) triples, the paraphrase is closer to the anchor (cosine)
than the unrelated text is, in at least the required share of triples."""

from __future__ import annotations

import math
from collections.abc import Sequence

from apr.qa.oracles.feature import FeatureVerdict, failed, passed

Vector = Sequence[float]


def cosine(a: Vector, b: Vector) -> float:
    """Cosine similarity; NaN when either vector is zero or not finite (never silently 0)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm > 0 and math.isfinite(norm) else math.nan


def check(
    triples: Sequence[tuple[Vector, Vector, Vector]], min_ordered_fraction: float, min_margin: float = 0.0
) -> FeatureVerdict:
    """Each triple is ordered when cos(anchor, paraphrase) - cos(anchor, unrelated) > ``min_margin``."""
    if not triples:
        return failed("no triple to compare")
    dims = {len(v) for triple in triples for v in triple}
    if len(dims) != 1 or 0 in dims:
        return failed(f"vectors of differing or zero length: {sorted(dims)}")
    margins = [cosine(a, p) - cosine(a, u) for a, p, u in triples]
    if any(not math.isfinite(m) for m in margins):
        return failed("a vector is zero or not finite (NaN/Inf)", triples=len(triples))
    ordered = sum(m > min_margin for m in margins)
    fraction = ordered / len(triples)
    shown = ", ".join(f"{m:+.3f}" for m in margins)
    metrics = {
        "triples": len(triples),
        "ordered": ordered,
        "min_margin_seen": round(min(margins), 6),
        "mean_margin": round(sum(margins) / len(margins), 6),
        "dimensions": dims.pop(),
    }
    reason = (
        f"{ordered}/{len(triples)} triples with the paraphrase closer than the unrelated text "
        f"(need {min_ordered_fraction:.0%}, margin > {min_margin}); margins {shown}"
    )
    return (passed if fraction >= min_ordered_fraction - 1e-12 else failed)(reason, **metrics)
