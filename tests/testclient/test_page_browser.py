"""The test client's page in a real browser: headless Chromium driven by Selenium, against
the test client's app on a loopback port, which checks a real kvservice or a broken fake.

Needs chromium and chromium-driver (Debian's; the driver at /usr/bin/chromedriver). Without
them the tests skip, saying so, except under CI (CI=true), where that is a failure. Each
test saves a screenshot to ARTIFACTS (`$TEST_ARTIFACTS`, else `.artifacts/` in the
repository) and prints where.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from testclient.checks import CHECKS
from testclient.clients import HTTPKVClient, KVClient
from testclient.http_api import create_app
from tests.support.fakes import DeleteStillServedKV, ServesHTMLKV, serve_wsgi

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or REPO_ROOT / ".artifacts") / "page"
WAIT_S = 15.0
RUN_WAIT_S = 5.0
"""Well under the page's own refresh (10 s), so a result must come from the Run button's
reload, not from the next periodic one."""

ServePage = Callable[[KVClient, str], str]


def require_browser() -> None:
    """Skip without Chromium and its driver (fail under CI: CI must run these tests)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI must run the browser tests)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module (starting one takes about a second)."""
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the page go to {ARTIFACTS}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def serve_page() -> Iterator[ServePage]:
    """Serve the test client's app for a KV client; returns the page's URL."""
    with ExitStack() as stack:

        def serve(client: KVClient, kv_url: str) -> str:
            return stack.enter_context(serve_wsgi(create_app(client, kv_url))) + "/"

        yield serve


def open_page(browser: WebDriver, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, WAIT_S).until(
        lambda driver: driver.find_element(By.ID, "checks").get_attribute("data-loaded")
    )


def section(browser: WebDriver, check: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'section.check[data-check="{check}"]')


def run_now(browser: WebDriver, check: str) -> WebElement:
    """Click the check's Run button and wait until its section shows a verdict; returns it."""
    section(browser, check).find_element(By.CSS_SELECTOR, "button.run").click()
    # The page re-renders after the run: an element found just before may be gone.
    WebDriverWait(browser, RUN_WAIT_S, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda driver: (
            section(driver, check).find_elements(By.CSS_SELECTOR, ".age")
            and all(button.is_enabled() for button in driver.find_elements(By.TAG_NAME, "button"))
        )
    )
    return section(browser, check)


def screenshot(browser: WebDriver, name: str) -> None:
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def failed_rows(check_section: WebElement) -> list[WebElement]:
    return check_section.find_elements(By.CSS_SELECTOR, "table.steps tr.step-failed")


def test_the_page_lists_every_check_never_run(browser: WebDriver, serve_page: ServePage) -> None:
    kv_url = "http://kv.example:3000"
    open_page(browser, serve_page(DeleteStillServedKV(), kv_url))
    screenshot(browser, "never-run")

    assert browser.title == "kvservice test client"
    assert browser.find_element(By.ID, "kv-url").text == kv_url
    sections = browser.find_elements(By.CSS_SELECTOR, "section.check")
    assert [element.get_attribute("data-check") for element in sections] == list(CHECKS)
    for element, check in zip(sections, CHECKS.values(), strict=True):
        assert element.find_element(By.CSS_SELECTOR, ".description").text == check.description
        assert element.find_element(By.CSS_SELECTOR, ".verdict").text == "never run"


def test_run_now_shows_a_passing_result_from_a_real_kvservice(
    browser: WebDriver, serve_page: ServePage, kv_url: str
) -> None:
    with HTTPKVClient(kv_url) as client:
        open_page(browser, serve_page(client, kv_url))

        deletion = run_now(browser, "test_deletion")
        deletion.find_element(By.TAG_NAME, "summary").click()  # a passing result starts closed
        screenshot(browser, "passed")

        assert deletion.find_element(By.CSS_SELECTOR, ".verdict").text == "PASSED"
        assert deletion.find_element(By.CSS_SELECTOR, ".age").text.endswith("s ago (on demand)")
        rows = deletion.find_elements(By.CSS_SELECTOR, "table.steps tr.step")
        assert rows and not failed_rows(deletion)
        request_ids = rows[0].find_element(By.CSS_SELECTOR, ".request-ids").text
        assert len(request_ids) == 32
        other = section(browser, "test_overwrite")
        assert other.find_element(By.CSS_SELECTOR, ".verdict").text == "never run"


def test_a_failing_step_is_highlighted_with_expected_and_actual(
    browser: WebDriver, serve_page: ServePage
) -> None:
    open_page(browser, serve_page(DeleteStillServedKV(), "http://kv.example:3000"))

    deletion = run_now(browser, "test_deletion")
    screenshot(browser, "failed")

    assert deletion.find_element(By.CSS_SELECTOR, ".verdict").text == "FAILED"
    [failed] = failed_rows(deletion)  # shown without a click: a failed result starts open
    assert "after the delete" in failed.find_element(By.CSS_SELECTOR, ".step-name").text
    assert failed.find_element(By.CSS_SELECTOR, ".expected").text == "not found"
    assert failed.find_element(By.CSS_SELECTOR, ".actual").text.startswith("found b'deleteme-")
    passed = deletion.find_element(By.CSS_SELECTOR, "table.steps tr.step-passed")
    highlight = failed.value_of_css_property("background-color")
    assert highlight == "rgba(255, 235, 233, 1)"
    assert passed.value_of_css_property("background-color") != highlight


def test_markup_from_the_kvservice_is_shown_as_text(
    browser: WebDriver, serve_page: ServePage
) -> None:
    open_page(browser, serve_page(ServesHTMLKV(), "http://kv.example:3000"))

    deletion = run_now(browser, "test_deletion")
    screenshot(browser, "escaped")

    first = failed_rows(deletion)[0]
    actual = first.find_element(By.CSS_SELECTOR, ".actual")
    assert "<script>pwned=1</script><img src=x onerror=pwned=2>" in actual.text
    assert actual.find_elements(By.XPATH, ".//*") == []  # text only, no element made of it
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    assert browser.execute_script("return typeof window.pwned") == "undefined"
