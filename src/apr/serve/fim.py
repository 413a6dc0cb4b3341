"""Fill-in-the-middle prompts from the FIM special tokens the model's own vocabulary carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apr.formats.tokenizer import Tokenizer

# Spellings of (prefix, suffix, middle) used by the code-model families we know; the GGUF keys
# `tokenizer.ggml.fim_*_token_id` are not written by every converter (Qwen2.5-Coder's file has none),
# so the vocabulary itself is the dependable source.
FIM_SPELLINGS: tuple[tuple[str, str, str], ...] = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),  # CodeLlama
)
# Qwen2.5-Coder ends a FIM completion with this token, which is not among its chat EOS ids.
FIM_STOP_SPELLINGS = ("<|fim_pad|>", "<|endoftext|>", "<|file_sep|>", "<|repo_name|>", "<fim_pad>")


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int
    stops: tuple[int, ...]

    def prompt_ids(self, tokenizer: Tokenizer, prefix: str, suffix: str) -> list[int]:
        """Prefix-suffix-middle order (PSM), the order Qwen2.5-Coder and StarCoder were trained on."""
        return [
            self.prefix,
            *tokenizer.encode(prefix, add_special_tokens=False),
            self.suffix,
            *tokenizer.encode(suffix, add_special_tokens=False),
            self.middle,
        ]


def find_fim_tokens(tokenizer: Tokenizer) -> FimTokens | None:
    """The model's FIM tokens, or None when its vocabulary has no complete set."""
    index = {text: token_id for token_id, text in enumerate(tokenizer.spec.tokens)}
    for spelling in FIM_SPELLINGS:
        prefix, suffix, middle = (index.get(text) for text in spelling)
        if prefix is not None and suffix is not None and middle is not None:
            stops = tuple(index[text] for text in FIM_STOP_SPELLINGS if text in index)
            return FimTokens(prefix=prefix, suffix=suffix, middle=middle, stops=stops)
    return None
