"""The demo day's end in the head-office console: log in as the demo's admin (the login
form, its CSRF token and all, as a browser would), read the day's report, the fraud desk and
the fleet, print what each page shows, and keep the pages (and, where Debian's Chromium is
installed, screenshots of them) in the demo's output directory."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from pathlib import Path

import requests

from demo.tools import say

CHROMIUM = Path("/usr/bin/chromium")
PAGES = (("report", "/report?from={day}&to={day}"), ("flags", "/flags"), ("fleet", "/fleet"))


def _text(page: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    return html.unescape(found.group(1)).strip() if found else "?"


def log_in(url: str, name: str, password: str) -> requests.Session:
    s = requests.Session()
    form = s.get(url + "/login", timeout=10)
    token = re.search(r'name="csrftoken" value="([^"]+)"', form.text)
    if token is None:
        raise ValueError("the console's login form has no CSRF token")
    r = s.post(
        url + "/login",
        data={"name": name, "password": password, "csrftoken": token.group(1)},
        timeout=30,
    )
    if r.status_code != 200 or 'id="viewer"' not in r.text:
        raise ValueError(f"logging in to the console failed ({r.status_code})")
    return s


def show_day(url: str, password: str, out: Path) -> None:
    """Print the day as head office sees it in the console; pages go to out/console/."""
    day = datetime.now(UTC).date().isoformat()  # the demo runs on the real clock
    s = log_in(url, "admin", password)
    folder = out / "console"
    folder.mkdir(exist_ok=True)
    pages: dict[str, str] = {}
    for name, path in PAGES:
        r = s.get(url + path.format(day=day), timeout=30)
        r.raise_for_status()
        pages[name] = r.text
        (folder / f"{name}.html").write_text(r.text, encoding="utf-8")
    report, flags, fleet = pages["report"], pages["flags"], pages["fleet"]
    say("console", f"{url}/report?from={day}&to={day} (log in as admin):")
    say(
        "",
        f"    today: {_text(report, 'total-redemptions')} redemptions, "
        f"{_text(report, 'total-discount')} off, {_text(report, 'total-refused')} refused",
    )
    kinds = re.findall(r'<tr id="flag-\d+">\s*<td>.*?</td><td>([^<]*)</td>', flags, re.S)
    listed = f" ({', '.join(sorted(set(kinds)))})" if kinds else ""
    say("", f"    fraud desk: {len(kinds)} open flags{listed}")
    terminals = re.findall(r'id="terminal-([^"]+)"', fleet)
    say("", f"    fleet: {len(terminals)} terminals ({', '.join(terminals)})")
    shots = screenshots(url, password, folder, day)
    say("", f"    pages kept in {folder}/" + (f" with {shots} screenshots" if shots else ""))


def screenshots(url: str, password: str, folder: Path, day: str) -> int:
    """The three pages as a person sees them, at 1366x768; none without Chromium."""
    if not CHROMIUM.exists():
        return 0
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(url + "/login")
            page.fill("#name", "admin")
            page.fill("#password", password)
            page.click("#login")
            page.locator("#viewer").wait_for()
            for name, path in PAGES:
                page.goto(url + path.format(day=day))
                page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        finally:
            browser.close()
    return len(PAGES)
