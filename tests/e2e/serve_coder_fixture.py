"""A tiny qwen2 fixture that looks like Qwen2.5-Coder to the server: FIM and <tool_call> tokens, Qwen's tools template."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from apr.formats.fixtures import build_fixture_model
from apr.formats.tokenizer import Tokenizer
from apr.formats.tokenizer_spec import TOKEN_CONTROL, TOKEN_USER_DEFINED

CONTEXT_LENGTH = 2048
TEMPLATE = Path(__file__).parent / "data" / "qwen2.5_chat_template.jinja"
# Qwen2.5-Coder's spellings and token types (FIM tokens are control tokens, tool tags user-defined).
ADDED = (
    ("<|fim_prefix|>", TOKEN_CONTROL),
    ("<|fim_middle|>", TOKEN_CONTROL),
    ("<|fim_suffix|>", TOKEN_CONTROL),
    ("<|fim_pad|>", TOKEN_CONTROL),
    ("<tool_call>", TOKEN_USER_DEFINED),
    ("</tool_call>", TOKEN_USER_DEFINED),
)


def write_coder_fixture(path: Path) -> Path:
    """The qwen2 fixture with its last merged tokens replaced by the added ones (same vocabulary size, so the
    weights stay valid); the merges that built them are dropped, and no earlier merge uses them."""
    from apr.formats.gguf_write import write_gguf

    model = build_fixture_model("qwen2")
    spec = model.tokenizer.spec
    tokens, types = list(spec.tokens), list(spec.token_types)
    first_special = tokens.index("<|endoftext|>")
    start = first_special - len(ADDED)
    for offset, (text, kind) in enumerate(ADDED):
        tokens[start + offset], types[start + offset] = text, kind
    coder = dataclasses.replace(
        spec,
        tokens=tuple(tokens),
        token_types=tuple(types),
        merges=spec.merges[: len(spec.merges) - len(ADDED)],
        chat_template=TEMPLATE.read_text(encoding="utf-8"),
    ).validate()
    # Qwen's tools preamble alone is ~600 tokens in this 323-token vocabulary: give the fixture room for it.
    config = dataclasses.replace(model.config, context_length=CONTEXT_LENGTH).validate()
    model = dataclasses.replace(model, tokenizer=Tokenizer(coder), config=config)
    return write_gguf(model, path)
