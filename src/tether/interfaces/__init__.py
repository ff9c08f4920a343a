"""Interfaces: the CLI (and later the HTTP server and web page). Each goes through the runs service."""
