"""Vercel's entry point: the Python runtime serves this module's top-level ASGI ``app``.

vercel.json pins the FastAPI preset, in which this one function receives every path as the
client sent it (no rewrites), so each route answers on its own path. The routes live in the
installed package (``emailqueue.web``); an existing app adds them with ``create_router()``.
"""

from emailqueue.web import create_app

app = create_app()
