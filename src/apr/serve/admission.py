"""Turn validated OpenAI requests into generation jobs (prompt ids + SamplingParams), refusing what cannot run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from apr.serve.errors import ApiError, bad_request
from apr.serve.fim import find_fim_tokens
from apr.serve.grammar import ConstraintSpec, constraint_for
from apr.serve.protocol import SEED_RANGE, ChatCompletionRequest, CompletionRequest, SamplingFields
from apr.serve.served import ServedModel
from apr.serve.tools import ToolPlan, check_schema, forced_opening, plan_tools, template_message

if TYPE_CHECKING:
    from apr.engine import SamplingParams

# OpenAI's default for /v1/completions; chat defaults to the rest of the context.
DEFAULT_COMPLETION_TOKENS = 16
# Prompts beyond the batch size wait in the scheduler's queue, so this only bounds one request's
# bookkeeping; lm-eval sends its whole batch in one request.
MAX_CHOICES_PER_REQUEST = 4096


@dataclass(frozen=True)
class Job:
    """One choice to produce: `max_tokens` 0 means nothing is generated (echo-only scoring)."""

    index: int
    prompt_ids: list[int]
    prompt_text: str
    params: SamplingParams | None
    # Chat only: the functions the reply may call, and text the assistant turn was started with
    # (a required tool call opens with "<tool_call>"); the reply's text continues it.
    tools: ToolPlan = ToolPlan()
    opening: str = ""
    # A JSON schema (or {} for any JSON object) the reply is constrained to, and the structure to
    # constrain it with; see grammar.py.
    constraint: ConstraintSpec | None = None


class NamesModel(Protocol):
    """A request that names the model it is for."""

    @property
    def model(self) -> str: ...


def check_model(request: NamesModel, served: ServedModel) -> None:
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
    if request.best_of is not None and request.best_of > 1:
        raise bad_request("'best_of' above 1 is not supported by this server.", param="best_of")
    stop_ids: tuple[int, ...] = ()
    if request.suffix is not None:
        prompts, stop_ids = _fim_prompts(request, served)
    else:
        prompts = _completion_prompts(request, served)
    if len(prompts) * request.n > MAX_CHOICES_PER_REQUEST:
        raise bad_request(
            f"At most {MAX_CHOICES_PER_REQUEST} choices (prompts x n) per request; this one asks for "
            f"{len(prompts)} x {request.n}.",
            param="prompt" if request.n == 1 else "n",
        )
    if request.max_tokens == 0 and not request.echo:
        raise bad_request("'max_tokens' 0 only makes sense with 'echo' (prompt scoring).", param="max_tokens")
    max_tokens = DEFAULT_COMPLETION_TOKENS if request.max_tokens is None else request.max_tokens
    jobs = []
    for prompt_index, (ids, text) in enumerate(prompts):
        _check_context(len(ids), max_tokens, served)
        for choice in range(request.n):
            index = prompt_index * request.n + choice
            params = _sampling_params(request, served, max_tokens, request.logprobs or 0, choice, stop_ids)
            jobs.append(Job(index=index, prompt_ids=ids, prompt_text=text, params=params))
    return jobs


def chat_jobs(request: ChatCompletionRequest, served: ServedModel) -> list[Job]:
    check_model(request, served)
    refuse_unsupported(request)
    plan = plan_tools(request)
    for spec in plan.functions:
        check_schema(spec.parameters, "tools")
    constraint = constraint_for(request, plan)
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    opening = forced_opening(plan)
    text = _render_chat(request, served, plan) + opening
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
            tools=plan,
            opening=opening,
            constraint=constraint,
        )
        for choice in range(request.n)
    ]


def _render_chat(request: ChatCompletionRequest, served: ServedModel, plan: ToolPlan) -> str:
    tokenizer = served.tokenizer
    if not tokenizer.has_chat_template:
        raise bad_request(
            f"The model '{served.model_id}' has no chat template, so it cannot serve chat completions; "
            "use /v1/completions with a plain prompt.",
            param="messages",
            code="no_chat_template",
        )
    messages = [template_message(m) for m in request.messages]
    tools = plan.template_tools()
    if tools and "tools" not in (tokenizer.chat_template or ""):
        raise bad_request(
            f"The chat template of '{served.model_id}' does not render tools, so 'tools' cannot be served.",
            param="tools",
            code="tools_not_supported",
        )
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
    except Exception as exc:  # jinja raises TemplateError (or anything the template calls) for bad turns
        raise bad_request(f"The chat template rejected these messages: {exc}", param="messages") from exc


def _fim_prompts(
    request: CompletionRequest, served: ServedModel
) -> tuple[list[tuple[list[int], str]], tuple[int, ...]]:
    """Each text prompt is the code before the gap, `suffix` the code after it."""
    fim = find_fim_tokens(served.tokenizer)
    if fim is None:
        raise bad_request(
            f"The model '{served.model_id}' has no fill-in-the-middle tokens in its vocabulary (such as "
            "<|fim_prefix|>), so 'suffix' cannot be served; send the prompt without 'suffix'.",
            param="suffix",
            code="fim_not_supported",
        )
    if request.echo:
        raise bad_request("'echo' cannot be combined with 'suffix' (fill-in-the-middle).", param="echo")
    texts = prompt_texts(request.prompt)
    if texts is None:
        raise bad_request("With 'suffix', 'prompt' must be text (the code before the gap).", param="prompt")
    suffix = request.suffix or ""
    return [(fim.prompt_ids(served.tokenizer, text, suffix), text) for text in texts], fim.stops


def prompt_texts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str] | None:
    """The prompt's texts, or None when it is given as token ids."""
    if isinstance(prompt, str):
        return [prompt]
    texts = [item for item in prompt if isinstance(item, str)]
    return texts if len(texts) == len(prompt) else None


def prompt_id_lists(prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """A prompt of token ids as one list per prompt (a flat list is one prompt); text holds none."""
    if isinstance(prompt, str):
        return []
    flat = [item for item in prompt if isinstance(item, int)]
    if len(flat) == len(prompt):
        return [flat]
    return [list(item) for item in prompt if isinstance(item, list)]


def _completion_prompts(request: CompletionRequest, served: ServedModel) -> list[tuple[list[int], str]]:
    """Each prompt as (token ids, text). Text is encoded with the model's special tokens (BOS)."""
    tokenizer = served.tokenizer
    texts = prompt_texts(request.prompt)
    if texts is None:
        id_lists = prompt_id_lists(request.prompt)
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


def _sampling_params(
    request: SamplingFields,
    served: ServedModel,
    max_tokens: int,
    top_logprobs: int,
    choice: int,
    stop_token_ids: tuple[int, ...] = (),
) -> SamplingParams | None:
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
        stop_token_ids=stop_token_ids,
        logprobs=top_logprobs,
    )
