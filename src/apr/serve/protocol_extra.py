"""Wire format of the routes beside completions and chat: embeddings, tokenize/detokenize, model downloads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from apr.serve.protocol import ChatMessage, TokenId, TopLevelRequest

MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(TopLevelRequest):
    """POST /v1/embeddings. `input` may be text, texts, token ids or lists of token ids."""

    model: str
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)
        ]
    )
    encoding_format: Literal["float", "base64"] = "float"
    # OpenAI's truncation of the vector (Matryoshka models); refused unless it equals the full size.
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class TokenizeRequest(TopLevelRequest):
    """POST /tokenize as vLLM serves it: a `prompt`, or chat `messages` rendered by the template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(TopLevelRequest):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class DownloadRequest(TopLevelRequest):
    """POST /models/download: `model` is a ref such as `qwen2.5-coder:1.5b` or `hf://org/repo`."""

    model: Annotated[str, Field(min_length=1)]
