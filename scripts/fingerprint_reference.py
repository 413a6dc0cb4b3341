"""Write the committed fingerprint of a known model's published checkpoint (src/apr/qa/gates/fingerprints/).

    .venv/bin/python scripts/fingerprint_reference.py smollm2:135m gemma3:270m qwen2.5-coder:1.5b

Each ref is pulled (or found in the apr cache) and its sha256 checked against the hub catalogue before a single
tensor is read: a fingerprint is only ever taken from the published file. Run it again when a reference model
changes; the G0 ``reference-weights`` and CONTRACT ``reference-tokenizer`` checks read the result.
"""

from __future__ import annotations

import json
import sys
import time


def fingerprint(ref: str) -> str:
    from apr.formats import load_model
    from apr.hub import pull
    from apr.hub.catalog import load_catalog
    from apr.hub.digest import sha256_of
    from apr.qa.gates.fingerprint import FINGERPRINT_DIR, model_fingerprint
    from apr.qa.gates.reference_config import find_reference

    entry = load_catalog().get(ref)
    if entry is None:
        raise SystemExit(f"{ref}: not a catalogued model (no published sha256 to verify against)")
    cached = pull(ref, progress=False)
    digest = sha256_of(cached.path, progress=False)
    if digest != entry.sha256:
        raise SystemExit(f"{cached.path}: sha256 {digest} is not the published {entry.sha256}")
    model = load_model(cached.path)
    reference = find_reference(ref, model)
    if reference is None or reference.fingerprint is None:
        raise SystemExit(f"{ref}: no reference config names a fingerprint file for it (reference_config.py)")
    started = time.monotonic()
    data = model_fingerprint(model, reference.repo, digest).to_json()
    target = FINGERPRINT_DIR / reference.fingerprint
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    return f"{target}: {len(data['tensors'])} tensors in {time.monotonic() - started:.1f}s"


def main(refs: list[str]) -> None:
    if not refs:
        raise SystemExit(__doc__)
    for ref in refs:
        print(fingerprint(ref), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
