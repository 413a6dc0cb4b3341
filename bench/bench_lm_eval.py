"""lm-evaluation-harness end to end: one local task scored through `apr serve` and through transformers.

Method: the model is pulled from the apr cache as a SafeTensors variant (`apr pull REF --format
safetensors`, offline: converted from the cached GGUF). The same directory is
  1. served by `apr serve DIR --numerics exact` (float32 reference numerics) on loopback, and scored by
     lm-eval's `local-completions` model at lm-eval's default batching (tokenized requests, echo + logprobs,
     the tokenizer read from DIR);
  2. loaded by lm-eval's `hf` model (transformers, float32, CPU, offline).
The task is bench/lm_eval_task/apr_mini_mc.yaml: 40 multiple-choice questions from a committed JSONL
(`dataset_path: json`), scored by log-likelihood (acc and acc_norm). Both runs' accuracies are printed, with
how many questions the two runs answered differently; the last stdout line is one JSON document. Needs the
`lmeval` extra (`pip install -e '.[lmeval]'`). This is an agreement check, not a timing: wall times are
reported for information only (the machine is shared).

    python bench/bench_lm_eval.py [--model smollm2:135m] [--limit 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from cli_common import add_shared_options  # bench/cli_common.py, beside this script

REPO = Path(__file__).resolve().parent.parent
TASK_DIR = REPO / "bench" / "lm_eval_task"
TASK = "apr_mini_mc"
READY = re.compile(r"apr serve: ready at (http://\S+)")


def safetensors_variant(ref: str) -> Path:
    """The cached model's SafeTensors conversion (made once, then reused), via `apr pull --format`."""
    result = subprocess.run(
        [sys.executable, "-m", "apr.cli.main", "pull", ref, "--format", "safetensors", "--json", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"apr pull {ref} --format safetensors failed: {result.stderr.strip()}")
    record = json.loads(result.stdout)
    variant = record["converted"]
    return Path(variant["path"])


def start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "apr.cli.main", "serve", str(model_dir), "--port", "0", "--numerics", "exact"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    for line in iter(proc.stdout.readline, ""):
        match = READY.search(line)
        if match:
            return proc, match.group(1)
    raise SystemExit(f"apr serve exited ({proc.wait()}) before it was ready")


def evaluate(model: str, model_args: str, limit: int | None) -> tuple[dict[str, float], list[list[float]], float]:
    """(metrics, every choice's log-likelihood per question, wall seconds) of one lm-eval run of the task."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(TASK_DIR)),
        limit=limit,
        log_samples=True,
    )
    wall = time.perf_counter() - start
    assert results is not None  # only None on non-zero ranks of a distributed run
    metrics = results["results"][TASK]
    scores = [
        [float(response[0]) for response in sample["filtered_resps"]]
        for sample in sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    ]
    return {"acc": float(metrics["acc,none"]), "acc_norm": float(metrics["acc_norm,none"])}, scores, wall


def pick(choices: list[float]) -> int:
    return max(range(len(choices)), key=choices.__getitem__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_options(parser, model="smollm2:135m", model_help="apr ref of the model (default: smollm2:135m)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    args = parser.parse_args()
    os.chdir(REPO)  # the task's data_files path is relative to the repository root
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[variable] = "1"

    model_dir = safetensors_variant(args.model)
    proc, url = start_server(model_dir)
    try:
        served_args = (
            f"model={model_dir.name},base_url={url}/v1/completions,tokenizer={model_dir},"
            "tokenizer_backend=huggingface,max_retries=1"
        )
        served, served_scores, served_wall = evaluate("local-completions", served_args, args.limit)
    finally:
        proc.terminate()
        proc.wait(30)
    reference, reference_scores, reference_wall = evaluate(
        "hf", f"pretrained={model_dir},dtype=float32,device=cpu", args.limit
    )
    differing = sum(pick(a) != pick(b) for a, b in zip(served_scores, reference_scores))
    # How far apart the two runs' log-likelihoods of the same (question, choice) are, in nats.
    gaps = [abs(x - y) for a, b in zip(served_scores, reference_scores) for x, y in zip(a, b)]
    print(f"model {args.model} ({model_dir})")
    for name, metrics in (
        ("apr serve (local-completions, --numerics exact)", served),
        ("transformers (hf, fp32)", reference),
    ):
        print(f"{name:<50} acc {metrics['acc']:.4f}  acc_norm {metrics['acc_norm']:.4f}")
    print(f"questions answered differently: {differing} of {len(served_scores)}")
    print(f"log-likelihood gap per choice: max {max(gaps):.2e} nats, mean {sum(gaps) / len(gaps):.2e}")
    print(
        json.dumps(
            {
                "bench": "lm_eval",
                "task": TASK,
                "model": args.model,
                "questions": len(served_scores),
                "apr_serve": {**served, "wall_s": round(served_wall, 1)},
                "transformers": {**reference, "wall_s": round(reference_wall, 1)},
                "answers_differing": differing,
                "loglikelihood_gap_nats": {"max": max(gaps), "mean": sum(gaps) / len(gaps)},
                "equal": served == reference and differing == 0,
                "env": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
            }
        )
    )


if __name__ == "__main__":
    main()
