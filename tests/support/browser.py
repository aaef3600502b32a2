"""A headless Chromium for the page at / (Debian's chromium + chromium-driver, driven by Selenium)."""

from __future__ import annotations

import shutil
from pathlib import Path

# Debian's packages (apt-get install chromium chromium-driver); `make test` installs them where apt is
# available (scripts/test-deps.sh).
# Both paths are given to Selenium explicitly, so Selenium Manager never runs (it would try to download them).
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--lang=en-US")


def browser_binaries() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


def missing_browser() -> str | None:
    """What keeps a headless Chromium from starting here, in words, or None."""
    import importlib.util

    chromium, driver = browser_binaries()
    missing = [what for what, found in (
        ("the selenium package (pip install -e '.[dev]')", importlib.util.find_spec("selenium")),
        ("chromium (apt-get install chromium)", chromium),
        ("chromedriver (apt-get install chromium-driver)", driver)) if not found]
    return "not found: " + ", ".join(missing) if missing else None


def start_chromium(profile: Path, width: int = 1280, height: int = 900):
    """A headless Chromium under chromedriver, with an empty profile in `profile` (the network stays closed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=options)


def set_viewport(driver, width: int, height: int, *, mobile: bool = False) -> None:
    """Emulate a screen of width×height CSS pixels (DevTools' device metrics): a phone with mobile=True."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def full_page_screenshot(driver, path: Path, width: int, *, mobile: bool = False, min_height: int = 600) -> Path:
    """The whole page at `width` CSS pixels, as tall as its content, saved as PNG."""
    set_viewport(driver, width, min_height, mobile=mobile)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    set_viewport(driver, width, max(height, min_height), mobile=mobile)
    driver.execute_script("return new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    driver.save_screenshot(str(path))
    return path
