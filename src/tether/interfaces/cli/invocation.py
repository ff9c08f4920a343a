"""The version `tether --version` prints."""

from __future__ import annotations


def version() -> str:
    """The installed distribution's version (its metadata), else the package's `__version__`."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tether")
    except PackageNotFoundError:
        from tether import __version__

        return __version__
