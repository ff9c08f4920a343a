"""Finding a Python object from a 'module:attr' path (tools, scripted models, agents)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from tether.domain.errors import ConfigError


def import_attr(path: str, base_dir: Path | None = None, *, what: str = "") -> Any:
    """Import 'module:attr' (dotted attrs allowed); modules in `base_dir` are found too.

    `what` names the thing being looked up in error messages, e.g. "scripted model 'scripted:x:y'".
    """
    prefix = f"{what}: " if what else ""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{prefix}{path!r} is not a 'module:attribute' path")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{prefix}cannot import module {module_name!r} (for {path!r}): {e}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{prefix}module {module_name!r} has no attribute {attr!r}") from None
    return obj
