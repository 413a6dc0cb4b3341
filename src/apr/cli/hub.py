"""CLI verbs of the hub group: `apr pull REF` and `apr list`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from apr.hub import CachedModel

LIST_COLUMNS = ("REF", "FORMAT", "SIZE", "SHA256", "PATH")


def human_size(size_bytes: int) -> str:
    """Bytes as a short decimal figure (MB/GB, like download sites)."""
    value = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable: the loop returns at GB")


def _row(model: CachedModel) -> tuple[str, ...]:
    # Local entries point at the user's files, which may have moved since they were registered.
    where = str(model.path) if model.path.exists() else f"{model.path} (missing)"
    return (model.ref, model.format, human_size(model.size_bytes), model.sha256[:12], where)


def format_table(models: list[CachedModel]) -> str:
    """Left-aligned columns; the last column (path) is not padded."""
    rows = [LIST_COLUMNS, *(_row(m) for m in models)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(LIST_COLUMNS) - 1)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]) for row in rows)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("pull")
    def pull_command(
        ref: Annotated[
            str,
            typer.Argument(
                metavar="REF",
                # No square brackets here: typer renders help as rich markup.
                help="qwen2.5-coder:1.5b, smollm2:135m, gemma3:270m, hf://ORG/REPO, hf://ORG/REPO/FILE, or a path.",
                show_default=False,
            ),
        ],
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the cached model as one JSON document.")] = False,
    ) -> None:
        """Fetch a model into the cache ($APR_HOME) and verify its sha256; a cached copy is re-verified."""
        from apr.hub import pull

        model = pull(ref, progress=not quiet)
        if as_json:
            typer.echo(json.dumps(model.to_json(), sort_keys=True))
        else:
            typer.echo(
                f"{model.ref}  {model.format}  {human_size(model.size_bytes)}  sha256:{model.sha256}  {model.path}"
            )

    @app.command("list")
    def list_command(
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of cached models.")] = False,
    ) -> None:
        """Show the models in the cache: ref, format, size, sha256 prefix, path."""
        from apr.hub import list_cached

        models = list_cached()
        if as_json:
            typer.echo(json.dumps([m.to_json() for m in models], indent=2, sort_keys=True))
        elif models:
            typer.echo(format_table(models))
        else:
            typer.echo("no models cached yet; try `apr pull smollm2:135m`")
