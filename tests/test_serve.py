"""`nextscale serve`: the JSON API over real HTTP, and the page driven by headless Chromium.

The server runs the shipped Fashion-MNIST model on a free loopback port. Results are compared with
`nextscale.sample` / `nextscale.edit` called directly, so they cannot pass by accident.
"""

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import nextscale
from nextscale.editing import inpaint_keep_mask
from nextscale.inference_options import seeded_generators
from nextscale.serve import ModelRunner, make_server

MAX_UPLOAD = 300_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def var():
    torch.set_num_threads(1)
    return nextscale.load_pretrained("fashion-mnist")


@pytest.fixture(scope="module")
def runner(var):
    return ModelRunner(var, "fashion-mnist", torch.device("cpu"), max_images=8, max_upload_bytes=MAX_UPLOAD,
                       max_pixels=MAX_PIXELS)


def start(runner, **kwargs):
    server = make_server(runner, "127.0.0.1", 0, quiet=True, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def stop(server):
    server.shutdown()
    server.server_close()
    server.app.jobs.stop()


@pytest.fixture(scope="module")
def url(runner):
    server, base = start(runner)
    yield base
    stop(server)


def request(url, data=None, content_type="application/json"):
    """(status, decoded JSON) of a GET, or of a POST when data is given (dict -> JSON, bytes as is)."""
    if isinstance(data, (dict, list)):
        data = json.dumps(data).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_done(base, job_id):
    for _ in range(1200):
        status = request(f"{base}/api/jobs/{job_id}")[1]
        if status["status"] in ("done", "error"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {status}")


def decode(data_url) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.array(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def as_uint8(images_BCHW) -> np.ndarray:
    return nextscale.images.to_uint8_hwc(images_BCHW.float())


def png_bytes(array, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shipped_images(runner):
    """The editing view's test images, as data URLs at the model's resolution."""
    from nextscale.serve.app import App
    return [entry["image"] for entry in App(runner, None, quiet=True).test_images()]


# ---------------------------------------------------------------- the JSON API

def test_generate_equals_sample_and_reports_every_scale(url, var):
    status, job = request(f"{url}/api/generate", {"class": "Trouser", "seed": 5, "num_images": 2, "cfg": 4,
                                                  "top_k": 100, "top_p": 0.9})
    assert status == 202 and job["status"] in ("queued", "running", "done")
    job = wait_done(url, job["id"])
    assert job["status"] == "done", job["error"]
    result = job["result"]
    assert result["labels"] == [1, 1] and result["seeds"] == [5, 6]
    expected = nextscale.sample(var, [1, 1], generator=seeded_generators([5, 6]), cfg=4, top_k=100, top_p=0.9)
    got = np.stack([decode(u) for u in result["images"]])
    assert got.shape == (2, 32, 32, 3)
    assert np.abs(got.astype(int) - as_uint8(expected.images).astype(int)).max() <= 1
    # One entry per scale, coarse to fine: scale k is the decode of the first k+1 token maps.
    assert [s["pn"] for s in job["scales"]] == [1, 2, 3, 4, 5, 6, 8]
    for k in (0, 3):
        partial = var.tokenizer.decode_tokens(expected.tokens[:k + 1], num_scales=k + 1).add(1).mul(0.5)
        shown = np.stack([decode(u) for u in job["scales"][k]["images"]])
        assert np.abs(shown.astype(int) - as_uint8(partial).astype(int)).max() <= 1
    assert np.array_equal(np.stack([decode(u) for u in job["scales"][-1]["images"]]), got)
    assert decode(result["grid"]).shape == (36, 70, 3)  # two 32px images with 2px padding
    # A client that has seen 5 scales gets only the others.
    again = request(f"{url}/api/jobs/{job['id']}?from=5")[1]
    assert [s["pn"] for s in again["scales"]] == [6, 8]


def test_generate_with_a_guidance_schedule_equals_sample(url, var):
    info = request(f"{url}/api/info")[1]
    assert info["defaults"]["guidance"] == "linear"
    assert info["guidance_choices"] == ["linear", "constant"] + [f"truncated:{n}" for n in range(7)]
    status, job = request(f"{url}/api/generate", {"class": "Bag", "seed": 2, "num_images": 2,
                                                  "guidance": "truncated:3"})
    assert status == 202
    job = wait_done(url, job["id"])
    assert job["status"] == "done", job["error"]
    assert job["result"]["settings"]["guidance"] == "truncated:3"
    expected = nextscale.sample(var, [8, 8], seed=2, per_image_seeds=True, guidance="truncated:3")
    got = np.stack([decode(u) for u in job["result"]["images"]])
    assert np.abs(got.astype(int) - as_uint8(expected.images).astype(int)).max() <= 1


@pytest.mark.parametrize("body, message", [
    ({"cfg": -1}, "cfg must be a number between 0 and 100, got -1"),
    ({"cfg": "nan"}, "cfg must be a number"),
    ({"top_p": 1.5}, "top_p must be a number between 0 and 1"),
    ({"top_k": 2.5}, "top_k must be a whole number"),
    ({"seed": "abc"}, "seed must be a whole number, got 'abc'"),
    ({"num_images": 0}, "num_images must be between 1 and 8, got 0"),
    ({"num_images": 9}, "num_images must be between 1 and 8, got 9"),
    ({"class": "Dragon"}, "unknown class 'Dragon'"),
    ({"class": 11}, "class id 11 is outside [0, 10]"),
    ({"guidance": "cosine"}, "guidance must be 'linear' (the paper's ramp, the default), 'constant', or "
                             "'truncated:N' with N a whole number in [0, 7]"),
    ({"guidance": "truncated:8"}, "got 'truncated:8'"),
    ({"guidance": 3}, "guidance must be a text such as 'linear', got 3"),
])
def test_invalid_generate_values_are_refused_with_a_message(url, body, message):
    status, answer = request(f"{url}/api/generate", body)
    assert status == 400
    assert message in answer["error"]


def test_invalid_json_and_unknown_paths(url):
    status, answer = request(f"{url}/api/generate", b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    status, answer = request(f"{url}/api/generate", [1, 2])
    assert status == 400 and "must be a JSON object" in answer["error"]
    assert request(f"{url}/api/jobs/0123456789abcdef")[0] == 404
    assert request(f"{url}/api/nothing")[0] == 404


def test_upload_is_resized_as_the_model_sees_it(url, runner):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    status, answer = request(f"{url}/api/image", png_bytes(photo), "application/octet-stream")
    assert status == 200
    expected = nextscale.images.to_model_input(torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255, 32)
    assert np.abs(decode(answer["image"]).astype(int) - as_uint8(expected)[0].astype(int)).max() <= 1


def test_non_images_and_huge_images_are_refused(url, runner):
    status, answer = request(f"{url}/api/image", b"hello, I am text", "application/octet-stream")
    assert status == 400 and "not an image" in answer["error"]
    truncated = png_bytes(np.full((64, 64, 3), 7, np.uint8))[:60]
    status, answer = request(f"{url}/api/image", truncated, "application/octet-stream")
    assert status == 400 and ("damaged" in answer["error"] or "not an image" in answer["error"])
    # Few bytes, many pixels (a decompression bomb in miniature): refused before decoding.
    huge = png_bytes(np.zeros((1000, 1500), np.uint8))
    assert len(huge) < MAX_UPLOAD
    status, answer = request(f"{url}/api/image", huge, "application/octet-stream")
    assert status == 413 and "1500x1000" in answer["error"] and "megapixels" in answer["error"]
    # Too many bytes.
    noise = png_bytes(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    assert len(noise) > MAX_UPLOAD
    status, answer = request(f"{url}/api/image", noise, "application/octet-stream")
    assert status == 413 and "limit is 0.3 MB" in answer["error"]
    # The same limits hold for an image inside an edit request.
    data_url = "data:image/png;base64," + base64.b64encode(huge).decode()
    status, answer = request(f"{url}/api/edit", {"image": data_url, "box": [0, 0, 0.5, 0.5], "mode": "inpaint"})
    assert status == 413 and "megapixels" in answer["error"]
    status, answer = request(f"{url}/api/edit", {"image": "data:image/png;base64,aGVsbG8=", "box": [0, 0, 1, 1],
                                                 "mode": "inpaint"})
    assert status == 400 and "not an image" in answer["error"]


def test_edit_equals_nextscale_edit(url, var, shipped_images):
    image = shipped_images[0]  # a T-shirt
    box = [0.0, 0.0, 0.5, 1.0]
    status, job = request(f"{url}/api/edit", {"image": image, "box": box, "mode": "class", "class": "Dress",
                                              "seed": 3, "num_images": 2})
    assert status == 202
    job = wait_done(url, job["id"])
    assert job["status"] == "done", job["error"]
    result = job["result"]
    assert result["label"] == 3 and len(job["scales"]) == 7
    original = torch.from_numpy(decode(image)).permute(2, 0, 1).float().div(255)[None]
    keep = inpaint_keep_mask(box, 8)
    expected = nextscale.edit(var, original.expand(2, -1, -1, -1), keep, labels=3,
                              generator=seeded_generators([3, 4]), **var.extra_config["sampling"])
    got = np.stack([decode(u) for u in result["images"]])
    assert np.abs(got.astype(int) - as_uint8(expected.images).astype(int)).max() <= 1
    assert np.array_equal(decode(result["input"]), decode(image))
    mask = decode(result["mask"])  # the regenerated half is shaded blue, the kept half unchanged
    assert np.array_equal(mask[20:], decode(image)[20:]) and not np.array_equal(mask[:12], decode(image)[:12])


@pytest.mark.parametrize("body, message", [
    ({"mode": "inpaint"}, "drag a rectangle"),
    ({"mode": "inpaint", "box": [0.5, 0.5, 0.5, 0.9]}, "covers no token"),
    ({"mode": "inpaint", "box": [0, 0, 1.5, 1]}, "box must be a number between 0 and 1"),
    ({"mode": "paint", "box": [0, 0, 1, 1]}, "mode must be one of inpaint, outpaint, class"),
    ({"mode": "class", "box": [0, 0, 1, 1]}, "a class edit needs a class"),
    ({"mode": "outpaint", "box": [0, 0, 1, 1]}, "nothing is left to regenerate"),
])
def test_invalid_edits_are_refused_with_a_message(url, shipped_images, body, message):
    status, answer = request(f"{url}/api/edit", {"image": shipped_images[1], **body})
    assert status == 400
    assert message in answer["error"]


def test_queue_positions_and_a_full_queue(runner):
    server, base = start(runner, max_queue=2, start_worker=False)  # the worker starts once both wait
    try:
        first = request(f"{base}/api/generate", {"class": 0, "num_images": 1})[1]
        second = request(f"{base}/api/generate", {"class": 1, "num_images": 1})[1]
        assert (first["status"], first["position"]) == ("queued", 1)
        assert (second["status"], second["position"]) == ("queued", 2)
        assert request(f"{base}/api/jobs/{second['id']}")[1]["position"] == 2
        status, answer = request(f"{base}/api/generate", {"class": 2, "num_images": 1})
        assert status == 503 and "busy" in answer["error"]
        server.app.jobs.start()
        assert wait_done(base, first["id"])["result"]["labels"] == [0]
        assert wait_done(base, second["id"])["result"]["labels"] == [1]
    finally:
        stop(server)


def test_time_limit_stops_a_job_between_scales(runner):
    server, base = start(runner, time_limit=1e-9)
    try:
        job = wait_done(base, request(f"{base}/api/generate", {"num_images": 1})[1]["id"])
        assert job["status"] == "error"
        assert "stopped after scale 1 of 7" in job["error"] and "time limit" in job["error"]
        assert len(job["scales"]) == 1 and job["result"] is None
    finally:
        stop(server)


def test_shipped_test_images_are_fashion_mnist_test_images(request):
    from nextscale.serve.example_images import load_test_images
    images, labels, indices = load_test_images()
    assert images.shape == (20, 32, 32) and labels == [c for c in range(10) for _ in range(2)]
    test_images, test_labels = request.getfixturevalue("fashion_mnist")
    assert np.array_equal(test_images[indices], images) and test_labels[indices].tolist() == labels


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_command_starts_answers_and_stops(tmp_path, stop_signal):
    from nextscale.commands.serve import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "nextscale.cli", "serve", "--port", "0", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert "open http://127.0.0.1:" in line, line + process.stderr.read()
        base = line.split("open ", 1)[1].split()[0].rstrip("/")
        info = request(f"{base}/api/info")[1]
        assert info["resolution"] == 32 and info["class_names"][7] == "Sneaker" and info["time_limit"] == 120
        with urllib.request.urlopen(base + "/") as page:
            assert b"<script src=\"/static/app.js\">" in page.read()
    finally:
        process.send_signal(stop_signal)  # both stop it cleanly (SIGTERM: what a service manager sends)
        # about 2 s on an idle machine; generous where training runs share the processor
        code = process.wait(timeout=120)
        err = process.stderr.read()
        assert code == 0 and "terminate called" not in err, err  # once an abort at exit, exit -6
        assert "stopped" in process.stdout.read()


def test_serve_command_refuses_bad_options(capsys):
    from nextscale.cli import main
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port must be in [0, 65535]" in capsys.readouterr().err
    assert main(["serve", "--time-limit", "0"]) == 2
    assert "--time-limit must be > 0" in capsys.readouterr().err


# ---------------------------------------------------------------- the page in headless Chromium

def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright's Python package is not installed (pip install -e '.[test]' installs it)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium browser: `make test` installs Debian's `chromium` when run as root; "
                    "otherwise run `apt-get install -y chromium`")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


def open_page(browser, base):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready]", timeout=30_000)
    return page


@pytest.fixture(scope="module")
def page(browser, url):
    page = open_page(browser, url)
    yield page
    assert not page.errors, f"JavaScript errors in the page: {page.errors}"
    page.close()


def test_browser_generates_images_of_the_chosen_class(page, var):
    page.click("#tab-generate")
    assert page.input_value("#gen-guidance") == "linear"  # the default: the paper's ramp
    page.select_option("#gen-class", "Sneaker")
    page.fill("#gen-seed", "3")
    page.fill("#gen-num", "2")
    page.click("#gen-submit")
    page.wait_for_selector("#gen-out[data-state=done]", timeout=60_000)
    assert page.eval_on_selector("#gen-grid", "e => [e.naturalWidth, e.naturalHeight]") == [70, 36]
    # Every scale got a column: 2 images x 7 scales, each 32x32.
    headers = page.eval_on_selector_all("#gen-scales tr:first-child th", "es => es.map(e => e.textContent)")
    assert headers[1:] == [f"{n}\u00d7{n}" for n in (1, 2, 3, 4, 5, 6, 8)]
    sizes = page.eval_on_selector_all("#gen-scales img", "es => es.map(e => [e.naturalWidth, e.naturalHeight])")
    assert sizes == [[32, 32]] * 14
    shown = decode(page.get_attribute("#gen-grid", "src"))
    expected = nextscale.sample(var, [7, 7], generator=seeded_generators([3, 4]), **var.extra_config["sampling"])
    grid = nextscale.images.make_grid(expected.images, ncols=2)
    assert np.abs(shown.astype(int) - grid.astype(int)).max() <= 1
    assert page.get_attribute("#gen-download", "href").startswith("data:image/png;base64,")


def test_browser_inpaints_a_test_image(page, var):
    page.click("#tab-edit")
    page.wait_for_selector(".test-image")
    page.locator(".test-image").nth(2).click()  # a trouser
    page.wait_for_function("document.getElementById('edit-canvas').dataset.loaded === '1'")
    box = page.locator("#edit-canvas").bounding_box()
    page.mouse.move(box["x"] + 0.25 * box["width"], box["y"] + 0.25 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.75 * box["width"], box["y"] + 0.75 * box["height"], steps=4)
    page.mouse.up()
    text = page.inner_text("#edit-box-text")
    y0, x0, y1, x1 = (float(v) for v in text.split("=")[1].split(","))
    assert abs(y0 - 0.25) < 0.02 and abs(x1 - 0.75) < 0.02
    page.select_option("#edit-mode", "inpaint")
    page.fill("#edit-seed", "1")
    page.select_option("#edit-guidance", "truncated:5")  # the ramp on 5 of the 7 scales
    page.click("#edit-submit")
    page.wait_for_selector("#edit-out[data-state=done]", timeout=60_000)
    figures = page.eval_on_selector_all("#edit-result figcaption", "es => es.map(e => e.textContent)")
    assert figures == ["input", "mask (blue: regenerated)", "result, seed 1"]
    sources = page.eval_on_selector_all("#edit-result img", "es => es.map(e => e.src)")
    original = decode(sources[0])
    expected = nextscale.edit(var, torch.from_numpy(original).permute(2, 0, 1).float().div(255)[None],
                              inpaint_keep_mask((y0, x0, y1, x1), 8), labels=10, generator=seeded_generators([1]),
                              guidance="truncated:5", **var.extra_config["sampling"])
    assert np.abs(decode(sources[2]).astype(int) - as_uint8(expected.images)[0].astype(int)).max() <= 1
    assert page.get_attribute("#edit-result a.download", "download") == "nextscale_edit_seed1.png"


def test_browser_shows_the_message_for_invalid_values(page, tmp_path):
    page.click("#tab-generate")
    page.fill("#gen-cfg", "-1")
    page.click("#gen-submit")
    page.wait_for_selector("#gen-error:not([hidden])")
    assert "cfg must be a number between 0 and 100, got -1" in page.inner_text("#gen-error")
    page.fill("#gen-cfg", "5")
    page.click("#tab-edit")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not a picture")
    page.set_input_files("#edit-file", str(not_an_image))
    page.wait_for_selector("#edit-error:not([hidden])")
    assert "not an image" in page.inner_text("#edit-error")
    # A real photo of another size is accepted and shown as the model will see it: no error, 32x32.
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(photo)
    page.evaluate("document.getElementById('edit-canvas').dataset.loaded = ''")
    page.set_input_files("#edit-file", str(photo))
    page.wait_for_function("document.getElementById('edit-canvas').dataset.loaded === '1'")
    assert page.is_hidden("#edit-error")


class GatedRunner(ModelRunner):
    """Stops every job after its third scale until the test releases it: what the page shows meanwhile
    can then be checked without any timing."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = threading.Semaphore(0)

    def _scale_reporter(self, job):
        report = super()._scale_reporter(job)

        def on_scale(si, tokens):
            report(si, tokens)
            if si == 2:
                assert self.release.acquire(timeout=60), "the test never released the job"
        return on_scale


def test_browser_shows_queue_position_and_scales_as_they_are_generated(browser, var):
    runner = GatedRunner(var, "fashion-mnist", torch.device("cpu"), max_images=8)
    server, base = start(runner)
    try:
        first = request(f"{base}/api/generate", {"num_images": 1})[1]  # holds the worker after 3 scales
        for _ in range(1200):
            if request(f"{base}/api/jobs/{first['id']}")[1]["scales_done"] == 3:
                break
            time.sleep(0.05)
        page = open_page(browser, base)
        page.fill("#gen-num", "2")
        page.click("#gen-submit")
        page.wait_for_function("document.getElementById('gen-status').textContent.includes('position 1')")
        assert page.inner_text("#gen-status") == ("waiting: position 1 in the queue (one generation runs at a "
                                                  "time)")
        runner.release.release()  # the first job finishes; the page's job runs up to its third scale
        page.wait_for_function("document.querySelectorAll('#gen-scales tr:first-child th').length === 4")
        assert page.inner_text("#gen-status") == "generating: scale 3 of 7 done"
        assert page.locator("#gen-scales img").count() == 2 * 3 and page.get_attribute("#gen-grid", "src") is None
        runner.release.release()
        page.wait_for_selector("#gen-out[data-state=done]", timeout=60_000)
        assert page.locator("#gen-scales img").count() == 2 * 7
        assert page.inner_text("#gen-status").startswith("done in")
        assert not page.errors
        page.close()
    finally:
        runner.release.release()
        stop(server)
