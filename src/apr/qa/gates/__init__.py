"""Gate families, one module each; every gate is a function returning typed checks (``apr.qa.recording.Check``).

integrity (G0) · load (G1) · contract (tensor contract) · structure (metadata plausibility, structure) ·
parity (format and tokenizer parity) · reference (transformers parity) · golden (golden output) ·
attention (attention trace) · runtime (determinism, throughput, GPU speedup from real CLI runs).
G2–G4 come from the cells themselves (``apr.qa.gates.cell``).
"""
