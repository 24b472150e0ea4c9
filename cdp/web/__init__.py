"""The web console and HTTP API for marketers and privacy officers (``cdp serve``)."""

from cdp.web.app import create_app

__all__ = ["create_app"]
