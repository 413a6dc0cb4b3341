"""Lookup decoding vs plain decoding on code edits (bench/code_edit_tasks.py), apr and llama.cpp in one run.

Method: the model is loaded once. Each task's prompt (the chat template around "edit this function, reply
with the whole edited function") is generated greedily to its end (EOS) or `--max-tokens`, by apr with plain
decoding and with lookup decoding (`--lookup` draft tokens), and, given `--llama-lookup` (llama.cpp's
`llama-lookup` program: `bench/build_llama_cpp.sh .llama-cpp llama-lookup`; bench/llama_lookup_peer.py says how
it is driven), by llama.cpp plain (`--spec-draft-n-max 0`) and with its own lookup decoding (the same draft
length unless `--llama-draft`), on the same GGUF, the same prompt text and the same thread count. The configurations of one
task run back to back, in an order that rotates with the task and the repetition, so drift on a shared machine
hits them alike. One repetition is every task in every configuration; after `--warmup` untimed repetitions of
the first task, repetitions continue until both `--min-reps` and `--min-seconds`.

Effective decode tok/s of a repetition = the tokens after the first over the decode time, summed over the
tasks. apr: the time from the first token to the last (the prefill and the first token are the time to first
token, reported apart). llama.cpp: the time llama-lookup reports for the reply ("decoded ... in S seconds",
from the end of its prefill to the last token; its prefill is reported apart; process start and model load
are in no figure). Ratios of the same repetition: each lookup over its own plain decoding, apr lookup over
llama.cpp lookup, apr plain over llama.cpp plain; median and p90 (the slow tail) over the repetitions.
Reported too: acceptance of the drafts, tokens per forward pass (apr), whether each lookup reply is its own
plain reply (apr: token for token, which must hold for every reply or the script exits 1; llama.cpp: as text,
it prints no ids), how many llama.cpp replies are apr's text, and how many replies equal the task's expected
function (model quality, informational). The last stdout line is one JSON document. The machine's load
average is recorded before, after and at every repetition: on a shared machine absolute rates move, the
ratios of the same run are the figure.

    .venv/bin/python bench/bench_lookup.py --model qwen2.5-coder:1.5b --threads 1 \\
        --llama-lookup .llama-cpp/build/bin/llama-lookup
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import llama_lookup_peer as peer  # bench/, beside this script
from cli_common import add_shared_options  # bench/cli_common.py, beside this script
from code_edit_tasks import TASKS, EditTask
from stats import percentile

APR_MODES = ("apr-plain", "apr-lookup")
PEER_MODES = ("llama.cpp-plain", "llama.cpp-lookup")


def prompt_text(task: EditTask) -> str:
    return (
        f"{task.instruction}\n\n```python\n{task.function}```\n\n"
        "Reply with the whole edited function in one python code block, and nothing else."
    )


def code_of(reply: str) -> str:
    """The first fenced code block of a reply (the reply itself when it has none), newline-terminated."""
    found = re.search(r"```(?:python)?\n(.*?)```", reply, re.S)
    code = found.group(1) if found else reply
    return code.strip("\n") + "\n"


def generate(engine, ids: list[int], params, lookup) -> dict:
    """One greedy generation: tokens, text, time to first token and decode seconds after it."""
    start = time.perf_counter()
    first = None
    tokens: list[int] = []
    text: list[str] = []
    stats = None
    for event in engine.stream(ids, params, None, lookup):
        if first is None:
            first = time.perf_counter()
        tokens.append(event.token_id)
        text.append(event.text)
        stats = event.lookup or stats
    end = time.perf_counter()
    return {
        "tokens": tokens,
        "text": "".join(text),
        "ttft_s": (first or end) - start,
        "decode_s": end - (first or end),
        "lookup": stats,
    }


def rate(tokens: int, seconds: float) -> float:
    # Replies of one token have no decode time: their rates are 0, never a division by zero.
    return tokens / seconds if seconds > 0 else 0.0


def without_end(text: str, pieces: tuple[str, ...]) -> str:
    """`text` less a trailing end-of-generation piece."""
    for piece in pieces:
        if piece and text.endswith(piece):
            return text[: -len(piece)]
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_options(
        parser,
        model=None,
        model_help="A ref (qwen2.5-coder:1.5b), cached name or GGUF path.",
        threads=None,
        threads_help="Threads of both engines (default: apr's).",
        min_reps=3,
        min_seconds=0.0,
        warmup=1,
    )
    parser.add_argument("--lookup", type=int, default=10, help="Draft tokens a step, apr and llama.cpp alike.")
    parser.add_argument("--max-ngram", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="Use the first N tasks.")
    parser.add_argument(
        "--llama-draft",
        type=int,
        default=None,
        help="llama.cpp's draft tokens a step (--spec-draft-n-max; default --lookup, llama-lookup's own default is 3).",
    )
    parser.add_argument(
        "--partial",
        type=Path,
        default=None,
        help="Write the report so far to this file after every repetition (a long run stopped early keeps its reps).",
    )
    parser.add_argument(
        "--llama-lookup",
        type=Path,
        default=Path(os.environ["LLAMA_LOOKUP"]) if os.environ.get("LLAMA_LOOKUP") else None,
        help="llama.cpp's llama-lookup program, the peer (default $LLAMA_LOOKUP; none: apr only).",
    )
    args = parser.parse_args()
    if args.llama_draft is None:
        args.llama_draft = args.lookup
    for name in ("lookup", "llama_draft", "max_tokens", "tasks", "min_reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    return args


class Bench:
    """The engines, the tasks' prompts and the figures of every generation."""

    def __init__(self, args: argparse.Namespace, engine, path: Path):
        from apr.engine import LookupConfig, SamplingParams

        self.args = args
        self.engine = engine
        self.path = path
        self.lookup = LookupConfig(draft_tokens=args.lookup, max_ngram=args.max_ngram)
        self.params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        self.threads = int(engine.describe()["threads"])
        self.peer = (
            peer.PeerSettings(args.llama_lookup, path, self.threads, args.max_tokens) if args.llama_lookup else None
        )
        self.tasks = TASKS[: args.tasks]
        self.peer_retries = 0
        tokenizer = engine.tokenizer
        self.texts: list[str] = []
        for task in self.tasks:
            message = [{"role": "user", "content": prompt_text(task)}]
            if tokenizer.has_chat_template:
                self.texts.append(tokenizer.apply_chat_template(message, add_generation_prompt=True))
            else:
                self.texts.append(prompt_text(task) + "\n\n```python\n")
        # llama-lookup prints the end-of-generation token's piece (`<|im_end|>`); apr's text has none.
        self.end_pieces = tuple(tokenizer.spec.tokens[i] for i in tokenizer.eos_token_ids)
        self.ids = [tokenizer.encode(text, add_special_tokens=not tokenizer.has_chat_template) for text in self.texts]

    @property
    def modes(self) -> tuple[str, ...]:
        return APR_MODES + (PEER_MODES if self.peer else ())

    def run(self, mode: str, index: int):
        if mode == "apr-plain":
            return generate(self.engine, self.ids[index], self.params, None)
        if mode == "apr-lookup":
            return generate(self.engine, self.ids[index], self.params, self.lookup)
        assert self.peer is not None
        run, retries = peer.generate(
            self.peer, self.texts[index], self.args.llama_draft if mode == "llama.cpp-lookup" else 0
        )
        self.peer_retries += retries
        return run


