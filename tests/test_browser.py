"""A real browser on the dashboard: headless Debian Chromium, driven by Selenium through
/usr/bin/chromedriver (Selenium Manager never downloads anything here).

Skips where Chromium or its driver is missing, except under CI=true, where that fails.
"""
from __future__ import annotations

import re
import shutil

import optuna
import pytest

from reports.trial_data import artifact_id, one_line
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
    picture_id = artifact_id(first, "first_layer.png")   # Optuna links it to the trial
    pruned, failed = add_pruned_and_failed_trials(study, first)

    server = DashboardServer(dashboard_app(storage), "127.0.0.1", 0).start()
    try:
        root = server.url.rsplit("/dashboard", 1)[0]
        picture_url = f"{root}/artifacts/{study._study_id}/{first._trial_id}/{picture_id}"
        browser.set_window_size(1400, 900)   # pixels: a laptop's browser window
        browser.get(f"{root}/dashboard/studies/{study._study_id}/trials?numbers={first.number}")
        wait = WebDriverWait(browser, WAIT_SECONDS)
        page_text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
        wait.until(lambda _: "4 Trials" in page_text())
        assert "browser-watch" in page_text()
        assert f"Trial {first.number} (trial_id={first._trial_id})" in page_text()

        picture = wait.until(lambda b: next(
            (img for img in b.find_elements(By.TAG_NAME, "img")
             if img.get_attribute("src") == picture_url), False))
        wait.until(lambda b: b.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", picture))
        # The user attributes read at a glance: the page is no wider than the window (a
        # 910-character `curves` attribute made it 7,870 px in a 1,400 px window), and the
        # box of user attributes shows every one without scrolling (17 rows scrolled).
        wait.until(lambda _: "max_val_acc" in page_text())
        assert_user_attributes_fit(browser, first)
        assert not re.search(r"^curves ", page_text(), re.M) and "test_acc" in page_text()
        for name in ("acc_curves.svg", "loss_curves.svg"):   # the trial's curves, drawn
            curves_url = (f"{root}/artifacts/{study._study_id}/{first._trial_id}/"
                          f"{artifact_id(first, name)}")
            curves = wait.until(lambda b: next(
                (img for img in b.find_elements(By.TAG_NAME, "img")
                 if img.get_attribute("src") == curves_url), False))
            wait.until(lambda b: b.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth == 400", curves))
        browser.execute_script("arguments[0].scrollIntoView()", picture)
        shot = tmp_path / "dashboard-trial-first-layer.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000  # bytes: a blank page compresses to far less
        print(f"screenshot: {shot}")

        for other, reason in ((pruned, "value_note"), (failed, "fail_reason")):
            browser.get(f"{root}/dashboard/studies/{study._study_id}/trials"
                        f"?numbers={other.number}")
            wait.until(lambda _: f"Trial {other.number} (trial_id" in page_text()
                       and reason in page_text())
            assert_user_attributes_fit(browser, other)
    finally:
        server.stop()


def add_pruned_and_failed_trials(study: optuna.Study, like: optuna.trial.FrozenTrial):
    """A trial pruned at epoch 3 with the longest reason the median pruner words and the line
    on its value, and one failed out of memory, its reason as search/objective.py records it."""
    reason = ("pruned at epoch 3: best val acc 0.2630 < median 0.2800 of 12 complete trials "
              "at epoch 3")
    value = ("Value 0.248 is epoch 3's val acc: Optuna keeps a pruned trial's last; its best: "
             "0.263, epoch 2")   # as search/objective.py words it, at its longest
    attrs = {k: v for k, v in like.user_attrs.items() if not k.startswith("test_")}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params=like.params,
        distributions=like.distributions, intermediate_values={1: 0.2, 2: 0.263, 3: 0.248},
        user_attrs={**attrs, "prune_reason": reason, "value_note": value}))
    memory = ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
              "total capacity of 79.19 GiB of which 1.06 GiB is free. " * 3)
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, params=like.params,
        distributions=like.distributions,
        user_attrs={"model_size": attrs["model_size"], "fail_reason": one_line(memory)}))
    return study.trials[-2:]


