"""Entry point of the `apr` CLI: builds the app from the verb-group modules and maps errors to exit codes."""

from __future__ import annotations

import importlib
import sys

import typer

from apr.errors import AprError

# Each module defines `register(app)` and imports torch & co. only inside its commands,
# so `apr --help` stays well under a second.
VERB_GROUPS = (
    "apr.cli.hub",  # pull, list
    "apr.cli.formats",  # convert, inspect
    "apr.cli.engine",  # run, chat, bench
    "apr.cli.serve",  # serve
    "apr.cli.qa",  # qa, certify
    "apr.cli.report",  # report
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="apr",
        help="Certify LLM checkpoints: pull, convert, inspect, run, chat, serve, bench, qa, certify.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root() -> None:
        """apr: the certification workbench for LLM checkpoints."""

    @app.command("version")
    def version() -> None:
        """Print the apr version."""
        from apr import __version__

        typer.echo(f"apr {__version__}")

    for module_name in VERB_GROUPS:
        importlib.import_module(module_name).register(app)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Usage errors exit 2 (click); AprError prints one line and exits 2."""
    app = build_app()
    try:
        app(args=argv, prog_name="apr")
    except AprError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
