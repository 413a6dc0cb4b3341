"""POST /v1/embeddings: mean-pooled, L2-normalized final hidden states of the served model."""

from __future__ import annotations

import base64
from functools import partial
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends

from apr.serve.admission import prompt_id_lists, prompt_texts
from apr.serve.choices import as_api_error
from apr.serve.errors import bad_request
from apr.serve.protocol_extra import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from apr.serve.route_meta import ERROR_RESPONSES
from apr.serve.scheduler import SchedulerError
from apr.serve.served import ServedModel
from apr.serve.state import ServeState, check_api_key, serve_state

if TYPE_CHECKING:
    from apr.engine import Engine

router = APIRouter(dependencies=[Depends(check_api_key)])


@router.post("/v1/embeddings", response_model=EmbeddingList, responses=ERROR_RESPONSES)
async def create_embeddings(body: EmbeddingRequest, state: ServeState = Depends(serve_state)) -> EmbeddingList:
    lease = await state.lease(body.model)
    try:
        served = lease.served
        hidden = served.engine.config.hidden_size
        if body.dimensions is not None and body.dimensions != hidden:
            raise bad_request(
                f"This model's embeddings have {hidden} dimensions and cannot be shortened; omit 'dimensions'.",
                param="dimensions",
            )
        inputs = _input_ids(body, served)
        try:
            vectors = await lease.scheduler.call(partial(embed_all, served.engine, inputs))
        except SchedulerError as error:
            raise as_api_error(error) from error
    finally:
        lease.release()
    data = [
        Embedding(index=index, embedding=_encoded(vector, body.encoding_format)) for index, vector in enumerate(vectors)
    ]
    tokens = sum(len(ids) for ids in inputs)
    return EmbeddingList(data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


def _input_ids(body: EmbeddingRequest, served: ServedModel) -> list[list[int]]:
    raw = body.input
    tokenizer = served.tokenizer
    texts = prompt_texts(raw)
    if texts is not None:
        lists = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    else:
        lists = prompt_id_lists(raw)
    vocab = served.engine.config.vocab_size
    for position, ids in enumerate(lists):
        if not ids:
            raise bad_request(f"Input {position} encodes to no tokens.", param="input")
        if any(token >= vocab for token in ids):
            raise bad_request(f"Input {position} has a token id outside the vocabulary (size {vocab}).", param="input")
        if len(ids) >= served.max_context:
            raise bad_request(
                f"Input {position} has {len(ids)} tokens; this model embeds at most {served.max_context - 1}.",
                param="input",
                code="context_length_exceeded",
            )
    return lists


def embed_all(engine: Engine, inputs: list[list[int]]) -> list[list[float]]:
    """Runs on the scheduler thread (it calls the engine). Pooling: the mean over every token of the final,
    normed hidden states, then scaled to unit L2 norm (so a dot product is the cosine similarity)."""
    import torch

    vectors = []
    for ids in inputs:
        pooled = engine.hidden_states(ids).mean(dim=0)
        vectors.append(torch.nn.functional.normalize(pooled, dim=0).tolist())
    return vectors


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    import numpy as np

    # What the openai client decodes: little-endian float32 bytes, base64.
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
