"""`realm-web serve`: the demo page and model files (files.py) and an OpenAI-compatible API (api.py) on one
ASGI server (app.py). Native only: it needs uvicorn, Starlette and prometheus-client."""

from realm_web.server.app import Server, build_app, file_server, make_server, serve
from realm_web.server.files import Files, Route, ServeError, parse_range
from realm_web.server.protocol import APIError

__all__ = [
    "APIError", "Files", "Route", "ServeError", "Server", "build_app", "file_server", "make_server", "parse_range",
    "serve",
]  # fmt: skip
