"""``bestshot serve``: an AUTOMATIC1111-compatible HTTP API, bestshot's own API and a curation gallery."""

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
