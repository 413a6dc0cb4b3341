"""Shared plumbing of `apr run`, `apr chat` and `apr bench`: load a model, build prompts, render results."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apr.engine import Engine, GenerationResult
    from apr.engine.types import KvCache  # only a type: a bad ref is refused before apr.engine is imported


@dataclass(frozen=True)
class EngineOptions:
    """What the user asked of the engine on the command line."""

    device: str = "auto"
    dtype: str | None = None
    threads: int | None = None
    compile: bool | None = None
    dense_prefill: bool | None = None
    numerics: str = "fast"
    kv_cache: KvCache = "f32"


def utf8_stdio() -> None:
    """Read and write UTF-8 whatever the locale says (a C locale would otherwise mangle 你好)."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if (getattr(stream, "encoding", "") or "").lower().replace("-", "") != "utf8" and hasattr(
            stream, "reconfigure"
        ):
            stream.reconfigure(encoding="utf-8", errors="replace" if stream is sys.stdin else "strict")


def argv_text(text: str) -> str:
    """Command-line text as real characters: under a C locale Python hands UTF-8 bytes over as surrogates."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@contextmanager
def layer_bar(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar over the layers a model load builds (with ETA), or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=description, unit="layer", file=sys.stderr, dynamic_ncols=True, leave=False) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield advance


def open_engine(model_arg: str, options: EngineOptions, *, templated: bool = False) -> tuple[Engine, float]:
    """(engine, seconds from the start of loading) for a MODEL argument (path, cached name or ref).

    ``templated``: the verb will render the model's chat template, so a template that fails (broken, or
    past its limits) is found on a probe turn before the engine is built, not after seconds of loading."""
    start = time.perf_counter()
    utf8_stdio()
    from apr.formats import load_model
    from apr.hub import resolve_model_arg

    # The ref first: a typo is refused in milliseconds, before torch's import (seconds on a busy machine).
    path = resolve_model_arg(model_arg, progress=sys.stderr.isatty())
    model = load_model(path)
    if templated and model.tokenizer.has_chat_template:
        model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    from apr.engine import load_engine

    with layer_bar(f"loading {path.name} on {options.device}") as progress:
        engine = load_engine(
            model,
            device=options.device,
            dtype=options.dtype,
            threads=options.threads,
            compile=options.compile,
            dense_prefill=options.dense_prefill,
            numerics=options.numerics,
            kv_cache=options.kv_cache,
            progress=progress,
        )
    warn_kernel_fallback(engine)
    if sys.stderr.isatty():
        print(
            f"loaded in {time.perf_counter() - start:.1f} s ({engine.describe()['kernels']}, weights cache "
            f"{engine.pack_state})",
            file=sys.stderr,
            flush=True,
        )
    return engine, time.perf_counter() - start


def prompt_ids(engine: Engine, messages: list[dict[str, str]], raw_text: str | None) -> list[int]:
    """Token ids of a chat (templated) or, with ``raw_text``, of that text as it stands (BOS added if the model wants)."""
    tokenizer = engine.tokenizer
    if raw_text is not None:
        return tokenizer.encode(raw_text, add_special_tokens=True)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def result_json(result: GenerationResult, load_s: float | None = None) -> dict[str, Any]:
    timings = result.timings.to_dict()
    if load_s is not None:
        timings = {"load_s": load_s, **timings}
    return {
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
        "timings": {k: round(v, 6) for k, v in timings.items()},
        **({"lookup": result.lookup.to_dict()} if result.lookup is not None else {}),
    }


def model_json(engine: Engine) -> dict[str, Any]:
    described = engine.describe()
    return {"path": described["path"], "format": described["format"], "architecture": described["architecture"]}


def lookup_line(result: GenerationResult) -> str:
    """The stderr summary of a reply decoded with lookup: acceptance and the effective decode rate."""
    stats = result.lookup
    assert stats is not None
    return (
        f"lookup: {stats.accepted}/{stats.drafted} drafted tokens accepted ({100 * stats.acceptance_rate:.0f}%), "
        f"{stats.tokens_per_step:.2f} tokens per forward pass over {stats.steps} steps · "
        f"{result.completion_tokens} tok, decode {result.timings.decode_tok_s:.1f} tok/s effective"
    )


def stream_to_stdout(engine, ids: list[int], params, prefix=None, lookup=None):
    """Print text as it is generated; return the GenerationResult of the same run (``prefix``, ``lookup``:
    Engine.stream's)."""
    from apr.engine import GenerationResult, Timings

    start = time.perf_counter()
    first = None
    events = []
    for event in engine.stream(ids, params, prefix, lookup):
        first = first or time.perf_counter()
        events.append(event)
        if event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    end = time.perf_counter()
    first = first if first is not None else end  # no token at all: the whole call was the wait for one
    ttft, decode_s = first - start, end - first
    timings = Timings(ttft, len(ids) / ttft, (len(events) - 1) / decode_s if decode_s > 0 else 0.0, end - start)
    return GenerationResult(
        [e.token_id for e in events],
        "".join(e.text for e in events),
        events[-1].finish_reason or "length",
        len(ids),
        len(events),
        timings,
        lookup=events[-1].lookup,
    )


def warn_kernel_fallback(engine: Engine) -> None:
    """One stderr line when the CPU path could not use apr's native kernels (another CPU, no compiler):
    the run still works, slower and with other numerics, and the user should know why."""
    if engine.kernel_note:
        print(f"warning: {engine.kernel_note}; running PyTorch's kernels instead", file=sys.stderr)
