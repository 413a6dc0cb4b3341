"""From OpenAI requests to generation jobs: model names, context limits, seeds, chat templates."""

from __future__ import annotations

import pytest

from apr.serve.admission import DEFAULT_COMPLETION_TOKENS, chat_jobs, completion_jobs
from apr.serve.errors import ApiError
from apr.serve.protocol import ChatCompletionRequest, CompletionRequest
from apr.serve.served import ServedModel, ServeSettings


@pytest.fixture(scope="module")
def engine(fixture_models):
    from apr.engine import load_engine

    return load_engine(fixture_models["qwen2"]["gguf"], device="cpu")


@pytest.fixture()
def served(engine, fixture_models) -> ServedModel:
    return ServedModel.from_engine(
        engine, ServeSettings(model_arg=str(fixture_models["qwen2"]["gguf"]), max_context=64)
    )


def completion(served: ServedModel, **fields):
    return completion_jobs(CompletionRequest.model_validate({"model": served.model_id, **fields}), served)


def chat(served: ServedModel, **fields):
    messages = [{"role": "user", "content": "hi"}]
    return chat_jobs(
        ChatCompletionRequest.model_validate({"model": served.model_id, "messages": messages, **fields}), served
    )


def refusal(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_the_model_answers_to_its_file_name_and_path(served, fixture_models):
    path = fixture_models["qwen2"]["gguf"]
    assert served.model_id == path.name
    assert served.knows(str(path)) and served.knows(path.stem)
    error = refusal(completion_jobs, CompletionRequest(model="gpt-4", prompt="x"), served)
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")


def test_completion_prompt_is_encoded_with_special_tokens(served):
    [job] = completion(served, prompt="hello world")
    assert job.prompt_ids == served.tokenizer.encode("hello world", add_special_tokens=True)
    assert job.prompt_text == "hello world"
    assert job.params.max_tokens == DEFAULT_COMPLETION_TOKENS


def test_token_id_prompts_are_taken_as_given_and_checked_against_the_vocabulary(served):
    [first, second] = completion(served, prompt=[[5, 6, 7], [8]], max_tokens=2)
    assert (first.prompt_ids, second.prompt_ids) == ([5, 6, 7], [8])
    vocab = served.engine.config.vocab_size
    assert refusal(completion, served, prompt=[1, vocab]).param == "prompt"


def test_the_context_limit_covers_prompt_plus_completion(served):
    assert len(completion(served, prompt=[1] * 60, max_tokens=4)) == 1
    too_long = refusal(completion, served, prompt=[1] * 60, max_tokens=5)
    assert (too_long.code, too_long.param) == ("context_length_exceeded", "max_tokens")
    assert refusal(completion, served, prompt=[1] * 64, max_tokens=1).param == "prompt"


def test_chat_defaults_to_the_rest_of_the_context(served):
    [job] = chat(served)
    assert job.params.max_tokens == 64 - len(job.prompt_ids)
    assert served.tokenizer.decode(job.prompt_ids, skip_special_tokens=False).startswith("<|im_start|>")


def test_n_choices_get_consecutive_seeds(served):
    jobs = completion(served, prompt="x", n=3, seed=41, temperature=0.7, max_tokens=2)
    assert [job.index for job in jobs] == [0, 1, 2]
    assert [job.params.seed for job in jobs] == [41, 42, 43]


def test_requests_without_seed_draw_reproducibly_from_the_server_seed(engine):
    def seeds() -> list[int]:
        served = ServedModel.from_engine(engine, ServeSettings(model_arg="m", seed=5))
        return [completion(served, prompt="x", temperature=1.0)[0].params.seed for _ in range(3)]

    first = seeds()
    assert first == seeds()
    assert len(set(first)) == 3


def test_top_p_zero_is_greedy(served):
    [job] = completion(served, prompt="x", temperature=0.9, top_p=0.0)
    assert job.params.greedy


def test_echo_with_no_tokens_is_scoring_only_and_needs_echo(served):
    [job] = completion(served, prompt="x", echo=True, max_tokens=0, logprobs=1)
    assert job.params is None
    assert refusal(completion, served, prompt="x", max_tokens=0).param == "max_tokens"


@pytest.mark.parametrize(
    "field, value",
    [
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1.0),
        ("logit_bias", {"5": 1.0}),
        ("suffix", "end"),
        ("best_of", 2),
    ],
)
def test_unsupported_options_are_refused_not_ignored(served, field, value):
    assert refusal(completion, served, prompt="x", **{field: value}).param == field


def test_top_logprobs_without_logprobs_is_refused(served):
    assert refusal(chat, served, top_logprobs=2).param == "top_logprobs"