def empty_rep() -> dict:
    rep: dict = {f"{mode}_{key}": 0 for mode in APR_MODES + PEER_MODES for key in ("s", "tokens", "prefill_s")}
    rep.update(identical=0, peer_identical=0, steps=0, drafted=0, accepted=0, peer_drafted=0, peer_accepted=0)
    return rep


def one_task(bench: Bench, index: int, rep: dict, rep_number: int) -> dict:
    """Every configuration on task `index` (rotated order), added into `rep`; the task's own figures back."""
    modes = bench.modes
    shift = (index + rep_number) % len(modes)
    runs = {mode: bench.run(mode, index) for mode in modes[shift:] + modes[:shift]}
    plain, looked = runs["apr-plain"], runs["apr-lookup"]
    for mode in APR_MODES:
        rep[f"{mode}_s"] += runs[mode]["decode_s"]
        rep[f"{mode}_tokens"] += len(runs[mode]["tokens"]) - 1
        rep[f"{mode}_prefill_s"] += runs[mode]["ttft_s"]
    same = plain["tokens"] == looked["tokens"]
    rep["identical"] += same
    stats = looked["lookup"]
    rep["steps"] += stats.steps
    rep["drafted"] += stats.drafted
    rep["accepted"] += stats.accepted
    apr_ratio = rate(len(looked["tokens"]) - 1, looked["decode_s"]) / max(
        rate(len(plain["tokens"]) - 1, plain["decode_s"]), 1e-9
    )
    task = bench.tasks[index]
    figures = {
        "tokens": len(plain["tokens"]),
        "prompt_tokens": len(bench.ids[index]),
        "identical": same,
        "ratio": round(apr_ratio, 3),
        "acceptance": round(stats.acceptance_rate, 3),
        "expected_plain": code_of(plain["text"]) == task.expected,
        "expected_lookup": code_of(looked["text"]) == task.expected,
    }
    line = (
        f"  {task.name}: apr {len(plain['tokens'])} tok, plain {plain['decode_s']:.2f} s, lookup "
        f"{looked['decode_s']:.2f} s, accepted {stats.accepted}/{stats.drafted}, identical {same}"
    )
    if bench.peer:
        peer_plain, peer_looked = runs["llama.cpp-plain"], runs["llama.cpp-lookup"]
        for mode in PEER_MODES:
            rep[f"{mode}_s"] += runs[mode].decode_s
            rep[f"{mode}_tokens"] += runs[mode].tokens - 1
            rep[f"{mode}_prefill_s"] += runs[mode].prefill_s
        peer_same = peer.same_reply(peer_plain, peer_looked, bench.args.max_tokens)
        rep["peer_identical"] += peer_same
        rep["peer_drafted"] += peer_looked.drafted
        rep["peer_accepted"] += peer_looked.accepted
        figures["llama.cpp"] = {
            "tokens": peer_plain.tokens,
            "prompt_tokens": peer_plain.prompt_tokens,
            "identical": peer_same,
            "ratio": round(peer_looked.effective_tok_s / max(peer_plain.effective_tok_s, 1e-9), 3),
            "acceptance": round(peer_looked.accepted / peer_looked.drafted, 3) if peer_looked.drafted else 0.0,
            "same_text_as_apr": without_end(peer_plain.text, bench.end_pieces) == plain["text"],
            "expected_plain": code_of(peer_plain.text) == task.expected,
            "expected_lookup": code_of(peer_looked.text) == task.expected,
        }
        line += (
            f" | llama.cpp {peer_plain.tokens} tok, plain {peer_plain.decode_s:.2f} s, lookup "
            f"{peer_looked.decode_s:.2f} s, accepted {peer_looked.accepted}/{peer_looked.drafted}, "
            f"identical {peer_same}"
        )
    print(line, file=sys.stderr)
    return figures


