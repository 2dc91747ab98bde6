"""The README's screenshot of `grunet serve` (docs/serve.png): a run of the tutorial recipe on the bundled
sample, the page in headless Chromium (chromium, chromium-driver and selenium), one test digit read.

    python scripts/serve_screenshot.py [RUN_DIR]     # trains runs/serve-demo (3,000 steps) when none is given
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from grunet.cli import main
from grunet.serve import TraceService, make_server


def run() -> None:
    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/serve-demo")
    if not (run_dir / "best.pt").is_file():
        assert main(["train", "--steps", "3000", "--out", str(run_dir), "--progress", "lines"]) == 0
    server = make_server(TraceService.load(str(run_dir)), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#digits canvas")) == 10)
        browser.find_elements(By.CSS_SELECTOR, "#digits canvas")[7].click()
        wait.until(lambda b: b.find_element(By.ID, "prediction").text.startswith("Prediction:"))
        browser.execute_script("document.getElementById('scrub').value = 18;"
                               "document.getElementById('scrub').dispatchEvent(new Event('input'));")
        time.sleep(0.5)
        Path("docs").mkdir(exist_ok=True)
        browser.save_screenshot("docs/serve.png")
        print("wrote docs/serve.png")
    finally:
        browser.quit()
        server.shutdown()


if __name__ == "__main__":
    run()
