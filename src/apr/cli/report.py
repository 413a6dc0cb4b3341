"""CLI verbs of the report group (being built; see issue 6)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
