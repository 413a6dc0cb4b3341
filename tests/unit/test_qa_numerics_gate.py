"""NUMERICS-PARITY: the fast engine's log-likelihoods measured against the exact mode, on fixture models."""

from __future__ import annotations

import pytest
import torch

from apr.engine import load_engine
from apr.formats import load_model
from apr.qa.axes import Format
from apr.qa.evidence import Outcome
from apr.qa.gates.numerics import numerics_checks, token_deltas
from apr.qa.gates.thresholds import NumericsGate


def test_token_deltas_skip_positions_without_context():
    assert token_deltas([[None, -1.0, -2.0]], [[None, -1.5, -2.0]]) == [0.5, 0.0]


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_the_fast_engine_of_a_healthy_model_is_within_bounds_and_the_figure_is_recorded(fixture_models, arch):
    model = load_model(fixture_models[arch]["gguf"])
    engine = load_engine(model, device="cpu", pack_cache=False)
    (check,) = numerics_checks(model, engine, NumericsGate(), Format.GGUF)
    assert check.outcome is Outcome.CORROBORATED, check.reason
    assert check.metrics["tokens"] > 10 and check.metrics["mode"] == "fast"
    assert 0 <= check.metrics["mean_abs_nats"] <= check.metrics["max_abs_nats"] < 3.0
    assert check.measured == check.metrics["mean_abs_nats"] and check.unit == "nats/token"


def test_a_fast_path_that_computes_something_else_is_falsified(fixture_models):
    # A kernel defect, simulated: the fast engine's final norm scaled 4x (its logits sharpen far from exact).
    model = load_model(fixture_models["qwen2"]["gguf"])
    engine = load_engine(model, device="cpu", pack_cache=False)
    scaled = 0
    with torch.inference_mode():
        for _, tensor in engine.transformer.final_norm.named_buffers():
            tensor.mul_(4.0)
            scaled += 1
    assert scaled, "the final norm has no weight buffer to perturb"
    (check,) = numerics_checks(model, engine, NumericsGate(max_mean_nats=0.05), Format.GGUF)
    assert check.outcome is Outcome.FALSIFIED, check.reason
    assert check.metrics["mean_abs_nats"] > 0.05


def test_records_of_checks_that_ran_an_engine_name_its_numerics_mode():
    from datetime import UTC, datetime

    from apr.qa.axes import Backend
    from apr.qa.gates.catalog import GateId
    from apr.qa.recording import Recorder, corroborated

    recorder = Recorder(model="demo:1b")
    now = datetime.now(UTC)
    on_engine = recorder.stamp(
        corroborated(GateId.G2_INFERENCE, "reply", "ok", 1, backend=Backend.CPU), started_at=now, duration_s=0.1
    )
    on_file = recorder.stamp(corroborated(GateId.G0_INTEGRITY, "sha256", "ok", 1), started_at=now, duration_s=0.1)
    assert on_engine.provenance.numerics == "fast" and on_file.provenance.numerics is None
    assert on_engine.provenance.kv_cache == "float32" and on_file.provenance.kv_cache is None
