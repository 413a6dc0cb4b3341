"""Build a `tokenizers.Tokenizer` from a TokenizerSpec, and recover a spec from a tokenizer.json."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from apr.formats.tokenizer_spec import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_USER_DEFINED,
    TokenizerSpec,
    eog_ids,
)

# llama.cpp pre-tokenizer regexes (llama-vocab.cpp), as tokenizers Split patterns.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_BY_PRE = {"qwen2": _QWEN2_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT}
# These split every digit off first, then apply GPT-2's regex (what ByteLevel(use_regex=True) does).
_DIGIT_FIRST_PRES = ("smollm", "starcoder", "refact", "codeshell")


def _pair(merge: str) -> tuple[str, str]:
    """One merge rule, ``"a b"``, as the pair BPE takes."""
    left, _, right = merge.partition(" ")
    return left, right


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of every byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre in _SPLIT_BY_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_BY_PRE[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre in _DIGIT_FIRST_PRES:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _sentencepiece_merges(tokens: list[str]) -> list[tuple[str, str]]:
    """Merges implied by a vocabulary without merges; earlier tokens merge first (Gemma's file order).

    Order = (token index, longer left piece first), the order transformers' ``generate_merges`` gives
    for Gemma; walking tokens in index order and cuts right to left yields it without a sort.
    """
    vocab = set(tokens)
    merges: list[tuple[str, str]] = []
    append = merges.append
    for token in tokens:
        for cut in range(len(token) - 1, 0, -1):
            left = token[:cut]
            if left in vocab:
                right = token[cut:]
                if right in vocab:
                    append((left, right))
    return merges


def _add_special_tokens(backend: BackendTokenizer, spec: TokenizerSpec, spelled: list[str], byte_level: bool) -> None:
    alphabet = set(bytes_to_unicode().values()) if byte_level else None
    control = [
        AddedToken(text, normalized=False, special=True)
        for text, kind in zip(spelled, spec.token_types)
        if kind == TOKEN_CONTROL and (alphabet is None or set(text) <= alphabet)
    ]
    backend.add_special_tokens(control)
    user = [
        AddedToken(text, normalized=False, special=False)
        for text, kind in zip(spelled, spec.token_types)
        if kind == TOKEN_USER_DEFINED
    ]
    backend.add_tokens(user)


def _bos_post_processor(spec: TokenizerSpec, spelled: list[str]) -> processors.PostProcessor | None:
    if not spec.add_bos_token or spec.bos_token_id is None:
        return None
    bos = spelled[spec.bos_token_id]
    return processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, spec.bos_token_id)]
    )


@lru_cache(maxsize=8)
def build_backend(spec: TokenizerSpec) -> BackendTokenizer:
    """A tokenizers.Tokenizer that encodes like llama.cpp / the original HF tokenizer of ``spec``.

    Cached per spec: building Gemma's 262k-token vocabulary (merges rebuilt from it) takes seconds, and
    the result is never mutated."""
    tokens = list(spec.tokens)
    if spec.model == "gpt2":
        spelling = bytes_to_unicode()
        alphabet = set(spelling.values())
        spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")) for t in tokens]
        vocab = {text: index for index, text in enumerate(spelled)}
        merges = [_pair(merge) for merge in spec.merges]
        backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = _byte_level_pre_tokenizer(spec.pre)
        backend.decoder = decoders.ByteLevel()
    elif spec.model == "llama":
        # SentencePiece stores runs of spaces as real spaces; the BPE model looks them up as U+2581.
        spelled = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
        vocab = {text: index for index, text in enumerate(spelled)}
        merges = [_pair(merge) for merge in spec.merges] if spec.merges else _sentencepiece_merges(spelled)
        unk = spelled[spec.unk_token_id] if spec.unk_token_id is not None else None
        backend = BackendTokenizer(
            models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
        )
        steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "\u2581")]
        if spec.add_space_prefix:
            steps.insert(0, normalizers.Prepend("\u2581"))
        backend.normalizer = normalizers.Sequence(steps) if len(steps) > 1 else steps[0]
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        decode_steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if spec.add_space_prefix:
            decode_steps.append(decoders.Strip(" ", 1, 0))
        backend.decoder = decoders.Sequence(decode_steps)
    else:
        raise ValueError(f"unsupported tokenizer model {spec.model!r} (supported: gpt2, llama)")
    _add_special_tokens(backend, spec, spelled, byte_level=spec.model == "gpt2")
    post = _bos_post_processor(spec, spelled)
    if post is not None:
        backend.post_processor = post
    return backend


def _pre_name_of(pre_tokenizer: dict[str, Any] | None) -> str:
    """Recover llama.cpp's pre-tokenizer name from a tokenizer.json pre_tokenizer section."""
    text = json.dumps(pre_tokenizer or {})
    if _QWEN2_SPLIT.replace("\\", "\\\\") in text:
        return "qwen2"
    if _LLAMA3_SPLIT.replace("\\", "\\\\") in text:
        return "llama-bpe"
    if '"Digits"' in text:
        return "smollm"
    return "default"


def spec_from_tokenizer_json(data: dict[str, Any], config: dict[str, Any]) -> TokenizerSpec:
    """A TokenizerSpec from tokenizer.json (``data``) and tokenizer_config.json (``config``)."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(
            f"tokenizer model {model.get('type')!r} is not BPE (supported: byte-level and SentencePiece BPE)"
        )
    byte_fallback = bool(model.get("byte_fallback"))
    kind: Literal["gpt2", "llama"] = "llama" if byte_fallback else "gpt2"
    id_to_text: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = {int(tok["id"]): tok for tok in data.get("added_tokens") or []}
    for added_id, tok in added.items():
        id_to_text[added_id] = tok["content"]
    size = max(id_to_text) + 1
    missing = [i for i in range(size) if i not in id_to_text]
    if missing:
        raise ValueError(f"token ids have gaps (first missing id {missing[0]})")
    # GGUF stores byte-level tokens in their printable spelling, exactly as tokenizer.json does.
    tokens = [id_to_text[i] for i in range(size)]
    types = []
    for i, text in enumerate(tokens):
        if i in added:
            types.append(TOKEN_CONTROL if added[i].get("special") else TOKEN_USER_DEFINED)
        elif kind == "llama" and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(TOKEN_BYTE)
        else:
            types.append(TOKEN_NORMAL)
    merges = tuple(m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or ())
    gguf_hints = config.get("apr_gguf_tokenizer") or {}
    text_to_id = {t: i for i, t in enumerate(tokens)}

    def token_id(key: str) -> int | None:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return text_to_id.get(value) if isinstance(value, str) else None

    bos_id = token_id("bos_token")
    post = data.get("post_processor") or {}
    bos_text = tokens[bos_id] if bos_id is not None else None
    add_bos = bool(config.get("add_bos_token", bos_text is not None and bos_text in (post.get("special_tokens") or {})))
    eos_id = token_id("eos_token")
    return TokenizerSpec(
        model=kind,
        pre=gguf_hints.get("pre") or (_pre_name_of(data.get("pre_tokenizer")) if kind == "gpt2" else "default"),
        tokens=tuple(tokens),
        token_types=tuple(gguf_hints.get("token_types") or types),
        merges=merges if kind == "gpt2" or gguf_hints.get("keep_merges") else (),
        scores=tuple(gguf_hints.get("scores") or ()),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        unk_token_id=token_id("unk_token"),
        pad_token_id=token_id("pad_token"),
        add_bos_token=add_bos,
        add_space_prefix=bool(gguf_hints.get("add_space_prefix", False)),
        chat_template=config.get("chat_template"),
        extra_eos_token_ids=eog_ids(tokens, eos_id),
    ).validate()
