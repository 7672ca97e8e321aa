"""The page at / in a real browser: headless Chromium (Debian package) driven by Selenium through the
system chromedriver; nothing downloads a browser or a driver (Selenium Manager is bypassed)."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'seglab[serve]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install 'seglab[test]'")
from PIL import Image  # noqa: E402

from seglab.apps.serve import ServeSettings, create_app  # noqa: E402
from serve_util import random_image, running_server, tiny_instance_segmenter, tiny_segmenter  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                                else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="headless Chromium and its driver are not installed: "
                                       "apt-get install -y chromium chromium-driver (.ci/run does it)")


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager must not reach the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()


def _severe(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("level") == "SEVERE"]


def test_page_uploads_shows_overlay_legend_and_errors(driver, tmp_path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    seg = tiny_segmenter()
    image = random_image(3, 60, 80)
    upload = tmp_path / "street.png"
    Image.fromarray(image).save(upload)
    expected = seg.predict(image)
    ids, counts = np.unique(expected, return_counts=True)
    wait = WebDriverWait(driver, 30)
    with running_server(create_app(seg, ServeSettings())) as url:
        driver.get(url + "/")
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-name"), "segnet_basic"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples button")) == 3)
        driver.find_element(By.ID, "file-input").send_keys(str(upload))
        wait.until(lambda d: d.find_element(By.ID, "overlay").get_attribute("data-state") == "done")
        assert driver.find_element(By.ID, "overlay").get_attribute("data-file") == "street.png"
        assert driver.execute_script("return document.getElementById('mask').naturalWidth") == 80

        rows = driver.find_elements(By.CSS_SELECTOR, "#legend tbody tr")
        shown = {int(r.get_attribute("data-class-id")): (r.find_element(By.CSS_SELECTOR, ".name").text,
                                                         r.find_element(By.CSS_SELECTOR, ".pct").text) for r in rows}
        assert sorted(shown) == ids.tolist()
        for cid, count in zip(ids, counts):
            name, pct = shown[int(cid)]
            assert name == seg.class_names[cid] and pct == f"{100 * count / expected.size:.1f} %"
        assert re.search(r"Model \d+\.\d ms", driver.find_element(By.ID, "timing").text)
        assert not driver.find_element(By.ID, "uncertainty").is_displayed()  # no dropout, no heat maps

        mask = driver.find_element(By.ID, "mask")
        ActionChains(driver).move_to_element_with_offset(mask, 10, 5).perform()  # right of and below the centre
        hover = driver.find_element(By.ID, "hover-class").text
        x, y, name = re.fullmatch(r"\((\d+), (\d+)\): (.+)", hover).groups()
        assert name == seg.class_names[expected[int(y), int(x)]]

        driver.execute_script("document.getElementById('opacity').value = 20;"
                              "document.getElementById('opacity').dispatchEvent(new Event('input'));")
        assert driver.execute_script("return document.getElementById('mask').style.opacity") == "0.2"
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 1000
        assert _severe(driver.get_log("browser")) == []  # no console error while loading and segmenting

        junk = tmp_path / "notes.txt"
        junk.write_text("this is not an image\n")
        driver.find_element(By.ID, "file-input").send_keys(str(junk))
        wait.until(lambda d: "error" in d.find_element(By.ID, "message").get_attribute("class"))
        message = driver.find_element(By.ID, "message").text
        assert message.startswith("Error 415") and "not an image" in message and "Accepted: a PNG" in message
        driver.save_screenshot(str(tmp_path / "page_error.png"))
        # The only console entry allowed now is Chromium's own note of the deliberately refused upload.
        severe = _severe(driver.get_log("browser"))
        assert all(e.get("source") == "network" and "415" in e["message"] for e in severe), severe


def test_sample_button_and_uncertainty_maps_for_a_dropout_model(driver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    with running_server(create_app(tiny_segmenter("bayesian_segnet_basic"), ServeSettings())) as url:
        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "mc-option").is_displayed())
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples button")) == 3)
        mc = driver.find_element(By.ID, "mc-samples")
        mc.clear()
        mc.send_keys("3")
        driver.find_element(By.CSS_SELECTOR, "#samples button[data-sample='street-2']").click()
        wait.until(lambda d: d.find_element(By.ID, "overlay").get_attribute("data-file") == "street-2.png")
        assert driver.find_element(By.ID, "uncertainty").is_displayed()
        wait.until(lambda d: d.execute_script("return document.getElementById('entropy').naturalWidth") == 240)
        assert driver.execute_script("return document.getElementById('mutual-info').naturalHeight") == 180
        assert _severe(driver.get_log("browser")) == []


def test_instance_model_shows_overlay_and_instance_table(driver, tmp_path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    seg = tiny_instance_segmenter(score_threshold=0.0)  # keeps every detection of the random model
    image = random_image(4, 48, 64)
    upload = tmp_path / "cells.png"
    Image.fromarray(image).save(upload)
    found = seg.predict(image)
    assert len(found) > 0
    wait = WebDriverWait(driver, 30)
    with running_server(create_app(seg, ServeSettings())) as url:
        driver.get(url + "/")
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-name"), "instances"))
        assert driver.find_element(By.ID, "score-option").is_displayed()
        assert driver.find_element(By.ID, "score-threshold").get_attribute("value") == "0"
        driver.find_element(By.ID, "file-input").send_keys(str(upload))
        wait.until(lambda d: d.find_element(By.ID, "overlay").get_attribute("data-state") == "done")
        assert driver.execute_script("return document.getElementById('mask').naturalWidth") == 64
        assert not driver.find_element(By.ID, "legend").is_displayed()
        assert driver.find_element(By.ID, "result-title").text == f"{len(found)} instances"
        rows = driver.find_elements(By.CSS_SELECTOR, "#instances tbody tr")
        assert [r.find_element(By.CSS_SELECTOR, ".name").text for r in rows] == [seg.class_names[i] for i in found.labels]
        assert [r.find_element(By.CSS_SELECTOR, ".score").text for r in rows] == [f"{s:.3f}" for s in found.scores]
        mask = driver.find_element(By.ID, "mask")
        ActionChains(driver).move_to_element_with_offset(mask, 10, 5).perform()
        x, y, what = re.fullmatch(r"\((\d+), (\d+)\): (.+)", driver.find_element(By.ID, "hover-class").text).groups()
        at = int(found.id_map()[int(y), int(x)])
        assert what == ("background" if at == 0 else f"#{at} {seg.class_names[found.labels[at - 1]]} "
                                                    f"{found.scores[at - 1]:.3f}")
        driver.save_screenshot(str(tmp_path / "instances.png"))
        driver.execute_script("document.getElementById('score-threshold').value = 1;"  # re-runs the last image
                              "document.getElementById('score-threshold').dispatchEvent(new Event('change'));")
        wait.until(lambda d: d.find_element(By.ID, "result-title").text == "0 instances")
        assert driver.find_elements(By.CSS_SELECTOR, "#instances tbody tr") == []
        assert _severe(driver.get_log("browser")) == []
