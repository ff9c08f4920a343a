"""Concrete implementations of the engine's ports: models, tools, stores."""