def close_rep(rep: dict, with_peer: bool) -> None:
    """The repetition's rates and ratios from its sums."""
    for mode in APR_MODES + (PEER_MODES if with_peer else ()):
        rep[f"{mode}_tok_s"] = rate(rep[f"{mode}_tokens"], rep[f"{mode}_s"])
    # The keys of the apr-only report, kept for readers of earlier results.
    rep["plain_tok_s"], rep["lookup_tok_s"] = rep["apr-plain_tok_s"], rep["apr-lookup_tok_s"]
    ratios = {"apr lookup / apr plain": ("apr-lookup", "apr-plain")}
    if with_peer:
        ratios.update(
            {
                "llama.cpp lookup / llama.cpp plain": ("llama.cpp-lookup", "llama.cpp-plain"),
                "apr lookup / llama.cpp lookup": ("apr-lookup", "llama.cpp-lookup"),
                "apr plain / llama.cpp plain": ("apr-plain", "llama.cpp-plain"),
            }
        )
    rep["ratios"] = {
        name: rep[f"{top}_tok_s"] / rep[f"{bottom}_tok_s"] if rep[f"{bottom}_tok_s"] > 0 else 0.0
        for name, (top, bottom) in ratios.items()
    }
    rep["ratio"] = rep["ratios"]["apr lookup / apr plain"]
    rep["load_average"] = [round(x, 2) for x in os.getloadavg()]


