"""The web interface in a real browser: the app is started on a free local port and driven in headless Chromium
(Debian's ``chromium`` + ``chromium-driver``, through Selenium; nothing is downloaded at run time).

Skipped, with the reason, when the ``ui`` extra or the browser is missing. The rejected upload runs in the
default suite; converting the example song and a fine-tune (start, stop, resume, the adapter in the singer
list) are slow. ``AI_SINGER_UI_SCREENSHOTS=docs`` makes the slow tests save the pages' screenshots there
(the ones in docs/ were made so).
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio", reason="the web interface's extra is not installed: pip install -e '.[ui]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SONG = REPO / "data" / "examples" / "song01"
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
               None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(BROWSER is None or DRIVER is None,
                                reason="no headless browser: install Debian's chromium and chromium-driver "
                                       "(apt-get install chromium chromium-driver)")
SCREENSHOTS = os.environ.get("AI_SINGER_UI_SCREENSHOTS")
_DRIVERS: list = []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The app on a free port, run from an empty folder: the bundled base and example singer are found through
    the package, and a fine-tune writes its adapter to that folder's ``singers/``."""
    from ai_singer.webui.app import UiSettings, launch

    root = tmp_path_factory.mktemp("ui")
    settings = UiSettings.from_conf(port=_free_port(), workdir=str(root / "work"))
    previous = os.getcwd()
    os.chdir(root)
    app, server, url = launch(settings, block=False)
    try:
        yield server, url
    finally:
        app.close()
        server.shutdown()
        os.chdir(previous)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    _DRIVERS.append(driver)
    try:
        yield driver, downloads
    finally:
        driver.quit()


def _page(driver, url: str) -> None:
    driver.get(url)
    _wait(lambda: driver.find_elements(By.ID, "convert-button"), 30, "the page to load")


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        _DRIVERS[-1].save_screenshot(str(Path(SCREENSHOTS) / "timeout.png"))
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _upload(driver, elem_id: str, *paths: Path) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys("\n".join(str(p) for p in paths))
    _wait(lambda: all(p.name in driver.find_element(By.ID, elem_id).text.replace("\n", "") for p in paths), 30,
          f"{[p.name for p in paths]} in {elem_id}")


def _status(driver, elem_id: str, timeout: float, final=("done", "error", "failed", "stopped")) -> str:
    return _wait(lambda: (text := driver.find_element(By.ID, elem_id).text) and any(f in text for f in final)
                 and text, timeout, f"{elem_id} to say one of {final}")


def _set_number(driver, elem_id: str, value) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.clear()
    field.send_keys(str(value))


def _tab(driver, name: str) -> None:
    next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == name).click()


def _screenshot(driver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"ui-{name}.png"))


def test_a_bad_upload_is_rejected_with_its_message(ui, browser, tmp_path):
    server, url = ui
    driver, _ = browser
    _page(driver, url)
    notes = tmp_path / "notes.wav"
    notes.write_text("these are lyrics, not audio")
    _upload(driver, "convert-vocal", notes)
    driver.find_element(By.ID, "convert-button").click()
    message = _status(driver, "convert-status", 30)
    assert message.startswith("convert: error: upload 'notes.wav': not a readable audio file")
    assert "upload wav, flac" in message and str(server.workspace.root) not in message
    assert not list(server.workspace.root.glob("sessions/*/convert-*"))  # nothing of the rejected upload is kept


@pytest.mark.slow
def test_convert_the_example_song_and_download_the_mix(ui, browser):
    driver, downloads = browser
    _page(driver, ui[1])
    _upload(driver, "convert-vocal", SONG / "vocals.flac")
    _upload(driver, "convert-stems", SONG / "pad.flac", SONG / "drums.flac")
    driver.find_element(By.ID, "convert-button").click()
    message = _status(driver, "convert-status", 300)
    assert message.startswith("convert: done") and "converted 1 of 1 song(s)" in message, message
    assert "ok" in driver.find_element(By.ID, "convert-songs").text
    link = _wait(lambda: next((a for a in driver.find_elements(By.CSS_SELECTOR, "#convert-downloads a")
                               if (a.get_attribute("href") or "").endswith("/mix.wav")), None), 30, "the mix's link")
    _screenshot(driver, "convert")
    link.click()
    mix = _wait(lambda: (downloads / "mix.wav").is_file() and not list(downloads.glob("*.crdownload"))
                and downloads / "mix.wav", 30, "the download")
    source = sf.info(str(SONG / "vocals.flac"))
    audio, rate = sf.read(str(mix))
    assert rate == source.samplerate and audio.shape[0] == source.frames
    assert float(np.sqrt(np.mean(audio ** 2))) > 0.01


