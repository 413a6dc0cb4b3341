"""CLI verbs of the engine group (being built; see the issue for this group)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