def summary(values: list[float]) -> dict[str, float]:
    # Rates and speed ratios: the p90 is the slow tail, the 10th percentile.
    return {"median": round(statistics.median(values), 4), "p90": round(percentile(values, 0.1), 4)}


def report(bench: Bench, reps: list[dict], first_rep: dict, load_before: tuple[float, ...]) -> dict:
    tasks = bench.tasks
    drafted = sum(r["drafted"] for r in reps)
    accepted = sum(r["accepted"] for r in reps)
    steps = sum(r["steps"] for r in reps)
    lookup_tokens = sum(r["apr-lookup_tokens"] for r in reps)
    ratios = [t["ratio"] for t in first_rep.values()]
    doc: dict = {
        "bench": "apr-lookup-code-edit",
        "model": str(bench.path),
        "engine": {
            k: v for k, v in bench.engine.describe().items() if k in ("kernels", "threads", "dtype", "numerics")
        },
        "threads": bench.threads,
        "tasks": len(tasks),
        "reps": len(reps),
        "warmup": bench.args.warmup,
        "max_tokens": bench.args.max_tokens,
        "lookup": {
            "draft_tokens": bench.lookup.draft_tokens,
            "max_ngram": bench.lookup.max_ngram,
            "min_ngram": bench.lookup.min_ngram,
        },
        "plain_tok_s": summary([r["apr-plain_tok_s"] for r in reps]),
        "lookup_tok_s": summary([r["apr-lookup_tok_s"] for r in reps]),
        "ratio": summary([r["ratio"] for r in reps]),
        "ratios": {name: summary([r["ratios"][name] for r in reps]) for name in reps[0]["ratios"]},
        "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
        "tokens_per_step": round(lookup_tokens / steps, 4) if steps else 0.0,
        "identical": {"replies": sum(r["identical"] for r in reps), "of": len(reps) * len(tasks)},
        "expected_match": {
            "plain": sum(t["expected_plain"] for t in first_rep.values()),
            "lookup": sum(t["expected_lookup"] for t in first_rep.values()),
            "of": len(tasks),
        },
        # The ratio per task (first repetition): how it spreads over the edits, p10 the slow tail.
        "task_ratio": {
            "median": round(statistics.median(ratios), 4),
            "p10": round(percentile(ratios, 0.1), 4),
            "min": min(ratios),
        },
        "prefill_s_per_rep": round(statistics.median(r["apr-plain_prefill_s"] for r in reps), 3),
        "per_task_first_rep": first_rep,
        "per_rep": [
            {key: round(value, 4) if isinstance(value, float) else value for key, value in r.items() if key != "ratios"}
            | {"ratios": {k: round(v, 4) for k, v in r["ratios"].items()}}
            for r in reps
        ],
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()},
    }
    if bench.peer:
        peer_drafted = sum(r["peer_drafted"] for r in reps)
        peer_tasks = [t["llama.cpp"] for t in first_rep.values()]
        doc["llama_cpp"] = {
            "program": str(bench.peer.binary),
            "draft_tokens": bench.args.llama_draft,
            "plain_tok_s": summary([r["llama.cpp-plain_tok_s"] for r in reps]),
            "lookup_tok_s": summary([r["llama.cpp-lookup_tok_s"] for r in reps]),
            "acceptance_rate": round(sum(r["peer_accepted"] for r in reps) / peer_drafted, 4) if peer_drafted else 0.0,
            "identical": {"replies": sum(r["peer_identical"] for r in reps), "of": len(reps) * len(tasks)},
            "same_text_as_apr": sum(t["same_text_as_apr"] for t in peer_tasks),
            "same_prompt_tokens_as_apr": sum(
                t["llama.cpp"]["prompt_tokens"] == t["prompt_tokens"] for t in first_rep.values()
            ),
            "expected_match": {
                "plain": sum(t["expected_plain"] for t in peer_tasks),
                "lookup": sum(t["expected_lookup"] for t in peer_tasks),
                "of": len(tasks),
            },
            "prefill_s_per_rep": round(statistics.median(r["llama.cpp-plain_prefill_s"] for r in reps), 3),
            "retries": bench.peer_retries,
        }
    else:
        doc["llama_cpp"] = {
            "skipped": "no --llama-lookup / $LLAMA_LOOKUP (bench/build_llama_cpp.sh .llama-cpp llama-lookup builds it)"
        }
    return doc


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()
    if args.llama_lookup is not None:
        reason = peer.check_binary(args.llama_lookup)
        if reason is not None:
            print(f"error: {reason}", file=sys.stderr)
            return 2
    from apr.engine import load_engine
    from apr.errors import AprError
    from apr.hub import resolve_model_arg

    try:
        path = Path(resolve_model_arg(args.model))
    except AprError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.llama_lookup is not None and path.suffix != ".gguf":
        print(f"error: llama.cpp reads GGUF files only, and {path} is not one", file=sys.stderr)
        return 2
    engine = load_engine(path, device="cpu", threads=args.threads, compile=False)
    reason = engine.lookup_unavailable()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    bench = Bench(args, engine, path)
    if bench.peer is None:
        print(
            "llama.cpp: skipped (no --llama-lookup / $LLAMA_LOOKUP; bench/build_llama_cpp.sh .llama-cpp llama-lookup)",
            file=sys.stderr,
        )

    try:
        for i in range(args.warmup):
            for mode in bench.modes:
                bench.run(mode, 0)
            print(f"warmup {i + 1} done", file=sys.stderr)
        reps: list[dict] = []
        started = time.perf_counter()
        first_rep: dict[str, dict] = {}
        while len(reps) < args.min_reps or time.perf_counter() - started < args.min_seconds:
            rep = empty_rep()
            for index, task in enumerate(bench.tasks):
                figures = one_task(bench, index, rep, len(reps))
                if not reps:
                    first_rep[task.name] = figures
            close_rep(rep, bench.peer is not None)
            reps.append(rep)
            line = ", ".join(f"{mode} {rep[f'{mode}_tok_s']:.2f}" for mode in bench.modes)
            ratios = ", ".join(f"{name} {value:.2f}x" for name, value in rep["ratios"].items())
            print(f"rep {len(reps)} (load {rep['load_average']}): {line} tok/s; {ratios}", file=sys.stderr)
            if args.partial is not None:
                args.partial.write_text(json.dumps(report(bench, reps, first_rep, load_before), sort_keys=True) + "\n")
    except peer.PeerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    doc = report(bench, reps, first_rep, load_before)
    print(
        f"apr lookup {doc['lookup_tok_s']['median']:.2f} tok/s vs plain {doc['plain_tok_s']['median']:.2f} tok/s: "
        f"{doc['ratio']['median']:.2f}x (median of {len(reps)} reps), acceptance {doc['acceptance_rate']:.1%}, "
        f"{doc['tokens_per_step']:.2f} tokens per forward pass, identical {doc['identical']['replies']}/"
        f"{doc['identical']['of']}"
    )
    if bench.peer:
        ours = doc["llama_cpp"]
        print(
            f"llama.cpp lookup {ours['lookup_tok_s']['median']:.2f} tok/s vs plain {ours['plain_tok_s']['median']:.2f}"
            f" tok/s, acceptance {ours['acceptance_rate']:.1%}, identical {ours['identical']['replies']}/"
            f"{ours['identical']['of']}; "
            + ", ".join(f"{name} {value['median']:.2f}x" for name, value in doc["ratios"].items())
        )
    print(json.dumps(doc, sort_keys=True))
    return 0 if doc["identical"]["replies"] == doc["identical"]["of"] else 1


if __name__ == "__main__":
    sys.exit(main())
