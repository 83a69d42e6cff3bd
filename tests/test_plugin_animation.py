"""``/animation``: a panel across steps as an animated GIF or APNG, decoded back with Pillow.

The run is written by the real DeconvnetCallback (plugin_logs.write_settle_run). Each
decoded frame is checked against the panel's tiles read independently from the event
files (``eventfiles.panels``, crops cut from their sources), placed where the layout of
:mod:`tbviz.plugin.animation` says.
"""

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageSequence

import eventfiles
import plugin_logs
from test_plugin_routes import PREFIX, make_client
from tbviz.plugin import animation

TAG = "tbviz/deconvnet/conv1/evolution"


@pytest.fixture(scope="module")
def settle(tmp_path_factory):
    root, run_dir = plugin_logs.settle_logs(tmp_path_factory)
    return make_client(root), run_dir


def get_animation(client, **params):
    r = client.get(PREFIX + "/animation", query_string={"run": "settle/train", "tag": TAG,
                                                        **params})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r


def decoded_frames(body: bytes):
    picture = Image.open(io.BytesIO(body))
    return picture, [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(picture)]


def rgb(a):
    return np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]


def expected_cells(run_dir, patches):
    """Per logged step, the cells the animation must show: each projection tile, and with
    ``patches`` its patch (enlarged to the projection's size) beside it."""
    _, steps = eventfiles.panels(run_dir, TAG)
    out = []
    for step, header, pics in steps:
        roles = [t["role"] for t in header["tiles"]]
        proj = [rgb(p) for p, r in zip(pics, roles) if r == "projection"]
        patch = [rgb(p) for p, r in zip(pics, roles) if r == "patch"]
        cells = []
        for n, p in enumerate(proj):
            if not patches:
                cells.append([(p, 0)])
                continue
            side = np.asarray(Image.fromarray(patch[n]).resize(p.shape[1::-1], Image.NEAREST))
            cells.append([(p, 0), (side, p.shape[1] + animation.PAD)])  # (picture, x offset)
        out.append((step, cells))
    return out


def check_frames(frames, expected, exact=True):
    """Every tile of every frame where the layout puts it: ``ceil(sqrt(n))`` cells a row
    under the label strip, each centred in the largest cell over all frames, all enlarged
    by one whole factor."""
    def width(parts):
        return parts[-1][1] + parts[-1][0].shape[1]

    cell_h = max(p.shape[0] for _, cells in expected for c in cells for p, _ in c)
    cell_w = max(width(c) for _, cells in expected for c in cells)
    factor = max(1, math.ceil(animation.MIN_CELL / max(cell_h, cell_w)))
    errors = []
    for frame, (step, cells) in zip(frames, expected):
        cols = math.ceil(math.sqrt(len(cells)))
        for i, parts in enumerate(cells):
            r, c = divmod(i, cols)
            y0 = animation.LABEL_HEIGHT + r * (cell_h * factor + animation.PAD)
            x0 = c * (cell_w * factor + animation.PAD) + (cell_w - width(parts)) * factor // 2
            for picture, dx in parts:
                big = picture.repeat(factor, 0).repeat(factor, 1)
                y = y0 + (cell_h - picture.shape[0]) * factor // 2
                x = x0 + dx * factor
                shown = frame[y:y + big.shape[0], x:x + big.shape[1]].astype(int)
                errors.append(np.abs(shown - big).mean())
                if exact:
                    np.testing.assert_array_equal(shown, big, err_msg=f"step {step}, cell {i}")
    return errors


@pytest.mark.parametrize("patches", [False, True], ids=["projections", "with-patches"])
def test_apng_has_one_frame_per_logged_step_showing_its_tiles(settle, patches):
    client, run_dir = settle
    r = get_animation(client, format="apng", patches=int(patches))
    assert r.mimetype == "image/apng"
    name = "settle_train-tbviz_deconvnet_conv1_evolution.png"
    assert r.headers["Content-Disposition"] == (
        f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}")
    picture, frames = decoded_frames(r.get_data())
    expected = expected_cells(run_dir, patches)
    assert picture.format == "PNG" and picture.is_animated
    assert len(frames) == len(expected) == plugin_logs.SETTLE_EPOCHS  # every logged step
    assert picture.info["loop"] == 0 and picture.info["duration"] == animation.FRAME_MS
    check_frames(frames, expected)  # lossless: pixel for pixel
    # the label strip says the step: no two frames are alike there
    strips = {f[:animation.LABEL_HEIGHT].tobytes() for f in frames}
    assert len(strips) == len(frames)


def test_gif_of_chosen_steps_in_the_order_asked(tmp_path_factory):
    # the 50-epoch run of a model that learns: its tiles change from step to step
    root, runs = plugin_logs.dashboard_logs(tmp_path_factory)
    client = make_client(root)
    r = client.get(PREFIX + "/animation", query_string=dict(
        run="long/train", tag=TAG, format="gif", steps="50,1,20", duration=250))
    assert r.status_code == 200 and r.mimetype == "image/gif"
    picture, frames = decoded_frames(r.get_data())
    assert picture.format == "GIF" and len(frames) == 3
    assert picture.info["duration"] == 250
    by_step = dict(expected_cells(runs["long/train"], False))
    expected = [(s, by_step[s]) for s in (50, 1, 20)]
    # GIF holds 256 colours a frame: Pillow's adaptive palette may move a pixel a little,
    # never by as much as another step's tile (contrast-normalized to 0..255) differs.
    errors = check_frames(frames, expected, exact=False)
    assert max(errors) < 2, errors
    swapped = check_frames(frames, [expected[1], expected[0], expected[2]], exact=False)
    assert max(swapped) > 10, "steps 1 and 50 look alike: this run cannot tell the order"


def test_an_animation_of_a_panel_without_roles_shows_every_tile(tmp_path):
    plugin_logs.write_stylized(tmp_path / "style" / "train", [1, 2, 3])
    client = make_client(tmp_path)
    r = client.get(PREFIX + "/animation", query_string=dict(
        run="style/train", tag="tbviz/stylized/probes", format="apng"))
    assert r.status_code == 200
    _, frames = decoded_frames(r.get_data())
    assert len(frames) == 3
    for frame, step in zip(frames, (1, 2, 3)):
        # 3 photos of 64 px (>= MIN_CELL, so not enlarged), 2 a row
        for i in range(3):
            row, col = divmod(i, 2)
            y = animation.LABEL_HEIGHT + row * (64 + animation.PAD)
            x = col * (64 + animation.PAD)
            np.testing.assert_array_equal(frame[y:y + 64, x:x + 64],
                                          plugin_logs.photo(10 * i + step))


BAD = [
    (dict(format="webm"), 400, "gif, apng"),
    (dict(steps="1,99"), 404, "99"),
    (dict(steps="1;ls"), 400, "steps"),
    (dict(steps=",".join(["1"] * 501)), 400, "500"),
    (dict(duration=5), 400, "duration"),
    (dict(tag="tbviz/nope"), 404, "tbviz/nope"),
    (dict(run="../secret"), 404, "secret"),
]


@pytest.mark.parametrize("params,status,names", BAD, ids=[str(b[0])[:30] for b in BAD])
def test_bad_animation_requests_say_why(settle, params, status, names):
    client, _ = settle
    r = client.get(PREFIX + "/animation", query_string={"run": "settle/train", "tag": TAG,
                                                        **params})
    assert r.status_code == status
    assert names in r.get_data(as_text=True)
