"""kvservice: an HTTP and RESP key-value store with a write history per key."""

from importlib import metadata


def _installed_version() -> str:
    try:
        return metadata.version("kvservice")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


__version__ = _installed_version()
"""The installed distribution's version (pyproject.toml's), for --version and INFO."""
