"""The web gallery in a real headless Chromium (Debian's package, driven by Playwright): search in
English and Chinese, thumbnails with scores, the viewer, more like this, filters, search by
image, the token prompt, and a screenshot checked for non-blank content."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from llm2search.serve.config import ServiceConfig
from llm2search.serve.server import build_app
from llm2search.serve.service import SearchService
from tests.serving import build_index, make_collection, running_server

CHROMIUM = os.environ.get("LLM2SEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "browser-token"


def _need_browser() -> None:
    """scripts/install.sh installs both; a developer machine without them skips, CI fails."""
    missing = []
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing.append(f"chromium ({CHROMIUM}; apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (./test.sh installs it: pip install -e '.[test]')")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def site(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    _need_browser()
    base = tmp_path_factory.mktemp("site")
    photos = make_collection(base / "photos")
    index = build_index(tiny_model, photos, base / "index")
    service = SearchService(ServiceConfig(index, device="cpu", use_gpu=False))
    service.warm()
    with running_server(build_app(service)) as open_url, \
            running_server(build_app(service, token=TOKEN)) as token_url:
        yield SimpleNamespace(url=open_url, token_url=token_url, photos=photos)


@pytest.fixture(scope="module")
def browser(site: SimpleNamespace):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium") if not os.path.exists(CHROMIUM) else CHROMIUM,
                              args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert errors == [], errors  # no JavaScript errors on the page


def _search(page, text: str) -> list[str]:
    page.fill("#q", text)
    page.press("#q", "Enter")
    return _wait_for_results(page, text)


def _wait_for_results(page, label: str) -> list[str]:
    page.wait_for_function(f"document.getElementById('status').textContent.includes({label!r})", timeout=30_000)
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#grid .card img')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }", timeout=30_000)
    return page.eval_on_selector_all("#grid .card", "cards => cards.map(c => c.dataset.id)")


def test_search_shows_thumbnails_with_scores_and_a_nonblank_screenshot(site: SimpleNamespace, page, tmp_path: Path) -> None:
    page.goto(site.url + "/")
    assert page.title() == "llm2search"
    page.select_option("#k", "20")
    ids = _search(page, "一群人在徒步")
    assert len(ids) == 20 and len(set(ids)) == 20
    scores = [float(s) for s in page.eval_on_selector_all("#grid .score", "els => els.map(e => e.textContent)")]
    assert len(scores) == 20 and scores == sorted(scores, reverse=True)
    assert "20 results" in page.inner_text("#status")

    shot = tmp_path / "gallery.png"
    page.screenshot(path=str(shot), full_page=False)
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
    assert img.shape[:2] == (900, 1200)
    assert img.std() > 20  # not a blank page
    colours = len(np.unique(img.reshape(-1, 3) // 8, axis=0))
    assert colours > 500  # thumbnails of random-texture photos, not just page chrome
    if os.environ.get("LLM2SEARCH_SCREENSHOT"):  # keep it to look at
        shutil.copy(shot, os.environ["LLM2SEARCH_SCREENSHOT"])

    english = _search(page, "a dog running on a beach")
    assert len(english) == 20


def test_viewer_more_like_this_filters_and_search_by_image(site: SimpleNamespace, page) -> None:
    page.goto(site.url + "/")
    page.select_option("#k", "20")
    ids = _search(page, "a red car")
    page.click("#grid .card .thumb >> nth=0")
    page.wait_for_selector("#viewer:not([hidden])")
    page.wait_for_function("() => { const i = document.getElementById('viewer-img');"
                           " return i.complete && i.naturalWidth > 0; }", timeout=30_000)
    assert page.inner_text("#viewer-path").startswith(str(site.photos))
    page.click("#viewer-similar")
    similar = _wait_for_results(page, "photos like")
    assert page.is_hidden("#viewer") and ids[0] not in similar and len(similar) == 19  # all but itself

    # Filters: only the 2019 folder; changing a filter re-runs the search.
    page.click("#toggle-filters")
    page.fill("#f-folder", str(site.photos / "2019"))
    page.dispatch_event("#f-folder", "change")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 2", timeout=30_000)
    titles = page.eval_on_selector_all("#grid .thumb", "els => els.map(e => e.title)")
    assert sorted(Path(t).name for t in titles) == ["beach.jpg", "hike.jpg"]
    page.fill("#f-folder", "")
    page.dispatch_event("#f-folder", "change")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 19", timeout=30_000)

    # Search by image: the uploaded photo comes back first.
    target = site.photos / "2023" / "city.jpg"
    page.set_input_files("#image-file", str(target))
    _wait_for_results(page, "image city.jpg")
    first = page.eval_on_selector("#grid .thumb", "e => e.title")
    assert first == str(target)


def test_page_asks_for_the_token_and_then_loads_images(site: SimpleNamespace, page) -> None:
    page.goto(site.token_url + "/")
    page.fill("#q", "snow on the trees")
    page.press("#q", "Enter")
    page.wait_for_selector("#token-form:not([hidden])")
    assert "token" in page.inner_text("#status")
    page.fill("#token", TOKEN)
    page.press("#token", "Enter")
    ids = _wait_for_results(page, "snow on the trees")  # images fetched with the bearer header
    assert len(ids) == 20
    srcs = page.eval_on_selector_all("#grid .card img", "els => els.map(e => e.src)")
    assert all(s.startswith("blob:") for s in srcs)


def test_search_state_in_the_url_dates_names_negative_and_back(site: SimpleNamespace, page) -> None:
    page.goto(site.url + "/")
    page.select_option("#k", "20")
    _search(page, "a red car")
    assert "q=a+red+car" in page.url and "k=20" in page.url
    dates = page.eval_on_selector_all("#grid .card .date", "els => els.map(e => e.textContent)")
    assert len(dates) == 20 and all(len(d) == 10 and d[4] == "-" and d[7] == "-" for d in dates)
    names = page.eval_on_selector_all("#grid .card .name", "els => els.map(e => [e.textContent, e.title])")
    assert all(title.endswith("/" + text) for text, title in names)  # readable name, full path on hover
    # The EXIF date of 2019/beach.jpg is on its card.
    page.click("#toggle-filters")
    page.fill("#f-folder", str(site.photos / "2019"))
    page.dispatch_event("#f-folder", "change")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 2", timeout=30_000)
    cards = page.eval_on_selector_all("#grid .card", "cs => cs.map(c => [c.querySelector('.name').textContent,"
                                      " c.querySelector('.date').textContent])")
    assert dict(cards) == {"beach.jpg": "2019-07-14", "hike.jpg": "2019-09-01"}
    page.fill("#f-folder", "")
    page.dispatch_event("#f-folder", "change")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 20", timeout=30_000)

    page.fill("#neg", "blurry")
    _search(page, "snow on the trees")
    assert "without “blurry”" in page.inner_text("#status") and "neg=blurry" in page.url
    page.fill("#neg", "")
    _search(page, "一群人在徒步")
    page.go_back()  # Back re-runs the search the URL names, and restores the form
    _wait_for_results(page, "snow on the trees")
    assert page.input_value("#q") == "snow on the trees" and page.input_value("#neg") == "blurry"
    page.go_forward()
    _wait_for_results(page, "一群人在徒步")
    bookmarked = page.url
    fresh = page.context.new_page()
    fresh.goto(bookmarked)
    assert len(_wait_for_results(fresh, "一群人在徒步")) == 20
    fresh.close()


def test_drop_or_paste_an_image_to_search_by_it(site: SimpleNamespace, page) -> None:
    import base64

    page.goto(site.url + "/")
    target = site.photos / "2023" / "city.jpg"
    data = base64.b64encode(target.read_bytes()).decode()
    make_file = ("(b64) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
                 " return new File([bytes], 'city.jpg', { type: 'image/jpeg' }); }")
    page.evaluate(f"""(b64) => {{ const file = ({make_file})(b64); const dt = new DataTransfer(); dt.items.add(file);
        document.body.dispatchEvent(new DragEvent('dragenter', {{ dataTransfer: dt, bubbles: true }}));
        document.body.dispatchEvent(new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }})); }}""", data)
    _wait_for_results(page, "image city.jpg")
    assert page.eval_on_selector("#grid .thumb", "e => e.title") == str(target)
    assert page.is_hidden("#drop-hint") and page.is_visible("#image-chip")
    # Text + image with a weight: one combined query.
    page.fill("#q", "a red car")
    page.press("#q", "Enter")
    _wait_for_results(page, "+ “a red car”")
    page.click("#image-clear")
    assert page.is_hidden("#image-chip")
    page.evaluate(f"""(b64) => {{ const file = ({make_file})(b64); const dt = new DataTransfer(); dt.items.add(file);
        document.dispatchEvent(new ClipboardEvent('paste', {{ clipboardData: dt, bubbles: true, cancelable: true }})); }}""", data)
    _wait_for_results(page, "image city.jpg")
    assert page.eval_on_selector("#grid .thumb", "e => e.title") == str(target)


def test_api_docs_page_works_offline(site: SimpleNamespace, page, tmp_path: Path) -> None:
    outside: list[str] = []

    def only_loopback(route) -> None:
        url = route.request.url
        if url.startswith(site.url):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(site.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
    assert any("/api/search/text" in p for p in paths)
    assert outside == []  # nothing fetched from a CDN
    shot = tmp_path / "docs.png"
    page.screenshot(path=str(shot))
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3) // 16, axis=0)) > 20  # the rendered UI
