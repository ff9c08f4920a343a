"""Model references → models.

    openai:NAME            OpenAI's API (key from OPENAI_API_KEY); priced from genai-prices
    anthropic:NAME         not available yet
    replay:PATH            a recorded cassette (reads a file: refused where files are not allowed)
    scripted:MODULE:ATTR   a ScriptedModel, or a function or list to make one from
    anything else          a name for the OpenAI-compatible backend at OPENAI_BASE_URL (or OpenAI
                           itself when only OPENAI_API_KEY is set), e.g. Ollama's `qwen2.5:7b`

Nothing here imports an SDK; models import theirs on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tether.adapters.importing import import_attr
from tether.domain.errors import ConfigError
from tether.domain.protocols import Model
from tether.domain.redact import redact_url

PREFIXES = ("openai:", "anthropic:", "replay:", "scripted:")


@dataclass(frozen=True, slots=True)
class ModelBackend:
    """Where bare model names go and the key for it (an operator's configuration); a field left
    None falls back to OPENAI_BASE_URL / OPENAI_API_KEY."""

    base_url: str | None = None
    api_key: str | None = None  # a secret: never in the repr
    # Why this backend cannot be used: the error of a `${VAR}` it names whose variable is unset,
    # raised by `resolved()`, so only what calls a model needs the variable.
    unset: str | None = None

    def resolved(self) -> ModelBackend:
        """The backend to call (the environment's where this one sets nothing), or the error of its
        unset `${VAR}`."""
        if self.unset is not None:
            raise ConfigError(self.unset)
        return ModelBackend(self.base_url or os.environ.get("OPENAI_BASE_URL") or None,
                            self.api_key or os.environ.get("OPENAI_API_KEY") or None)

    def __repr__(self) -> str:  # the key never, the URL without its password
        shown = None if self.base_url is None else redact_url(self.base_url)
        return f"ModelBackend(base_url={shown!r}, api_key={'***' if self.api_key else None}, unset={self.unset!r})"


def uses_backend(ref: str) -> bool:
    """Whether the model backend serves a model reference (`openai:NAME`, a bare name): only those
    read its URL and key."""
    return ref.strip().partition(":")[0] + ":" not in ("anthropic:", "replay:", "scripted:")


def resolve_model(ref: str, *, allow_files: bool = True, base_dir: Path | None = None,
                  backend: ModelBackend | None = None) -> Model:
    """The model a reference names. Raises ConfigError saying what to change."""
    ref = (ref or "").strip()
    if not ref:
        raise ConfigError("no model given: use openai:NAME, an OpenAI-compatible model name, "
                          "scripted:MODULE:ATTR or replay:PATH")
    prefix, _, rest = ref.partition(":")
    if prefix + ":" in PREFIXES and not rest:
        raise ConfigError(f"model reference {ref!r} names no model after '{prefix}:'")
    # The backend is read only for the models it serves (scripted: and replay: need no key).
    if prefix == "openai":
        return _openai(rest, ref, (backend or ModelBackend()).resolved().api_key)
    if prefix == "anthropic":
        raise ConfigError("anthropic models are not available yet; use openai:NAME or an "
                          "OpenAI-compatible server")
    if prefix == "replay":
        return _replay(rest, ref, allow_files)
    if prefix == "scripted":
        if not allow_files:
            raise ConfigError(f"model {ref!r} imports Python code, which is not allowed here "
                              "(the server must be configured to allow file models)")
        return _scripted(rest, ref, base_dir)
    return _compatible(ref, (backend or ModelBackend()).resolved())


def _openai(name: str, ref: str, key: str | None) -> Model:
    from tether.adapters.models.openai_compat import OpenAIModel

    if not key:
        raise ConfigError(f"model {ref!r} needs an OpenAI API key: set OPENAI_API_KEY")
    return OpenAIModel(name, base_url=None, api_key=key, ref=ref, priced=True)


def _compatible(name: str, backend: ModelBackend) -> Model:
    from tether.adapters.models.openai_compat import OpenAIModel, is_openai_endpoint

    base_url, key = backend.base_url, backend.api_key
    if base_url is None and key is None:
        raise ConfigError(f"no model backend configured for {name!r}: set OPENAI_BASE_URL (e.g. "
                          "http://localhost:11434/v1 for Ollama) or OPENAI_API_KEY, or use a "
                          "scripted:/replay: model")
    # Billed only when the call really goes to OpenAI; a local model named like a hosted one is not.
    return OpenAIModel(name, base_url=base_url, api_key=key or "not-needed", ref=name,
                       priced=is_openai_endpoint(base_url))


def _replay(path: str, ref: str, allow_files: bool) -> Model:
    if not allow_files:
        raise ConfigError(f"model {ref!r} reads a file, and file references are refused here "
                          "(the server must be configured to allow them)")
    from tether.adapters.models.replay import ReplayModel, read_cassette

    return ReplayModel(read_cassette(path), ref=ref)


def _scripted(target: str, ref: str, base_dir: Path | None = None) -> Model:
    from tether.adapters.models.scripted import ScriptedModel

    if ":" not in target:
        raise ConfigError(f"{ref!r} should be scripted:MODULE:ATTR (e.g. scripted:mytests.models:script)")
    obj = import_attr(target, base_dir, what=f"scripted model {ref!r}")
    if isinstance(obj, ScriptedModel):
        return obj
    if callable(obj) and not isinstance(obj, type):
        return ScriptedModel(obj, ref=ref)
    if isinstance(obj, list | tuple):
        return ScriptedModel(list(obj), ref=ref)
    if isinstance(obj, Model):
        return obj
    raise ConfigError(f"scripted model {ref!r}: {target} is a {type(obj).__name__}; give a "
                      "ScriptedModel, a function of the request, or a list of responses")
