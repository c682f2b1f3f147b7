"""`GET /status` of the running fleet: an admin's page, self-contained (nothing fetched from elsewhere), every model of
the app on it, no console error in a real browser (Debian's Chromium); its screenshot is kept in test-artifacts/."""

from __future__ import annotations

import re

import httpx
import yaml

from tests.helpers import ADMIN_KEY, DIGITS_KEY, ROOT, Fleet

ARTIFACTS = ROOT / "test-artifacts"
PIXELS = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


def test_the_status_page_is_an_admins(fleet: Fleet) -> None:
    assert httpx.get(f"{fleet.url}/status", timeout=30).status_code == 401
    scoped = httpx.get(f"{fleet.url}/status", headers={"Authorization": f"Bearer {DIGITS_KEY}"}, timeout=30)
    assert scoped.status_code == 403 and "admin" in scoped.json()["error"]


def test_the_status_page_renders_every_model_in_a_browser_with_no_error(fleet: Fleet, browser) -> None:
    with fleet.client() as client:
        for _ in range(5):
            assert client.post("/v2/models/digits/infer", json=PIXELS).status_code == 200
    models = [m["name"] for m in yaml.safe_load(fleet.spec_path.read_text())["models"]]
    page = browser.new_page(extra_http_headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    errors: list[str] = []
    elsewhere: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("request", lambda req: None if req.url.startswith(fleet.url) else elsewhere.append(req.url))
    try:
        response = page.goto(f"{fleet.url}/status", wait_until="load")
        assert response is not None and response.status == 200, response and response.text()
        for name in models:
            assert page.locator(f"#model-{name}").count() == 1, f"model {name} is not on the page"
        digits = page.locator("#model-digits").inner_text()
        # replicas running / desired, from Serve's controller through the monitor
        assert re.search(r"\b[1-9]\d* / [1-9]\d*\b", digits), digits
        sturdy = page.locator("#model-sturdy").inner_text()  # two replicas, whether or not it was called yet
        assert "2 / 2" in sturdy, sturdy
        assert page.title() == "fleet · modelfleet status"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "status.png"), full_page=True)
        assert not errors, errors
        assert not elsewhere, f"the page fetched {elsewhere}"
    finally:
        page.close()
