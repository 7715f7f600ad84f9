"""A real browser on the dashboard: headless Debian Chromium, driven by Selenium through
/usr/bin/chromedriver (Selenium Manager never downloads anything here).

Skips where Chromium or its driver is missing, except under CI=true, where that fails.
"""
from __future__ import annotations

import shutil

import optuna
import pytest

from search.cli import main
from search.dashboard import DashboardServer, dashboard_app

from helpers import skip_or_fail

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium dials out (updates, sync, QUIC), which a
# closed network refuses, slowly.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")
WAIT_SECONDS = 30  # a 2-core machine renders the dashboard's bundle in a few seconds


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    message = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
    skip_or_fail(message)


@pytest.fixture
def browser(tmp_path):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_shows_study_trials_and_first_layer_picture(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    storage = f"sqlite:///{tmp_path / 'watched.db'}"
    assert main(["mlp", "--data", "synthetic", "--epochs", "1", "--trials", "2",
                 "--pruner", "none", "--study", "browser-watch", "--storage", storage]) == 0
    study = optuna.load_study(study_name="browser-watch", storage=storage)
    first = study.trials[0]
    picture_id = first.user_attrs["artifact:first_layer.png"]

    server = DashboardServer(dashboard_app(storage), "127.0.0.1", 0).start()
    try:
        root = server.url.rsplit("/dashboard", 1)[0]
        picture_url = f"{root}/artifacts/{study._study_id}/{first._trial_id}/{picture_id}"
        browser.get(f"{root}/dashboard/studies/{study._study_id}/trials?numbers={first.number}")
        wait = WebDriverWait(browser, WAIT_SECONDS)
        page_text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
        wait.until(lambda _: "2 Trials" in page_text())
        assert "browser-watch" in page_text()
        assert f"Trial {first.number} (trial_id={first._trial_id})" in page_text()

        picture = wait.until(lambda b: next(
            (img for img in b.find_elements(By.TAG_NAME, "img")
             if img.get_attribute("src") == picture_url), False))
        wait.until(lambda b: b.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", picture))
        browser.execute_script("arguments[0].scrollIntoView()", picture)
        shot = tmp_path / "dashboard-trial-first-layer.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000  # bytes: a blank page compresses to far less
        print(f"screenshot: {shot}")
    finally:
        server.stop()


def test_a_30_trial_curve_figure_leaves_most_of_its_width_to_the_plot(tmp_path, browser,
                                                                       monkeypatch):
    """In a dashboard card (~600 px) and a full window, the legend sits below the plot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from reports.page import write_plots
    from test_reports import thirty_trial_study  # the fake-study helpers live there

    url = f"sqlite:///{tmp_path / 'thirty.db'}"
    thirty_trial_study(storage=url, name="thirty")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-browser"))  # HTML only: faster
    write_plots(url, "thirty", tmp_path / "figs")
    for width in (600, 1400):  # pixels: a half-width dashboard card, a full window
        browser.set_window_size(width, 560)
        browser.get((tmp_path / "figs" / "curves_val_loss.html").as_uri())
        WebDriverWait(browser, WAIT_SECONDS).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, ".nsewdrag"))
        boxes = browser.execute_script("""
            const box = s => document.querySelector(s).getBoundingClientRect();
            return {figure: box('.main-svg'), plot: box('.draglayer .nsewdrag'),  // the plot area
                    legend: box('g.legend'),
                    traces: document.querySelectorAll('g.scatterlayer g.trace').length};""")
        share = boxes["plot"]["width"] / boxes["figure"]["width"]
        assert share >= 0.6, (width, boxes)
        assert boxes["figure"]["width"] >= 0.9 * width - 40, boxes   # it fills the window
        assert boxes["legend"]["top"] >= boxes["plot"]["bottom"], boxes  # below, not beside
        assert boxes["traces"] >= 30, boxes
        print(f"{width} px window: plot area {share:.0%} of the figure's width")


def test_dashboard_names_the_objective_and_shows_the_figures_in_reading_order(tmp_path,
                                                                              browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from reports.dashboard_figures import register_dashboard_figures
    from test_reports import thirty_trial_study

    storage = f"sqlite:///{tmp_path / 'named.db'}"
    study = thirty_trial_study(storage=storage, name="named")
    ids = register_dashboard_figures(study)
    server = DashboardServer(dashboard_app(storage), "127.0.0.1", 0).start()
    try:
        browser.set_window_size(1400, 2400)
        browser.get(f"{server.url}/studies/{study._study_id}")
        wait = WebDriverWait(browser, WAIT_SECONDS)
        plots = lambda b: [e.get_attribute("id") for e in b.find_elements(  # noqa: E731
            By.CSS_SELECTOR, "[id^='user-defined-plot:']")]
        wait.until(lambda b: len(plots(b)) == len(ids))
        assert plots(browser) == [f"user-defined-plot:{i}" for i in ids]  # in reading order
        wait.until(lambda b: "val_acc" in b.find_element(By.TAG_NAME, "body").text)
        assert "Objective 0" not in browser.find_element(By.TAG_NAME, "body").text
    finally:
        server.stop()
