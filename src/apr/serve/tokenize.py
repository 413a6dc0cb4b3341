"""vLLM's tokenizer routes: POST /tokenize, POST /detokenize, GET /tokenizer_info (eval harnesses use them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from apr.serve.errors import bad_request
from apr.serve.protocol_extra import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from apr.serve.route_meta import ERROR_RESPONSES
from apr.serve.served import ServedModel
from apr.serve.state import ServeState, check_api_key, serve_state
from apr.serve.tools import template_message

router = APIRouter(dependencies=[Depends(check_api_key)])


async def _named(model: str | None, state: ServeState) -> ServedModel:
    """vLLM makes `model` optional here: unnamed means the default model; a named one is loaded like any
    request's (the tokenizer comes with the model). The lease ends at once: tokenizing never touches the engine
    thread, and a model evicted meanwhile stays alive while this request holds it."""
    if model is None:
        return state.served
    lease = await state.lease(model)
    lease.release()
    return lease.served


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, state: ServeState = Depends(serve_state)) -> TokenizeResponse:
    served = await _named(body.model, state)
    tokenizer = served.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("Send exactly one of 'prompt' or 'messages'.", param="prompt")
    if body.messages is not None:
        if not tokenizer.has_chat_template:
            raise bad_request(
                "This model has no chat template; send 'prompt'.", param="messages", code="no_chat_template"
            )
        try:
            text = tokenizer.apply_chat_template(
                [template_message(m) for m in body.messages], add_generation_prompt=body.add_generation_prompt
            )
        except ValueError as exc:
            raise bad_request(f"The chat template rejected these messages: {exc}", param="messages") from exc
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    strs = [served.token_text(token) for token in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=served.max_context, tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, state: ServeState = Depends(serve_state)) -> DetokenizeResponse:
    served = await _named(body.model, state)
    vocab = served.engine.config.vocab_size
    bad = next((token for token in body.tokens if token >= vocab), None)
    if bad is not None:
        raise bad_request(f"Token id {bad} is outside the vocabulary (size {vocab}).", param="tokens")
    return DetokenizeResponse(prompt=served.tokenizer.decode(body.tokens, skip_special_tokens=False))


@router.get("/tokenizer_info", responses=ERROR_RESPONSES)
async def tokenizer_info(model: str | None = None, state: ServeState = Depends(serve_state)) -> dict[str, Any]:
    """The tokenizer's configuration, like vLLM's `/tokenizer_info` (tokenizer_config.json fields);
    `?model=` names another model (default: the default model)."""
    served = await _named(model, state)
    config = {key: value for key, value in served.tokenizer.tokenizer_config().items() if key != "apr_gguf_tokenizer"}
    return {**config, "model_max_length": served.max_context}
