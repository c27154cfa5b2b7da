"""The page at ``/`` in a real headless Chromium: uploads, jobs, live progress, cancel and reconnects.

The browser is Debian's ``chromium`` package, driven by Playwright, which is never asked to download
a browser build of its own. ``.ci/run`` installs Chromium, and the browser tests skip without it.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright

from .conftest import DATA, ROOT, Api, Server, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "artifacts" / "web-page.png"
# Generous, because other test runs may share the machine's two cores.
TIMEOUT_MS = 60_000
SESSION_KEY = "offload.session_id"
# Seconds for a whole browser test, which waits for several jobs and up to three server starts.
BROWSER_TEST_TIMEOUT_S = 300


@pytest.fixture(name="browser", scope="module")
def _browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package (apt-get install chromium), "
                    "as .ci/run does")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(name="page")
def _page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    page.on("console", lambda message: _note_policy_violation(message, problems))
    page.on("pageerror", lambda error: problems.append(f"uncaught error: {error}"))
    yield page
    context.close()
    assert problems == []


def _note_policy_violation(message: ConsoleMessage, problems: list[str]) -> None:
    if "Content Security Policy" in message.text:
        problems.append(message.text)


def expected_profile(path: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    """Count data rows, and per column the empty cells and distinct values, with the csv module."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader)
        nulls = dict.fromkeys(header, 0)
        values: dict[str, set[str]] = {name: set() for name in header}
        rows = 0
        for row in reader:
            rows += 1
            for name, cell in zip(header, row):
                if cell.strip():
                    values[name].add(cell.strip())
                else:
                    nulls[name] += 1
    return rows, nulls, {name: len(cells) for name, cells in values.items()}


def open_page(page: Page, server: Server) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")


def upload(page: Page, *paths: Path) -> None:
    page.locator("#file-input").set_input_files([str(path) for path in paths])
    for path in paths:
        item = page.locator("#uploads li", has_text=path.name).last
        expect(item).to_have_attribute("data-state", "stored")
        expect(page.locator("#files tbody th", has_text=path.name).first).to_be_visible()


def start_job(page: Page, kind: str, inputs: list[str], fields: dict[str, str | bool] | None = None) -> Locator:
    """Fill the job form as a user would, start the job and return its list item."""
    page.get_by_label("Job kind").select_option(kind)
    for choice in page.locator("#input-choices input").all():
        if choice.get_attribute("type") == "checkbox":
            choice.uncheck()
    for name in inputs:
        page.locator("#input-choices").get_by_label(name, exact=True).check()
    for label, value in (fields or {}).items():
        field = page.locator("#param-fields").get_by_label(label, exact=True)
        if isinstance(value, bool):
            field.set_checked(value)
        else:
            field.fill(value)

    jobs = page.locator("li.job")
    before = jobs.count()
    page.get_by_role("button", name="Start job").click()
    expect(jobs).to_have_count(before + 1)
    expect(page.locator("#form-error")).to_be_hidden()
    job_id = jobs.first.get_attribute("data-job-id")
    return page.locator(f"li.job[data-job-id='{job_id}']")


def server_job(page: Page, server: Server, job: Locator) -> dict[str, Any]:
    """Read a job's record from the server, with the token from the page's HttpOnly cookie."""
    session_id = page.evaluate(f"sessionStorage.getItem('{SESSION_KEY}')")
    tokens = [cookie["value"] for cookie in page.context.cookies()
              if cookie["name"] == "offload_token" and cookie["path"] == f"/api/sessions/{session_id}"]
    assert len(tokens) == 1, page.context.cookies()
    api = Api(server, (session_id, tokens[0]))
    try:
        return api.job(job.get_attribute("data-job-id"))
    finally:
        api.client.close()


def expect_finished(job: Locator, state: str = "succeeded") -> None:
    expect(job.locator(".job-state")).to_have_text(state.replace("_", " "))
    expect(job).to_have_attribute("data-state", state)


