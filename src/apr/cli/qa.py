"""CLI verbs of the qa group: `apr qa MODEL` (deep single-model gates as a table) and `apr certify PLAYBOOK`."""

from __future__ import annotations

from pathlib import Path

import typer


def verdict_lines(records, mqs, seconds: float | None = None) -> list[str]:
    """The status line, then why it is not a clean pass (gate, cell, evidence line): what a reader needs first."""
    from apr.qa.reports.reasons import summary_lines

    took = f" in {seconds:.0f}s" if seconds is not None else ""
    head = (
        f"{mqs.label}  MQS {mqs.score}/1000  grade {mqs.grade}  ({mqs.total_records} records: "
        + ", ".join(f"{n} {outcome.value}" for outcome, n in mqs.outcomes.items() if n)
        + f"){took}"
    )
    return [head, *(f"  {line}" for line in summary_lines(records, mqs))]


def _certify_summary(result) -> None:
    from apr.qa.evidence import read_evidence

    for line in verdict_lines(read_evidence(result.evidence).records, result.mqs, result.seconds):
        typer.echo(line)
    typer.echo(
        f"wrote {result.evidence}, {result.output / 'junit.xml'}, {result.output / 'report.html'}, "
        f"{result.tables / 'models.csv'}" + (f"; the previous run is in {result.archived}" if result.archived else "")
    )


