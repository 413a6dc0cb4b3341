"""Tiny trained tokenizers and chat templates for the fixture models (deterministic, from an embedded corpus)."""

from __future__ import annotations

import json

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers, trainers

from apr.formats.tokenizer_build import _byte_level_pre_tokenizer
from apr.formats.tokenizer_spec import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TokenizerSpec, eog_ids

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 2+2? 2 + 2 equals 4. What is the capital of France? Paris.",
    "Hello! How can I help you today? I am a helpful assistant.",
    "def add_numbers(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Model:\n    def __init__(self, config):\n        self.config = config\n",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\n",
    'if __name__ == "__main__":\n    main()\n',
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1234 3.14159 2025",
    "你好，世界！这是一个测试。我们的模型可以说中文。",
    "Unicode: café naïve über straße Москва Ελλάδα 東京 🎉🚀",
    "The model reads tokens, computes attention, and predicts the next token.",
    "Certification needs evidence: every check writes one record.",
    "Once upon a time there was a small model that learned to talk.",
    "SELECT name, value FROM metrics WHERE value > 0.5 ORDER BY name;",
    "<html><body><p>Hello, world</p></body></html>",
] * 4

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    '{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = "" -%}'
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def _train_byte_level(pre: str, vocab_size: int, specials: list[str]) -> tuple[list[str], list[str]]:
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def qwen2_tokenizer_spec() -> TokenizerSpec:
    """Byte-level BPE, Qwen2 pre-tokenizer, specials appended after the merges like Qwen's vocabulary."""
    tokens, merges = _train_byte_level("qwen2", 320, [])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = tokens + specials
    types = [TOKEN_NORMAL] * (len(tokens) - 3) + [TOKEN_CONTROL] * 3
    eos = tokens.index("<|im_end|>")
    return TokenizerSpec(
        model="gpt2",
        pre="qwen2",
        tokens=tuple(tokens),
        token_types=tuple(types),
        merges=tuple(merges),
        bos_token_id=tokens.index("<|endoftext|>"),
        eos_token_id=eos,
        pad_token_id=tokens.index("<|endoftext|>"),
        chat_template=CHATML_TEMPLATE,
        extra_eos_token_ids=eog_ids(tokens, eos),
    ).validate()


def llama_tokenizer_spec() -> TokenizerSpec:
    """Byte-level BPE with SmolLM2's digit-splitting pre-tokenizer and specials at ids 0-2."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens, merges = _train_byte_level("smollm", 320, specials)
    types = [TOKEN_CONTROL if t in specials else TOKEN_NORMAL for t in tokens]
    return TokenizerSpec(
        model="gpt2",
        pre="smollm",
        tokens=tuple(tokens),
        token_types=tuple(types),
        merges=tuple(merges),
        bos_token_id=1,
        eos_token_id=2,
        unk_token_id=0,
        pad_token_id=2,
        chat_template=SMOL_TEMPLATE,
        extra_eos_token_ids=eog_ids(tokens, 2),
    ).validate()


def gemma3_tokenizer_spec() -> TokenizerSpec:
    """SentencePiece-style BPE (no merges stored, byte fallback, scores), Gemma's special ids."""
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False)
    backend.train_from_iterator(CORPUS, trainer=trainer)
    vocab = json.loads(backend.to_str())["model"]["vocab"]
    pieces = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = specials + byte_tokens + pieces
    types = (
        [TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL]
        + [TOKEN_BYTE] * 256
        + [TOKEN_NORMAL] * len(pieces)
    )
    scores = tuple(float(-i) for i in range(len(tokens)))
    return TokenizerSpec(
        model="llama",
        pre="default",
        tokens=tuple(tokens),
        token_types=tuple(types),
        scores=scores,
        bos_token_id=2,
        eos_token_id=1,
        unk_token_id=3,
        pad_token_id=0,
        add_bos_token=True,
        chat_template=GEMMA_TEMPLATE,
        extra_eos_token_ids=eog_ids(tokens, 1),
    ).validate()


TOKENIZER_SPECS = {"qwen2": qwen2_tokenizer_spec, "llama": llama_tokenizer_spec, "gemma3": gemma3_tokenizer_spec}
