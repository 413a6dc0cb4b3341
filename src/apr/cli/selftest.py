"""`apr qa --self-test MODEL`: run the planted-defect self-test and print its detection table."""

from __future__ import annotations

from pathlib import Path

import typer

from apr.qa.axes import Tier


def run_self_test_command(
    ref: str, path: Path, output: Path, playbook, tier: Tier, defects: list[str], quiet: bool
) -> int:
    """Exit code 0 when every applicable defect was blocked with no false block on the clean copy, else 1."""
    from apr.errors import AprError
    from apr.qa.axes import Format
    from apr.qa.deep import default_gates
    from apr.qa.selftest.defects import DEFECT_IDS
    from apr.qa.selftest.report import DETECTION_MD, render_text
    from apr.qa.selftest.run import SelfTestOptions, run_self_test
    from apr.qa.selftest.spec import SelfTestSpec

    unknown = [d for d in defects if d not in DEFECT_IDS]
    if unknown:
        raise AprError(f"--defect {unknown[0]!r} is not a planted defect; choose from {', '.join(DEFECT_IDS)}")
    from apr.qa.artifacts import source_format

    if source_format(path) is not Format.GGUF:
        raise AprError(f"{path}: --self-test plants defects into a GGUF file; pass a GGUF model (or its ref)")
    spec = (playbook.self_test if playbook is not None else None) or SelfTestSpec()
    options = SelfTestOptions(
        model=path,
        ref=playbook.model.ref if playbook is not None else ref,
        output=output,
        gates=playbook.gates if playbook is not None else default_gates(tier),
        defects=tuple(defects) or spec.defects,
        formats=spec.formats,
        chat=playbook.model.chat_template if playbook is not None else True,
        progress=not quiet,
        playbook=playbook.name if playbook is not None else None,  # whose gates: a certification cites its own
    )
    result = run_self_test(options)
    typer.echo(render_text(result))
    typer.echo(f"wrote {output / 'detection.json'}, {output / DETECTION_MD}, {output / 'evidence'}/")
    return 0 if result.passed else 1
