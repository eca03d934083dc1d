"""Acme's own FastAPI app, with emailqueue's routes added under /api.

Acme's routes (``/`` and ``POST /api/signup``) are untouched; emailqueue adds
``/api/cron/process-email-queue``, ``/api/admin/*`` and ``/api/health``.
"""

from fastapi import FastAPI
from pydantic import BaseModel, EmailStr

from emailqueue import send_email
from emailqueue.web import create_router

app = FastAPI(title="Acme")
app.include_router(create_router(prefix="/api"))


class Signup(BaseModel):
    email: EmailStr


@app.get("/")
def home() -> dict[str, str]:
    return {"app": "acme", "status": "ok"}


@app.post("/api/signup", status_code=202)
def signup(body: Signup) -> dict[str, str]:
    # Queued in Redis and answered at once; the cron route delivers it within a minute.
    job_id = send_email(
        to=body.email,
        subject="Welcome to Acme",
        html="<p>Glad you're here.</p>",
        text="Glad you're here.",
    )
    return {"queued": job_id}