def test_page_assets_types_and_policy(server: Server) -> None:
    expected = {"/": "text/html; charset=utf-8", "/static/app.js": "text/javascript; charset=utf-8",
                "/static/app.css": "text/css; charset=utf-8"}
    for path, content_type in expected.items():
        response = httpx.get(server.url + path)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"] == content_type
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "connect-src 'self'" in policy
    page = httpx.get(server.url + "/").text
    assert 'src="/static/app.js"' in page
    assert "<script>" not in page

    for path in ["/static/missing.js", "/static/..%2Fpage.py", "/static/index.txt"]:
        response = httpx.get(server.url + path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.timeout(BROWSER_TEST_TIMEOUT_S)
def test_page_profile_thumbnails_and_cancel(page: Page, server: Server) -> None:
    open_page(page, server)
    airports = DATA / "airports.csv"
    rocket = DATA / "rocket.jpg"
    upload(page, airports, rocket)
    rows, nulls, distinct = expected_profile(airports)

    profile = start_job(page, "csv-profile", ["airports.csv"])
    thumbnails = start_job(page, "image-thumbnails", ["rocket.jpg"], {"Sizes": "[256]"})
    for job in (profile, thumbnails):
        expect_finished(job)
        expect(job.get_by_role("progressbar")).to_have_attribute("value", "100")
        expect(job.locator(".percent")).to_have_text("100 %")
        record = server_job(page, server, job)
        assert record["progress"]["done"] == record["progress"]["total"]

    expect(profile.locator(".profile-summary")).to_contain_text(f"{rows} rows")
    report = profile.locator("details.report")
    report.locator("summary").click()
    expect(report).to_have_attribute("open", "")
    state_row = report.locator("tbody tr", has=page.locator("th", has_text="state"))
    expect(state_row.locator("td").nth(0)).to_have_text("string")
    expect(state_row.locator("td").nth(1)).to_have_text(str(nulls["state"]))
    expect(state_row.locator("td").nth(2)).to_have_text(str(distinct["state"]))
    latitude_row = report.locator("tbody tr", has=page.locator("th", has_text="latitude"))
    expect(latitude_row.locator("td").nth(0)).to_have_text("float")
    expect(profile.get_by_role("link", name="profile.json")).to_be_visible()

    # The thumbnail fits a 256-pixel square and keeps the source's aspect ratio.
    image = thumbnails.get_by_role("img", name="rocket-256.jpg")
    expect(image).to_be_visible()
    assert image.evaluate("image => image.complete && image.naturalWidth") > 0
    with page.expect_download() as download_info:
        thumbnails.get_by_role("link", name="Download rocket-256.jpg").click()
    assert download_info.value.suggested_filename == "rocket-256.jpg"
    with Image.open(rocket) as source, Image.open(download_info.value.path()) as thumbnail:
        width, height = thumbnail.size
        scale = 256 / max(source.size)
        assert max(width, height) == 256
        assert abs(width - source.width * scale) <= 1
        assert abs(height - source.height * scale) <= 1

    # Out of range: the server's message appears next to the field, and no job starts.
    jobs_before = page.locator("li.job").count()
    page.get_by_label("Job kind").select_option("spin")
    seconds = page.locator("#param-fields").get_by_label("Seconds", exact=True)
    seconds.fill("1000")
    page.get_by_role("button", name="Start job").click()
    expect(page.locator("#param-seconds-error")).to_contain_text("less than or equal to 600")
    expect(seconds).to_have_attribute("aria-invalid", "true")
    expect(seconds).to_be_focused()
    expect(page.locator("#form-error")).to_contain_text("params.seconds")
    assert page.locator("li.job").count() == jobs_before

    spin = start_job(page, "spin", [], {"Seconds": "60"})
    expect(spin).to_have_attribute("data-state", "running")
    expect(spin.get_by_role("progressbar")).not_to_have_attribute("value", "0")
    spin.get_by_role("button", name="Cancel job").click()
    expect_finished(spin, "cancelled")
    expect(spin.get_by_role("button", name="Cancel job")).to_be_hidden()
    assert server_job(page, server, spin)["state"] == "cancelled"

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    print(f"screenshot: {SCREENSHOT}")


@pytest.mark.timeout(BROWSER_TEST_TIMEOUT_S)
def test_page_reconnects_after_restarts(page: Page, tmp_path: Path) -> None:
    server = start_server(tmp_path)
    restarted: Server | None = None
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    try:
        open_page(page, server)
        upload(page, DATA / "airports.csv")
        first = start_job(page, "hash", ["airports.csv"])
        expect_finished(first)
        session_id = page.evaluate(f"sessionStorage.getItem('{SESSION_KEY}')")

        # A stream dropped in the middle of a job resumes after the last event the page saw.
        spin = start_job(page, "spin", [], {"Seconds": "3"})
        expect(spin).to_have_attribute("data-state", "running")
        last_seq = page.evaluate("state.lastSeq")
        page.evaluate("state.socket.close()")
        expect_finished(spin)
        expect(spin.get_by_role("progressbar")).to_have_attribute("value", "100")
        assert sockets[-1].endswith(f"/api/sessions/{session_id}/ws?after={last_seq}")

        # Same port and data directory: the session survives, the stream resumes.
        assert server.stop() == 0
        expect(page.locator("#connection")).not_to_have_attribute("data-state", "live")
        restarted = start_server(tmp_path, port=server.port)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator("#status")).to_contain_text("Reconnected")
        assert page.evaluate(f"sessionStorage.getItem('{SESSION_KEY}')") == session_id
        assert "?after=" in sockets[-1]
        expect_finished(first)
        second = start_job(page, "csv-profile", ["airports.csv"])
        expect_finished(second)

        # A new data directory on the same port: the session is gone, and the page makes a new one.
        assert restarted.stop() == 0
        other = tmp_path / "other"
        other.mkdir()
        restarted = start_server(other, port=server.port)
        expect(page.locator("#status")).to_contain_text("started a new session")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        new_session = page.evaluate(f"sessionStorage.getItem('{SESSION_KEY}')")
        assert new_session != session_id
        expect(page.locator("li.job")).to_have_count(0)
        expect(page.locator("#no-files")).to_be_visible()

        # A reload reuses the stored session.
        page.reload()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator("#status")).to_contain_text(f"Resuming session {new_session[:8]}")
        assert page.evaluate(f"sessionStorage.getItem('{SESSION_KEY}')") == new_session
    finally:
        for running in (server, restarted):
            if running is not None and running.process.poll() is None:
                running.stop()


def test_page_drop_zone_and_hash(page: Page, server: Server) -> None:
    open_page(page, server)
    content = "dropped through the drop zone\n"
    transfer = page.evaluate_handle(
        """content => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([content], "dropped.txt", {type: "text/plain"}));
            return transfer;
        }""", content)
    page.locator("#drop-zone").dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.locator("#uploads li", has_text="dropped.txt")).to_have_attribute("data-state", "stored")

    job = start_job(page, "hash", ["dropped.txt"], {"md5": True})
    expect_finished(job)
    result = job.locator("pre.json")
    expect(result).to_contain_text(hashlib.sha256(content.encode()).hexdigest())
    expect(result).to_contain_text(hashlib.md5(content.encode()).hexdigest())


def test_page_keyboard_order_and_focus(page: Page, server: Server) -> None:
    open_page(page, server)
    page.get_by_label("Job kind").select_option("csv-profile")
    # A click at the top left moves the start of tab navigation back to the top of the page.
    page.mouse.click(1, 1)
    order = []
    for _ in range(40):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    for earlier, later in [("file-input", "kind"), ("kind", "param-header"), ("param-header", "timeout"),
                           ("timeout", "start")]:
        assert order.index(earlier) < order.index(later), order

    page.locator("#start").focus()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