def assert_user_attributes_fit(browser, trial) -> None:
    """The trial page's "User Attributes" box (150 px high, overflow: auto) neither scrolls
    nor widens the page, and shows each of the trial's keys."""
    seen = browser.execute_script("""
        const label = [...document.querySelectorAll('p')]
            .find(e => e.textContent === 'User Attributes');
        const box = label.nextElementSibling, edge = box.getBoundingClientRect();
        const rows = [...box.firstElementChild.children];
        return {height: [box.scrollHeight, box.clientHeight],
                width: [box.scrollWidth, box.clientWidth],
                page: [document.documentElement.scrollWidth, window.innerWidth],
                shown: rows.filter(r => r.getBoundingClientRect().bottom <= edge.bottom + 1
                                      && r.getBoundingClientRect().right <= edge.right + 1)
                           .map(r => r.textContent.split(' ')[0])};""")
    assert seen["height"][0] <= seen["height"][1], seen     # no scrolling down
    assert seen["width"][0] <= seen["width"][1], seen       # nor sideways
    assert seen["page"][0] <= seen["page"][1], seen         # the page fits the window
    assert sorted(seen["shown"]) == sorted(trial.user_attrs), seen


def test_the_study_page_says_what_the_study_is_and_its_note_summarises_it(tmp_path, browser):
    """The study card shows each user attribute whole (the spec's JSON ran off its edge), and
    the Note tab shows the note the search wrote: its facts and the top trials as a table."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from helpers import TINY
    storage = f"sqlite:///{tmp_path / 'noted.db'}"
    assert main(["mlp", "--epochs", "2", "--trials", "3", "--study", "noted", "--storage",
                 storage, *TINY]) == 0
    study = optuna.load_study(study_name="noted", storage=storage)
    server = DashboardServer(dashboard_app(storage), "127.0.0.1", 0).start()
    try:
        browser.set_window_size(1400, 3000)
        browser.get(f"{server.url}/studies/{study._study_id}")
        wait = WebDriverWait(browser, WAIT_SECONDS)
        page_text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
        wait.until(lambda _: "summary in the Note tab" in page_text())
        # The card's table is wider than the card (min-width 650 px in a ~600 px card): a
        # value's text is cut where it runs past the card's right edge.
        card = browser.execute_script("""
            const h = [...document.querySelectorAll('h6')]
                .find(e => e.textContent === 'Study User Attributes');
            const box = h.parentElement.querySelector('.MuiTableContainer-root');
            const edge = box.getBoundingClientRect().right;
            const cells = [...box.querySelectorAll('tbody td')];
            const right = cell => { const range = document.createRange();
                                    range.selectNodeContents(cell);
                                    return range.getBoundingClientRect().right; };
            return {cut: cells.filter(c => right(c) > edge + 1).map(c => c.textContent),
                    keys: cells.filter((c, i) => i % 2 == 0).map(c => c.textContent)};""")
        assert card["cut"] == [], card                                # every value whole
        assert sorted(card["keys"]) == ["about", "budget", "data_sizes", "runs",
                                        "target_trials"], card       # one page: 5 rows
        browser.get(f"{server.url}/studies/{study._study_id}/note")
        wait.until(lambda _: "Top 3 by max validation accuracy" in page_text())
        text = page_text()
        assert "MLP on synthetic images" in text and "3 complete: 3 trials." in text
        rows = browser.find_elements(By.CSS_SELECTOR, "table tbody tr")   # rendered Markdown
        assert len(rows) == 3, text
        assert "write your own notes below this line" in text
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


def test_loss_curves_fill_the_plot_beside_trials_pruned_at_a_huge_loss(tmp_path, browser,
                                                                        monkeypatch):
    """11 of 30 trials pruned after epoch 1 at loss 24.75 left the 19 other curves in the
    bottom 8% of the plot: they now span most of its height, and the 11 are drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from reports.page import write_plots
    from test_reports import pruned_after_one_epoch_study

    url = f"sqlite:///{tmp_path / 'pruned.db'}"
    pruned_after_one_epoch_study(storage=url, name="pruned")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-browser"))  # HTML only: faster
    write_plots(url, "pruned", tmp_path / "figs")
    browser.set_window_size(900, 600)
    for name in ("curves_train_loss", "curves_val_loss"):
        browser.get((tmp_path / "figs" / f"{name}.html").as_uri())
        WebDriverWait(browser, WAIT_SECONDS).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, ".nsewdrag"))
        seen = browser.execute_script("""
            const plot = document.querySelector('.draglayer .nsewdrag').getBoundingClientRect();
            const lines = [...document.querySelectorAll('g.scatterlayer g.trace path.js-line')]
                .map(p => p.getBoundingClientRect()).filter(b => b.height > 0);
            const top = Math.min(...lines.map(b => b.top));
            const bottom = Math.max(...lines.map(b => b.bottom));
            const points = [...document.querySelectorAll('g.scatterlayer path.point')]
                .filter(p => { const b = p.getBoundingClientRect();
                               return b.width > 3 && b.top >= plot.top - 10; }).length;
            return {share: (bottom - top) / plot.height, points: points,
                    note: document.querySelector('g.annotation') !== null};""")
        assert seen["share"] > 0.6, (name, seen)     # the curves fill the plot's height
        assert seen["points"] >= 11 + 5 * 8, (name, seen)   # the 11 markers, the best 5's
        assert seen["note"], name


