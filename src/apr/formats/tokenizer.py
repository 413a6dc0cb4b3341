"""Tokenizer: text <-> ids (built with the `tokenizers` library) plus the model's chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from apr.errors import FormatError
from apr.formats.chat_template import render_chat
from apr.formats.tokenizer_build import build_backend, spec_from_tokenizer_json
from apr.formats.tokenizer_spec import TokenizerSpec


class Tokenizer:
    """Encodes, decodes and renders chat prompts. Built from a TokenizerSpec (GGUF/APR) or tokenizer.json."""

    def __init__(self, spec: TokenizerSpec, backend: BackendTokenizer | None = None) -> None:
        self.spec = spec
        self._backend = backend if backend is not None else build_backend(spec)
        special = set()
        for token in self._backend.get_added_tokens_decoder().values():
            if token.special:
                special.add(token.content)
        self._special_texts = special

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_hf_dir(cls, directory: Path) -> Tokenizer:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, ``generation_config.json``) from a directory."""
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise FormatError(f"{directory}: no tokenizer.json; copy the model's tokenizer.json into this directory")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            backend = BackendTokenizer.from_str(json.dumps(data))
        except Exception as err:  # tokenizers reports parse errors as plain Exception; all mean "bad file"
            raise FormatError(f"{path}: not a valid tokenizer.json ({str(err).splitlines()[0]})") from err
        config = _read_json_if_present(directory / "tokenizer_config.json")
        generation = _read_json_if_present(directory / "generation_config.json")
        try:
            spec = spec_from_tokenizer_json(data, config)
        except (ValueError, KeyError, TypeError) as err:
            raise FormatError(f"{path}: unsupported tokenizer ({err})") from err
        eos = generation.get("eos_token_id")
        eos_list = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
        if eos_list:
            extra = tuple(i for i in dict.fromkeys([*spec.extra_eos_token_ids, *eos_list]) if i != spec.eos_token_id)
            eos_id = spec.eos_token_id if spec.eos_token_id is not None else eos_list[0]
            spec = TokenizerSpec.from_dict(
                {
                    **spec.to_dict(),
                    "eos_token_id": eos_id,
                    "extra_eos_token_ids": tuple(i for i in extra if i != eos_id),
                }
            )
        return cls(spec, backend)

    # --- contract -------------------------------------------------------------------------------
    @property
    def backend(self) -> BackendTokenizer:
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return self.spec.bos_token_id

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.spec.eos_token_ids

    @property
    def pad_token_id(self) -> int | None:
        return self.spec.pad_token_id

    @property
    def chat_template(self) -> str | None:
        return self.spec.chat_template

    @property
    def has_chat_template(self) -> bool:
        return bool(self.spec.chat_template)

    def token_text(self, token_id: int) -> str:
        return self.spec.tokens[token_id]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def special_tokens_map(self) -> dict[str, str | None]:
        def text(token_id: int | None) -> str | None:
            return self.spec.tokens[token_id] if token_id is not None else None

        return {
            "bos_token": text(self.spec.bos_token_id),
            "eos_token": text(self.spec.eos_token_id),
            "unk_token": text(self.spec.unk_token_id),
            "pad_token": text(self.spec.pad_token_id),
        }

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text for ``messages``, rendered like transformers' ``apply_chat_template``."""
        if not self.spec.chat_template:
            raise ValueError("this model has no chat template; use a raw prompt instead")
        return render_chat(
            self.spec.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens_map(),
            tools=tools,
        )

    def to_tokenizer_json(self) -> str:
        return self._backend.to_str()

    def tokenizer_config(self) -> dict[str, Any]:
        """tokenizer_config.json for a Hugging Face directory; ``apr_gguf_tokenizer`` keeps GGUF-only facts."""
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.spec.add_bos_token,
            "add_eos_token": self.spec.add_eos_token,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 131072,
            **{k: v for k, v in self.special_tokens_map().items() if v is not None},
            "apr_gguf_tokenizer": {
                "pre": self.spec.pre,
                "token_types": list(self.spec.token_types),
                "scores": list(self.spec.scores),
                "add_space_prefix": self.spec.add_space_prefix,
                "keep_merges": bool(self.spec.merges),
            },
        }
        if self.spec.chat_template:
            config["chat_template"] = self.spec.chat_template
        return config


def _read_json_if_present(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise FormatError(f"{path}: not valid JSON ({err}); fix or delete the file") from err
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object; fix or delete the file")
    return data
