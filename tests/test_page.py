"""The page at / and the API behind it (`/predict?details=patches`), against a real `alexnet-serve` process.

The API's per-patch answers are checked against an independent reference: torchvision's TenCrop and the
PyTorch twin of the exported model, softmax per patch. The page is driven in a real headless Chromium
(Debian's chromium + chromium-driver, through Selenium); those tests skip, naming what is missing, where no
Chromium is installed. Two tests need what a real `alexnet-serve` cannot be made to do on cue (a model that
stays loading until the test says so; an API key, which issue 13 adds to the service): they run the service's
own app in uvicorn in this process, on a real port, with the real model session.
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from support.app import reuse
from support.browser import full_page_screenshot, missing_browser, set_viewport, start_chromium
from support.paths import SKLEARN_IMAGES
from support.server import Server, free_port
from support.settings import cpu_settings

from training.presets import ten_crop_transform

STATIC = Path(__file__).resolve().parent.parent / "service" / "static"
PHOTO = SKLEARN_IMAGES / "china.jpg"  # a real 640×427 photograph shipped inside scikit-learn
TEN_NAMES = ["top-left", "top-right", "bottom-left", "bottom-right", "center",
             "top-right-flipped", "top-left-flipped", "bottom-right-flipped", "bottom-left-flipped", "center-flipped"]
TEN_BOXES = [[0, 0, 224, 224], [32, 0, 256, 224], [0, 32, 224, 256], [32, 32, 256, 256], [16, 16, 240, 240],
             [32, 0, 256, 224], [0, 0, 224, 224], [32, 32, 256, 256], [0, 32, 224, 256], [16, 16, 240, 240]]
JS_BUDGET_BYTES = 30 * 1024  # the limit for the page's JavaScript, unminified


@pytest.fixture
def server(shared_server: Server) -> Server:
    """The session's read-only server (conftest.py `shared_server`: providers auto, start_server's limits); the
    page tests only send it requests. Its exit status after SIGTERM is checked at the end of the session."""
    return shared_server


def predict(server: Server, path: Path, **params) -> dict:
    with server.client() as c:
        r = c.post("/predict", params=params, files={"files": (path.name, path.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def torch_patch_softmax(torch_model, version, data: bytes) -> np.ndarray:
    """[10, K]: each TenCrop patch's softmax from torchvision's transforms and the PyTorch model."""
    pre = version.metadata.preprocessing
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    with torch.inference_mode():
        return torch.softmax(torch_model(ten_crop_transform(pre.mean, pre.std)(img)), dim=-1).numpy()


def torch_square(data: bytes) -> np.ndarray:
    from torchvision.transforms import v2

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return np.asarray(v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(256)])(img))


# -- the API: details=patches ------------------------------------------------------------------------------------
def test_details_are_each_patchs_own_softmax_from_the_same_run(server, exported):
    _, version, torch_model = exported
    body = predict(server, PHOTO, details="patches", top_k=10)
    (result,) = body["results"]
    details = result["details"]
    assert details["square_size"] == 256 and "square_jpeg" not in details  # only with square=true
    patches = details["patches"]
    assert [p["name"] for p in patches] == TEN_NAMES
    assert [p["box"] for p in patches] == TEN_BOXES
    assert [p["flipped"] for p in patches] == [False] * 5 + [True] * 5

    got = np.full((10, 10), np.nan)
    for row, patch in zip(got, patches, strict=True):
        probs = [p["probability"] for p in patch["predictions"]]
        assert probs == sorted(probs, reverse=True)
        for p in patch["predictions"]:
            row[p["index"]] = p["probability"]
    want = torch_patch_softmax(torch_model, version, PHOTO.read_bytes())
    assert np.abs(got - want).max() < 1e-4, "each patch's probabilities are its own TenCrop patch's softmax"
    averaged = np.full(10, np.nan)
    for p in result["predictions"]:
        averaged[p["index"]] = p["probability"]
    # the average the answer reports is the mean of these very rows: one run, not two
    assert np.abs(got.mean(axis=0) - averaged).max() < 1e-6
    assert len({tuple(np.argsort(-row)[:3]) for row in got}) > 1, "the patches disagree: a real test of the rows"


def test_details_square_is_the_square_the_patches_are_cut_from(server):
    body = predict(server, PHOTO, details="patches", square="true", top_k=3)
    details = body["results"][0]["details"]
    assert all(len(p["predictions"]) == 3 for p in details["patches"])
    url = details["square_jpeg"]
    assert url.startswith("data:image/jpeg;base64,")
    jpeg = base64.b64decode(url.removeprefix("data:image/jpeg;base64,"), validate=True)
    assert len(jpeg) < 60_000, f"a small JPEG: {len(jpeg):,} bytes"
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (256, 256)
    got, want = np.asarray(img.convert("RGB"), np.int16), torch_square(PHOTO.read_bytes()).astype(np.int16)
    error = np.abs(got - want).mean()  # JPEG's own loss on this detailed photo: 3.6 grey levels at quality 85
    shifted = np.abs(got[:, 1:] - want[:, :-1]).mean()  # the same square one pixel off: 9.5
    assert error < 5 and error < shifted / 2, f"torchvision's Resize(256) + CenterCrop(256): {error:.2f}, {shifted:.2f}"


def test_details_with_the_centre_patch_and_without_details(server):
    body = predict(server, PHOTO, details="patches", crops="center", top_k=4)
    (patch,) = body["results"][0]["details"]["patches"]
    assert patch["name"] == "center" and patch["box"] == [16, 16, 240, 240] and not patch["flipped"]
    assert patch["predictions"] == body["results"][0]["predictions"], "one patch: its own softmax is the answer"
    plain = predict(server, PHOTO)
    assert "details" not in plain["results"][0], "without details=patches the answer is unchanged"


def test_details_bad_options_are_422(server):
    data = PHOTO.read_bytes()
    with server.client() as c:
        r = c.post("/predict", params={"square": "true"}, files={"files": ("a.jpg", data)})
        assert r.status_code == 422 and r.json()["reason"] == "square" and "details=patches" in r.json()["detail"]
        r = c.post("/predict", params={"details": "everything"}, files={"files": ("a.jpg", data)})
        assert r.status_code == 422 and "details" in r.json()["detail"]


def test_openapi_documents_details_with_an_example(server):
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    op = spec["paths"]["/predict"]["post"]
    params = {p["name"]: p for p in op["parameters"]}
    assert "patches" in str(params["details"]["schema"]) and params["square"]["schema"]["type"] == "boolean"
    assert "details=patches" in op["description"]
    schemas = spec["components"]["schemas"]
    (example,) = schemas["PatchDetails"]["examples"]
    assert example["patches"][1]["name"] == "top-right-flipped" and example["square_jpeg"].startswith("data:image")
    assert "/" not in spec["paths"] and not any(p.startswith("/static") for p in spec["paths"]), "the page is no API"


# -- the page's files ------------------------------------------------------------------------------------------
def test_page_and_its_files_are_served_from_this_process(server):
    with server.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert c.head("/").status_code == 200
        referenced = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert {"/static/app.js", "/static/page.css"} <= set(referenced)
        assert 'href="/docs"' in page.text
        for path in referenced:
            r = c.get(path)
            assert r.status_code == 200, path
            kind = {"js": "text/javascript", "css": "text/css"}[path.rsplit(".", 1)[1]]
            assert r.headers["content-type"].startswith(kind) and r.headers["x-content-type-options"] == "nosniff"
        for bad in ("/static/nothing.js", "/static/..%2Fapp.py", "/static/%2E%2E/routes/page.py"):
            r = c.get(bad)
            assert r.status_code == 404 and r.headers["content-type"] == "application/json", bad
        assert c.get("/docs").status_code == 200


def test_page_needs_nothing_from_outside_and_its_javascript_stays_small():
    files = {p.name: p.read_text() for p in STATIC.iterdir()}
    assert {"index.html", "page.css", "app.js", "api.js", "render.js"} <= set(files)
    for name, text in files.items():
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.\w+", text)
        assert set(urls) <= {"http://www.w3.org"}, f"{name} reaches outside the service: {urls}"  # the SVG namespace
        assert "@import" not in text and "@font-face" not in text and "<script>" not in text
    for name, text in files.items():
        if name.endswith(".js"):
            for spec in re.findall(r'^\s*import .* from "([^"]+)";', text, re.MULTILINE):
                assert spec.startswith("./") and spec[2:] in files, f"{name} imports {spec}: not a file of the page"
    js = sum((STATIC / n).stat().st_size for n in files if n.endswith(".js"))
    assert js < JS_BUDGET_BYTES, f"the page's JavaScript is {js:,} bytes, over {JS_BUDGET_BYTES:,}"


def test_the_wheel_ships_the_page(tmp_path):
    """The package data is in the wheel the serving image installs (Dockerfile: `pip wheel .`)."""
    import subprocess
    import sys
    import zipfile

    repo = STATIC.parent.parent
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(repo / item, src / item)
    for package in ("alexnet_store", "service", "training", "bench"):
        shutil.copytree(repo / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"service/static/{p.name}" for p in STATIC.iterdir()} <= names


# -- the page in a real browser ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = missing_browser()
    if reason:
        pytest.skip(f"no headless Chromium for the page tests: {reason}")
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def by_css(root, selector: str):
    from selenium.webdriver.common.by import By

    return root.find_elements(By.CSS_SELECTOR, selector)


def wait_for(driver, condition, timeout: float = 60, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: condition(d), message=f"{what}; the page says: {d_text(driver)}")


def d_text(driver) -> str:
    return driver.execute_script("return document.body.innerText").strip()[:1500]


def open_page(driver, url: str, *, ready: bool = True) -> None:
    set_viewport(driver, 1280, 900)
    driver.get(url + "/")
    if ready:
        wait_for(driver, lambda d: by_css(d, "#status")[0].text.startswith("Ready"), 30, "the models are listed")


def upload(driver, path: Path):
    """Choose `path` in the page's file input; the result's card once it is done (or failed)."""
    before = len(by_css(driver, "article.result"))
    by_css(driver, "#files")[0].send_keys(str(path))
    wait_for(driver, lambda d: len(by_css(d, "article.result")) == before + 1, 10, "a card for the photo")
    card = by_css(driver, "article.result")[0]  # the newest is on top
    wait_for(driver, lambda d: card.get_attribute("data-state") in ("done", "error"), 60, f"{path.name} is answered")
    return card


def percent(text: str) -> float:
    return float(text.strip().removesuffix("%"))


def test_page_shows_the_ten_patches_and_the_averaged_top5_of_a_photo(server, browser, tmp_path):
    open_page(browser, server.url)
    card = upload(browser, PHOTO)
    assert card.get_attribute("data-state") == "done", card.text
    expected = predict(server, PHOTO, top_k=5)  # a plain /predict for the same photo: no details
    details = predict(server, PHOTO, top_k=5, details="patches")["results"][0]["details"]

    tiles = by_css(card, "[data-patch]")
    assert len(tiles) == 10 and sorted(t.get_attribute("data-patch") for t in tiles) == sorted(TEN_NAMES)
    own = {p["name"]: p["predictions"][0] for p in details["patches"]}
    for tile in tiles:
        name = tile.get_attribute("data-patch")
        assert by_css(tile, ".label")[0].text == own[name]["label"]
        assert abs(percent(by_css(tile, ".prob")[0].text) - 100 * own[name]["probability"]) <= 0.05 + 1e-9
        window = by_css(tile, ".window")[0]
        transform = browser.execute_script("return getComputedStyle(arguments[0]).transform", window)
        assert (transform == "matrix(-1, 0, 0, 1, 0, 0)") == name.endswith("-flipped"), (name, transform)

    rows = by_css(card, ".top li[data-class-index]")
    assert len(rows) == 5
    for row, want in zip(rows, expected["results"][0]["predictions"], strict=True):
        assert int(row.get_attribute("data-class-index")) == want["index"]
        assert by_css(row, ".label")[0].text == want["label"]
        assert abs(percent(by_css(row, ".prob")[0].text) - 100 * want["probability"]) <= 0.005 + 1e-9

    text = card.text
    assert "testnet, version 1" in text and expected["provider"] in text and "ms" in text
    images = by_css(browser, "img")
    assert len(images) == 11, "the square and the ten tiles"
    for img in images:
        assert img.get_attribute("alt").strip(), img.get_attribute("outerHTML")[:200]
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 256
    outlines = by_css(card, "svg rect.outline")
    assert len(outlines) == 5, "the five regions: each patch and its mirror image share one"

    shot = full_page_screenshot(browser, tmp_path / "page.png", 1280)
    png = Image.open(shot)
    assert png.size[0] == 1280 and png.size[1] > 900 and len(np.unique(np.asarray(png)[:, :, 0])) > 50
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_page_on_a_phone_sized_screen(server, browser, tmp_path):
    open_page(browser, server.url)
    card = upload(browser, PHOTO)
    set_viewport(browser, 390, 844, mobile=True)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390, "no sideways scrolling"
    tiles = {t.get_attribute("data-patch"): t.rect for t in by_css(card, "[data-patch]")}
    assert len({round(r["x"]) for r in tiles.values()}) == 2, "two columns: each patch beside its mirror image"
    for name in ("top-left", "top-right", "bottom-left", "bottom-right", "center"):
        assert abs(tiles[name]["y"] - tiles[name + "-flipped"]["y"]) < 1 and tiles[name]["width"] > 120
    shot = full_page_screenshot(browser, tmp_path / "page-phone.png", 390, mobile=True, min_height=844)
    assert Image.open(shot).size[0] == 390


def test_page_by_keyboard_alone(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server.url)
    browser.execute_script("document.activeElement.blur()")
    order = []
    for _ in range(7):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        order.append(browser.execute_script(
            "const e = document.activeElement; return e.id || e.getAttribute('href') || e.tagName"))
    # issue 20: the chosen version's line links its first-layer kernels (Fig. 3)
    assert order == ["/docs", "model", "version", "crops", "top-k", "/v2/models/testnet/versions/1/kernels.png",
                     "drop"]
    outline = browser.execute_script("const s = getComputedStyle(document.activeElement); "
                                     "return [s.outlineStyle, parseFloat(s.outlineWidth)]")
    assert outline[0] != "none" and outline[1] >= 2, f"visible focus on the drop zone: {outline}"
    # Enter and Space on the drop zone open the file dialog (the input's click(), recorded instead of a dialog)
    browser.execute_script("""
        window.opened = 0;
        HTMLInputElement.prototype.click = function () { if (this.id === "files") window.opened += 1; };""")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    assert browser.execute_script("return window.opened") == 2


def test_page_shows_errors_in_words(server, browser, tmp_path):
    open_page(browser, server.url)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    card = upload(browser, pdf)
    assert card.get_attribute("data-state") == "error"
    error = by_css(card, "[role=alert]")[0].text
    assert "415" in error and "file 'report.pdf': not a supported image" in error, error

    huge = tmp_path / "huge.jpg"  # over the 3,000,000-byte file limit the test server runs with
    huge.write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(3_500_000))
    card = upload(browser, huge)
    error = by_css(card, "[role=alert]")[0].text
    assert "413" in error and "file 'huge.jpg' is larger than the limit of 3,000,000 bytes" in error, error
    assert not by_css(card, "[data-patch]")


# -- the page against the service's own app in this process: a model that is still loading; an API key ---------
@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """uvicorn serving `app` on a free port from a thread of this process (lifespan included)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def app_with(exported, loaded_model, gate: threading.Event, *, keys_file: Path | None = None,
             seen: list | None = None):
    """The service's app on the exported store; its model loads when `gate` is set. With `keys_file`, the service's
    own API keys are on (service/auth.py); `seen` then records what each request sent as Authorization."""
    from service.app import create_app

    root, _, _ = exported
    settings = cpu_settings(root, models=["testnet"], api_keys_file=keys_file)
    app = create_app(settings, loader=reuse(loaded_model, gate))
    if seen is not None:
        @app.middleware("http")
        async def record(request, call_next):  # only watches: the service's own key check answers
            seen.append((request.url.path, request.headers.get("authorization", "")))
            return await call_next(request)

    return app


