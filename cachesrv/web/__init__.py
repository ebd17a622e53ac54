"""The HTTP face of cachesrv: app factory, thin handlers, error middleware."""

from .app import make_app

__all__ = ["make_app"]
