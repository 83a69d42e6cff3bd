"""End to end: a real ``tensorboard --logdir`` server, the tbviz tab in headless Chromium.

The server is the stock ``tensorboard`` command when tbviz is installed (its entry point
registers the tab), otherwise a three-line launcher adding the plugin to TensorBoard's own
plugins. Either way it loads with the default fast loading (the Rust data server).
Screenshots land in the test's tmp dir, and also in ``$TBVIZ_SCREENSHOT_DIR`` if set
(``docs/dashboard.png`` comes from there).
"""

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import plugin_logs
import tbserver
import test_plugin_fuzz as fuzz
from tbviz.plugin import tbviz_plugin
from tbviz.summary import metadata

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = """
import sys
from tensorboard import default, program
from tbviz.plugin.tbviz_plugin import TbvizLoader
tb = program.TensorBoard(plugins=default.get_static_plugins() + [TbvizLoader])
tb.configure(argv=sys.argv)
sys.exit(tb.main())
"""
TIMEOUT_MS = 60_000


@contextlib.contextmanager
def tab_on(browser, logdir, run, tag):
    """``(page, frame)``: the tbviz tab of a ``tensorboard --logdir`` (the launcher) opened in
    ``browser`` once ``run`` has a step of ``tag``; no JavaScript error may happen meanwhile."""
    port = tbserver.free_port()
    log = open(Path(logdir).parent / "tensorboard.log", "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "--logdir", str(logdir),
                             "--port", str(port), "--host", "127.0.0.1"], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not tbserver.steps_loaded(url, run, tag, 1):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"tensorboard did not come up:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/#tbviz")
        yield page, page.wait_for_selector("iframe").content_frame()
        assert not errors, f"JavaScript errors in the tab: {errors}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def _installed_entry_point():
    """The ``tensorboard_plugins`` entry point named tbviz, if tbviz is installed."""
    for ep in importlib.metadata.entry_points(group="tensorboard_plugins"):
        if ep.name == "tbviz":
            return ep
    return None


def _server_command(logdir, port):
    args = ["--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1"]
    tensorboard = Path(sys.executable).parent / "tensorboard"
    ep = _installed_entry_point()
    # The real command only when the installed entry point is *this* checkout's plugin.
    if tensorboard.exists() and ep is not None and ep.load() is tbviz_plugin.TbvizLoader:
        return [str(tensorboard), *args], "tensorboard command (entry point)"
    return [sys.executable, "-c", LAUNCHER, *args], "launcher (tbviz not installed)"


GOOD_STYLIZED = fuzz.content(), [json.dumps({"tiles": [{"label": "photo 0"}, {"label": "photo 1"}]})
                                  .encode(), fuzz.PNG, fuzz.WEBP]


def write_mixed_run(run_dir):
    """Bad panels among good ones, each view's: written with TensorBoard's own writer (see
    test_plugin_fuzz), steps 1 and 2."""
    unit = {"role": "projection", "value": 2.5, "channel": 1, "image_index": 0}
    layer = {"layer": "a", "layer_index": 0, "model": "m"}
    panels = {
        "tbviz/stylized/good": GOOD_STYLIZED,
        "tbviz/stylized/bad": (fuzz.content(), [b'{"tiles": "nope"}', fuzz.PNG]),
        "tbviz/stylized/odd": (fuzz.content(), [json.dumps({"tiles": [
            {"label": 5}, {"label": {"a": 1}}]}).encode(), fuzz.PNG, fuzz.PNG]),
        "tbviz/stylized/broken": (fuzz.content(), [json.dumps({"tiles": [
            {"label": "fine"}, {"label": "cut"}]}).encode(), fuzz.PNG, fuzz.PNG[:200]]),
        # fields the tab only shows, of other types than it writes: drawn as text
        "tbviz/deconvnet/a/topk": (fuzz.content(kind="topk", **layer), [json.dumps({"tiles": [
            dict(unit, value="big", channel={"x": 1}, image_index="3", row=[1], col=None)]})
            .encode(), fuzz.PNG]),
        "tbviz/deconvnet/a/perimage": (fuzz.content(kind="perimage", **layer), [json.dumps(
            {"tiles": [unit]}).encode(), fuzz.PNG]),
        "tbviz/deconvnet/b/perimage": (fuzz.content(kind="perimage", layer="b", layer_index=1,
                                                    model="m"), [b"[]", fuzz.PNG]),
        "tbviz/deconvnet/c/topk": (fuzz.content(kind="topk", layer="c", model=5),
                                   [json.dumps({"tiles": [unit]}).encode(), fuzz.PNG]),
    }
    # an evolution whose second step is unreadable: its first is drawn, the second says why
    evolution, content = "tbviz/deconvnet/a/evolution", fuzz.content(kind="evolution", **layer)
    fuzz.write_steps(run_dir, {
        1: {**panels, evolution: (content, [json.dumps({"tiles": [unit]}).encode(), fuzz.PNG])},
        2: {**panels, evolution: (content, [b'{"tiles": [1]}', fuzz.PNG])}})


