"""The page in a real browser (headless Chromium through Selenium): type a query, see the expected
top result, open its explanation, take a screenshot. Skipped when Chromium is not installed.

``TOKENFLOW_SCREENSHOT=docs/serve.png pytest tests/serve/test_browser.py`` also writes the
README's screenshot."""

from __future__ import annotations

import os
import shutil

import pytest

from tokenflow import get_aligner
from tokenflow.index import Searcher
from tokenflow.serve import create_app
from tokenflow.serve.app import serve_in_thread

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver): "
                "the browser test is skipped", allow_module_level=True)
pytest.importorskip("selenium")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    try:
        yield drv
    finally:
        drv.quit()


def test_search_and_explain_in_the_page(collection, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    query = collection.split.texts[4]
    expected = Searcher(collection.index, model=collection.model, aligner=get_aligner("tokenflow")).search(query, k=5)
    with serve_in_thread(create_app(collection.index, collection.model_dir)) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "ready")
        browser.find_element(By.ID, "query").send_keys(query)
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys("5")
        browser.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".column .result")) == 10)
        cols = browser.find_elements(By.CSS_SELECTOR, ".column")
        assert [c.get_attribute("data-plan") for c in cols] == ["tokenflow", "max-avg"]
        shown = [r.get_attribute("data-id") for r in cols[0].find_elements(By.CSS_SELECTOR, ".result")]
        assert shown == expected[0].ids  # the expected top result first, then the rest in order
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"))
        first = cols[0].find_element(By.CSS_SELECTOR, ".result")
        first.find_element(By.CSS_SELECTOR, "button.why").click()
        wait.until(lambda d: d.find_element(By.ID, "heat").get_attribute("data-drawn") == "1")
        words = [w.text for w in browser.find_elements(By.CSS_SELECTOR, "#words span")]
        assert words[0] == "<bos>" and " ".join(words[1:-1]) == query.lower()
        assert len(browser.find_elements(By.CSS_SELECTOR, "#pairs tbody tr")) == 6
        assert "why" in browser.find_element(By.ID, "status").text
        shot = tmp_path / "serve.png"
        browser.save_screenshot(str(shot))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert shot.stat().st_size > 10_000
    assert not errors, errors  # a script error or a Content-Security-Policy violation would show here
    if os.environ.get("TOKENFLOW_SCREENSHOT"):
        shutil.copy(shot, os.environ["TOKENFLOW_SCREENSHOT"])
