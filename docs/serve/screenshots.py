"""Make the README's screenshots of `nextscale serve`: docs/serve/generate.png and docs/serve/edit.png.

    python docs/serve/screenshots.py        # needs Debian's chromium and the playwright package

Starts the web app with the shipped Fashion-MNIST model on a free loopback port and drives the page
with headless Chromium, as tests/test_serve.py does.
"""

import threading
from pathlib import Path

import torch
from playwright.sync_api import sync_playwright

import nextscale
from nextscale.serve import ModelRunner, make_server

OUT = Path(__file__).resolve().parent


def main() -> None:
    runner = ModelRunner(nextscale.load_pretrained("fashion-mnist"), "fashion-mnist", torch.device("cpu"))
    server = make_server(runner, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 980, "height": 800})
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        page.wait_for_selector("body[data-ready]")

        page.select_option("#gen-class", "Ankle boot")
        page.fill("#gen-num", "6")
        page.click("#gen-submit")
        page.wait_for_selector("#gen-out[data-state=done]")
        page.screenshot(path=OUT / "generate.png", full_page=True)

        page.click("#tab-edit")
        page.wait_for_selector(".test-image")
        page.locator(".test-image").nth(0).click()  # a T-shirt
        page.wait_for_function("document.getElementById('edit-canvas').dataset.loaded === '1'")
        box = page.locator("#edit-canvas").bounding_box()
        page.mouse.move(box["x"] + 2, box["y"] + 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] - 2, box["y"] + 0.6 * box["height"], steps=4)
        page.mouse.up()
        page.select_option("#edit-mode", "class")
        page.select_option("#edit-class", "Dress")
        page.fill("#edit-num", "4")
        page.click("#edit-submit")
        page.wait_for_selector("#edit-out[data-state=done]")
        page.screenshot(path=OUT / "edit.png", full_page=True)
        browser.close()
    server.shutdown()
    for name in ("generate.png", "edit.png"):
        print(f"{OUT / name}: {(OUT / name).stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
