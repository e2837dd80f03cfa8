"""The web page in real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ
from playwright.sync_api import expect, sync_playwright

from syncq.space import Space

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).parents[2] / "build" / "test-artifacts"


def test_the_page_shows_the_queue_live_and_adds_prompts(tmp_path: Path, nodes) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make system-deps` installs it"
    home = tmp_path / "a"
    Space.init(home, name="gpu").close()
    # The bundled chat model is the page's first choice (here an echo model under its name).
    (home / "models.toml").write_text('[models.smollm2-135m]\nbackend = "echo"\n')
    node = nodes(home, "--api", "127.0.0.1:0")
    url = node.wait_event("api-listening")["url"]
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    login = subprocess.run(
        [SYNCQ, "web", "--no-browser"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert login.startswith(f"{url}/login?token=")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 420, "height": 800})  # a phone's width
        page.goto(url)  # no cookie yet: the page says how to log in, and shows no data
        expect(page.locator("#login")).to_be_visible()
        page.goto(login)  # the one-time link: it sets the cookie and sends the browser to /
        assert page.url == f"{url}/"
        cookie = next(c for c in page.context.cookies() if c["name"] == "syncq_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#model option", has_text="echo")).to_have_count(1)
        expect(page.locator("#model")).to_have_value("smollm2-135m")  # not the first, "echo"

        subprocess.run([SYNCQ, "add", "added from the command line", "-m", "echo"], env=env, check=True)
        # The issue asks for it within a second of the add: the page is told by /api/events.
        expect(page.locator(".prompt .input", has_text="added from the command line")).to_be_visible(
            timeout=1000
        )

        page.fill("#text", "added from the page")
        page.select_option("#model", "echo")
        page.click("button[type=submit]")
        added = page.locator(".prompt", has_text="added from the page")
        expect(added.locator(".status")).to_have_text("done", timeout=15000)
        expect(added.locator(".output")).to_have_text("added from the page")

        page.select_option("#filter", "queued")
        expect(page.locator(".prompt")).to_have_count(0)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.select_option("#filter", "")
        expect(page.locator(".prompt")).to_have_count(2)
        page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
        # The link was used: a second browser that opens it is not let in.
        other = browser.new_page()
        again = other.goto(login)
        assert again is not None and again.status == 401
        assert not [c for c in other.context.cookies() if c["name"] == "syncq_session"]
        browser.close()
    assert (ARTIFACTS / "web-page.png").stat().st_size > 1000
