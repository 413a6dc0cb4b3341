"""The model being served: its engine, the names clients may call it by, its limits, and token spellings."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from apr.serve.defaults import DEFAULT_MAX_BODY_MB, DEFAULT_PREFILL_CHUNK
from apr.serve.grammar import GrammarTokenizer

if TYPE_CHECKING:
    from apr.engine import Engine
    from apr.engine.types import KvCache


@dataclass(frozen=True)
class ServeSettings:
    """How `apr serve` was started. `max_context` None means the model's own context length."""

    model_arg: str
    host: str = "127.0.0.1"
    port: int = 8080
    batch_size: int = 8
    api_key: str | None = None
    max_context: int | None = None
    # Seeds the per-request seeds of sampled requests that send none, so a server run is replayable.
    seed: int = 0
    # After SIGINT/SIGTERM, in-flight requests get this long to finish before they are cancelled.
    graceful_timeout_s: float = 2.0
    # KV caches kept for reuse by later requests sharing a prompt prefix (0 turns the prefix cache off).
    prefix_cache_mb: int = 1024
    # Long prompts are prefilled and scored this many tokens per step, between the other streams' tokens.
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    # Request bodies beyond this are refused (413) before they are read whole.
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * 2**20
    # Models loaded at once (the default included) are bounded by their weights' bytes (None: half the
    # machine's memory; 0: no bound) and by their number (0: no bound); see pool.py.
    max_loaded_mb: float | None = None
    max_models: int = 0
    # A model other than the default is unloaded after this long without requests (0: never).
    idle_unload_s: float = 600.0
    # How models loaded on demand are loaded (the default model is loaded the same way by the CLI).
    device: str = "auto"
    numerics: str = "fast"
    kv_cache: KvCache = "f32"
    # Prompt-lookup decoding: tokens drafted a step from each request's own n-grams (0: off; docs/serve.md).
    lookup: int = 0


@dataclass
class ServedModel:
    """Everything the routes need to know about the loaded model, plus the server's seed source."""

    engine: Engine
    model_id: str
    aliases: frozenset[str]
    max_context: int
    created: int
    seed_source: random.Random
    grammar: GrammarTokenizer
    _token_texts: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_engine(cls, engine: Engine, settings: ServeSettings) -> ServedModel:
        """The model named on the command line: called by that argument (a ref) or its file's name (a path)."""
        path = Path(str(engine.describe().get("path", settings.model_arg)))
        model_id = path.name if Path(settings.model_arg).exists() else settings.model_arg
        return cls.named(engine, settings, model_id, frozenset({settings.model_arg, path.stem}))

    @classmethod
    def named(cls, engine: Engine, settings: ServeSettings, model_id: str, aliases: frozenset[str]) -> ServedModel:
        """`engine` served as `model_id`; clients may also call it by `aliases`, its file's name or path."""
        described = engine.describe()
        path = Path(str(described.get("path", model_id)))
        aliases = aliases | {model_id, path.name, str(path)}
        # The engine may hold fewer positions than the model was trained for (its KV-cache bound).
        trained = engine.config.context_length
        model_limit = min(trained, int(described.get("max_positions") or trained))
        max_context = min(settings.max_context, model_limit) if settings.max_context else model_limit
        return cls(
            engine=engine,
            model_id=model_id,
            aliases=aliases,
            max_context=max_context,
            created=int(time.time()),
            seed_source=random.Random(settings.seed),
            grammar=GrammarTokenizer(engine.tokenizer, engine.config.vocab_size, engine.eos_token_ids),
        )

    @property
    def tokenizer(self):  # apr.formats.tokenizer.Tokenizer
        return self.engine.tokenizer

    def knows(self, name: str) -> bool:
        return name in self.aliases

    def next_seed(self) -> int:
        return self.seed_source.randrange(2**63)

    def token_text(self, token_id: int) -> str:
        """How one token spells on its own (special tokens included), cached: logprobs name every token."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_texts[token_id] = text
        return text
