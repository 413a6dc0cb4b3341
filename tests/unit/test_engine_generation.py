"""Generation semantics on a tiny model: batching invariance, seeded sampling, EOS, stop strings, streaming text."""

from __future__ import annotations

import pytest
import torch
from engine_tiny_models import ByteTokenizer, tiny_pair

from apr.engine import SamplingParams, load_engine
from apr.engine.detokenize import TextTracker


@pytest.fixture(scope="module", params=["fp32", "bf16", "auto"])
def engine(request):
    _, canonical = tiny_pair("gemma3", seed=5)
    return load_engine(canonical, device="cpu", dtype=request.param, compile=False)


PROMPTS = [[10, 20, 30], list(range(40, 75)), [200, 5, 9, 77, 13, 140, 141], list(range(100, 112))]


def _drain(decoder) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    while decoder.active:
        for event in decoder.step():
            out.setdefault(event.request_id, []).append(event.token_id)
    return out


def test_greedy_output_is_identical_alone_and_batched(engine):
    params = SamplingParams(max_tokens=24)
    alone = [engine.generate(p, params).token_ids for p in PROMPTS]
    decoder = engine.new_batch(3)  # fewer slots than requests: the fourth joins when the first leaves
    for i, prompt in enumerate(PROMPTS):
        decoder.add(f"r{i}", prompt, SamplingParams(max_tokens=24 if i else 6))
    batched = _drain(decoder)
    assert batched["r0"] == alone[0][:6]
    for i in range(1, len(PROMPTS)):
        assert batched[f"r{i}"] == alone[i]


def test_step_yields_one_token_per_active_sequence_and_cancel_removes(engine):
    decoder = engine.new_batch(4)
    decoder.add("a", PROMPTS[0], SamplingParams(max_tokens=10))
    assert [e.request_id for e in decoder.step()] == ["a"]
    decoder.add("b", PROMPTS[1], SamplingParams(max_tokens=10))
    assert sorted(e.request_id for e in decoder.step()) == ["a", "b"]
    decoder.cancel("a")
    assert [e.request_id for e in decoder.step()] == ["b"]
    assert decoder.active == ["b"]


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine):
    def sample(seed):
        return engine.generate(
            PROMPTS[1], SamplingParams(temperature=3.0, top_p=0.99, top_k=200, seed=seed, max_tokens=20)
        ).token_ids

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_top_k_one_is_greedy(engine):
    greedy = engine.generate(PROMPTS[2], SamplingParams(max_tokens=12)).token_ids
    sampled = engine.generate(PROMPTS[2], SamplingParams(temperature=0.8, top_k=1, seed=3, max_tokens=12)).token_ids
    assert sampled == greedy


def test_stops_on_eos_ids_and_max_tokens(engine):
    free = engine.generate(PROMPTS[3], SamplingParams(max_tokens=16))
    assert free.finish_reason == "length" and free.completion_tokens == 16 == len(free.token_ids)
    eos = free.token_ids[5]
    cut = engine.generate(PROMPTS[3], SamplingParams(max_tokens=16, stop_token_ids=(eos,)))
    first = free.token_ids.index(eos)
    assert cut.finish_reason == "stop"
    assert cut.token_ids == free.token_ids[: first + 1]


def test_stream_events_concatenate_to_result_text(engine):
    params = SamplingParams(max_tokens=20)
    events = list(engine.stream(PROMPTS[1], params))
    assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == "length"
    assert "".join(e.text for e in events) == engine.generate(PROMPTS[1], params).text


def test_prompt_logprobs_agree_with_logits(engine):
    ids = PROMPTS[2]
    logprobs = engine.prompt_logprobs(ids)
    expected = torch.log_softmax(engine.logits(ids), -1)
    assert logprobs[0] is None
    for i in range(1, len(ids)):
        assert logprobs[i] == pytest.approx(float(expected[i - 1, ids[i]]), abs=1e-5)


def test_bad_prompts_are_refused(engine):
    decoder = engine.new_batch(2)
    with pytest.raises(ValueError):
        decoder.add("empty", [], SamplingParams())
    with pytest.raises(ValueError):
        decoder.add("oov", [engine.config.vocab_size], SamplingParams())


def _feed(text: str, stop: tuple[str, ...]) -> tuple[list[str], TextTracker]:
    tok = ByteTokenizer()
    tracker = TextTracker(tok, stop)
    pieces = []
    for token in tok.encode(text):
        pieces.append(tracker.add(token))
        if tracker.stopped:
            break
    pieces.append(tracker.finish())
    return pieces, tracker


def test_text_increments_never_split_a_utf8_character():
    text = "Hello 你好, naïve café 🙂!"
    pieces, _ = _feed(text, ())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p == "") >= 10  # multibyte characters were held back


def test_stop_string_ends_the_text_and_never_leaks():
    pieces, tracker = _feed("answer: 42\nUser: next question", ("\nUser:",))
    assert tracker.stopped
    assert "".join(pieces) == "answer: 42"
    assert not any("\n" in p for p in pieces)


def test_partial_stop_prefix_is_released_when_it_does_not_complete():
    pieces, tracker = _feed("a <b <c", ("<end>",))
    assert not tracker.stopped
    assert "".join(pieces) == "a <b <c"


def test_tensor_only_decode_step_equals_the_batched_one(engine):
    """decode_one (the torch.compile target) computes exactly what decode does for one sequence."""
    from apr.engine.kv_cache import SequenceCache

    model, cfg = engine.transformer, engine.config
    caches = [
        SequenceCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 256, model.dtype, torch.device("cpu"))
        for _ in range(2)
    ]
    # Traced, decode_one always takes the PyTorch glue ops; eager decode takes the same ones only with the
    # native glue off (test_engine_parity compares the native glue with them).
    native = getattr(model, "use_native", None)  # the native path's glue kernels are eager-only
    if native is not None:
        native(False)
    with torch.inference_mode():
        for cache in caches:
            model.prefill(torch.tensor(PROMPTS[1]), cache)
        for token in (5, 9, 77):
            a = model.decode(torch.tensor([token]), [caches[0]])
            b = model.decode_one(torch.tensor([token]), torch.tensor([caches[1].length]), caches[1].k, caches[1].v)
            caches[1].length += 1
            assert torch.equal(a, b)
    if native is not None:
        native(True)


def test_exact_numerics_are_the_float32_reference_and_refuse_a_contradicting_dtype():
    from apr.errors import AprError

    _, canonical = tiny_pair("qwen2", seed=3)
    exact = load_engine(canonical, device="cpu", numerics="exact")
    fp32 = load_engine(canonical, device="cpu", dtype="fp32")
    fast = load_engine(canonical, device="cpu")
    assert exact.describe()["numerics"] == "exact" and fast.describe()["numerics"] == "fast"
    assert exact.describe()["dtype"] == "float32" and set(exact.describe()["weights"]) == {"dense"}
    ids = PROMPTS[1]
    assert torch.equal(exact.logits(ids), fp32.logits(ids))
    assert not torch.equal(exact.logits(ids), fast.logits(ids))  # the fast path quantizes activations or uses bf16
    with pytest.raises(AprError, match="contradicts"):
        load_engine(canonical, device="cpu", numerics="exact", dtype="bf16")
    with pytest.raises(AprError, match="expected one of"):
        load_engine(canonical, device="cpu", numerics="approximate")
