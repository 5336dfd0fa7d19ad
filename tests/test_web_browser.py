"""The viewer in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright's sync API),
served by our own `serve` code on 127.0.0.1.

Every expectation is computed in Python from the generated manifest.json, then compared with what
the page shows. Without Chromium these tests skip, unless GRAIL_REQUIRE_BROWSER=1 (set by
`make test`), where they fail. `make browser` installs it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from grail_cluster.tools.web import generate as gen
from grail_cluster.tools.web import pages
from grail_cluster.tools.web.serve import make_server
from tests.test_web import XSS, XSS_KEY, make_review_library, write_mp4

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VIEWPORT = {"width": 1400, "height": 2200}  # tall enough that every card of the small library is rendered


def _need_browser():
    why = None
    if not os.path.exists(CHROMIUM):
        why = f"{CHROMIUM} is missing (run `make browser`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "the playwright package is not installed (pip install -e '.[dev]')"
    if why:
        if os.environ.get("GRAIL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GRAIL_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("webview")
    mp4 = write_mp4(root / "clip.mp4")
    review = make_review_library(root, mp4)
    out = root / "site"
    gen.generate(review["lib"], out, metrics=[review["metrics"]], title="Browser review")
    return {**review, "site": out, "manifest": json.loads((out / "manifest.json").read_text())}


@pytest.fixture(scope="module")
def server(site):
    srv = make_server(site["site"], 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's CSP forbids. It also
    # makes the XSS test stricter: the CSP would otherwise block an injected handler even if markup got in.
    ctx = browser.new_context(viewport=VIEWPORT, bypass_csp=True)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    ctx.close()
    assert not errors, errors


def open_viewer(page, server, query: str = ""):
    page.goto(server.url + "index.html" + query)
    page.wait_for_function("document.body.dataset.ready === '1'")
    return page


def shown_names(page) -> list[str]:
    """Names of the rendered cards, in grid order (position)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.card:not([hidden])'))
        .sort((a, b) => Number(a.dataset.pos) - Number(b.dataset.pos))
        .map(c => c.querySelector('.name').textContent)""")


def filtered(page) -> list[str]:
    return page.evaluate("window.grailViewer.filteredNames()")


def expect(page, names: list[str]) -> None:
    """The filter result and the rendered grid both equal ``names`` (in order), and the count says so."""
    assert filtered(page) == names
    assert shown_names(page) == names
    total = page.evaluate("window.grailViewer.total()")
    assert page.locator("#counts").text_content().startswith(f"{len(names)} of {total} motions")


def motions(site) -> list[dict]:
    return site["manifest"]["motions"]


# ----------------------------------------------------------------------------- tests


def test_page_loads_the_library(page, server, site):
    open_viewer(page, server)
    names = [m["name"] for m in motions(site)]
    assert page.locator(".card:not([hidden])").count() == len(names)
    expect(page, names)
    assert page.title() == "Browser review"
    counts = page.locator("#counts").text_content()
    ok = sum(m["success"] is True for m in motions(site))
    known = sum(m["success"] is not None for m in motions(site))
    assert f"success {100 * ok / known:.1f}% ({ok}/{known})" in counts
    assert f"{len(site['with_video'])} with video" in counts
    ARTIFACTS.mkdir(exist_ok=True)
    page.hover(".card >> nth=1")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "web_viewer.png"))
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light  # prefers-color-scheme
    page.screenshot(path=str(ARTIFACTS / "web_viewer_dark.png"))


def test_search_narrows_the_grid(page, server, site):
    open_viewer(page, server)
    page.fill("#q", "APPLE_0__00")  # case-insensitive substring
    expect(page, [m["name"] for m in motions(site) if "apple_0__00" in m["name"].lower()])
    page.fill("#q", "__001")
    expect(page, [m["name"] for m in motions(site) if "__001" in m["name"]])
    page.fill("#q", "no such motion")
    expect(page, [])
    page.fill("#q", "")
    expect(page, [m["name"] for m in motions(site)])


def test_each_filter_narrows_correctly(page, server, site):
    ms = motions(site)
    open_viewer(page, server)
    page.select_option("#obj", "mug")
    expect(page, [m["name"] for m in ms if m["object"] == "mug"])
    page.select_option("#obj", "")
    page.select_option("#ok", "0")
    failed = [m["name"] for m in ms if m["success"] is False]
    assert failed
    expect(page, failed)
    page.select_option("#ok", "1")
    expect(page, [m["name"] for m in ms if m["success"] is True])
    page.select_option("#ok", "")
    page.fill("#fmin", "40")
    page.fill("#fmax", "70")
    expect(page, [m["name"] for m in ms if 40 <= m["frames"] <= 70])
    page.fill("#fmin", "")
    page.fill("#fmax", "")
    page.fill("#pmin", "0.02")
    page.fill("#pmax", "0.05")
    expect(page, [m["name"] for m in ms if m["obj_pos_error"] is not None and 0.02 <= m["obj_pos_error"] <= 0.05])
    page.fill("#pmin", "")
    page.fill("#pmax", "")
    page.select_option("#jk", "mpjpe_l")
    page.fill("#jmax", "10")
    expect(page, [m["name"] for m in ms if m["mpjpe_l"] <= 10])
    page.select_option("#jk", "mpjpe_g")
    page.fill("#jmin", "15")
    page.fill("#jmax", "")
    expect(page, [m["name"] for m in ms if m["mpjpe_g"] >= 15])
    # Filters combine.
    page.select_option("#ok", "1")
    expect(page, [m["name"] for m in ms if m["mpjpe_g"] >= 15 and m["success"] is True])
    page.click("#reset")
    expect(page, [m["name"] for m in ms])


def test_sort_orders_by_any_error(page, server, site):
    ms = motions(site)
    open_viewer(page, server)
    for key in ("obj_pos_error", "obj_ori_error", "mpjpe_g", "mpjpe_l", "frames"):
        page.select_option("#sort", key)
        known = [m for m in ms if m[key] is not None]
        unknown = [m["name"] for m in ms if m[key] is None]
        asc = [m["name"] for m in sorted(known, key=lambda m: (m[key], ms.index(m)))]
        expect(page, asc + unknown)  # unknown values last
        page.click("#dir")
        desc = [m["name"] for m in sorted(known, key=lambda m: (-m[key], -ms.index(m)))]
        expect(page, desc + unknown)
        page.click("#dir")
    assert None in [m["obj_pos_error"] for m in ms]  # the library does exercise the unknown case


def test_video_plays_on_hover_and_pauses_on_leave(page, server, site):
    open_viewer(page, server)
    name = site["with_video"][2]
    card = page.locator(".card", has=page.locator(".name", has_text=name)).first
    video = card.locator("video")
    assert video.evaluate("v => v.muted && v.loop && v.preload === 'metadata' && !v.autoplay")
    card.hover()
    page.wait_for_function("v => !v.paused && v.currentTime > 0", arg=video.element_handle(), timeout=10000)
    page.mouse.move(5, 5)  # leave
    page.wait_for_function("v => v.paused", arg=video.element_handle(), timeout=5000)
    novideo = site["keys"][-1]
    assert novideo not in site["with_video"]
    card = page.locator(".card", has=page.locator(".name", has_text=novideo)).first
    assert card.locator(".novideo").is_visible() and not card.locator("video").is_visible()


def test_detail_view_shows_the_metadata(page, server, site):
    open_viewer(page, server)
    m = next(x for x in motions(site) if x["success"] is False and "video" in x)
    page.locator(".card", has=page.locator(".name", has_text=m["name"])).first.click()
    dialog = page.locator("#detail")
    assert dialog.is_visible()
    assert page.locator("#d-name").text_content() == m["name"]
    table = page.locator("#d-meta").inner_text()
    assert "failed (anchor_pos)" in table
    assert f"{m['obj_pos_error']:.3f} m" in table and f"{m['mpjpe_l']:.3f} mm" in table
    assert f"[{', '.join(f'{v:.3f}' for v in m['meta']['table_pos'])}]" in table
    assert "meta table_quat (wxyz)" in table and "meta object_name" in table
    assert f"step\t{m['step']}" in table and f"shard\t{m['shard']}" in table
    page.wait_for_function("() => !document.getElementById('d-video').paused")
    assert page.locator("#d-video").evaluate("v => v.getAttribute('src')") == m["video"]
    assert parse_qs(urlparse(page.evaluate("location.href")).query)["m"] == [m["name"]]
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    assert page.evaluate("location.search") == ""


def test_url_keeps_and_restores_the_view(page, server, site):
    ms = motions(site)
    open_viewer(page, server)
    page.fill("#q", "pickup")
    page.select_option("#ok", "1")
    page.select_option("#sort", "mpjpe_g")
    page.click("#dir")
    page.fill("#fmin", "30")
    page.wait_for_function("location.search.includes('fmin=30')")  # written once typing pauses
    want = filtered(page)
    assert want == [m["name"] for m in sorted(ms, key=lambda m: (-m["mpjpe_g"], -ms.index(m)))
                    if "pickup" in m["name"] and m["success"] is True and m["frames"] >= 30]
    q = parse_qs(urlparse(page.evaluate("location.href")).query)
    assert q == {"q": ["pickup"], "ok": ["1"], "sort": ["mpjpe_g"], "dir": ["desc"], "fmin": ["30"]}
    shared = page.evaluate("location.href")
    page.reload()
    page.wait_for_function("document.body.dataset.ready === '1'")
    expect(page, want)
    assert page.input_value("#q") == "pickup" and page.input_value("#ok") == "1"
    assert page.input_value("#sort") == "mpjpe_g" and page.input_value("#fmin") == "30"
    # A fresh tab on the shared URL (with an object filter and an open motion) restores it too.
    other = page.context.new_page()
    obj_url = server.url + "index.html?obj=bowl&m=" + ms[3]["name"]
    open_viewer(other, server, "?obj=bowl&m=" + ms[3]["name"])
    assert filtered(other) == [m["name"] for m in ms if m["object"] == "bowl"]
    assert other.locator("#detail").is_visible() and other.locator("#d-name").text_content() == ms[3]["name"]
    assert other.evaluate("location.href") == obj_url and shared != obj_url
    other.close()


def test_keyboard_navigation(page, server, site):
    names = [m["name"] for m in motions(site)]
    open_viewer(page, server)
    cols = page.evaluate("window.grailViewer.columns()")
    assert cols > 1
    sel = lambda: page.evaluate("window.grailViewer.selected()")  # noqa: E731
    assert sel() == names[0]
    page.keyboard.press("ArrowRight")
    assert sel() == names[1]
    assert page.locator(".card.selected .name").text_content() == names[1]
    page.keyboard.press("ArrowDown")
    assert sel() == names[1 + cols]
    page.keyboard.press("ArrowLeft")
    assert sel() == names[cols]
    page.keyboard.press("ArrowUp")
    assert sel() == names[0]
    page.keyboard.press("End")
    assert sel() == names[-1]
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    assert page.locator("#detail").is_visible() and page.locator("#d-name").text_content() == names[1]
    page.keyboard.press("ArrowRight")  # next motion inside the detail view
    assert page.locator("#d-name").text_content() == names[2]
    page.keyboard.press("Escape")
    assert not page.locator("#detail").is_visible()
    assert sel() == names[2]
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("bowl")
    assert filtered(page) == [n for n in names if "bowl" in n]
    assert page.input_value("#q") == "bowl"  # "/" itself was not typed
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.id") != "q"
    page.keyboard.press("ArrowRight")
    assert sel() == [n for n in names if "bowl" in n][1]


def test_untrusted_metadata_is_shown_as_text(page, server, site):
    open_viewer(page, server)
    card = page.locator(".card", has=page.locator(".name", has_text=XSS_KEY)).first
    assert XSS in card.locator(".sub").text_content()
    assert XSS in page.locator("#obj").inner_text()  # the dropdown option, as text
    page.select_option("#obj", XSS)
    expect(page, [XSS_KEY])
    card.click()
    assert XSS in page.locator("#d-meta").inner_text()
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.evaluate("document.querySelectorAll('img').length") == 0


def test_large_manifest_renders_only_visible_cards(page, server, tmp_path_factory):
    """20,000 synthetic motions: the grid keeps a few dozen cards in the DOM, scrolling and search work."""
    big = tmp_path_factory.mktemp("big")
    for name in pages.ASSETS:
        (big / name).write_bytes((pages.assets_dir() / name).read_bytes())
    n = 20000
    objs = ("apple", "mug", "box", "bottle", "bowl")
    ms = [{"name": f"pickup_table__{objs[i % 5]}_{i // 15}__{i % 3:03d}_{i:05d}", "frames": 20 + i % 400,
           "object": objs[i % 5], "success": i % 7 != 0, "obj_pos_error": (i % 101) / 1000, "mpjpe_g": 10 + i % 50}
          for i in range(n)]
    ms.sort(key=lambda m: m["name"])
    (big / "manifest.json").write_text(json.dumps({"title": "big", "source": "/x", "num_motions": n,
                                                   "num_with_video": 0, "motions": ms}))
    srv = make_server(big, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(srv.url)
        page.wait_for_function("document.body.dataset.ready === '1'")
        assert page.evaluate("window.grailViewer.count()") == n
        in_dom = page.locator(".card").count()
        assert 0 < in_dom < 200
        page.evaluate("document.getElementById('scroller').scrollTop = 1e9")
        page.wait_for_function(f"() => Array.from(document.querySelectorAll('.card:not([hidden]) .name'))"
                               f".some(e => e.textContent === {json.dumps(ms[-1]['name'])})")
        assert page.locator(".card").count() < 200
        page.fill("#q", "_1234")
        assert filtered(page) == [m["name"] for m in ms if "_1234" in m["name"]]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# ----------------------------------------------------------------------------- the run's headline


def test_header_shows_the_checkpoints_real_rate_not_the_librarys(browser, tmp_path_factory):
    """A merged library holds only the exported successes; the header must show the checkpoint's eval
    (every shard's metrics_eval.json), and say PARTIAL once a shard's metrics are gone."""
    from tests.test_headline import build_finished_run, count_metrics

    run = build_finished_run(tmp_path_factory.mktemp("headline-browser"))
    evaluated, succeeded = count_metrics(run["metrics"])
    run["metrics"][2].unlink()  # a scratch clean-up took one shard's metrics
    partial = tmp_path_factory.mktemp("partial-site") / "site"
    gen.generate(run["merged"], partial)
    kept_evaluated, kept_succeeded = count_metrics(run["metrics"][:2])
    for site, want, is_partial in (
            (run["web"] / "step_001000", f"succeeded {succeeded}/{evaluated} = {100 * succeeded / evaluated:.1f}%", False),
            (partial, f"succeeded {kept_succeeded}/{kept_evaluated} = {100 * kept_succeeded / kept_evaluated:.1f}%",
             True)):
        srv = make_server(site, 0)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        ctx = browser.new_context(viewport=VIEWPORT, bypass_csp=True)
        try:
            page = ctx.new_page()
            open_viewer(page, srv)
            head = page.locator("#headline")
            assert head.is_visible()
            text = head.text_content()
            assert want in text and "step 1000" in text
            assert ("PARTIAL: the rate covers 2 of 3 shards only" in text) is is_partial
            assert ("partial" in (head.get_attribute("class") or "")) is is_partial
            assert "100.0%" not in page.locator("#counts").text_content()
        finally:
            ctx.close()
            srv.shutdown()
            srv.server_close()
            thread.join(5)