def test_page_while_the_model_loads_shows_the_503_then_classifies(exported, loaded_model, browser):
    gate = threading.Event()
    try:
        with serve_in_thread(app_with(exported, loaded_model, gate)) as url:
            open_page(browser, url, ready=False)
            wait_for(browser, lambda d: "No model is ready yet" in by_css(d, "#status")[0].text, 10, "loading")
            card = upload(browser, PHOTO)
            error = by_css(card, "[role=alert]")[0].text
            assert "503" in error and "still loading" in error and "retry in 1 s" in error, error
            gate.set()
            wait_for(browser, lambda d: by_css(d, "#status")[0].text.startswith("Ready"), 30, "the model is listed")
            by_css(card, "[role=alert] button")[0].click()  # "Try again"
            wait_for(browser, lambda d: len(by_css(card, "[data-patch]")) == 10, 60, "the photo is classified")
    finally:
        gate.set()


def test_page_asks_for_the_api_key_once_and_sends_it_as_bearer(exported, loaded_model, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    key, seen, gate = "s3cret-key-for-the-test", [], threading.Event()
    gate.set()
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{key} infer\n")
    with serve_in_thread(app_with(exported, loaded_model, gate, keys_file=keys_file, seen=seen)) as url:
        assert httpx.get(url + "/v1/models").headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(url + "/").status_code == 200  # the page itself stays open
        open_page(browser, url, ready=False)
        dialog = by_css(browser, "#auth")[0]
        wait_for(browser, lambda d: dialog.get_attribute("open") is not None, 10, "the key form opens")
        assert "needs an API key" in by_css(browser, "#auth-message")[0].text
        assert browser.execute_script("return document.activeElement.id") == "auth-key"
        browser.switch_to.active_element.send_keys("wrong-key", Keys.ENTER)
        wait_for(browser, lambda d: "refused" in by_css(d, "#auth-message")[0].text, 10, "asked again")
        assert dialog.get_attribute("open") is not None
        browser.switch_to.active_element.send_keys(key, Keys.ENTER)
        wait_for(browser, lambda d: by_css(d, "#status")[0].text.startswith("Ready"), 30, "models listed with the key")
        card = upload(browser, PHOTO)
        assert card.get_attribute("data-state") == "done" and len(by_css(card, "[data-patch]")) == 10
        assert browser.execute_script("return sessionStorage.getItem('alexnet.apiKey')") == key
        assert dialog.get_attribute("open") is None, "asked once: the stored key is sent from then on"
        api_calls = [(path, sent) for path, sent in seen if path in ("/v1/models", "/predict")]
        assert api_calls[0] == ("/v1/models", "") and ("/v1/models", "Bearer wrong-key") in api_calls
        assert api_calls[-1] == ("/predict", f"Bearer {key}")
        browser.execute_script("sessionStorage.clear()")


# -- the paper's section 6.1 on the page: nearest gallery images (Fig. 4) and the kernels (Fig. 3) ----------------
@pytest.fixture(scope="module")
def gallery_server(exported, digits: Path, tmp_path_factory):
    """A real alexnet-serve on a copy of the store whose version has a gallery of the 40 training digits."""
    import signal

    from support.server import start_server, stop_server

    from service import gallery_cli

    root, version, _ = exported
    store = tmp_path_factory.mktemp("page-gallery-store")
    shutil.copytree(root / version.name, store / version.name)
    assert gallery_cli.main(["build", str(digits / "train"), "--model", "testnet", "--model-store", str(store),
                             "--no-progress"]) == 0
    srv = start_server(store, tmp_path_factory.mktemp("page-gallery") / "serve.log", "--providers",
                       "CPUExecutionProvider", env={"ALEXNET_REPOSITORY_POLL_SECONDS": "0"})
    yield srv
    assert stop_server(srv) in (0, -signal.SIGTERM), srv.log.read_text()


def test_page_shows_the_nearest_gallery_images_and_links_the_kernels(gallery_server, digits: Path, browser):
    browser.get_log("browser")  # what the tests before left in the log (their 401s) is theirs
    open_page(browser, gallery_server.url)
    photo = sorted((digits / "val").rglob("*.png"))[0]
    card = upload(browser, photo)
    assert card.get_attribute("data-state") == "done", card.text
    wait_for(browser, lambda d: by_css(card, ".neighbours figure.neighbour"), 60, "the neighbours are shown")
    with gallery_server.client() as c:
        info = c.get("/v2/models/testnet/versions/1/gallery").json()
        want = c.post("/predict", params={"neighbours": 8, "top_k": 1},
                      files={"files": (photo.name, photo.read_bytes(), "image/png")}).json()
    assert info["gallery"]["size"] == 40 and info["features"]["dim"] == 4096
    figures = by_css(card, ".neighbours figure")
    assert "query" in figures[0].get_attribute("class")  # Fig. 4: the query first, then its neighbours in order
    query = by_css(figures[0], "img")[0]
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", query) == 256
    shown = [f.get_attribute("data-file") for f in figures[1:]]
    assert shown == [n["file"] for n in want["results"][0]["neighbours"]]
    for figure, n in zip(figures[1:], want["results"][0]["neighbours"], strict=True):
        assert by_css(figure, ".label")[0].text == n["label"]
        assert f"{n['distance']:.2f}" in by_css(figure, ".distance")[0].text
        img = by_css(figure, "img")[0]
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 96
    assert "Nearest of 40 gallery images" in by_css(card, ".neighbours h3")[0].text
    link = by_css(browser, "#model-info a.kernels")[0]
    href = link.get_attribute("href")
    assert href.endswith("/v2/models/testnet/versions/1/kernels.png")
    r = httpx.get(href, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_page_without_a_gallery_asks_for_no_neighbours(server, browser):
    browser.get_log("browser")
    open_page(browser, server.url)
    card = upload(browser, PHOTO)
    assert card.get_attribute("data-state") == "done", card.text
    with server.client() as c:
        assert c.get("/v2/models/testnet/gallery").json()["gallery"] is None
    time.sleep(0.5)  # the gallery check has answered by now; nothing is added
    assert not by_css(card, ".neighbours")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
