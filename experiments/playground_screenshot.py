"""README's screenshot of the playground: `jaxserve serve smollm2-135m`, one chat turn in
headless Chromium (Debian's chromium and chromium-driver), saved to docs/playground.png.

    .venv/bin/python experiments/playground_screenshot.py [--out docs/playground.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

PORT = 8097


def wait_healthy(url: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("the server did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs/playground.png")
    parser.add_argument("--prompt", default="Name three animals that live in the sea.")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{PORT}"
    server = subprocess.Popen(
        [sys.executable, "-m", "jaxserve.cli", "serve", "smollm2-135m", "--port", str(PORT)]
    )
    try:
        wait_healthy(url)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--window-size=1280,820"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(url + "/")
            WebDriverWait(driver, 60).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#model option")
            )
            for field, value in (("max_tokens", "60"), ("seed", "3")):
                element = driver.find_element(By.ID, field)
                element.clear()
                element.send_keys(value)
            driver.find_element(By.ID, "prompt").send_keys(args.prompt)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 300).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-finish]")
            )
            time.sleep(2.5)  # one more /metrics poll for the live panel
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
            print(f"saved {args.out}")
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
