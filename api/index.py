"""Vercel's entry point: the Python runtime serves this module's top-level ASGI ``app``.

``vercel.json`` rewrites every ``/api/*`` path here, so this one function serves all routes.
Vercel loads this file by path, not as ``api.index``, so imports are absolute. Building the app
reads no settings and opens no connection: that happens on the first request.
"""

from api._app import create_app

app = create_app()
