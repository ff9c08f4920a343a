"""Tools: typed Python functions, built-ins."""