def _certify_endpoint(plan) -> None:
    from apr.qa.endpoint.run import certify_endpoint
    from apr.qa.evidence import Outcome, read_evidence

    _interrupt_on_termination()
    result = certify_endpoint(plan)
    records = read_evidence(result.evidence).records
    for line in verdict_lines(records, result.mqs, result.seconds):
        typer.echo(line)
    judged = {r.gate for r in records if r.outcome is not Outcome.NOT_APPLICABLE}
    left_out = sorted({str(r.gate) for r in records if r.gate not in judged})
    if left_out:
        typer.echo(f"  not applicable to an endpoint (never counted): {', '.join(left_out)}")
    typer.echo(
        f"wrote {result.evidence}, {result.output / 'junit.xml'}, {result.output / 'report.html'}, "
        f"{result.tables / 'models.csv'}"
        + (f"; the previous run is in {result.archived}" if result.archived else "")
        + (f"; {result.carried} record(s) carried over from it" if result.carried else "")
    )
    raise typer.Exit(result.exit_code)


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP end `apr certify` like Ctrl-C does: every running cell is killed with its group."""
    import signal

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
    register_qa(app)

    @app.command("certify")
    def certify_command(
        playbook: Path | None = typer.Argument(
            None, help="model playbook (playbooks/models/*.playbook.yaml); optional with --endpoint"
        ),
        model_path: Path | None = typer.Option(None, "--model-path", help="certify this local file instead of the ref"),
        tier: str | None = typer.Option(
            None, "--tier", help="run the model under another tier: quick, smoke, mvp, standard, full"
        ),
        output: Path | None = typer.Option(
            None,
            "--output",
            "-o",
            help="directory for evidence and reports (default certifications/<model>, or <model>-<tier> for tiers other than mvp)",
        ),
        workers: int | None = typer.Option(None, "--workers", min=1, max=64, help="cells run in parallel"),
        timeout: float | None = typer.Option(
            None,
            "--timeout",
            min=1,
            help="per-cell deadline in seconds (default: the playbook's execution.timeout_s); a slower machine, "
            "as calibrated at the start, gets more",
        ),
        threads: int | None = typer.Option(
            None, "--threads", min=1, help="CPU threads of every cell (default: the free cores, measured)"
        ),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="continue the run in the output folder: skip finished cells (with --endpoint: ask again only what "
            "got no answer)",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress on stderr"),
        endpoint: str | None = typer.Option(
            None, "--endpoint", help="certify this OpenAI-compatible server instead, e.g. http://127.0.0.1:8080/v1"
        ),
        served_model: str | None = typer.Option(
            None, "--served-model", help="with --endpoint: the model name the server answers to"
        ),
        api_key_env: str | None = typer.Option(
            None, "--api-key-env", help="with --endpoint: environment variable holding the API key (never written)"
        ),
        api: str | None = typer.Option(None, "--api", help="with --endpoint: chat (default) or completion"),
        concurrency: int | None = typer.Option(
            None, "--concurrency", min=1, max=64, help="with --endpoint: requests in flight at once (default 1)"
        ),
        rate_limit: float | None = typer.Option(
            None, "--rate-limit", min=0.001, help="with --endpoint: most requests started per second"
        ),
    ) -> None:
        """Certify a model: every cell of the playbook's matrix through the real CLI, every gate, MQS and reports.

        With --endpoint URL (or a playbook with an endpoint: section): certify a remote OpenAI-compatible server's
        behaviour instead; gates that need the files or apr's engine are recorded not applicable (docs/endpoint.md).

        Exit code 0 when CERTIFIED or PROVISIONAL, 1 when BLOCKED, 3 when INCONCLUSIVE (the machine could not
        run every check: deadline, memory, a killed process, a full disk, an endpoint that stopped answering),
        2 on bad input (an endpoint unreachable at the start, refusing the key, or not serving the model too)."""
        from apr.errors import AprError
        from apr.qa.axes import Tier
        from apr.qa.certify import CertifyOptions, certify

        if playbook is not None and not playbook.is_file():
            raise AprError(
                f"{playbook}: playbook not found; pass a file such as "
                "playbooks/models/qwen2.5-coder-1.5b-mvp.playbook.yaml"
            )
        if playbook is None and endpoint is None:
            raise AprError("pass a PLAYBOOK, or --endpoint URL --served-model NAME to certify a running server")
        if tier is not None and tier not in {t.value for t in Tier}:
            raise AprError(f"--tier {tier!r} is not one of {', '.join(t.value for t in Tier)}")
        if api is not None and api not in ("chat", "completion"):
            raise AprError(f"--api {api!r} is not one of chat, completion")
        from apr.qa.endpoint.plan import EndpointArgs, endpoint_plan
        from apr.qa.playbook import load_playbook

        args = EndpointArgs(endpoint, served_model, api_key_env, api, concurrency, rate_limit, timeout)
        plan = endpoint_plan(
            load_playbook(playbook) if playbook is not None else None,
            args,
            tier=Tier(tier) if tier else None,
            output=output,
            progress=not quiet,
            resume=resume,
        )
        if plan is not None:
            for flag, value in (("--model-path", model_path), ("--workers", workers), ("--threads", threads)):
                if value is not None:
                    raise AprError(f"{flag} does not apply to an endpoint: it runs no local engine")
            _certify_endpoint(plan)
        assert playbook is not None  # without one, endpoint_plan returned a plan or raised
        if model_path is not None and not model_path.exists():
            raise AprError(f"{model_path}: --model-path does not exist")
        _interrupt_on_termination()
        result = certify(
            CertifyOptions(
                playbook=playbook,
                model_path=model_path,
                tier=Tier(tier) if tier else None,
                output=output,
                workers=workers,
                timeout_s=timeout,
                resume=resume,
                progress=not quiet,
                threads=threads,
            )
        )
        _certify_summary(result)
        raise typer.Exit(result.exit_code)


def register_qa(app: typer.Typer) -> None:
    """`apr qa MODEL`."""

    @app.command("qa")
    def qa_command(
        model: str = typer.Argument(..., help="a ref (qwen2.5-coder:1.5b), cached name, or path to any format"),
        json_output: bool = typer.Option(False, "--json", help="print one JSON document instead of the table"),
        evidence: Path | None = typer.Option(
            None, "--evidence", help="evidence file (default WORK_DIR/evidence.jsonl)"
        ),
        work_dir: Path | None = typer.Option(
            None, "--work-dir", help="where the evidence goes (default ./apr-qa/<model name>)"
        ),
        tier: str = typer.Option("mvp", "--tier", help="whose template thresholds apply"),
        skip: list[str] = typer.Option([], "--skip", help="a gate id not to run (repeatable), e.g. REFERENCE-PARITY"),
        max_tokens: int = typer.Option(32, "--max-tokens", min=2, help="tokens generated for the throughput gate"),
        playbook: Path | None = typer.Option(
            None,
            "--playbook",
            help="take formats, backends and gate thresholds from this model playbook (its matrix of cells is not run)",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress on stderr"),
        self_test: bool = typer.Option(
            False,
            "--self-test",
            help="plant defects into copies of MODEL (a GGUF), run the gates on each, print the detection table",
        ),
        defects: list[str] = typer.Option(
            [], "--defect", help="with --self-test: only this planted defect (repeatable); default all"
        ),
    ) -> None:
        """Deep single-model gates, printed as gate · status · measured · threshold · duration.

        With --self-test: the gates' detection power on planted defects (defect x gate table, detection.json).
        Exit code 0 when no gate failed (self-test: every defect caught, no false block), 1 when one did, 3 when
        none failed but the machine stopped a check (inconclusive), 2 on bad input."""
        import json

        from apr.errors import AprError
        from apr.hub import resolve_model_arg
        from apr.qa.axes import Tier
        from apr.qa.deep import DeepOptions, default_gates, options_from_playbook, run_deep
        from apr.qa.gates.catalog import GATEWAYS, GateId
        from apr.qa.playbook import load_playbook
        from apr.qa.reports.gate_table import gate_rows, render_table

        if tier not in {t.value for t in Tier}:
            raise AprError(f"--tier {tier!r} is not one of {', '.join(t.value for t in Tier)}")
        known = {g.value for g in GateId}
        unknown = [s for s in skip if s not in known]
        if unknown:
            raise AprError(f"--skip {unknown[0]!r} is not a gate id; choose from {', '.join(sorted(known))}")
        if any(GateId(s) in GATEWAYS for s in skip):
            raise AprError("--skip cannot leave out a gateway (G0-G4)")
        if playbook is not None and not playbook.is_file():
            raise AprError(
                f"{playbook}: playbook not found; pass a file such as "
                "playbooks/models/qwen2.5-coder-1.5b-mvp.playbook.yaml"
            )
        path = resolve_model_arg(model, progress=not quiet)
        folder = work_dir or Path("apr-qa") / path.stem
        if self_test:
            from apr.cli.selftest import run_self_test_command

            loaded = load_playbook(playbook) if playbook is not None else None
            code = run_self_test_command(model, path, folder / "self-test", loaded, Tier(tier), defects, quiet)
            raise typer.Exit(code)
        if defects:
            raise AprError("--defect needs --self-test")
        target = evidence or folder / "evidence.jsonl"
        skipped = frozenset(GateId(s) for s in skip)
        if playbook is not None:
            options = options_from_playbook(load_playbook(playbook), path, target, skipped, max_tokens)
        else:
            options = DeepOptions(
                model=path,
                ref=model,
                evidence=target,
                gates=default_gates(Tier(tier)),
                skip=skipped,
                max_tokens=max_tokens,
            )
        records, seconds = run_deep(options, progress=not quiet)
        rows = gate_rows(records)
        failed = any(row.status == "failed" for row in rows)
        stopped = not failed and any(row.status == "inconclusive" for row in rows)
        verdict = "FAILED" if failed else "INCONCLUSIVE (the machine stopped a check)" if stopped else "passed"
        if json_output:
            typer.echo(
                json.dumps(
                    {
                        "model": model,
                        "path": str(path),
                        "passed": not failed and not stopped,
                        "inconclusive": stopped,
                        "evidence": str(options.evidence),
                        "total_duration_s": round(seconds, 2),
                        "gates": [row.to_json() for row in rows],
                    },
                    indent=2,
                    ensure_ascii=False,
                )
            )
        else:
            render_table(rows, f"apr qa {model} — {verdict} in {seconds:.0f}s")
            typer.echo(f"evidence: {options.evidence}")
        raise typer.Exit(1 if failed else 3 if stopped else 0)
