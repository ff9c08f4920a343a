"""A fix to what typer prints in `--help`: flags show as plain flags.

- Typer's rich help (0.2x, with its vendored click) prints the value type
  of every option, flags included, so `--json`, `--no-debug` and `--help` all read `--json <bool>`,
  as if they took a value. Its plain-text help already leaves the type out for flags
  (`TyperOption.get_help_record`); `plain_flags()` makes the rich help do the same.
"""

from __future__ import annotations

from typing import Any

import typer

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
