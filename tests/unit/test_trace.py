"""apr.trace: the traced pass equals the engine's logits; weights are causal distributions; files read back strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apr.engine import load_engine
from apr.errors import FormatError
from apr.trace import read_trace
from apr.trace.record import trace_forward, trace_header, write_trace
from apr.trace.summary import summarize


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma3"])
def engine(request, fixture_models):
    return load_engine(fixture_models[request.param]["gguf"], dtype="fp32", pack_cache=False)


IDS = list(range(3, 21))


def test_traced_pass_gives_the_engine_logits(engine) -> None:
    records, logits = trace_forward(engine.transformer, IDS, {"attention", "hidden"})
    torch.testing.assert_close(logits, engine.logits(IDS), atol=1e-4, rtol=1e-4)
    cfg = engine.config
    attention = [r for r in records if r["type"] == "attention"]
    hidden = [r for r in records if r["type"] == "hidden"]
    assert len(attention) == cfg.num_layers * cfg.num_heads
    assert [r["layer"] for r in hidden] == list(range(-1, cfg.num_layers + 1))
    assert all(len(r["token_l2"]) == len(IDS) for r in hidden)


def test_attention_rows_are_causal_distributions(engine) -> None:
    records, _ = trace_forward(engine.transformer, IDS, {"attention"})
    window = engine.config.sliding_window
    for record in records:
        rows = record["weights"]
        assert [len(row) for row in rows] == list(range(1, len(IDS) + 1))
        for q, row in enumerate(rows):
            assert sum(row) == pytest.approx(1.0, abs=1e-3)
            if record["sliding"] and window:
                assert all(w == 0 for w in row[: max(0, q - window + 1)])
        assert 0 <= record["entropy_min"] <= record["entropy_mean"]


def test_written_trace_reads_back_and_summarizes(engine, tmp_path: Path) -> None:
    records, _ = trace_forward(engine.transformer, IDS, {"attention", "hidden"})
    pieces = [engine.tokenizer.token_text(i) for i in IDS]
    header = trace_header(engine.model, engine.transformer, IDS, pieces, 10, {"attention", "hidden"})
    path = write_trace(tmp_path / "t.jsonl", header, records)
    trace = read_trace(path)
    assert trace.header["tokens"] == IDS and trace.header["prompt_tokens"] == 10
    assert len(trace.attention) + len(trace.hidden) == len(records)
    summary = summarize(trace)
    assert [row["layer"] for row in summary["layers"]] == list(range(-1, engine.config.num_layers + 1))


def test_a_truncated_trace_is_refused(engine, tmp_path: Path) -> None:
    records, _ = trace_forward(engine.transformer, IDS[:4], {"hidden"})
    header = trace_header(engine.model, engine.transformer, IDS[:4], ["x"] * 4, 4, {"hidden"})
    path = write_trace(tmp_path / "t.jsonl", header, records)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FormatError, match="truncated"):
        read_trace(path)
    path.write_text(json.dumps({"type": "header", "format": "other"}) + "\n")
    with pytest.raises(FormatError, match="not an apr-trace"):
        read_trace(path)
