"""Entry point of the `apr` CLI: builds the app from the verb-group modules and maps errors to exit codes."""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Annotated

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from apr.cli.usage import usage_line
from apr.errors import AprError
from apr.settings import export_omp_waits

# Each module defines `register(app)` and imports torch & co. only inside its commands,
# so `apr --help` stays well under a second.
VERB_GROUPS = (
    "apr.cli.hub",  # pull, list, rm, prune
    "apr.cli.formats",  # convert, inspect
    "apr.cli.engine",  # run, chat, bench
    "apr.cli.serve",  # serve
    "apr.cli.qa",  # qa, certify
    "apr.cli.report",  # report
    "apr.cli.eval",  # eval
)


DEBUG_FLAG = "--debug"


def _print_version(value: bool) -> None:
    if value:
        from apr.cli.version import version_lines

        for line in version_lines():
            typer.echo(line)
        raise typer.Exit(0)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="apr",
        help="Certify LLM checkpoints: pull, convert, inspect, run, chat, serve, bench, qa, certify.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        version: Annotated[
            bool,
            typer.Option(
                "--version",
                is_eager=True,
                callback=_print_version,
                help="Print the version, kernel family, CPU, threads, torch version and device, then exit.",
            ),
        ] = False,
        debug: Annotated[
            bool,
            typer.Option(DEBUG_FLAG, help="On an unexpected error, print the Python traceback as well."),
        ] = False,
    ) -> None:
        """apr: the certification workbench for LLM checkpoints."""

    @app.command("version")
    def version() -> None:
        """Print the version, kernel family, CPU, threads, torch version and device (same as --version)."""
        _print_version(True)

    for module_name in VERB_GROUPS:
        importlib.import_module(module_name).register(app)
    return app


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # A stop request unwinds like Ctrl-C, so atomic writes delete their temporary files on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


def _debugging(args: list[str]) -> bool:
    """Whether --debug is among the root options (those before the verb)."""
    for arg in args:
        if arg == DEBUG_FLAG:
            return True
        if not arg.startswith("-"):
            return False
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Every failure prints one `error:` line and exits 2 (130 when interrupted); a traceback
    only with --debug."""
    export_omp_waits()  # before any verb imports torch, which loads libgomp
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debugging(args)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run(args)
    except Exception as err:  # the last line of defence: a bug or an unforeseen failure, still one line
        if debug:
            raise
        print(f"error: {describe_unexpected(err)}", file=sys.stderr)
        return 2


def describe_unexpected(err: BaseException) -> str:
    """One line for an exception no verb turned into an AprError."""
    if isinstance(err, OSError):  # the environment's fault: a permission, a full disk, a file removed meanwhile
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{(err.strerror or type(err).__name__).lower()}; check the path, its permissions and free space"
    if isinstance(err, MemoryError):
        return "out of memory; use a smaller model, a shorter prompt or fewer --batch-size"
    text = " ".join(str(err).split())[:300]
    problem = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return f"internal error ({problem}); rerun with 'apr --debug ...' for the traceback and report it"


def _run(args: list[str]) -> int:
    command = typer.main.get_command(build_app())
    try:
        # standalone_mode=False: click hands usage errors to us instead of drawing its boxes.
        outcome = command.main(args=args, prog_name="apr", standalone_mode=False)
    except NoArgsIsHelpError as err:
        # Bare `apr`: the help text is the answer (click's convention, exit 2 as before).
        print(err.format_message(), file=sys.stderr)
        return 2
    except UsageError as err:
        print(usage_line(err, args, command), file=sys.stderr)
        return 2
    except AprError as err:
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return err.exit_code
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    return outcome if isinstance(outcome, int) else 0


if __name__ == "__main__":
    sys.exit(main())
