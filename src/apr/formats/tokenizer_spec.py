"""TokenizerSpec: the format-neutral tokenizer description (GGUF-style vocab, merges, scores, ids)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

TokenizerModel = Literal["gpt2", "llama"]

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Texts llama.cpp treats as end-of-generation whenever the vocabulary has them.
EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<|eom_id|>",
)


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything needed to rebuild a tokenizer and to write it into GGUF, APR or tokenizer.json.

    model   "gpt2" = byte-level BPE with merges; "llama" = SentencePiece-style BPE with byte fallback
    pre     llama.cpp pre-tokenizer name (``tokenizer.ggml.pre``): "qwen2", "smollm", "default"...
    """

    model: TokenizerModel
    pre: str
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    unk_token_id: int | None = None
    pad_token_id: int | None = None
    add_bos_token: bool = False
    add_eos_token: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None
    # Extra end-of-generation ids beyond eos_token_id (from generation_config or EOG texts).
    extra_eos_token_ids: tuple[int, ...] = ()

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids: list[int] = []
        if self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        ids.extend(self.extra_eos_token_ids)
        return tuple(dict.fromkeys(ids))

    def validate(self) -> TokenizerSpec:
        if not self.tokens:
            raise ValueError("tokenizer has no tokens")
        if len(self.token_types) != len(self.tokens):
            raise ValueError(f"{len(self.token_types)} token types for {len(self.tokens)} tokens")
        if self.scores and len(self.scores) != len(self.tokens):
            raise ValueError(f"{len(self.scores)} scores for {len(self.tokens)} tokens")
        if self.model == "gpt2" and not self.merges:
            raise ValueError("a gpt2 (byte-level BPE) tokenizer needs merges")
        for name in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < len(self.tokens):
                raise ValueError(f"{name} {value} outside the vocabulary of {len(self.tokens)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerSpec:
        values = dict(data)
        for key in ("tokens", "token_types", "merges", "scores", "extra_eos_token_ids"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values).validate()


def eog_ids(tokens: tuple[str, ...] | list[str], eos_token_id: int | None) -> tuple[int, ...]:
    """End-of-generation ids the way llama.cpp finds them: the EOS plus every known EOG text present."""
    index = {text: i for i, text in enumerate(tokens) if text in EOG_TEXTS}
    found = [index[text] for text in EOG_TEXTS if text in index]
    return tuple(i for i in dict.fromkeys(found) if i != eos_token_id)
