"""The files people configure Tether with (agent files, the operator configuration, MCP JSON, key
files) and the `${VAR}` references in them: read, and their mistakes worded, one way for all."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from tether.domain.errors import ConfigError

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of `path` exactly as stored (line ends untranslated: agent files are hashed),
    or a ConfigError that names `what` the file was to be."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ConfigError(f"cannot read {what} {path}: {reason}") from None


def expand_env(value: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """`value` with each `${VAR}` replaced from the environment; an unset variable is an error (the
    only one this raises)."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise ConfigError(f"{where} uses ${{{m.group(1)}}}, but the environment variable {m.group(1)} is not set")
        return env[m.group(1)]

    return ENV_REFERENCE.sub(sub, value)
