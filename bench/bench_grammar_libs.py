"""Compare xgrammar and llguidance for apr serve's constrained decoding on a model's real tokenizer.

Method: for each library, time (1) the import, (2) building its tokenizer view from the model's
tokenizer.json / vocabulary, (3) compiling a JSON schema (a tool's arguments: object with a string,
an enum and an integer array), then (4) walk the tokens of a fixed valid document through a fresh
matcher, filling the vocabulary mask before each token; every mask must allow the next token (a
library that refuses the document is a failure, not a timing). Warmup: one walk; then --repeats
walks; median and p90 of the per-token mask time. The last stdout line is one JSON document.

    python bench/bench_grammar_libs.py [--model qwen2.5-coder:1.5b] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import time

from cli_common import add_shared_options  # bench/cli_common.py, beside this script

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
DOCUMENT = '{"city": "Paris, France", "unit": "celsius", "days": [1, 2, 3, 14]}'


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_us": round(statistics.median(ordered) * 1e6, 1),
        "p90_us": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e6, 1),
    }


def bench_llguidance(tokenizer, ids: list[int], repeats: int) -> dict:
    start = time.perf_counter()
    import llguidance
    import llguidance.torch as lltorch

    imported = time.perf_counter() - start
    start = time.perf_counter()
    lltok = llguidance.LLTokenizer(
        tokenizer.to_tokenizer_json(), n_vocab=tokenizer.vocab_size, eos_token=list(tokenizer.eos_token_ids)
    )
    setup = time.perf_counter() - start
    start = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    matcher = llguidance.LLMatcher(lltok, grammar)
    compile_s = time.perf_counter() - start
    mask = lltorch.allocate_token_bitmask(1, tokenizer.vocab_size)
    steps: list[float] = []
    for walk in range(repeats + 1):
        matcher = llguidance.LLMatcher(lltok, grammar)
        for token in ids:
            t0 = time.perf_counter()
            lltorch.fill_next_token_bitmask(matcher, mask, 0)
            elapsed = time.perf_counter() - t0
            allowed = bool((int(mask[0, token // 32]) >> (token % 32)) & 1)
            if not allowed or not matcher.consume_token(token):
                return {"ok": False, "error": f"token {token} refused: {matcher.get_error()}"}
            if walk:
                steps.append(elapsed)
    return {
        "ok": matcher.is_accepting(),
        "version": importlib.metadata.version("llguidance"),
        "import_s": round(imported, 3),
        "tokenizer_s": round(setup, 3),
        "compile_s": round(compile_s, 4),
        "mask": _quantiles(steps),
    }


def bench_xgrammar(tokenizer, ids: list[int], repeats: int) -> dict:
    start = time.perf_counter()
    import torch
    import xgrammar as xgr

    imported = time.perf_counter() - start
    start = time.perf_counter()
    # Qwen's vocabulary is GPT-2 byte-level BPE: tokens spelled in the byte-to-unicode alphabet.
    info = xgr.TokenizerInfo(
        list(tokenizer.spec.tokens),
        vocab_type=xgr.VocabType.BYTE_LEVEL,
        vocab_size=tokenizer.vocab_size,
        stop_token_ids=list(tokenizer.eos_token_ids),
    )
    compiler = xgr.GrammarCompiler(info)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    compile_s = time.perf_counter() - start
    mask = xgr.allocate_token_bitmask(1, tokenizer.vocab_size)
    steps: list[float] = []
    for walk in range(repeats + 1):
        matcher = xgr.GrammarMatcher(compiled)
        for token in ids:
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            elapsed = time.perf_counter() - t0
            allowed = bool((int(mask[0, token // 32]) >> (token % 32)) & 1)
            if not allowed or not matcher.accept_token(token):
                return {"ok": False, "error": f"token {token} refused"}
            if walk:
                steps.append(elapsed)
    del torch
    return {
        "ok": matcher.is_terminated() or matcher.accept_token(tokenizer.eos_token_ids[0]),
        "version": importlib.metadata.version("xgrammar"),
        "import_s": round(imported, 3),
        "tokenizer_s": round(setup, 3),
        "compile_s": round(compile_s, 4),
        "mask": _quantiles(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(parser, model="qwen2.5-coder:1.5b", repeats=5)
    args = parser.parse_args()
    from apr.formats import load_model
    from apr.hub import resolve_model_arg

    tokenizer = load_model(resolve_model_arg(args.model)).tokenizer
    ids = tokenizer.encode(DOCUMENT)
    results = {
        "model": args.model,
        "vocab": tokenizer.vocab_size,
        "document_tokens": len(ids),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    for name, bench in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
        try:
            results[name] = bench(tokenizer, ids, args.repeats)
        except Exception as exc:  # a library that fails here is a finding to report, not a crash
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(name, results[name], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
