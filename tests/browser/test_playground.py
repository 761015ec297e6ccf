"""The playground in a real browser: Debian's `chromium` (installed by `scripts/setup.sh --test`, never downloaded)
driven headless by Playwright, against the session's tiny-shapes app (API key on, under the /shapes prefix).

A prompt from the model's vocabulary goes in through the page, the job runs, and the page plays the video (its
duration and frame size are the job's), shows the thumbnail, the spritesheet and the PAB stats the API reports, and
lists the job, which it then deletes. An invalid prompt shows the API's own error message. Each test saves a
screenshot in its output directory; `PAB_UPDATE_SCREENSHOT=1` also writes the README's `docs/playground.png`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import REPO_ROOT, TEST_API_KEY

pytestmark = [pytest.mark.ray, pytest.mark.slow]

JOB_TIMEOUT_MS = 180_000
README_SCREENSHOT = REPO_ROOT / "docs" / "playground.png"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI: scripts/setup.sh --test must install it")
    pytest.skip(f"{what} is not installed (scripts/setup.sh --test installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        _missing("Debian's chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (the test extra)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, shapes_app: Any) -> Iterator[Any]:
    """The playground with the API key entered; fails the test on any uncaught script error or refused resource."""
    context = browser.new_context(viewport={"width": 1100, "height": 1000}, locale="en-US")
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{shapes_app.url}/playground")
    page.wait_for_selector("#key-panel", state="visible")  # the model route answered 401: the page asks once
    page.fill("#key", TEST_API_KEY)
    page.click("#key-save")
    page.wait_for_selector("#main", state="visible")
    yield page
    context.close()
    assert problems == []


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_a_prompt_runs_and_the_video_plays_with_its_stats_then_the_job_is_deleted(page, shapes_app, tmp_path) -> None:
    assert page.input_value("#width") == "16" and page.input_value("#frames") == "4"  # the model card's defaults
    words = page.locator("#words button").all_inner_texts()
    assert {"red", "disc", "up"} <= set(words)  # the closed vocabulary is shown
    page.fill("#prompt", "a")
    for word in ("blue", "disc", "moving", "up"):
        page.click(f"#words button:text-is('{word}')")
    assert page.input_value("#prompt") == "a blue disc moving up"
    page.fill("#seed", "7")
    page.select_option("#preset", "PAB-246")
    page.click("#submit")

    page.wait_for_selector("#result", state="visible", timeout=JOB_TIMEOUT_MS)
    video_id = page.text_content("#job-id")
    video = shapes_app.client().get(video_id)
    assert video["status"] == "completed" and video["prompt"] == "a blue disc moving up" and video["seed"] == 7
    assert page.text_content("#job-status") == "completed" and page.eval_on_selector("#progress", "p => p.value") == 100

    player = page.locator("#video")
    player.evaluate("v => new Promise(done => v.readyState >= 2 ? done() : v.addEventListener('loadeddata', done))")
    width, height, duration = player.evaluate("v => [v.videoWidth, v.videoHeight, v.duration]")
    assert (width, height) == (16, 16)
    assert duration == pytest.approx(video["frames"] / video["fps"], abs=0.25)  # 4 frames at 4 fps
    page.wait_for_function("v => !v.paused && v.currentTime > 0", arg=player.element_handle(), timeout=30_000)
    assert page.eval_on_selector("#thumbnail", "i => [i.naturalWidth, i.naturalHeight]") == [16, 16]
    assert page.eval_on_selector("#spritesheet", "i => [i.naturalWidth, i.naturalHeight]") == [32, 32]  # 2 x 2 frames

    stats = page.text_content("#stats")
    assert "PAB hit rate (PAB-246)" in stats
    for kind, counts in video["stats"]["kinds"].items():
        if counts["calls"]:
            assert f"{kind}{100 * counts['hit_rate']:.1f}% of {counts['calls']}" in stats
    assert f"{video['stats']['comm']['skipped_bytes']:,}" in stats and "denoise" in stats
    shot = _screenshot(page, tmp_path, "playground.png")
    if os.environ.get("PAB_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, README_SCREENSHOT)

    row = page.locator(f"#jobs tr[data-id='{video_id}']")
    row.wait_for()
    assert "completed" in row.inner_text()
    row.locator("button:text-is('delete')").click()
    row.wait_for(state="detached")
    assert shapes_app.client().http.get(f"/v1/videos/{video_id}").status_code == 404
    assert page.is_hidden("#job")


def test_an_invalid_prompt_shows_the_apis_error_message(page, shapes_app, tmp_path) -> None:
    body = {"prompt": "a cat runs in the park", "size": "16x16", "frames": 4, "steps": 8}
    expected = shapes_app.client().http.post("/v1/videos", json=body)
    assert expected.status_code == 400
    message = expected.json()["error"]["message"]
    page.fill("#prompt", body["prompt"])
    page.fill("#steps", "8")
    page.click("#submit")
    page.wait_for_selector("#error", state="visible")
    assert page.text_content("#error") == message
    assert "closed vocabulary" in message and "cat" in message
    assert page.is_hidden("#job")  # no job was created
    _screenshot(page, tmp_path, "invalid-prompt.png")


def test_a_wrong_key_is_asked_again_with_the_apis_message(browser, shapes_app) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{shapes_app.url}/playground")
    page.fill("#key", "sk-wrong")
    page.click("#key-save")
    page.wait_for_function("() => document.querySelector('#key-panel p').textContent.includes('wrong API key')")
    assert page.is_visible("#key-panel") and page.is_hidden("#main")
    context.close()
