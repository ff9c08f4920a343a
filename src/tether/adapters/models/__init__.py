"""Models: OpenAI-compatible, scripted, replay; and how a model reference picks one."""
