"""Fixes to what typer prints in `--help`.

- Flags show as plain flags. Typer's rich help (0.2x, with its vendored click) prints the value type
  of every option, flags included, so `--json`, `--no-debug` and `--help` all read `--json <bool>`,
  as if they took a value. Its plain-text help already leaves the type out for flags
  (`TyperOption.get_help_record`); `plain_flags()` makes the rich help do the same.
- Command lines in help texts use the command prefix the user has (`localize_help`): "Start with
  `tether demo`" reads "Start with `uv run tether demo`" after `uv run tether --help`.
"""

from __future__ import annotations

from typing import Any

import typer

from tether.interfaces.cli.invocation import localize

_PATCHED = "_tether_plain_flags"


def plain_flags() -> None:
    """Make typer's rich help show no value type (`<bool>`) for flags; idempotent."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if option is None or original is None or getattr(original, _PATCHED, False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None  # a flag takes no value
        return original(self, ctx)  # type: ignore[no-any-return]

    setattr(display_type_rich, _PATCHED, True)
    option.display_type_rich = display_type_rich


def localize_help(app: typer.Typer, prefix: str) -> None:
    """Rewrite the command lines in the help texts of `app`, its groups and commands for `prefix`.

    Done once before the app runs: typer reads the help texts (the `help=` strings and the
    docstrings) when it builds the click commands."""
    if prefix == "tether" or getattr(app, "_tether_localized", False):
        return
    app._tether_localized = True  # type: ignore[attr-defined]
    if isinstance(app.info.help, str):
        app.info.help = localize(app.info.help, prefix)
    if isinstance(app.info.epilog, str):
        app.info.epilog = localize(app.info.epilog, prefix)
    for info in app.registered_commands:
        if isinstance(info.help, str):
            info.help = localize(info.help, prefix)
        elif info.callback is not None and info.callback.__doc__:
            info.callback.__doc__ = localize(info.callback.__doc__, prefix)
        if isinstance(info.epilog, str):
            info.epilog = localize(info.epilog, prefix)
    for group in app.registered_groups:
        if isinstance(group.help, str):
            group.help = localize(group.help, prefix)
        if group.typer_instance is not None:
            localize_help(group.typer_instance, prefix)
