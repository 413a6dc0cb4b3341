"""CLI verbs of the qa group: `apr qa MODEL` (deep single-model gates as a table) and `apr certify PLAYBOOK`."""

from __future__ import annotations

from pathlib import Path

import typer


def _certify_summary(result) -> None:
    mqs = result.mqs
    typer.echo(f"{mqs.status.value}  MQS {mqs.score}/1000  grade {mqs.grade}  ({mqs.total_records} records: "
               + ", ".join(f"{n} {outcome.value}" for outcome, n in mqs.outcomes.items() if n)
               + f") in {result.seconds:.0f}s")
    for line in mqs.blockers:
        typer.echo(f"  blocked: {line}")
    typer.echo(f"wrote {result.evidence}, {result.output / 'junit.xml'}, {result.output / 'report.html'}, "
               f"{result.output.parent / 'models.csv'}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("certify")
    def certify_command(
        playbook: Path = typer.Argument(..., help="model playbook (playbooks/models/*.playbook.yaml)"),
        model_path: Path | None = typer.Option(None, "--model-path", help="certify this local file instead of the ref"),
        tier: str | None = typer.Option(None, "--tier", help="run the model under another tier: quick, smoke, mvp, "
                                        "standard, full"),
        output: Path | None = typer.Option(None, "--output", "-o",
                                           help="directory for evidence and reports (default certifications/<name>)"),
        workers: int | None = typer.Option(None, "--workers", min=1, max=64, help="cells run in parallel"),
        resume: bool = typer.Option(False, "--resume", help="append to an existing evidence file; skip finished cells"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress on stderr"),
    ) -> None:
        """Certify a model: every cell of the playbook's matrix through the real CLI, every gate, MQS and reports.

        Exit code 0 when CERTIFIED or PROVISIONAL, 1 when BLOCKED, 2 on bad input."""
        from apr.errors import AprError
        from apr.qa.axes import Tier
        from apr.qa.certify import CertifyOptions, certify

        if not playbook.is_file():
            raise AprError(f"{playbook}: playbook not found; pass a file such as "
                           "playbooks/models/qwen2.5-coder-1.5b-mvp.playbook.yaml")
        if tier is not None and tier not in {t.value for t in Tier}:
            raise AprError(f"--tier {tier!r} is not one of {', '.join(t.value for t in Tier)}")
        if model_path is not None and not model_path.exists():
            raise AprError(f"{model_path}: --model-path does not exist")
        result = certify(CertifyOptions(playbook=playbook, model_path=model_path, tier=Tier(tier) if tier else None,
                                        output=output, workers=workers, resume=resume, progress=not quiet))
        _certify_summary(result)
        raise typer.Exit(result.exit_code)
