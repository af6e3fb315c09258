"""The gallery page in headless Chromium (Debian `chromium` + the `playwright` Python package).

No browser download: Playwright drives the system Chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image, ImageStat  # noqa: E402

from bestshot.server import create_app  # noqa: E402
from bestshot.server.background import BackgroundServer  # noqa: E402

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEW = {"width": 1000, "height": 700}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _stage1(root: Path) -> None:
    (root / "stage1").mkdir(parents=True)
    (root / "metadata").mkdir()
    for i, colour in enumerate([(220, 30, 30), (30, 30, 220)]):
        Image.new("RGB", (48, 48), colour).save(root / "stage1" / f"cand{i}.png")
        (root / "metadata" / f"cand{i}.json").write_text(json.dumps({"seed": 100 + i, "clip": 0.25 + i / 100}))


def test_gallery_runs_curation_and_screenshot(browser, tiny_sd15, tiny_clip, tmp_path):
    curate = tmp_path / "outputs"
    _stage1(curate)
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "images_out"), curate_dir=str(curate))
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post(
            "/v1/generate",
            json={
                "prompt": "a yellow star",
                "n_images": 3,
                "steps_base": 2,
                "width": 32,
                "height": 32,
                "clip_min": -1,
                "save_candidates": True,
                "exact_best": False,
            },
        )
        assert r.status_code == 200, r.text
        run = r.json()

    with BackgroundServer(app) as url:
        page = browser.new_page(viewport=VIEW, device_scale_factor=1)
        try:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")

            # runs, newest first, with candidates, seeds and scores
            page.wait_for_selector("[data-testid=run]")
            assert page.locator("[data-testid=run]").count() == 1
            text = page.locator("[data-testid=runs]").inner_text()
            assert "a yellow star" in text and run["run_id"] in text
            assert page.locator("[data-testid=candidate]").count() == 3
            for cand in run["candidates"]:
                assert f"seed {cand['seed']}" in text and f"{cand['clip']:.4f}" in text
            page.wait_for_function(
                "[...document.querySelectorAll('[data-testid=candidate] img')]"
                ".every(i => i.complete && i.naturalWidth === 32)"
            )

            # stage 1: delete then undo, keep
            items = page.locator("[data-testid=stage1-item]")
            page.wait_for_selector("[data-testid=stage1-item]")
            assert items.count() == 2
            page.locator("[data-testid=stage1-item][data-name='cand0.png'] [data-testid=delete]").click()
            page.wait_for_selector("[data-testid=trash-item]")
            assert items.count() == 1
            assert (curate / "trash" / "cand0.png").is_file() and not (curate / "stage1" / "cand0.png").exists()
            page.locator("[data-testid=undo]").click()
            page.wait_for_function("document.querySelectorAll('[data-testid=stage1-item]').length === 2")
            assert (curate / "stage1" / "cand0.png").is_file() and (curate / "metadata" / "cand0.json").is_file()
            page.locator("[data-testid=stage1-item][data-name='cand1.png'] [data-testid=keep]").click()
            page.wait_for_selector("[data-testid=stage1-item].kept")
            assert json.loads((curate / "curation.json").read_text())["kept"] == ["cand1.png"]
            page.locator("[data-testid=stage1-item][data-name='cand0.png'] [data-testid=star]").click()
            page.wait_for_selector("[data-testid=stage1-item][data-name='cand0.png'].starred")
            assert json.loads((curate / "curation.json").read_text())["starred"] == ["cand0.png"]
            # every click was a preference row: delete, undo, keep, star
            rows = [json.loads(x) for x in (curate / "taste" / "preferences.jsonl").read_text().splitlines()]
            assert [(r["image"], r["verdict"]) for r in rows] == [
                ("stage1/cand0.png", "delete"),
                ("stage1/cand0.png", "undo"),
                ("stage1/cand1.png", "keep"),
                ("stage1/cand0.png", "star"),
            ]

            page.locator("[data-testid=upscale]").click()
            page.wait_for_function("document.getElementById('message').textContent.length > 0")
            msg = page.locator("[data-testid=message]").inner_text()
            assert "unavailable" in msg and "--curate-config" in msg  # no workflow config given to this server
            page.wait_for_function("document.getElementById('progress').textContent.includes('jobs done')")

            shot = tmp_path / "gallery.png"
            page.screenshot(path=str(shot))
            assert errors == []
        finally:
            page.close()

    img = Image.open(shot).convert("RGB")
    assert img.size == (VIEW["width"], VIEW["height"])
    stat = ImageStat.Stat(img)
    assert max(stat.stddev) > 20  # not blank
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    assert img.getpixel((5, 5))[0] < 60  # the dark header bar is drawn
    # the red and blue stage-1 thumbnails are on screen
    px = list(img.getdata())
    assert any(r > 200 and g < 60 and b < 60 for r, g, b in px) and any(b > 200 and r < 60 and g < 60 for r, g, b in px)


def test_gallery_with_bearer_token(browser, tmp_path):
    """With --token the page reads it from #token=..., sends it on every call and loads images as blobs."""
    out = tmp_path / "images_out"
    out.mkdir()
    Image.new("RGB", (16, 16), (0, 200, 0)).save(out / "r1_seed3_clip0.3000.png")
    app = create_app(model="embedded", out_dir=str(out), curate_dir=str(tmp_path / "outputs"), token="tok")
    app.state.store.index.add(
        {
            "run_id": "r1",
            "created": "2026-01-01T00:00:00+00:00",
            "ok": True,
            "sd_prompt": "a green square",
            "model": "embedded",
            "best_seed": 3,
            "best_clip": 0.3,
            "candidates": [{"seed": 3, "clip": 0.3, "path": str(out / "r1_seed3_clip0.3000.png")}],
            "img_path": str(out / "r1_seed3_clip0.3000.png"),
        }
    )
    with BackgroundServer(app) as url:
        page = browser.new_page(viewport=VIEW)
        try:
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('runs').textContent.includes('cannot load runs')")
            page.goto(url + "/#token=tok")
            page.reload()
            page.wait_for_selector("[data-testid=run]")
            assert "a green square" in page.locator("[data-testid=runs]").inner_text()
            page.wait_for_function("document.querySelector('[data-testid=candidate] img').naturalWidth === 16")
        finally:
            page.close()
