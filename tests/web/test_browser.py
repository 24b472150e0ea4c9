"""The console in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, installed by
``.ci/run``) driven by Selenium through both journeys, against ``cdp serve``'s app on a local port. A marketer
signs in, builds a segment, previews it, saves it and downloads its export, which holds only consented
customers; a privacy officer signs in, runs an erasure dry run, confirms it, and sees the receipt and the
register. Screenshots of each page go to ``tests/web/screenshots/`` (not committed). The API and its roles
are covered by test_api.py."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from consent import enforce

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not Path(CHROMEDRIVER).exists(),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)
SHOTS = Path(__file__).parent / "screenshots"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(world):
    import uvicorn

    from cdp.web import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(world.settings, world.users), host="127.0.0.1", port=port, log_level="warning",
                            access_log=False)  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads  # type: ignore[attr-defined]  # where this test's files land
    SHOTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:  # noqa: ANN001  (a selenium WebDriver)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, min(int(height) + 40, 2400)))
    assert driver.save_screenshot(str(SHOTS / f"{name}.png"))


def go(driver, by: str, value: str) -> None:  # noqa: ANN001
    """Click a link or button that loads a page, and wait until the old page is gone."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    for attempt in range(10):
        # The editor's live preview may replace the element between finding and clicking it: find it again.
        try:
            WebDriverWait(driver, 10).until(expected_conditions.element_to_be_clickable((by, value))).click()
            break
        except StaleElementReferenceException:
            pass
        except WebDriverException as exc:
            if "does not belong to the document" not in str(exc) or attempt == 9:
                raise
        time.sleep(0.2)
    WebDriverWait(driver, 30).until(lambda _driver: _detached(old))


def _detached(element) -> bool:  # noqa: ANN001  (a selenium WebElement)
    """True once ``element``'s page is gone. Chromium reports a node of a replaced document either as stale
    or as "does not belong to the document", depending on timing; both mean the new page is there."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def sign_in(driver, base: str, name: str, password: str) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/")
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    go(driver, By.ID, "sign-in")
    assert name in driver.find_element(By.ID, "whoami").text


def wait_for(predicate, timeout: float = 20.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_marketer_and_privacy_officer_journeys(server: str, browser, world):  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # -- marketer: sign in, build a segment, preview it, save it, export it --------------------------------
    sign_in(browser, server, world.names["marketer"], world.password)
    shot(browser, "01-overview")
    go(browser, By.LINK_TEXT, "Segments")
    assert "big_spenders" in browser.find_element(By.ID, "segments").text
    shot(browser, "02-segments")
    go(browser, By.ID, "new-segment")
    browser.find_element(By.ID, "name").send_keys("spent_100")
    browser.find_element(By.ID, "description").send_keys("Spent 100 or more in total")
    browser.find_element(By.ID, "conditions").send_keys("total_spend >= 100")

    def live_count() -> str:  # the editor's script previews as one types, before any button is pressed
        found = browser.find_elements(By.ID, "preview-customers")
        return found[0].text if found else ""

    assert wait_for(lambda: live_count() == "4")
    browser.find_element(By.CSS_SELECTOR, "input[name=fields][value=first_name]").click()
    go(browser, By.ID, "preview-button")
    assert browser.find_element(By.ID, "preview-customers").text == "4"  # Alice, Bob, Carol, Dan
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-purpose=email_marketing]")
    assert row.find_element(By.CLASS_NAME, "allowed").text == "2" and "withdrawn 1" in row.text
    shot(browser, "03-segment-editor")
    go(browser, By.ID, "save-button")
    assert browser.current_url.endswith("/segments/spent_100")
    Select(browser.find_element(By.ID, "purpose")).select_by_value("email_marketing")
    Select(browser.find_element(By.ID, "format")).select_by_value("csv")
    shot(browser, "04-segment-export")
    browser.find_element(By.ID, "export-button").click()
    files = wait_for(lambda: [p for p in browser.downloads.glob("*.csv") if p.stat().st_size])
    exported = pd.read_csv(files[0])
    con = duckdb.connect(str(world.settings.db_path), read_only=True)
    try:
        decided = enforce.decide(con, "email_marketing")
    finally:
        con.close()
    allowed = set(decided.loc[decided["excluded_because"].isna(), "customer_id"])
    assert len(exported) == 2 and set(exported["customer_id"]) <= allowed  # Alice and Dan: granted, spent 100+
    assert world.customer_of("crm", "C-2") not in set(exported["customer_id"])  # Bob withdrew
    go(browser, By.LINK_TEXT, "Exports")
    assert "spent_100" in browser.find_element(By.ID, "exports").text
    shot(browser, "05-export-register")
    go(browser, By.ID, "logout")

    # -- privacy officer: sign in, erasure dry run, confirm, receipt, register --------------------------
    sign_in(browser, server, world.names["privacy_officer"], world.password)
    go(browser, By.LINK_TEXT, "Customers")
    Select(browser.find_element(By.ID, "by")).select_by_value("email")
    browser.find_element(By.ID, "value").send_keys("Alice.Smith@gmail.com")
    go(browser, By.ID, "lookup-button")
    assert "Alice" in browser.find_element(By.ID, "profile").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#records tr")) == 5  # header + CRM, store, two web
    shot(browser, "06-customer")
    go(browser, By.LINK_TEXT, "New request")
    Select(browser.find_element(By.ID, "kind")).select_by_value("erasure")
    Select(browser.find_element(By.ID, "by")).select_by_value("email")
    browser.find_element(By.ID, "value").send_keys("dan.brown@gmail.com")
    go(browser, By.ID, "intake-button")
    request_id = browser.find_element(By.ID, "request-id").text
    assert request_id.startswith("PR-") and "store 1" in browser.find_element(By.ID, "plan").text
    shot(browser, "07-erasure-dry-run")
    browser.find_element(By.ID, "confirm").click()
    go(browser, By.ID, "erase-button")
    assert "Erasure receipt" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_element(By.ID, "request-status").text == "completed"
    assert "web:pete" in browser.find_element(By.ID, "audit").text
    shot(browser, "08-erasure-receipt")
    go(browser, By.ID, "to-register")
    register = browser.find_element(By.ID, "requests").text
    assert request_id in register and "completed" in register
    shot(browser, "09-register")
    go(browser, By.LINK_TEXT, "Overview")
    shot(browser, "10-overview-privacy")
    con = duckdb.connect(str(world.settings.db_path), read_only=True)
    try:
        left = con.execute("SELECT count(*) FROM stg_records WHERE email = 'dan.brown@gmail.com'").fetchall()[0][0]
    finally:
        con.close()
    assert left == 0
