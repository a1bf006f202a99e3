"""The `llm2search` command line (typer): `app` and the console-script entry point `main`."""

from .app import app, main

__all__ = ["app", "main"]
