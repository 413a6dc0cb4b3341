"""apr's CUDA engine against transformers on the same GPU and GGUF: top-1 agreement, max |Δ logit|, greedy tokens.

Method: both load the same GGUF in bf16 on the same device (apr: its default CUDA path, every tensor dequantized
to dense bf16, decode replayed from CUDA graphs; transformers: its own GGUF dequantization). For each prompt
(chat-templated where the model has a template) both compute the logits of every prompt position in one forward
pass, compared position by position; then both decode greedily (apr through its captured decode graphs,
transformers with its KV cache) and the two token sequences are compared up to the first divergence.
Last stdout line: one JSON document.

    python bench/bench_cuda_parity.py --model /path/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from cli_common import add_shared_options  # bench/cli_common.py, beside this script

PROMPTS = [
    "What is 2+2?",
    "Write a Python function to add two numbers.",
    "Explain what a hash map is in one sentence.",
    "def fibonacci(n):",
    "Translate 'good morning' into French.",
    "List three prime numbers.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(parser, model=None, model_type=Path, model_help="a GGUF file")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--hf-dir",
        type=Path,
        help="transformers loads this dense checkpoint (e.g. `apr convert "
        "MODEL --to safetensors --dtype bf16`) instead of dequantizing the GGUF itself",
    )
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from apr.cli.engine_session import prompt_ids
    from apr.engine import SamplingParams, load_engine

    engine = load_engine(args.model, device=args.device)
    source = (
        {"pretrained_model_name_or_path": args.hf_dir}
        if args.hf_dir
        else {"pretrained_model_name_or_path": args.model.parent, "gguf_file": args.model.name}
    )
    reference = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.bfloat16).to(args.device).eval()
    tokenizer = engine.tokenizer
    rows = []
    for text in PROMPTS:
        ids = prompt_ids(
            engine, [{"role": "user", "content": text}], None if getattr(tokenizer, "chat_template", None) else text
        )
        ours = engine.logits(ids)
        with torch.inference_mode():
            theirs = reference(torch.tensor([ids], device=args.device)).logits[0].float().cpu()
        top1 = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
        delta = float((ours - theirs).abs().max())
        generated = engine.generate(ids, SamplingParams(max_tokens=args.max_tokens)).token_ids
        with torch.inference_mode():
            out = reference.generate(
                torch.tensor([ids], device=args.device),
                max_new_tokens=args.max_tokens,
                do_sample=False,
                eos_token_id=list(engine.eos_token_ids),
            )
        hf_tokens = out[0, len(ids) :].tolist()
        common = 0
        while common < min(len(generated), len(hf_tokens)) and generated[common] == hf_tokens[common]:
            common += 1
        row = {
            "prompt": text,
            "prompt_tokens": len(ids),
            "top1_agreement": round(top1, 4),
            "max_abs_logit_delta": round(delta, 4),
            "greedy_tokens": len(generated),
            "greedy_identical_prefix": common,
            "greedy_identical": generated == hf_tokens,
            "apr_text": tokenizer.decode(generated),
            "hf_text": tokenizer.decode(hf_tokens),
        }
        rows.append(row)
        print(
            f"{text[:40]:<42} top1 {top1:.4f}  max|Δ| {delta:.3f}  greedy same for {common}/{len(generated)} "
            f"tokens -> {row['apr_text'][:60]!r}",
            file=sys.stderr,
        )
    doc = {
        "bench": "cuda_parity",
        "model": str(args.model),
        "reference": str(args.hf_dir or args.model),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "engine": engine.describe(),
        "top1_agreement_min": min(r["top1_agreement"] for r in rows),
        "top1_agreement_mean": round(sum(r["top1_agreement"] for r in rows) / len(rows), 4),
        "max_abs_logit_delta": max(r["max_abs_logit_delta"] for r in rows),
        "greedy_identical": sum(r["greedy_identical"] for r in rows),
        "prompts": len(rows),
        "rows": rows,
    }
    print(json.dumps(doc, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
