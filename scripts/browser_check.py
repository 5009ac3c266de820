"""The `serve` page in a real browser: headless Chromium draws three digits as pointer strokes
on the canvas, and the predictions the page shows are checked; a screenshot of each is saved.

Not run in CI (it needs Chromium). On Debian:

    apt-get install chromium chromium-driver
    pip install selenium
    cargo build --release
    python3 scripts/browser_check.py [--checkpoint runs/<run>/best.safetensors] [--out docs]
"""

import argparse
import math
import re
import subprocess
import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO_ROOT = Path(__file__).resolve().parent.parent
PAD = 280


def strokes(digit):
    """Strokes of `digit` as lists of (x, y) points on the 280×280 pad."""
    if digit == 1:
        return [[(140, 50), (140, 230)]]
    if digit == 7:
        return [[(80, 60), (200, 60), (120, 230)]]
    if digit == 0:
        return [[(140 + 55 * math.sin(t / 24 * 2 * math.pi), 140 - 85 * math.cos(t / 24 * 2 * math.pi))
                 for t in range(25)]]
    raise ValueError(digit)


def densify(points, step=6):
    """The points of a polyline every `step` pixels, as a hand moving across would report them."""
    out = [points[0]]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step))
        out += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]
    return out


def draw(driver, pad, digit):
    """Draws `digit` with a pen-type pointer: down, moves, up per stroke."""
    for stroke in strokes(digit):
        builder = ActionBuilder(driver, mouse=PointerInput("pen", "pen"))
        pen = builder.pointer_action
        points = densify(stroke)
        # Offsets are from the element's centre.
        pen.move_to(pad, int(points[0][0] - PAD / 2), int(points[0][1] - PAD / 2))
        pen.pointer_down()
        for x, y in points[1:]:
            pen.move_to(pad, int(x - PAD / 2), int(y - PAD / 2))
        pen.pointer_up()
        builder.perform()


def start_server(binary, checkpoint):
    server = subprocess.Popen([str(binary), "serve", "--device", "cpu", "--addr", "127.0.0.1:0",
                               "--checkpoint", str(checkpoint)],
                              stderr=subprocess.PIPE, text=True, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    for line in server.stderr:
        found = re.search(r"serving on (http://\S+)", line)
        if found:
            return server, found.group(1)
    raise SystemExit(f"{binary} serve exited without serving (exit code {server.wait()})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO_ROOT / "tests/fixtures/trained.safetensors")
    p.add_argument("--bin", type=Path, default=REPO_ROOT / "target/release/resnet-mnist")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs", help="where the screenshots go")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server, base = start_server(args.bin, args.checkpoint)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--window-size=820,760", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=options)
    failures = 0
    try:
        driver.get(base)
        wait = WebDriverWait(driver, 10)
        wait.until(lambda d: "parameters" in d.find_element(By.ID, "model").text)
        pad = driver.find_element(By.ID, "pad")
        for digit in (7, 1, 0):
            driver.find_element(By.ID, "clear").click()
            draw(driver, pad, digit)
            wait.until(lambda d: d.find_element(By.ID, "digit").text != "?")
            # The last stroke's request is the last one answered: wait for the page to settle.
            driver.execute_script("return new Promise(r => setTimeout(r, 500))")
            shown = driver.find_element(By.ID, "digit").text
            confidence = driver.find_element(By.ID, "confidence").text
            shot = args.out / f"serve-{digit}.png"
            driver.save_screenshot(str(shot))
            ok = shown == str(digit)
            failures += not ok
            print(f"drew {digit}: the page shows {shown} ({confidence}) {'ok' if ok else 'WRONG'}; {shot}")
    finally:
        driver.quit()
        server.terminate()
        server.wait()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