@pytest.mark.slow
def test_fine_tune_starts_stops_resumes_and_joins_the_singer_list(ui, browser):
    server, url = ui
    driver, _ = browser
    _page(driver, url)
    _tab(driver, "Train")
    driver.find_element(By.CSS_SELECTOR, "#train-singer textarea, #train-singer input").send_keys("webtest")
    _upload(driver, "train-recordings", SONG / "vocals.flac")
    driver.find_element(By.ID, "prep-button").click()
    assert _status(driver, "prep-status", 300).startswith("preprocess: done")
    assert "webtest:" in driver.find_element(By.CSS_SELECTOR, "#prep-report textarea").get_attribute("value")
    for elem_id, value in (("train-steps", 400), ("train-batch", 2), ("train-save-every", 200),
                           ("train-eval-every", 2)):
        _set_number(driver, elem_id, value)
    driver.find_element(By.ID, "train-start").click()
    _wait(lambda: "step " in (t := driver.find_element(By.ID, "train-status").text) and not t.startswith(
        "train: queued") and int(t.split("step ")[1].split()[0]) >= 2, 300, "two training steps")
    assert "loss/mel" in driver.find_element(By.ID, "train-losses").text
    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#train-sample-image img"), 120, "a validation sample")
    _screenshot(driver, "train")
    driver.find_element(By.ID, "train-stop").click()
    stopped = _status(driver, "train-status", 120, final=("stopped", "error", "failed"))
    assert stopped.startswith("train: stopped") and "checkpoint saved" in stopped, stopped
    step = int(stopped.split("step ")[1].split()[0])
    checkpoints = list(server.workspace.root.glob("sessions/*/train/runs/webtest/checkpoints/*"))
    assert checkpoints, "stopping saved no checkpoint"
    assert not (server.catalog.singers_dir / "webtest").exists()

    _set_number(driver, "train-steps", step + 2)  # resume: two more steps, then the adapter is exported
    driver.find_element(By.ID, "train-start").click()
    done = _status(driver, "train-status", 300, final=("train: done", "error", "failed"))
    assert done.startswith("train: done") and f"step {step + 2} of {step + 2}" in done, done
    assert (server.catalog.singers_dir / "webtest" / "adapter.safetensors").is_file()
    _tab(driver, "Singers")
    driver.find_element(By.ID, "singers-refresh").click()
    _wait(lambda: "webtest" in driver.find_element(By.ID, "singers-adapters").text, 30, "the new singer")
    _upload(driver, "concat-tracks", SONG / "pad.flac", SONG / "drums.flac")
    driver.find_element(By.ID, "concat-button").click()
    joined = _status(driver, "concat-status", 60, final=("joined", "error"))
    seconds = 2 * sf.info(str(SONG / "pad.flac")).duration
    assert joined.startswith(f"joined 2 tracks: {seconds:.2f} s"), joined
    _screenshot(driver, "singers")


@pytest.mark.slow
def test_a_recordings_folder_of_the_machine_is_picked_by_name(ui, browser):
    server, url = ui
    driver, _ = browser
    picked = Path(server.settings.raw_dir) / "picked"
    picked.mkdir(parents=True)
    shutil.copy(SONG / "vocals.flac", picked / "take.flac")
    _page(driver, url)
    _tab(driver, "Train")
    driver.find_element(By.CSS_SELECTOR, "#train-raw-pick input").click()
    _wait(lambda: next((o for o in driver.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text == "picked"),
                       None), 30, "the folder in the list").click()
    driver.find_element(By.ID, "prep-button").click()
    assert _status(driver, "prep-status", 300).startswith("preprocess: done")
    assert "picked:" in driver.find_element(By.CSS_SELECTOR, "#prep-report textarea").get_attribute("value")
    assert driver.find_element(By.CSS_SELECTOR, "#train-singer textarea, #train-singer input").get_attribute(
        "value") == "picked"
    assert sorted(p.name for p in picked.iterdir()) == ["take.flac"]  # read only


@pytest.mark.slow
def test_a_batch_of_songs_shows_each_songs_status(ui, browser, tmp_path):
    import zipfile

    driver, _ = browser
    archive = tmp_path / "album.zip"
    with zipfile.ZipFile(archive, "w") as album:
        for stem in ("vocals", "pad", "drums"):
            album.write(SONG / f"{stem}.flac", f"album/first song/{stem}.flac")
    loose = tmp_path / "second take.flac"
    shutil.copy(SONG / "vocals.flac", loose)
    _page(driver, ui[1])
    _upload(driver, "convert-batch", archive, loose)
    driver.find_element(By.ID, "convert-button").click()
    _wait(lambda: "waiting" in driver.find_element(By.ID, "convert-songs").text
          or "ok" in driver.find_element(By.ID, "convert-songs").text, 60, "the songs' table")
    message = _status(driver, "convert-status", 600)
    assert "converted 2 of 2 song(s)" in message, message
    rows = driver.find_element(By.ID, "convert-songs").text
    assert "first_song" in rows and "second_take" in rows and rows.count("ok") >= 2, rows
    assert len(driver.find_elements(By.CSS_SELECTOR, "#convert-downloads a")) == 6
