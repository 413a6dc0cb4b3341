"""Defaults of `apr serve`'s limits, in a module light enough for the CLI to import before `--help`."""

from __future__ import annotations

# Prompt tokens prefilled (or scored) per scheduler step: a longer prompt takes several steps, and the
# other streams get a token between two of them.
DEFAULT_PREFILL_CHUNK = 128
# Largest request body; an lm-eval batch of prompts is well under it.
DEFAULT_MAX_BODY_MB = 8
