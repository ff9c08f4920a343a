"""The HTTP server: OpenAI's Assistants API (v2) and Tether's debug API (see docs/server.md)."""

from tether.interfaces.server.app import create_app
from tether.interfaces.server.assistants import ServerConfig
from tether.interfaces.server.serve import serve

__all__ = ["ServerConfig", "create_app", "serve"]
