"""The error of a command-line mistake: `tether` prints it as one `error: …` line and exits 2."""

from __future__ import annotations

from tether.domain.errors import TetherError


class UsageMistake(TetherError):
    """A mistake in how the command was called (shown as `error: …`, exit 2)."""
