"""The web dashboard (`gyrus dashboard`, `/_gyrus/ui`) in Debian's headless Chromium, driven by
Selenium through chromedriver: signing in with the one-time link, the deployed APIs, a drawn
chart and the tracker's, the logs tail, and what a signed-in browser still cannot do. A
screenshot is kept in target/test-artifacts/dashboard.png (GYRUS_TEST_ARTIFACTS elsewhere).
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from e2e_helpers import REPO, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("GYRUS_TEST_ARTIFACTS", REPO / "target" / "test-artifacts"))

PREDICTOR = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"label": payload.get("label", "setosa")}
"""


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            f"the dashboard tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
            "scripts/test.sh installs them (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def traffic(gyrus, project):
    proj = project("dash-iris", PREDICTOR, api={"tracker": {"key": "label", "model_type": "classification"}})
    gyrus.deploy_ok(proj, "dash-iris")
    other = project("dash-other", PREDICTOR)
    gyrus.deploy_ok(other, "dash-other")
    for i in range(30):
        r = gyrus.post("/dash-iris", json={"label": ["setosa", "versicolor", "virginica"][i % 3]})
        assert r.status_code == 200, r.text
        time.sleep(0.05)
    return gyrus


def sign_in_link(g) -> str:
    proc = g.ok("dashboard", "--no-open")
    url = proc.stdout.strip().splitlines()[-1]
    assert url.startswith(f"{g.base_url}/_gyrus/ui/login?code="), proc.stdout
    return url


def wait_js(driver, what: str, script: str, timeout: float = 20):
    wait_until(lambda: driver.execute_script(script), timeout, what=what)


def test_the_page_needs_a_sign_in(traffic):
    g = traffic
    r = g.http.get(f"{g.base_url}/_gyrus/ui", timeout=10)
    assert r.status_code == 401 and "gyrus dashboard" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    r = g.http.get(f"{g.base_url}/_gyrus/ui/login?code=guessed", timeout=10, allow_redirects=False)
    assert r.status_code == 401
    # A link works once.
    url = sign_in_link(g)
    first = g.http.get(url, timeout=10, allow_redirects=False)
    assert first.status_code == 303, first.text
    location = first.headers["location"]
    assert location.startswith("/_gyrus/ui#session="), location
    api_key = location.split("#session=", 1)[1]
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("gyrus_page=") and "Path=/_gyrus/ui;" in cookie, cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    assert g.http.get(url, timeout=10, allow_redirects=False).status_code == 401
    page_cookie = cookie.split(";")[0]
    # The cookie loads the page, nothing else: it reaches every port of this host.
    assert g.http.get(f"{g.base_url}/_gyrus/ui", headers={"Cookie": page_cookie}, timeout=10).status_code == 200
    as_cookie = g.http.get(f"{g.base_url}/_gyrus/v1/apis", headers={"Cookie": page_cookie}, timeout=10)
    assert as_cookie.status_code == 401, as_cookie.text
    # The API key (a header the page's script sets) reads the control API, and changes nothing.
    session = {"X-Gyrus-Session": api_key}
    reads = g.http.get(f"{g.base_url}/_gyrus/v1/apis", headers=session, timeout=10)
    assert reads.status_code == 200 and {a["name"] for a in reads.json()} >= {"dash-iris", "dash-other"}
    writes = g.http.post(
        f"{g.base_url}/_gyrus/v1/shutdown",
        headers={**session, "Content-Type": "application/json"},
        timeout=10,
    )
    assert writes.status_code == 401, writes.text
    deletes = g.http.delete(
        f"{g.base_url}/_gyrus/v1/apis/dash-other",
        headers={**session, "Content-Type": "application/json"},
        timeout=10,
    )
    assert deletes.status_code == 401, deletes.text
    # The page key is no API key.
    wrong = g.http.get(f"{g.base_url}/_gyrus/v1/apis", headers={"X-Gyrus-Session": page_cookie.split("=", 1)[1]}, timeout=10)
    assert wrong.status_code == 401
    # A cross-site request carrying the key is refused too.
    cross = g.http.get(f"{g.base_url}/_gyrus/v1/apis", headers={**session, "Origin": "https://evil.example"}, timeout=10)
    assert cross.status_code == 403
    assert g.health() is not None


def test_dashboard_shows_the_apis_and_their_charts(traffic, browser):
    g = traffic
    driver = browser
    driver.get(sign_in_link(g))
    assert driver.current_url.rstrip("/").endswith("/_gyrus/ui") or "/_gyrus/ui#" in driver.current_url
    wait_js(driver, "the dashboard's first render", "return document.body.dataset.ready === '1'")
    names = driver.execute_script("return [...document.querySelectorAll('#apis tr[data-api]')].map(r => r.dataset.api)")
    assert set(names) >= {"dash-iris", "dash-other"}, names
    # The page key's cookie is out of reach of scripts; the API key left the address bar.
    assert "gyrus_page" not in driver.execute_script("return document.cookie")
    assert "session=" not in driver.execute_script("return location.href")

    driver.execute_script("document.querySelector('#apis tr[data-api=\"dash-iris\"]').click()")
    wait_js(
        driver,
        "the requests chart drawn with points",
        "const c = document.querySelector('[data-chart=\"requests\"]');"
        "return c && Number(c.dataset.points) > 0",
    )
    # Something was drawn on the chart's canvas: pixels that are neither blank nor background.
    drawn = driver.execute_script(
        """
        const canvas = document.querySelector('[data-chart="requests"] canvas');
        if (!canvas) return -1;
        const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i + 3] > 0 && !(d[i] > 240 && d[i + 1] > 240 && d[i + 2] > 240)) n++;
        }
        return n;
        """
    )
    assert drawn > 100, f"the requests chart's canvas looks blank ({drawn} drawn pixels)"
    wait_js(
        driver,
        "the tracker chart",
        "const c = document.querySelector('[data-chart=\"tracker\"]');"
        "return c && !c.hidden && Number(c.dataset.points) > 0",
    )
    text = driver.execute_script("return document.body.innerText")
    for expected in ("dash-iris", "setosa", "versicolor", "virginica", "live"):
        assert expected in text, (expected, text[:3000])
    wait_js(driver, "the logs tail", "return document.getElementById('logs').textContent.length > 0")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # No script errors, no CSP violations.
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
