"""apr serve on a real small model (smollm2:135m): a sensible chat answer and lm-eval style scoring."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
from serve_harness import start_server  # noqa: E402

pytestmark = pytest.mark.integration

REF = "smollm2:135m"


@pytest.fixture(scope="module")
def server(real_model):
    real_model(REF)  # pulled (or found) in the apr cache before the server resolves the same ref
    running = start_server(REF, "--batch-size", "2")
    yield running
    running.stop()


def test_the_served_model_is_named_by_its_ref(server):
    # The served model comes first; every other model in the apr cache follows (loaded on demand).
    models = server.client().models.list().data
    assert models[0].id == REF and len({m.id for m in models}) == len(models)


def test_chat_answers_a_simple_sum(server):
    reply = server.client().chat.completions.create(
        model=REF, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=24, temperature=0.0
    )
    assert "4" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")


def continuation_logprob(client, context: str, continuation: str) -> float:
    """lm-eval's loglikelihood request: score context + continuation with echo, sum the continuation part."""
    context_reply = client.completions.create(model=REF, prompt=context, max_tokens=0, echo=True, logprobs=1)
    context_tokens = len(context_reply.choices[0].logprobs.tokens)
    reply = client.completions.create(model=REF, prompt=context + continuation, max_tokens=0, echo=True, logprobs=1)
    scored = reply.choices[0].logprobs.token_logprobs[context_tokens:]
    assert scored and all(value is not None for value in scored)
    return sum(scored)


def test_echo_scoring_prefers_the_true_continuation(server):
    client = server.client()
    context = "The capital of France is"
    assert continuation_logprob(client, context, " Paris") > continuation_logprob(client, context, " London")
