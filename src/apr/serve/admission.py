"""Turn validated OpenAI requests into generation jobs (prompt ids + SamplingParams), refusing what cannot run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apr.serve.errors import ApiError, bad_request
from apr.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, SEED_RANGE
from apr.serve.served import ServedModel

if TYPE_CHECKING:
    from apr.engine import SamplingParams

# OpenAI's default for /v1/completions; chat defaults to the rest of the context.
DEFAULT_COMPLETION_TOKENS = 16
# Echo scoring materializes float32 logits for every prompt position; beyond this it would
# risk the server's memory, so such prompts are refused (Qwen2.5's vocabulary: ~2,600 tokens).
MAX_SCORING_LOGITS_BYTES = 1_600_000_000


@dataclass(frozen=True)
class Job:
    """One choice to produce: `max_tokens` 0 means nothing is generated (echo-only scoring)."""

    index: int
    prompt_ids: list[int]
    prompt_text: str
    params: "SamplingParams | None"


def check_model(request: SamplingFields, served: ServedModel) -> None:
    if not served.knows(request.model):
        raise ApiError(
            404,
            f"The model '{request.model}' does not exist on this server; it serves '{served.model_id}' "
            "(see GET /v1/models).",
            param="model",
            code="model_not_found",
        )


def refuse_unsupported(request: SamplingFields) -> None:
    """Fields we accept for compatibility but cannot honour are refused rather than silently ignored."""
    if request.presence_penalty != 0.0 or request.frequency_penalty != 0.0:
        param = "presence_penalty" if request.presence_penalty != 0.0 else "frequency_penalty"
        raise bad_request(f"'{param}' is not supported by this server; use 'repetition_penalty'.", param=param)
    if request.logit_bias:
        raise bad_request("'logit_bias' is not supported by this server.", param="logit_bias")


def completion_jobs(request: CompletionRequest, served: ServedModel) -> list[Job]:
    check_model(request, served)
    refuse_unsupported(request)
    if request.suffix is not None:
        raise bad_request("'suffix' is not supported by this server.", param="suffix")
    if request.best_of is not None and request.best_of > 1:
        raise bad_request("'best_of' above 1 is not supported by this server.", param="best_of")
    prompts = _completion_prompts(request, served)
    if len(prompts) * request.n > 64:
        raise bad_request("At most 64 choices (prompts x n) per request.", param="n")
    if request.max_tokens == 0 and not request.echo:
        raise bad_request("'max_tokens' 0 only makes sense with 'echo' (prompt scoring).", param="max_tokens")
    max_tokens = DEFAULT_COMPLETION_TOKENS if request.max_tokens is None else request.max_tokens
    jobs = []
    for prompt_index, (ids, text) in enumerate(prompts):
        _check_context(len(ids), max_tokens, served)
        if request.echo and request.logprobs is not None:
            _check_scoring_size(len(ids), served)
        for choice in range(request.n):
            index = prompt_index * request.n + choice
            params = _sampling_params(request, served, max_tokens, request.logprobs or 0, choice)
            jobs.append(Job(index=index, prompt_ids=ids, prompt_text=text, params=params))
    return jobs


def chat_jobs(request: ChatCompletionRequest, served: ServedModel) -> list[Job]:
    check_model(request, served)
    refuse_unsupported(request)
    if request.tools:
        raise bad_request("'tools' are not supported by this server.", param="tools")
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    text = _render_chat(request, served)
    ids = served.tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise bad_request("The chat template produced an empty prompt.", param="messages")
    limit = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    if limit == 0:
        raise bad_request("'max_tokens' must be at least 1 for chat completions.", param="max_tokens")
    max_tokens = served.max_context - len(ids) if limit is None else limit
    _check_context(len(ids), max(max_tokens, 1), served)
    top = (request.top_logprobs or 0) if request.logprobs else 0
    return [
        Job(
            index=choice,
            prompt_ids=ids,
            prompt_text=text,
            params=_sampling_params(request, served, max_tokens, top, choice),
        )
        for choice in range(request.n)
    ]


def _render_chat(request: ChatCompletionRequest, served: ServedModel) -> str:
    tokenizer = served.tokenizer
    if not tokenizer.has_chat_template:
        raise bad_request(
            f"The model '{served.model_id}' has no chat template, so it cannot serve chat completions; "
            "use /v1/completions with a plain prompt.",
            param="messages",
            code="no_chat_template",
        )
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in request.messages]
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as exc:  # jinja raises TemplateError (or anything the template calls) for bad turns
        raise bad_request(f"The chat template rejected these messages: {exc}", param="messages") from exc


def _completion_prompts(request: CompletionRequest, served: ServedModel) -> list[tuple[list[int], str]]:
    """Each prompt as (token ids, text). Text is encoded with the model's special tokens (BOS)."""
    prompt = request.prompt
    tokenizer = served.tokenizer
    if isinstance(prompt, str):
        texts = [prompt]
    elif all(isinstance(item, str) for item in prompt):
        texts = list(prompt)
    else:
        id_lists = [prompt] if all(isinstance(item, int) for item in prompt) else list(prompt)
        vocab = served.engine.config.vocab_size
        for ids in id_lists:
            bad = next((token for token in ids if token >= vocab), None)
            if bad is not None:
                raise bad_request(f"Token id {bad} is outside the vocabulary (size {vocab}).", param="prompt")
        return [(list(ids), tokenizer.decode(list(ids), skip_special_tokens=False)) for ids in id_lists]
    prompts = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=True)
        if not ids:
            raise bad_request("The prompt is empty: it encodes to no tokens.", param="prompt")
        prompts.append((ids, text))
    return prompts


def _check_context(prompt_tokens: int, max_tokens: int, served: ServedModel) -> None:
    if prompt_tokens + max_tokens > served.max_context:
        raise bad_request(
            f"This model's maximum context length is {served.max_context} tokens; the request needs "
            f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt + {max_tokens} to generate). "
            "Shorten the prompt or lower 'max_tokens'.",
            param="max_tokens" if prompt_tokens < served.max_context else "prompt",
            code="context_length_exceeded",
        )


def _check_scoring_size(prompt_tokens: int, served: ServedModel) -> None:
    vocab = served.engine.config.vocab_size
    limit = MAX_SCORING_LOGITS_BYTES // (4 * vocab)
    if prompt_tokens > limit:
        raise bad_request(
            f"Scoring a prompt ('echo' with 'logprobs') is limited to {limit} tokens with this model's vocabulary; "
            f"this prompt has {prompt_tokens}. Split it into shorter windows.",
            param="prompt",
            code="context_length_exceeded",
        )


def _sampling_params(
    request: SamplingFields, served: ServedModel, max_tokens: int, top_logprobs: int, choice: int
) -> "SamplingParams | None":
    from apr.engine import SamplingParams

    if max_tokens == 0:
        return None
    # top_p 0 keeps only the most likely token: the greedy limit, which the engine spells temperature 0.
    greedy = request.temperature == 0.0 or request.top_p == 0.0
    seed = request.seed if request.seed is not None else served.next_seed()
    return SamplingParams(
        temperature=0.0 if greedy else request.temperature,
        top_k=request.top_k,
        top_p=1.0 if greedy else request.top_p,
        repetition_penalty=request.repetition_penalty,
        seed=(seed + choice) % SEED_RANGE,
        max_tokens=max_tokens,
        stop=request.stop_strings(),
        logprobs=top_logprobs,
    )
