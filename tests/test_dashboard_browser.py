"""The HTML dashboard in a real headless Chromium (Debian's package) driven by Playwright.

The app is served by a real uvicorn server on 127.0.0.1; the browser signs in with the admin
token, watches the counts change after sends, requeues a failed job by clicking, and reads a
bounced email's timeline after a signed webhook. A screenshot goes to ``artifacts/``.

Under ``CI=true`` a missing browser is a failure, never a skip (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import SecretStr

from emailqueue import Settings, drain, send_email
from emailqueue.testing import FakeResend
from emailqueue.web import create_app
from emailqueue.web._deps import get_connection, get_settings
from tests.helpers.api_client import ADMIN_TOKEN
from tests.helpers.devproc import free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SECRET = "whsec_" + base64.b64encode(b"browser-test-secret-0123456789ab").decode()
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _browser_path() -> str:
    if Path(CHROMIUM).exists() or shutil.which("chromium"):
        return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing under CI=true: `apt-get install -y chromium` (.ci/run does)")
    pytest.skip(f"no {CHROMIUM}: `apt-get install -y chromium` to run the browser test")


@pytest.fixture
def served(real_conn: redis.Redis, settings: Settings) -> Iterator[tuple[str, Settings]]:
    """The app on a real uvicorn server, with the test's Redis, fake Resend and secrets."""
    import uvicorn

    configured = settings.model_copy(
        update={
            "queue_admin_token": SecretStr(ADMIN_TOKEN),
            "resend_webhook_secret": SecretStr(SECRET),
        }
    )
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: configured
    app.dependency_overrides[get_connection] = lambda: real_conn
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}", configured
    finally:
        server.should_exit = True
        thread.join(10)


def test_dashboard_in_a_real_browser(
    served: tuple[str, Settings], real_conn: redis.Redis, fake_resend: FakeResend
) -> None:
    from playwright.sync_api import sync_playwright

    base, settings = served
    executable = _browser_path()
    started = time.monotonic()
    steps: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(15_000)

        def count(name: str) -> int:
            return int(page.locator(f"#count-{name} b").inner_text())

        # 1. Signed out: the dashboard sends the browser to the sign-in form; a wrong token fails.
        page.goto(f"{base}/api/admin/dashboard/")
        assert page.url.endswith("/api/admin/dashboard/login")
        page.fill("#token", "wrong")
        page.click("#sign-in")
        assert page.locator("#error").inner_text() == "Wrong token."
        page.fill("#token", ADMIN_TOKEN)
        page.click("#sign-in")
        assert page.url.endswith("/api/admin/dashboard/")
        assert (count("queued"), count("failed")) == (0, 0)
        steps.append("signed in")

        # 2. Two sends: the counts change. One is rejected by Resend and fails.
        # Resend refuses this address for good, whichever of the drain's concurrent sends comes first.
        fake_resend.reject_recipients = {"bad@example.com"}
        failed_id = send_email(
            to="bad@example.com", subject="First", text="x", connection=real_conn, settings=settings
        )
        send_email(to="ada@example.com", subject="Second", text="x", connection=real_conn, settings=settings)
        page.reload()
        assert count("queued") == 2
        drain(connection=real_conn, settings=settings, time_budget=60)
        page.reload()
        assert (count("queued"), count("failed")) == (0, 1)
        row = page.locator(f'#failures tr[data-job="{failed_id}"]')
        assert "b***@example.com" in row.inner_text() and "bad@example.com" not in page.content()
        assert page.locator("#total-sent").inner_text() == "sent: 1"
        steps.append("counts changed after sends")
        fake_resend.reject_recipients = set()  # the address is fixed: the requeued email goes out

        # 3. Requeue the failed job by clicking its button.
        row.locator("button.requeue").click()
        assert page.locator("#message").inner_text() == f"requeued {failed_id}"
        assert (count("queued"), count("failed")) == (1, 0)
        drain(connection=real_conn, settings=settings, time_budget=60)
        page.reload()
        assert (count("queued"), count("failed")) == (0, 0)
        steps.append("requeued by clicking")

        # 4. A signed bounce webhook, then the email's timeline.
        with httpx.Client(base_url=base, timeout=10) as http:
            replies = fake_resend.emit_webhooks(
                "/api/webhooks/resend", SECRET, bounce=["bad@example.com"], client=http
            )
        assert all(r.status_code == 200 for r in replies)
        page.fill("#q", "bad@example.com")
        page.click("#look-up")
        timeline = page.locator(".timeline")
        assert timeline.get_attribute("data-state") == "bounced"
        states = page.locator(".timeline .step").evaluate_all("els => els.map(e => e.dataset.state)")
        assert states == ["sent", "bounced"]
        assert "Permanent" in timeline.inner_text()
        assert page.locator("#suppressions").inner_text().count("b***@example.com") == 1
        steps.append("bounced timeline after a signed webhook")

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        steps.append(f"screenshot {shot.name}")
        browser.close()
    print(f"\nbrowser test: {len(steps)} steps ({'; '.join(steps)}) in {time.monotonic() - started:.1f} s")
