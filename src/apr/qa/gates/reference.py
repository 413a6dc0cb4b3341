"""Reference parity: our engine's logits against Hugging Face transformers on the same SafeTensors checkpoint."""

from __future__ import annotations

from pathlib import Path

from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.gates.parity import comparison_check
from apr.qa.gates.thresholds import ParityGate
from apr.qa.measure import LogitComparison
from apr.qa.recording import Check, falsified, skipped

REFERENCE = GateId.REFERENCE_PARITY


def transformers_logits(directory: Path, ids: list[list[int]]) -> list:
    """float32 logits of each id sequence from transformers' own implementation, on CPU."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress owns stderr

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, device_map="cpu")
    model.eval()
    with torch.inference_mode():
        out = [model(torch.tensor([seq])).logits[0].float() for seq in ids]
    del model
    return out


def reference_parity_checks(
    st_path: Path | None, our_logits: list | None, ids: list[list[int]], settings: ParityGate
) -> list[Check]:
    """Compare on the SafeTensors artifact (the only format transformers reads) with the ids our logits came
    from; skipped without one."""
    if st_path is None:
        return [
            skipped(
                REFERENCE,
                "transformers",
                "no SafeTensors artifact in this matrix: transformers cannot read GGUF/APR here, nothing to compare",
            )
        ]
    if our_logits is None or not ids:
        return [
            skipped(
                REFERENCE,
                "transformers",
                "our engine produced no logits for the SafeTensors artifact (see G1)",
                format=Format.SAFETENSORS,
            )
        ]
    directory = st_path if st_path.is_dir() else st_path.parent
    try:
        reference = transformers_logits(directory, ids)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        return [
            falsified(
                REFERENCE,
                "transformers",
                f"transformers could not run the SafeTensors artifact: {type(err).__name__}: {str(err)[:300]}",
                format=Format.SAFETENSORS,
            )
        ]
    if reference and reference[0].shape[-1] != our_logits[0].shape[-1]:
        # transformers may pad the vocabulary; compare the ids both know.
        width = min(reference[0].shape[-1], our_logits[0].shape[-1])
        reference, our_logits = [r[:, :width] for r in reference], [o[:, :width] for o in our_logits]
    comparison = LogitComparison.of(reference, our_logits)
    return [
        comparison_check(
            REFERENCE,
            "transformers",
            comparison,
            settings.min_top1_agreement,
            settings.max_kl,
            "apr engine vs transformers",
            Format.SAFETENSORS,
        )
    ]
