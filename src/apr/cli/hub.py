"""CLI verbs of the hub group: `apr pull REF [--format]`, `apr list [--size]`, `apr rm REF` and `apr prune`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from apr.hub import CachedModel
    from apr.hub.manage import CacheUsage

LIST_COLUMNS = ("REF", "FORMAT", "SIZE", "SHA256", "PATH")


class PullFormat(str, Enum):
    gguf = "gguf"
    safetensors = "safetensors"
    apr = "apr"


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


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned columns; the last column (path) is not padded."""
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]) for row in rows)


def format_table(models: list[CachedModel]) -> str:
    return _table(LIST_COLUMNS, [_row(m) for m in models])


def format_usage(report: CacheUsage) -> str:
    """The model table with disk use per entry (its own files plus converted variants), then the totals."""
    from apr.hub.manage import DERIVED_DIRS

    header = ("REF", "FORMAT", "MODEL", "VARIANTS", "ON DISK", "PATH")
    rows = []
    for usage in report.entries:
        model = usage.model
        # A local model's files are the user's, outside $APR_HOME: shown, never counted as cache.
        on_disk = f"{human_size(usage.total)}{' (local)' if usage.local else ''}"
        rows.append(
            (
                model.ref,
                model.format,
                human_size(model.size_bytes),
                human_size(usage.variant_bytes),
                on_disk,
                str(model.path),
            )
        )
    lines = [_table(header, rows)] if rows else ["no models cached yet; try `apr pull smollm2:135m`"]
    lines.extend(
        f"{name + '/':14} {human_size(size):>9}  {DERIVED_DIRS[name]}" for name, size in report.derived.items() if size
    )
    lines.append(f"total under {report.home}: {human_size(report.total_bytes)}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("pull")
    def pull_command(
        ref: Annotated[
            str,
            typer.Argument(
                metavar="REF",
                help="qwen2.5-coder:1.5b, smollm2:135m, gemma3:270m, hf://ORG/REPO, hf://ORG/REPO/FILE, or a path.",
                show_default=False,
            ),
        ],
        to_format: Annotated[
            PullFormat | None,
            typer.Option(
                "--format",
                help="Also convert to gguf, safetensors or apr (once: the result is cached by the source's sha256).",
            ),
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the cached model as one JSON document.")] = False,
    ) -> None:
        """Fetch a model into the cache ($APR_HOME) and verify its sha256; a cached copy is re-verified."""
        from apr.hub import Hub

        hub = Hub.from_env()
        model = hub.pull(ref, progress=not quiet)
        if to_format is not None:
            from apr.hub.variants import converted

            variant = converted(hub.cache, model, to_format.value, progress=not quiet)
            if as_json:
                typer.echo(
                    json.dumps(
                        {
                            **model.to_json(),
                            "converted": {
                                "format": variant.format,
                                "path": str(variant.path),
                                "size_bytes": variant.size_bytes,
                                "reused": variant.reused,
                            },
                        },
                        sort_keys=True,
                    )
                )
            else:
                state = "cached" if variant.reused else "converted"
                typer.echo(
                    f"{model.ref}  {variant.format}  {human_size(variant.size_bytes)}  ({state} from "
                    f"sha256:{model.sha256[:12]})  {variant.path}"
                )
            return
        if as_json:
            typer.echo(json.dumps(model.to_json(), sort_keys=True))
        else:
            typer.echo(
                f"{model.ref}  {model.format}  {human_size(model.size_bytes)}  sha256:{model.sha256}  {model.path}"
            )

    @app.command("list")
    def list_command(
        size: Annotated[
            bool,
            typer.Option(
                "--size",
                help="Disk use per model (with its converted variants), "
                "of the engine caches, and the total under $APR_HOME.",
            ),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of cached models.")] = False,
    ) -> None:
        """Show the models in the cache: ref, format, size, sha256 prefix, path."""
        from apr.hub import Hub

        hub = Hub.from_env()
        if size:
            from apr.hub.manage import usage

            report = usage(hub.cache)
            if as_json:
                typer.echo(
                    json.dumps(
                        {
                            "home": str(report.home),
                            "total_bytes": report.total_bytes,
                            "derived_bytes": report.derived,
                            "models": [
                                {**u.model.to_json(), "entry_bytes": u.entry_bytes, "variant_bytes": u.variant_bytes}
                                for u in report.entries
                            ],
                        },
                        indent=2,
                        sort_keys=True,
                    )
                )
            else:
                typer.echo(format_usage(report))
            return
        models = hub.list_cached()
        if as_json:
            typer.echo(json.dumps([m.to_json() for m in models], indent=2, sort_keys=True))
        elif models:
            typer.echo(format_table(models))
        else:
            typer.echo("no models cached yet; try `apr pull smollm2:135m`")

    @app.command("rm")
    def rm_command(
        ref: Annotated[
            str, typer.Argument(metavar="REF", help="A cached ref or path, as `apr list` shows it.", show_default=False)
        ],
    ) -> None:
        """Remove a model from the cache, with its converted variants (a local model's own files stay)."""
        from apr.hub import Hub
        from apr.hub.manage import remove

        model, freed = remove(Hub.from_env().cache, ref)
        typer.echo(f"removed {model.ref} ({human_size(freed)} freed)")

    @app.command("prune")
    def prune_command(
        dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only list what would be removed.")] = False,
        older_than: Annotated[
            float,
            typer.Option(
                "--older-than",
                min=0.0,
                help="Remove packed weights (engine cache) unused for this many days; 0 removes them all.",
            ),
        ] = 7.0,
    ) -> None:
        """Free disk under $APR_HOME: unfinished downloads, broken entries, orphaned conversions, stale packed weights."""
        from apr.hub import Hub
        from apr.hub.manage import apply_prune, plan_prune

        plan = plan_prune(Hub.from_env().cache, older_than_days=older_than)
        for path, reason, nbytes in plan.items:
            typer.echo(f"{'would remove' if dry_run else 'removed'} {path} ({reason}, {human_size(nbytes)})")
        if not dry_run:
            apply_prune(plan)
        verb = "would free" if dry_run else "freed"
        typer.echo(f"{verb} {human_size(plan.bytes)} in {len(plan.items)} item(s)")
