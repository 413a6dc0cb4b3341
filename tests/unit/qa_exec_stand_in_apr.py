"""A stand-in for the `apr` CLI used to test the executor's mechanics (not the model).

It speaks the CLI contract of docs/contracts.md (run --json, chat --json on stdin, serve with a
ready line and OpenAI-shaped HTTP) and misbehaves on purpose when the prompt asks it to:
HANG sleeps past any deadline, "HANG_ONCE <file>" only while <file> does not exist (it creates it: a machine
that was slow once), SEGV kills itself with SIGSEGV, RAISE dies with a traceback, MEMORY dies of a MemoryError
and NOSPACE of a full disk (the machine's failures, not the model's), REFUSE exits 2 with an error line, EMPTY
answers with nothing, ECHO answers with the prompt exactly as received. In serve, CRASH_SERVER aborts (its own
defect) and KILLED_SERVER is SIGKILLed (as the OOM killer would). Numerics: FAST_WRONG answers "5" unless run
with `--numerics exact` (a reply only the fast engine gets wrong), ALWAYS_WRONG answers "5" either way, and
EXACT_HANG hangs under `--numerics exact` only. Otherwise it answers "4".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def answer(prompt: str, numerics: str = "fast") -> str:
    if "EXACT_HANG" in prompt and numerics == "exact":
        time.sleep(600)
    if "ALWAYS_WRONG" in prompt or ("FAST_WRONG" in prompt and numerics != "exact"):
        return "2 + 2 equals 5."
    if "HANG_ONCE " in prompt:
        marker = Path(prompt.split("HANG_ONCE ", 1)[1].split()[0])
        if not marker.exists():
            marker.touch()
            time.sleep(600)
    elif "HANG" in prompt:
        time.sleep(600)
    if "MEMORY" in prompt:
        raise MemoryError("stand-in could not allocate")
    if "NOSPACE" in prompt:
        raise OSError(28, "No space left on device")
    if "SEGV" in prompt:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "RAISE" in prompt:
        raise RuntimeError("planted failure in the stand-in")
    if "REFUSE" in prompt:
        print("error: stand-in refuses this prompt", file=sys.stderr)
        sys.exit(2)
    if "EMPTY" in prompt:
        return ""
    if "ECHO" in prompt:
        return prompt
    return "2 + 2 equals 4."


def reply(prompt: str, numerics: str = "fast") -> dict:
    text = answer(prompt, numerics)
    return {
        "text": text,
        "prompt_tokens": 5,
        "completion_tokens": len(text.split()),
        "finish_reason": "stop",
        "timings": {"load_s": 0.01, "ttft_s": 0.01, "prefill_tok_s": 500.0, "decode_tok_s": 50.0, "total_s": 0.1},
    }


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(
            200, {"object": "list", "data": [{"id": "stand-in", "object": "model", "created": 0, "owned_by": "qa"}]}
        )

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        if "CRASH_SERVER" in prompt:
            os.abort()  # its own defect: SIGABRT
        if "KILLED_SERVER" in prompt:
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer or a neighbour's kill looks like
        text = answer(prompt, self.server.numerics)  # type: ignore[attr-defined]
        usage = {"prompt_tokens": 5, "completion_tokens": len(text.split()), "total_tokens": 5 + len(text.split())}
        if "messages" in body:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            kind = "text_completion"
        self._send(
            200, {"id": "x", "object": kind, "created": 0, "model": "stand-in", "choices": [choice], "usage": usage}
        )

    def log_message(self, *args):
        return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("verb")
    parser.add_argument("model")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--numerics", default="fast")
    args, _ = parser.parse_known_args()
    if args.verb == "run":
        print(json.dumps(reply(args.prompt, args.numerics)))
    elif args.verb == "chat":
        for line in sys.stdin:  # one JSON message a line, as the QA runner sends turns
            print(json.dumps(reply(json.loads(line)["content"], args.numerics)), flush=True)
    elif args.verb == "serve":
        if "SERVE_NEVER_READY" in args.model:
            time.sleep(600)
        server = ThreadingHTTPServer((args.host, args.port), Handler)
        server.numerics = args.numerics  # type: ignore[attr-defined]
        print(f"apr serve: ready at http://{args.host}:{server.server_port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