def test_the_report_page_fits_an_800_px_window(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from test_reports import report_study

    url = f"sqlite:///{tmp_path / 'r.db'}"
    report_study(url)
    page = tmp_path / "report.html"
    assert main(["report", "mlp", "--format", "html", "-o", str(page), "--storage", url]) == 0
    browser.set_window_size(800, 1000)
    browser.get(page.as_uri())
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, ".nsewdrag"))
    seen = browser.execute_script("""
        const box = document.querySelector('.table-box').getBoundingClientRect();
        const table = document.querySelector('.table-box table');
        const align = name => getComputedStyle([...document.querySelectorAll('th')]
            .find(th => th.textContent === name)).textAlign;
        return {page: document.documentElement.scrollWidth, window: window.innerWidth,
                box: box.right, table: table.scrollWidth, boxWidth: box.width,
                optimizer: align('optimizer'), acc: align('max val acc'),
                headings: [...document.querySelectorAll('figure > h3')].map(h => h.textContent),
                header: [...document.querySelectorAll('ul.header li')].map(li => [li.textContent,
                    li.getBoundingClientRect().right]),
                keys: [...document.querySelectorAll('g.legend text.legendtext')]
                    .map(t => t.textContent),
                captions: [...document.querySelectorAll('figure > p.caption')]
                    .filter(p => p.getBoundingClientRect().height > 0).length};""")
    assert seen["page"] <= seen["window"], seen          # no sideways scrolling of the page
    assert seen["box"] <= 800, seen                       # the table's box fits the window
    assert seen["optimizer"] == "left" and seen["acc"] == "right", seen
    assert len(seen["headings"]) == seen["captions"] == 7, seen
    assert seen["headings"][0] == "Validation accuracy per epoch", seen   # the objective first
    header = [text for text, right in seen["header"]]
    assert [line.split(":")[0] for line in header] == ["Model", "Search", "Data", "Trials"]
    assert all(right <= 800 for _, right in seen["header"]), seen    # wrapped, never cut
    assert header[2].startswith("Data: CIFAR-10 (cifar10-jpeg.tar.gz), 2,000 train")
    assert "a dot: pruned after epoch 1" in seen["keys"], seen["keys"]   # the legend's key
    print(f"800 px window: table {seen['table']} px in a box of {seen['boxWidth']:.0f} px")
