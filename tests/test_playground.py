"""The browser playground at `/`, driven in headless Chromium (Debian's chromium and
chromium-driver, through Selenium): the page loads offline from the package, streams a chat
reply token by token, applies a regex constraint, shows a schema compiler's error inline, keeps
the API key in sessionStorage only, and shows the engine's live numbers.
(`experiments/playground_screenshot.py` takes README's screenshot with SmolLM2.)"""

from __future__ import annotations

import re
import shutil

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from jaxserve import LLM
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from tests.http_server import running

KEY = "playground-key"


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "the playground tests need Debian's chromium and chromium-driver "
            "(`make test` installs them; apt-get install chromium chromium-driver)"
        )
    return browser, driver


@pytest.fixture(scope="module")
def server(tiny_gguf):
    llm = LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=256)
    engine = AsyncEngine(llm.engine)
    config = ServerConfig(model_names=("tiny", "tiny-alias"), api_key=KEY)
    with running(create_app(config, Served.from_llm(llm, engine))) as url:
        yield url
    engine.shutdown()


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                 "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _wait(driver, seconds: float = 60) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.05)


def _open(browser, server: str) -> None:
    browser.get(server + "/")
    key = browser.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys(KEY)  # on "change" the page stores the key and lists the models
    browser.execute_script("document.getElementById('api-key').dispatchEvent(new Event('change'))")
    _wait(browser).until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)


def _set(browser, element_id: str, value: str) -> None:
    element = browser.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def _send(browser, text: str) -> None:
    browser.find_element(By.ID, "prompt").send_keys(text)
    browser.find_element(By.ID, "send").click()


def _last_reply(browser):
    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]


def test_the_page_is_served_without_the_key_and_the_api_still_needs_it(server):
    with httpx.Client(base_url=server) as client:
        page = client.get("/")
        assert page.status_code == 200 and "jaxserve playground" in page.text
        script = client.get("/playground/playground.js")
        assert script.status_code == 200 and "sessionStorage" in script.text
        assert "http://" not in page.text and "https://" not in page.text  # no CDN: offline
        assert client.get("/v1/models").status_code == 401


def test_chat_streams_tokens_coloured_by_probability(browser, server):
    _open(browser, server)
    # the key lives in sessionStorage, never in localStorage or a cookie
    assert browser.execute_script("return sessionStorage.getItem('jaxserve.apiKey')") == KEY
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.get_cookies() == []
    _set(browser, "max_tokens", "48")
    _set(browser, "temperature", "0")
    _send(browser, "Tell me about the sea.")
    _wait(browser).until(lambda d: _last_reply(d).get_attribute("data-finish"))
    tokens = _last_reply(browser).find_elements(By.CSS_SELECTOR, ".tok")
    assert 1 <= len(tokens) <= 48
    assert int(_last_reply(browser).get_attribute("data-chunks")) >= 3  # arrived streamed
    for token in tokens:
        p = float(token.get_attribute("data-p"))
        assert 0.0 < p <= 1.0
        assert token.get_attribute("title").startswith("p = ")  # top alternatives on hover
        assert "hsl(" in token.get_attribute("style") or "rgb(" in token.get_attribute("style")
    finish = browser.find_element(By.ID, "finish").text
    assert finish.startswith("finish: ") and ("length" in finish or "stop" in finish)


def test_a_regex_constraint_shapes_the_reply(browser, server):
    _open(browser, server)
    browser.find_element(By.ID, "clear").click()
    Select(browser.find_element(By.ID, "constraint-kind")).select_by_value("regex")
    _set(browser, "constraint-text", "(yes|no), [0-9]{2}")
    _set(browser, "max_tokens", "32")
    _set(browser, "temperature", "0.9")
    _set(browser, "seed", "7")
    _send(browser, "Answer me.")
    _wait(browser).until(lambda d: _last_reply(d).get_attribute("data-finish"))
    text = _last_reply(browser).text
    assert re.fullmatch(r"(yes|no), [0-9]{2}", text), text
    assert "stop" in browser.find_element(By.ID, "finish").text


def test_an_invalid_schema_shows_the_compilers_error_inline(browser, server):
    _open(browser, server)
    browser.find_element(By.ID, "clear").click()
    Select(browser.find_element(By.ID, "constraint-kind")).select_by_value("json_schema")
    _set(browser, "constraint-text", '{"type": "object", "minProperties": "three"}')
    _send(browser, "Give me an object.")
    error = browser.find_element(By.ID, "constraint-error")
    _wait(browser).until(lambda d: error.is_displayed() and error.text)
    assert "minProperties" in error.text or "schema" in error.text.lower()
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")  # nothing was sent on
    _set(browser, "constraint-text", "{not json")
    _send(browser, "Again.")
    _wait(browser).until(lambda d: "not valid JSON" in error.text)


def test_live_numbers_and_a_screenshot(browser, server, tmp_path):
    _open(browser, server)
    browser.find_element(By.ID, "clear").click()
    Select(browser.find_element(By.ID, "constraint-kind")).select_by_value("")
    _set(browser, "max_tokens", "24")
    _set(browser, "temperature", "0.7")
    _send(browser, "Write a line about waves.")
    _wait(browser).until(lambda d: _last_reply(d).get_attribute("data-finish"))
    # the panel polls /metrics: idle again after the reply, with a throughput figure
    _wait(browser).until(lambda d: d.find_element(By.ID, "m-running").text == "0")
    assert browser.find_element(By.ID, "m-waiting").text == "0"
    assert browser.find_element(By.ID, "m-pages").text.isdigit()
    _wait(browser).until(lambda d: d.find_element(By.ID, "m-tps").text != "-")
    shot = tmp_path / "playground.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
