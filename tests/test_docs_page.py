"""The docs pages in a real browser with no network but loopback: Swagger UI and ReDoc
render from the service's own assets, and a built-in account logs in through the
Authorize dialog and tries the task list.

Debian's chromium, driven by Playwright; one browser for the module, a fresh context
(no cookies, no storage) for each test. Requests to any host but the server's are
refused twice over: chromium resolves no other name, and the page's routes abort and
record them, so that a test fails if the page even tried.
"""

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Response,
    Route,
    expect,
    sync_playwright,
)

from tests.conftest import SIGNING_PEM, missing_tool
from tests.live_server import LiveService, live_service

PASSWORD = "correct horse battery"

# Built-in accounts on, and the shipped rate limits: a page load's requests must pass them.
service = live_service("docs_page", accounts_enabled=True, token_signing_key=SIGNING_PEM)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No name resolves but the loopback address the server listens on.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
TIMEOUT_MS = 15_000
# ReDoc's sidebar credit ("API docs by Redocly") always loads its logo from Redocly's
# CDN, whatever the options; refused, the image hides itself and nothing else is missed.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_pages_load_everything_from_the_service(service: LiveService, path: str) -> None:
    page = httpx.get(f"{service.base_url}{path}")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert urls, page.text
    assert all(url.startswith("/docs/assets/") for url in urls), urls
    for url in urls:
        asset = httpx.get(f"{service.base_url}{url}")
        assert asset.status_code == 200, url
        assert asset.headers["Content-Type"].startswith(("text/css", "text/javascript", "image/png")), url
        assert asset.headers["X-Request-ID"], url  # the app's middleware sees them too


def test_the_docs_routes_stay_out_of_the_openapi_document(service: LiveService) -> None:
    paths = httpx.get(f"{service.base_url}/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))], list(paths)
    redirect = httpx.get(f"{service.base_url}/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert "oauth2" in redirect.text


def test_assets_answer_errors_in_the_apis_json_shape(service: LiveService) -> None:
    missing = httpx.get(f"{service.base_url}/docs/assets/nothing.js")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    # The server decodes this to ../core.py, a file that exists beside the package's static/.
    outside = httpx.get(f"{service.base_url}/docs/assets/%2e%2e/core.py")
    assert outside.status_code == 404
    posted = httpx.post(f"{service.base_url}/docs/assets/swagger-ui.css")
    assert posted.status_code == 405
    assert posted.headers["Allow"] == "GET, HEAD"
    assert posted.json() == {"detail": "Method Not Allowed"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        missing_tool("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class OfflinePage:
    """A page whose requests may go only to the server; the others are refused and kept."""

    def __init__(self, context: BrowserContext, base_url: str) -> None:
        self.base_url = base_url
        self.refused: list[str] = []
        self.failed: list[str] = []
        own = urlsplit(base_url).netloc
        self.page: Page = context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)

        def only_the_server(route: Route) -> None:
            url = route.request.url
            if urlsplit(url).netloc == own:
                route.continue_()
            else:
                self.refused.append(url)
                route.abort("blockedbyclient")

        self.page.route("**/*", only_the_server)
        self.page.on("response", self._note_failure)

    def _note_failure(self, response: Response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.request.method} {response.url}")

    def open(self, path: str) -> Page:
        self.page.goto(f"{self.base_url}{path}", wait_until="load")
        return self.page

    def assert_only_the_server_was_asked(self, *known: str) -> None:
        """No request went to another host (except the `known` ones), and none failed."""
        unexpected = [url for url in self.refused if url not in known]
        assert unexpected == [], f"the page asked for other hosts: {unexpected}"
        assert self.failed == [], f"requests that failed: {self.failed}"


@pytest.fixture
def offline(browser: Browser, service: LiveService) -> Iterator[OfflinePage]:
    context = browser.new_context()
    try:
        yield OfflinePage(context, service.base_url)
    finally:
        context.close()


def test_swagger_ui_renders_every_operation_from_the_services_own_assets(
    offline: OfflinePage, tmp_path: Path
) -> None:
    page = offline.open("/docs")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    paths = operations.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/{user_id}/tasks" in {path.replace("\u200b", "") for path in paths}
    expect(page.locator(".btn.authorize")).to_be_visible()
    page.screenshot(path=tmp_path / "docs.png", full_page=True)
    offline.assert_only_the_server_was_asked()


def test_redoc_renders_from_the_services_own_assets(offline: OfflinePage, tmp_path: Path) -> None:
    page = offline.open("/redoc")
    expect(page.get_by_role("heading", name="List Tasks")).to_be_visible()
    page.screenshot(path=tmp_path / "redoc.png")
    offline.assert_only_the_server_was_asked(REDOC_LOGO)


def test_a_built_in_account_authorizes_and_tries_the_task_list(
    offline: OfflinePage, service: LiveService, tmp_path: Path
) -> None:
    email = "docs-page@example.com"
    registered = httpx.post(
        f"{service.base_url}/api/auth/register",
        json={"email": email, "password": PASSWORD, "name": "Docs"},
    )
    assert registered.status_code == 201, registered.text
    user_id = registered.json()["user_id"]
    httpx.post(
        f"{service.base_url}/api/{user_id}/tasks",
        json={"title": "seen through the docs page"},
        headers={"Authorization": f"Bearer {_log_in(service, email)}"},
    ).raise_for_status()

    page = offline.open("/docs")
    page.locator(".btn.authorize").first.click()
    dialog = page.locator(".dialog-ux .modal-ux")
    password_heading = page.get_by_role("heading", name="password (OAuth2, password)")
    password_flow = dialog.locator(".auth-container").filter(has=password_heading)
    password_flow.locator("#oauth_username").fill(email)
    password_flow.locator("#oauth_password").fill(PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/api/auth/token")) as logged_in:
        password_flow.get_by_role("button", name="Apply given OAuth2 credentials").click()
    assert logged_in.value.status == 200
    assert logged_in.value.json()["user_id"] == user_id
    expect(password_flow.get_by_role("button", name="Remove authorization")).to_be_visible()
    dialog.get_by_role("button", name="Close").first.click()

    # Where the page's description says a built-in account's user_id is.
    me = page.locator(".opblock-get").filter(has_text="/api/auth/me")
    body = json.loads(_try_it_out(me).locator(".response-col_description pre").first.inner_text())
    assert body["user_id"] == user_id

    tasks = page.locator(".opblock-get").filter(has_text="List Tasks")
    with page.expect_response(lambda r: f"/api/{user_id}/tasks" in r.url) as listed:
        answer = _try_it_out(tasks, user_id=body["user_id"])
    assert listed.value.status == 200
    assert listed.value.request.headers["authorization"].startswith("Bearer ")
    expect(answer).to_contain_text("seen through the docs page")
    tasks.screenshot(path=tmp_path / "try-it-out.png")
    offline.assert_only_the_server_was_asked()


def _try_it_out(operation: Locator, **parameters: str) -> Locator:
    """Open `operation`, press Try it out, fill `parameters`, Execute; the answer's row,
    once its status is 200."""
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    for name, value in parameters.items():
        operation.locator(f'input[placeholder="{name}"]').fill(value)
    operation.get_by_role("button", name="Execute").click()
    answer = operation.locator(".live-responses-table .response").first
    expect(answer.locator(".response-col_status")).to_have_text("200")
    return answer


def _log_in(service: LiveService, email: str) -> str:
    form = {"username": email, "password": PASSWORD}
    response = httpx.post(f"{service.base_url}/api/auth/token", data=form)
    response.raise_for_status()
    return str(response.json()["access_token"])
