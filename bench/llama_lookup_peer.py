"""llama.cpp's own prompt-lookup decoding (its `llama-lookup` example program), the peer of bench/bench_lookup.py.

`llama-lookup` (llama.cpp `examples/lookup/lookup.cpp`) drafts from an n-gram cache of the context (1- to
4-grams of prompt and reply, the continuation seen most often, drafted only while its count clears fixed
thresholds), verifies the draft in one `llama_decode` of 1 + draft rows and keeps the agreeing prefix. With
`--spec-draft-n-max 0` it drafts nothing and is llama.cpp's plain one-token-a-step decode in the same program,
which is this benchmark's llama.cpp plain peer. Greedy is `--temp 0 --top-k 1`.

One generation is one process (it loads the model each time; the load is outside every figure). The program
reports its own timings: the prompt ("encoded N tokens in S seconds": prefill) and the reply ("decoded N
tokens in S seconds", from the end of the prefill to the last token); it prints no token ids, so replies are
compared as text (its stdout is the prompt echoed piece by piece, then the reply).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


class PeerError(RuntimeError):
    """llama-lookup could not be run or its output could not be read."""


@dataclass(frozen=True)
class PeerSettings:
    binary: Path
    model: Path
    threads: int
    max_tokens: int
    context: int = 4096
    timeout_s: float = 900.0


@dataclass(frozen=True)
class PeerRun:
    text: str
    tokens: int  # generated tokens, as llama-lookup counts them (n_predict)
    prompt_tokens: int
    prefill_s: float
    decode_s: float  # end of the prefill to the last token
    drafted: int
    accepted: int

    @property
    def effective_tok_s(self) -> float:
        """Tokens after the first over the decode time (the first token's pass is the prefill's)."""
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


_ENCODED = re.compile(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_DRAFTED = re.compile(r"n_drafted\s+=\s+(\d+)")
_ACCEPTED = re.compile(r"n_accept\s+=\s+(\d+)")


def check_binary(binary: Path) -> str | None:
    """Why `binary` cannot be the peer (None when it can)."""
    if not binary.is_file():
        return f"llama-lookup not found: {binary} (bench/build_llama_cpp.sh .llama-cpp llama-lookup builds it)"
    if not os.access(binary, os.X_OK):
        return f"llama-lookup is not executable: {binary}"
    return None


def command(settings: PeerSettings, prompt_file: Path, draft_tokens: int) -> list[str]:
    """The llama-lookup command line: greedy, `max_tokens` replies, `draft_tokens` 0 for plain decoding."""
    return [
        str(settings.binary),
        "-m",
        str(settings.model),
        "-bf",  # the prompt byte for byte (-f drops a trailing newline, -p would need quoting)
        str(prompt_file),
        "--no-escape",  # a prompt's "\n" inside code stays two characters
        "-n",
        str(settings.max_tokens - 1),  # llama-lookup stops once it has generated more than -n
        "--temp",
        "0",
        "--top-k",
        "1",
        "--seed",
        "0",
        "-t",
        str(settings.threads),
        "-tb",
        str(settings.threads),
        "-c",
        str(settings.context),
        "--spec-draft-n-max",
        str(draft_tokens),
        "--log-colors",
        "off",
    ]


class LostOutput(PeerError):
    """llama-lookup exited 0 without the end of its output (its log thread was not flushed at exit)."""


def generate(settings: PeerSettings, prompt: str, draft_tokens: int, attempts: int = 3) -> tuple[PeerRun, int]:
    """One greedy generation of `prompt` (already in its chat template) by llama-lookup; the run and its retries.

    llama.cpp's log is written by a thread of its own that the program does not flush before it exits
    (`common_log_main`, "logs may be lost if not flushed before the program exits"): on a loaded machine the
    end of the reply and the timings are sometimes missing. Such a run is repeated, up to `attempts` in all;
    the retries are counted in the report.
    """
    for attempt in range(attempts):
        try:
            return generate_once(settings, prompt, draft_tokens), attempt
        except LostOutput:
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


def generate_once(settings: PeerSettings, prompt: str, draft_tokens: int) -> PeerRun:
    """One llama-lookup process: its reply and figures."""
    with tempfile.TemporaryDirectory(prefix="apr-llama-lookup-") as scratch:
        prompt_file = Path(scratch) / "prompt.txt"
        prompt_file.write_bytes(prompt.encode())
        try:
            done = subprocess.run(
                command(settings, prompt_file, draft_tokens),
                capture_output=True,
                timeout=settings.timeout_s,
            )
        except subprocess.TimeoutExpired as timeout:
            raise PeerError(f"llama-lookup ran past {settings.timeout_s:.0f} s") from timeout
    out = done.stdout.decode(errors="replace")
    err = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        last = err.strip().splitlines()[-1:] or ["(no output)"]
        raise PeerError(f"llama-lookup exited {done.returncode}: {last[0]}")
    encoded, decoded = _ENCODED.search(err), _DECODED.search(err)
    drafted, accepted = _DRAFTED.search(err), _ACCEPTED.search(err)
    if not (encoded and decoded and drafted and accepted):
        raise LostOutput("llama-lookup printed no timings (encoded/decoded/n_drafted/n_accept lines), run after run")
    echo = "\n\n" + prompt
    if not out.startswith(echo):
        raise PeerError("llama-lookup's stdout does not begin with the prompt it was given")
    reply = out[len(echo) :]
    # The program closes with `LOG("\n\n")` before its timings (so present when they are) and once more at its
    # very end (the piece most often lost).
    for closing in ("\n\n\n\n", "\n\n"):
        if reply.endswith(closing):
            reply = reply[: -len(closing)]
            break
    return PeerRun(
        text=reply,
        tokens=int(decoded.group(1)),
        prompt_tokens=int(encoded.group(1)),
        prefill_s=float(encoded.group(2)),
        decode_s=float(decoded.group(2)),
        drafted=int(drafted.group(1)),
        accepted=int(accepted.group(1)),
    )


def same_reply(plain: PeerRun, looked: PeerRun, max_tokens: int) -> bool:
    """Lookup's reply is plain's; where plain stopped at the token limit, lookup's may run on past it."""
    if looked.text == plain.text:
        return True
    return plain.tokens >= max_tokens and looked.tokens > plain.tokens and looked.text.startswith(plain.text)
