"""The `apr` command line: one typer app, one module per verb group, heavy imports deferred."""
