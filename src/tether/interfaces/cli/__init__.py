"""The `tether` command line (typer + rich); the entry point is `tether.interfaces.cli.app:main`."""