@pytest.fixture(scope="module")
def browser():
    with tbserver.browser() as b:  # skips, saying what is missing, without playwright/chromium
        yield b


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory):
    # a copy: the reload test adds a step to it
    shared, runs = plugin_logs.dashboard_logs(tmp_path_factory)
    logdir = tmp_path_factory.mktemp("browser") / "logs"
    shutil.copytree(shared, logdir)
    runs = {run: str(logdir / Path(path).relative_to(shared)) for run, path in runs.items()}
    plugin_logs.write_two_networks(logdir / "two_nets" / "train")
    runs["scan/train"] = plugin_logs.write_scan_run(str(logdir / "scan"))
    runs["settle/train"] = plugin_logs.write_settle_run(str(logdir / "settle"))
    plugin_logs.write_from_the_future(logdir / "future" / "train")
    write_mixed_run(logdir / "mixed" / "train")
    fuzz.write_panels(logdir / 'quote"d' / "train", {"tbviz/stylized/good": GOOD_STYLIZED})
    port = tbserver.free_port()
    cmd, how = _server_command(logdir, port)
    log = open(logdir.parent / "tensorboard.log", "w+")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # ready when the data server has loaded all 50 steps of the long run
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"tensorboard ({how}) did not come up:\n{log.read()[-3000:]}")
            try:
                steps = tbserver.get(f"{url}/data/plugin/tbviz/steps?run=long/train"
                                     "&tag=tbviz/deconvnet/conv1/evolution&limit=1", timeout=10)
                if steps["total"] == 50:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        print(f"serving {logdir} with the {how} at {url}")
        yield url, runs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture
def tab(browser, server):
    """``(page, frame, blob_requests)``: the tbviz tab opened, its iframe's first tiles shown."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    errors, blobs = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: "/data/plugin/tbviz/blob?" in r.url and blobs.append(r.url))
    page.goto(f"{server[0]}/#tbviz")
    frame = page.wait_for_selector("iframe").content_frame()
    frame.wait_for_selector("figure.tile img")
    yield page, frame, blobs
    page.close()
    assert not errors, f"JavaScript errors in the tab: {errors}"


def all_decoded(frame, min_count):
    """Bring every tile into view (they are lazy), wait until loaded, check each decoded."""
    frame.wait_for_function("n => document.querySelectorAll('img').length >= n", arg=min_count)
    for img in frame.query_selector_all("img"):
        img.scroll_into_view_if_needed()
    frame.wait_for_function("() => [...document.images].every(i => i.complete)")
    sizes = frame.evaluate("() => [...document.images].map(i => [i.naturalWidth, i.src])")
    bad = [src for w, src in sizes if w == 0]
    assert not bad, f"images that did not decode: {bad}"
    frame.evaluate("() => window.scrollTo(0, 0)")
    return len(sizes)


def shoot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path))
    if os.environ.get("TBVIZ_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["TBVIZ_SCREENSHOT_DIR"]) / name)
    return path


def texts(frame, selector):
    return [t.strip() for t in frame.locator(selector).all_inner_texts()]


def test_topk_projections_beside_patches_with_values(tab, server, tmp_path):
    page, frame, _ = tab
    assert all_decoded(frame, 18) == 18  # 9 projections + 9 patches of conv1 at the last step
    assert texts(frame, ".panel h3")[0].startswith("deconvnet/conv1/topk")
    assert "step 5 (5 of 5)" in frame.locator(".steps output").inner_text()
    tiles = plugin_logs.header(server[1]["cnn/train"], "tbviz/deconvnet/conv1/topk")["tiles"]
    captions = texts(frame, ".zf figcaption")
    assert len(captions) == len(tiles) == 18
    for t, caption in zip(tiles, captions):
        assert caption.splitlines() == [f"{t['value']:.4g} · map {t['channel']}",
                                        f"img {t['image_index']} · ({t['row']}, {t['col']})"]
    assert shoot(page, tmp_path, "dashboard.png").stat().st_size > 10_000


def test_keyboard_layer_picker_and_step_slider(tab):
    page, frame, _ = tab
    selected = "[role=option][aria-selected=true]"
    assert texts(frame, "[role=option]") == ["conv1", "block/inner_conv"]  # network order
    frame.focus(selected)
    page.keyboard.press("ArrowDown")
    assert frame.evaluate("document.activeElement.textContent") == "block/inner_conv"
    assert frame.locator(selected).inner_text() == "block/inner_conv"
    frame.wait_for_function("() => document.querySelector('.panel h3')?.textContent"
                            ".startsWith('deconvnet/block/inner_conv/topk')")
    page.keyboard.press("Home")
    assert frame.locator(selected).inner_text() == "conv1"
    # the step slider: focusable, arrow keys move through the logged steps
    frame.focus(".steps input[type=range]")
    page.keyboard.press("ArrowLeft")
    frame.wait_for_function("() => document.querySelector('.steps output').textContent"
                            " === 'step 4 (4 of 5)'")
    # tiles of step 4; patches are crops of the probe images, written once per run
    frame.wait_for_function("() => [...document.images].every(i => i.closest('.crop') ? "
                            "i.src.includes('probes') : i.src.includes('step=4&'))")
    assert all_decoded(frame, 18) == 18
    # views are tabs: arrow keys move between them
    frame.focus("[role=tab][aria-selected=true]")
    page.keyboard.press("ArrowRight")
    assert frame.locator("[role=tab][aria-selected=true]").inner_text() == "Evolution"


def test_layers_of_two_networks_are_listed_apart_in_their_order(tab):
    page, frame, _ = tab
    frame.get_by_role("checkbox", name="two_nets/train", exact=True).check()
    frame.get_by_role("checkbox", name="cnn/train", exact=True).uncheck()
    assert texts(frame, ".layers li") == ["transform_net", "conv1", "res5",
                                          "vgg19", "block1_conv1", "block3_conv1"]
    selected = "[role=option][aria-selected=true]"
    assert frame.locator(selected).inner_text() == "conv1"
    frame.focus(selected)
    for key, layer in [("End", "block3_conv1"), ("ArrowUp", "block1_conv1"), ("ArrowUp", "res5")]:
        page.keyboard.press(key)
        assert frame.locator(selected).inner_text() == layer
    frame.wait_for_function("() => document.querySelector('.panel h3')?.textContent"
                            ".startsWith('deconvnet/res5/topk')")
    assert all_decoded(frame, 2) == 2


def show_instead_of_cnn(frame, run, view):
    """Show ``run`` (not the default cnn/train) in ``view``, as a user would pick them."""
    frame.get_by_role("checkbox", name=run, exact=True).check()
    frame.get_by_role("checkbox", name="cnn/train", exact=True).uncheck()
    frame.get_by_role("tab", name=view).click()


def test_evolution_of_50_steps_fetches_only_the_chosen_columns(tab, server, tmp_path):
    page, frame, blobs = tab
    show_instead_of_cnn(frame, "long/train", "Evolution")
    frame.wait_for_selector("table.evo")
    # default columns: the 1st, 2nd, 5th, 10th, 20th and 50th (= last) logged step
    heads = texts(frame, "table.evo thead th")
    assert heads == ["map", "step 1", "step 2", "step 5", "step 10", "step 20", "step 50"]
    # rows: the fixed feature maps the callback chose at train begin, in its order
    tiles = plugin_logs.header(server[1]["long/train"], "tbviz/deconvnet/conv1/evolution")["tiles"]
    maps = [t["channel"] for t in tiles if t["role"] == "projection"]
    assert texts(frame, "table.evo tbody th") == [f"map {c}" for c in maps]
    n = len(maps) * 6
    assert all_decoded(frame, n) == n
    # One image per map and step, nothing twice (a map's tile that is also a top-k tile of
    # its step is that panel's image, stored once), no patch; only the chosen steps fetched.
    shown = frame.evaluate("() => [...document.images].map(i => i.src)")
    assert len(shown) == len(set(shown)) == n
    assert {int(re.search(r"step=(\d+)", u).group(1)) for u in shown} == {1, 2, 5, 10, 20, 50}
    assert not [u for u in shown if "probes" in u]
    fetched = [u for u in blobs if "run=long%2Ftrain" in u]  # the top-k view showed step 50
    assert {int(re.search(r"step=(\d+)", u).group(1)) for u in fetched} == {1, 2, 5, 10, 20, 50}
    shoot(page, tmp_path, "dashboard-evolution.png")
    # choosing a step adds its column, in step order
    frame.get_by_role("button", name="30", exact=True).click()
    frame.wait_for_function("() => document.querySelectorAll('table.evo thead th').length === 8")
    assert texts(frame, "table.evo thead th")[6] == "step 30"
    assert all_decoded(frame, n + len(maps)) == n + len(maps)


def test_runs_side_by_side_stylized_and_attribution(tab, server, tmp_path):
    page, frame, _ = tab
    frame.get_by_role("checkbox", name="style/train", exact=True).check()
    frame.get_by_role("tab", name="Stylized probes").click()
    frame.wait_for_selector("table.evo")
    assert texts(frame, ".run h2") == ["style/train"]
    assert "No Stylized probes panels in cnn/train" in frame.locator("main").inner_text()
    assert texts(frame, "table.evo tbody th") == ["photo 0", "photo 1", "photo 2"]
    assert all_decoded(frame, 9) == 9  # steps 1, 2, 8 (spread of 5 logged steps)
    frame.get_by_role("tab", name="Top-k").click()
    frame.get_by_role("checkbox", name="long/train", exact=True).check()
    frame.wait_for_function("() => document.querySelectorAll('section.run').length === 2")
    assert texts(frame, ".run h2") == ["cnn/train", "long/train"]
    assert all_decoded(frame, 18 + 8) == 26  # top 9 of cnn, top 4 of long; tiles and patches
    shoot(page, tmp_path, "dashboard-compare.png")
    frame.get_by_role("tab", name="Attribution").click()
    frame.wait_for_selector(".grid.wide")
    tiles = plugin_logs.header(server[1]["cnn/train"], "tbviz/attribution/grad_cam")["tiles"]
    assert texts(frame, ".grid.wide figcaption") == [
        f"image {t['image_index']}\ntarget {t['target']}" for t in tiles]
    assert len(tiles) == 3 and all_decoded(frame, 3) == 3


def test_feature_maps_view_shows_each_maps_top_k_beside_patches(tab, server, tmp_path):
    page, frame, _ = tab
    show_instead_of_cnn(frame, "scan/train", "Feature maps")
    frame.wait_for_selector(".fmap")
    header = plugin_logs.header(server[1]["scan/train"], "tbviz/deconvnet/conv1/featuremaps")
    assert texts(frame, ".fmap h4") == [f"map {g['channel']}" for g in header["groups"]]
    assert len(header["groups"]) == 3
    # per map: its 4 projections, then their 4 patches, captioned with value and image
    captions = texts(frame, ".fmap figcaption")
    projections = [t for t in header["tiles"] if t["role"] == "projection"]
    patches = [t for t in header["tiles"] if t["role"] == "patch"]
    want = []
    for g in header["groups"]:
        for side in (projections, patches):
            want += [f"{side[u]['value']:.4g}\nimg {side[u]['image_index']}" for u in g["units"]]
    assert captions == want
    assert all_decoded(frame, 24) == 24
    shoot(page, tmp_path, "dashboard-featuremaps.png")
    # a map's title opens the evolution of the fixed maps
    frame.get_by_role("button", name="map 1", exact=True).click()
    frame.wait_for_selector("table.evo")
    assert frame.get_by_role("tab", name="Evolution").get_attribute("aria-selected") == "true"
    assert texts(frame, "table.evo tbody th") == ["map 0", "map 1", "map 2"]
    assert texts(frame, "table.evo tr.focus th") == ["map 1"]  # the map clicked
    # that evolution downloads as an animated APNG, one frame per logged step (2 epochs)
    with page.expect_download() as download:
        frame.get_by_role("button", name="APNG", exact=True).click()
    path = tmp_path / "featuremaps-evolution.png"
    download.value.save_as(path)
    from PIL import Image

    picture = Image.open(path)
    assert picture.format == "PNG" and picture.is_animated and picture.n_frames == 2


def test_through_the_layers_follows_each_probe_photo_and_panels_download_as_png(tab, server,
                                                                               tmp_path):
    page, frame, _ = tab
    frame.get_by_role("tab", name="Through the layers").click()
    frame.wait_for_selector("table.layers-through")
    # columns: the logged layers in network order; rows: the 4 probe photos
    assert texts(frame, "table.layers-through thead th") == ["", "conv1", "block/inner_conv"]
    assert texts(frame, "table.layers-through tbody th") == [f"photo {i}" for i in range(4)]
    captions = frame.locator("table.layers-through tbody tr").nth(2).locator("figcaption")
    for n, layer in enumerate(("conv1", "block/inner_conv")):
        t = plugin_logs.header(server[1]["cnn/train"], f"tbviz/deconvnet/{layer}/perimage")
        t = t["tiles"][2]
        assert t["image_index"] == 2
        assert captions.nth(n).inner_text().splitlines() == [f"{t['value']:.4g}",
                                                             f"map {t['channel']}"]
    assert all_decoded(frame, 8) == 8
    # any panel downloads as one PNG of what is on screen
    frame.get_by_role("tab", name="Top-k").click()
    frame.wait_for_selector(".zf figure.tile img")
    all_decoded(frame, 18)
    with page.expect_download() as download:
        frame.locator(".panel h3 button.download").first.click()
    path = tmp_path / "topk.png"
    download.value.save_as(path)
    from PIL import Image

    picture = Image.open(path)
    assert picture.format == "PNG" and min(picture.size) > 100


def test_evolution_marks_where_the_layer_settled_and_downloads_as_an_animation(tab, tmp_path):
    page, frame, _ = tab
    show_instead_of_cnn(frame, "settle/train", "Evolution")
    frame.wait_for_selector("table.evo th.settled")
    # conv1 settled at step 3 (plugin_logs.SETTLE_KICKS): its column is shown by default,
    # beside the spread of the 7 logged steps, and marked, the rule in its tooltip
    heads = texts(frame, "table.evo thead th")
    assert heads[0] == "map" and [h.split("settled")[0].strip() for h in heads[1:]] == [
        "step 1", "step 2", "step 3", "step 5", "step 7"]
    marked = frame.locator("table.evo th.settled")
    assert marked.count() == 1 and marked.inner_text().startswith("step 3")
    assert "0.99 for 3 logs in a row" in marked.get_attribute("title")
    assert frame.locator("table.evo td.settled").count() == 3  # one per fixed map
    assert frame.locator(".settled-note").inner_text().replace("\n", " ") == \
        "settled at step 3"
    shoot(page, tmp_path, "dashboard-settled.png")
    # every logged step, downloaded as an animated GIF: one frame per step
    frame.get_by_role("button", name="all", exact=True).click()
    frame.wait_for_function("() => document.querySelectorAll('table.evo thead th').length === 8")
    with page.expect_download() as download:
        frame.get_by_role("button", name="GIF", exact=True).click()
    path = tmp_path / "evolution.gif"
    download.value.save_as(path)
    assert download.value.suggested_filename == \
        "settle_train-tbviz_deconvnet_conv1_evolution.gif"
    from PIL import Image

    picture = Image.open(path)
    assert picture.format == "GIF" and picture.n_frames == plugin_logs.SETTLE_EPOCHS
    # conv2 was watched and never settled: said, nothing marked
    frame.locator("[role=option]", has_text="conv2").click()
    frame.wait_for_function("() => document.querySelector('.settled-note')?.textContent"
                            " === 'not settled yet'")
    assert frame.locator("table.evo th.settled").count() == 0
    # the cnn run has no convergence scalars: no word about settling at all
    show_instead_of = frame.get_by_role("checkbox", name="settle/train", exact=True)
    frame.get_by_role("checkbox", name="cnn/train", exact=True).check()
    show_instead_of.uncheck()
    frame.wait_for_selector("table.evo")
    assert frame.locator(".settled-note").count() == 0


def test_panels_of_a_newer_tbviz_are_said_not_drawn(tab):
    page, frame, _ = tab
    frame.get_by_role("checkbox", name="future/train", exact=True).check()
    frame.wait_for_selector(".problems li")
    assert sorted(texts(frame, ".problems li")) == [
        "future/train: tbviz/future/hologram not shown: unknown panel kind 'hologram' (this "
        f"tbviz knows {', '.join(metadata.KINDS)}); upgrade tbviz to see it",
        f"future/train: tbviz/future/topk not shown: panel format version {metadata.VERSION + 1}"
        f" is newer than this tbviz reads ({metadata.VERSION}); upgrade tbviz to see it"]
    assert texts(frame, ".run h2") == ["cnn/train"]  # no column, no tile for it


def test_entry_point_registers_the_tab():
    ep = _installed_entry_point()
    if ep is None:
        pytest.skip("tbviz is not installed, so its tensorboard_plugins entry point is not "
                    "registered (scripts/test.sh installs it with pip install -e .)")
    assert ep.value == "tbviz.plugin.tbviz_plugin:TbvizLoader"
    assert ep.load() is tbviz_plugin.TbvizLoader


def test_reload_follows_a_run_that_is_still_training(tab, server):
    page, frame, _ = tab
    frame.get_by_role("tab", name="Attribution").click()
    frame.wait_for_function("() => document.querySelector('.steps output')?.textContent"
                            " === 'step 5 (5 of 5)'")
    # training goes on: one more logged step lands in the run's directory
    plugin_logs.write_attribution(server[1]["cnn/train"], [6], n=1)
    deadline = time.monotonic() + 60
    while tbserver.get(f"{server[0]}/data/plugin/tbviz/steps?run=cnn/train"
                       "&tag=tbviz/attribution/grad_cam")["total"] < 6:
        assert time.monotonic() < deadline, "the data server never picked up the new step"
        time.sleep(0.5)
    frame.get_by_role("button", name="Reload").click()
    frame.wait_for_function("() => document.querySelector('.steps output')?.textContent"
                            " === 'step 6 (6 of 6)'")
    frame.wait_for_selector(".grid.wide figcaption")
    assert texts(frame, ".grid.wide figcaption") == ["image 0\ntarget 0"]
    assert all_decoded(frame, 1) == 1


def section(frame, tag):
    """The panel section whose title is ``tag`` (without ``tbviz/``)."""
    return frame.locator("section.panel", has=frame.locator(
        "h3", has_text=tag.removeprefix("tbviz/")))


def test_a_bad_panel_shows_its_own_error_and_every_other_panel_is_drawn(tab, tmp_path):
    page, frame, _ = tab
    show_instead_of_cnn(frame, "mixed/train", "Stylized probes")
    frame.wait_for_function("() => document.querySelectorAll('.panel table.evo').length === 3")
    titles = texts(frame, ".panel h3")
    assert [t.split("/")[1][:len(n)] for t, n in zip(titles, ["bad", "broken", "good", "odd"])] \
        == ["bad", "broken", "good", "odd"]
    # the bad panel keeps its title and says why, inside itself, for each step
    assert texts(section(frame, "stylized/bad"), ".error") == [
        f"step {s}: header field 'tiles' must be a list, got 'nope'" for s in (1, 2)]
    # an image the server will not serve gives its reason (fetched) in its place
    section(frame, "stylized/broken").scroll_into_view_if_needed()
    frame.wait_for_function("() => document.querySelectorAll('.tile-error').length === 2")
    for why in texts(section(frame, "stylized/broken"), ".tile-error"):
        assert "tbviz/stylized/broken" in why and "truncated" in why and "HTTP 422" in why
    assert section(frame, "stylized/broken").locator("img").count() == 2  # "fine", 2 steps
    # fields of other types than tbviz writes are shown as text (once its panel is drawn:
    # each panel fetches its steps on its own, so it may be drawn after the others)
    section(frame, "stylized/odd").locator("tbody th").nth(1).wait_for()
    assert texts(section(frame, "stylized/odd"), "tbody th") == ["5", '{"a":1}']
    assert all_decoded(frame, 4 + 4 + 2) == 10  # good, odd, and broken's good tiles
    assert texts(frame, ".problems li") == [
        "mixed/train: tbviz/deconvnet/c/topk not shown: panel metadata field 'model' must "
        "be a string, got 5"]
    shoot(page, tmp_path, "dashboard-bad-panel.png")

    # one column fails, the others are drawn
    frame.get_by_role("tab", name="Through the layers").click()
    frame.wait_for_selector("table.layers-through")
    heads = texts(frame, "table.layers-through thead th")
    assert heads[:2] == ["", "a"] and heads[2].startswith("b")
    assert texts(frame, "table.layers-through thead .error")[0] == \
        "tbviz/deconvnet/b/perimage at step 2: header is not a JSON object"
    assert all_decoded(frame, 1) == 1

    # a step that fails says so; the step beside it is drawn
    frame.get_by_role("tab", name="Evolution").click()
    frame.wait_for_selector("table.evo")
    assert texts(section(frame, "deconvnet/a/evolution"), "p.error") == [
        "step 2: tile 0 must be a JSON object, got 1"]
    assert texts(frame, "table.evo thead th") == ["map", "step 1", "step 2"]
    assert all_decoded(frame, 1) == 1

    # odd caption fields never break the top-k view
    frame.get_by_role("tab", name="Top-k").click()
    frame.wait_for_selector(".zf figcaption")
    assert texts(frame, ".zf figcaption") == ['big · map {"x":1}\nimg 3 · ([1], )']


def test_a_run_name_the_data_server_cannot_read_names_the_flag_that_can(tab):
    page, frame, _ = tab
    show_instead_of_cnn(frame, 'quote"d/train', "Stylized probes")
    frame.wait_for_selector("section.panel .error")
    [error] = texts(section(frame, "stylized/good"), ".error")
    assert "quote\"d/train" in error and "--load_fast=false" in error and "HTTP 422" in error
