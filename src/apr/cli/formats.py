"""CLI verbs of the formats group: `apr convert` and `apr inspect`."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Target(str, Enum):
    gguf = "gguf"
    safetensors = "safetensors"
    apr = "apr"


class Dtype(str, Enum):
    keep = "keep"
    f32 = "f32"
    bf16 = "bf16"
    f16 = "f16"


def _resolve(model: str) -> Path:
    """A local path as is; anything else through the hub (cached name or ref, pulled on first use)."""
    path = Path(model)
    if path.exists():
        return path
    from apr.hub import resolve_model_arg

    return resolve_model_arg(model)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("convert")
    def convert_command(
        src: Annotated[
            str,
            typer.Argument(help="Model to convert: a GGUF/APR file, a SafeTensors dir, or a ref.", show_default=False),
        ],
        to: Annotated[Target, typer.Option("--to", help="Target format.", show_default=False)],
        out: Annotated[
            Path,
            typer.Option(
                "-o", "--output", help="Output file (GGUF/APR) or directory (SafeTensors).", show_default=False
            ),
        ],
        dtype: Annotated[
            Dtype | None,
            typer.Option(
                "--dtype",
                help="keep = carry stored blocks as they are (default "
                "for gguf/apr); f32 is the default for safetensors.",
            ),
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the conversion report summary as JSON.")] = False,
    ) -> None:
        """Convert between GGUF, SafeTensors and APR; writes OUT.convert-report.json next to the output."""
        from apr.formats.convert import convert, report_path_for
        from apr.formats.load import load_model

        model = load_model(_resolve(src))
        bar = _progress_bar(len(model.tensors), f"convert → {to.value}", enabled=not quiet)
        report = convert(
            model,
            to.value,
            out,
            dtype=dtype.value if dtype else None,
            progress=(lambda _name, _nbytes: bar.update(1)) if bar is not None else None,
        )
        if bar is not None:
            bar.close()
        summary = report.to_json()["summary"]
        if as_json:
            typer.echo(
                json.dumps(
                    {"output": str(out), "report": str(report_path_for(out)), "seconds": report.seconds, **summary}
                )
            )
        else:
            typer.echo(
                f"wrote {out} ({report.output_format}, dtype {report.dtype}) in {report.seconds:.1f}s: "
                f"{summary['tensor_count']} tensors, {summary['bytes_identical']} byte-identical, "
                f"max |Δ| {summary['max_abs_diff']:.3g}; report {report_path_for(out)}"
            )

    @app.command("inspect")
    def inspect_command(
        model: Annotated[str, typer.Argument(help="A model file/directory or a ref.", show_default=False)],
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
        trace_structure: Annotated[
            bool,
            typer.Option(
                "--trace-structure",
                help="Per-tensor statistics and red flags "
                "(NaN/Inf, zero biases, near-zero norms, rope θ, tied or "
                "transposed embeddings).",
            ),
        ] = False,
        name_filter: Annotated[
            str | None,
            typer.Option(
                "--filter", help="With --trace-structure: stats only for tensors whose name contains this text."
            ),
        ] = None,
    ) -> None:
        """Show a model's metadata, tokenizer and tensor table."""
        from apr.formats.inspect import describe, render_text
        from apr.formats.load import load_model
        from apr.formats.structure import trace_structure as trace

        loaded = load_model(_resolve(model))
        info = describe(loaded)
        structure = trace(loaded, name_filter) if trace_structure else None
        if as_json:
            if structure is not None:
                info["structure"] = structure
            typer.echo(json.dumps(info, default=_json_default, allow_nan=True))
        else:
            typer.echo(render_text(info, structure))


def _json_default(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _progress_bar(total: int, label: str, *, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="tensor", file=sys.stderr, dynamic_ncols=True, leave=False)
