"""Malformed panels and odd names against every route: no 5xx, each refusal says why, and
the good panels beside a bad one are served as ever.

The corpus is generated here, written with TensorBoard's own protos and event writer
(nothing of tbviz's writer, which would refuse most of it): each case of issue 22 (a step
with no blobs, deeply nested JSON, tiles that are not objects, crops that are strings,
have two values or are null, ``source_size: [0, 0]``, image blobs that are not images or
are truncated, ``"layer": 5`` in a run with convergence scalars, ``"model": 5``, a header
that sets ``"step"``), and more. Every route is asked about every case through
TensorBoard's WSGI app (``--load_fast=false``, the Python data provider), and again
through a live ``tensorboard`` with its default fast loading (the Rust data server).
"""

import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image
from tensorboard.compat.proto import (event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2,
                                      types_pb2)
from tensorboard.summary.writer.event_file_writer import EventFileWriter

import plugin_logs
import tbserver
from test_plugin_routes import PREFIX, make_client
from tbviz.plugin import validate
from tbviz.summary import metadata

RUN = "fuzz/train"
STEPS = (1, 2)
PNG = metadata.encode_png(plugin_logs.photo(0, 16))
WEBP = metadata.encode_image(plugin_logs.photo(1, 16))
ONE_TILE = json.dumps({"tiles": [{"label": "photo 0"}]}).encode()
GOOD_CONTENT = {"version": metadata.VERSION, "kind": metadata.STYLIZED}


def content(**fields) -> bytes:
    return json.dumps({**GOOD_CONTENT, **fields}).encode()


def big_png(width, height) -> bytes:
    """A one-colour PNG of ``width`` x ``height``: a few KB stored, gigabytes decoded."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def crop_header(crop, **tile) -> bytes:
    # a projection (shown in every animation) cut from the good probes panel
    return json.dumps({"tiles": [{"role": "projection", "source": 0, "crop": crop, **tile}]}
                      ).encode()


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="GIF")
    return buf.getvalue()


# tag -> (metadata content, [blobs of each step]); every step gets the same blobs.
CASES = {
    # -- panel metadata (listed under problems, never drawn) --------------------------------
    "tbviz/meta/not-json": (b"{not json", [ONE_TILE, PNG]),
    "tbviz/meta/not-utf8": (b"\xff\xfe\x00", [ONE_TILE, PNG]),
    "tbviz/meta/not-object": (b"[1, 2]", [ONE_TILE, PNG]),
    "tbviz/meta/deep-list": (b"[" * 100_000, [ONE_TILE, PNG]),
    "tbviz/meta/deep-short": (b"[" * 2000 + b"]" * 2000, [ONE_TILE, PNG]),
    "tbviz/meta/deep-object": (b'{"a": ' * 5000 + b"1" + b"}" * 5000, [ONE_TILE, PNG]),
    "tbviz/meta/huge": (content(note="x" * 200_000), [ONE_TILE, PNG]),
    "tbviz/meta/version-string": (content(version="3"), [ONE_TILE, PNG]),
    "tbviz/meta/version-bool": (content(version=True), [ONE_TILE, PNG]),
    "tbviz/meta/version-future": (content(version=metadata.VERSION + 1), [ONE_TILE, PNG]),
    "tbviz/meta/kind-number": (content(kind=5), [ONE_TILE, PNG]),
    "tbviz/meta/kind-unknown": (content(kind="hologram"), [ONE_TILE, PNG]),
    "tbviz/meta/layer-number": (content(kind="topk", layer=5, layer_index=0), [ONE_TILE, PNG]),
    "tbviz/meta/model-number": (content(kind="topk", layer="conv1", model=5), [ONE_TILE, PNG]),
    "tbviz/meta/layer-index-string": (content(kind="topk", layer="conv1", layer_index="1"),
                                      [ONE_TILE, PNG]),
    "tbviz/meta/sources-number": (content(sources=5), [ONE_TILE, PNG]),
    "tbviz/meta/source-size-zero": (content(sources="x", source_size=[0, 0]), [ONE_TILE, PNG]),
    "tbviz/meta/source-size-string": (content(sources="x", source_size="64"), [ONE_TILE, PNG]),
    # -- step headers (each step says why in /frames; 4xx from /blob and /animation) ---------
    "tbviz/step/no-blobs": (content(), []),
    "tbviz/step/header-not-json": (content(), [b"\xff garbage", PNG]),
    "tbviz/step/header-deep": (content(), [b"[" * 100_000, PNG]),
    "tbviz/step/header-not-object": (content(), [b"[]", PNG]),
    "tbviz/step/header-huge": (content(), [json.dumps({"tiles": [{"label": "x" * 600_000}]})
                                           .encode(), PNG]),
    "tbviz/step/tiles-string": (content(), [b'{"tiles": "abc"}', PNG]),
    "tbviz/step/tiles-missing": (content(), [b'{"groups": []}', PNG]),
    "tbviz/step/tiles-not-objects": (content(), [b'{"tiles": [1, "a", null]}', PNG]),
    "tbviz/step/too-many-tiles": (content(), [json.dumps({"tiles": [{}] * 3000}).encode(), PNG]),
    "tbviz/step/more-tiles-than-images": (content(), [b'{"tiles": [{}, {}, {}]}', PNG]),
    "tbviz/step/fewer-tiles-than-images": (content(), [ONE_TILE, PNG, PNG, PNG]),
    "tbviz/step/groups-not-list": (content(), [b'{"tiles": [{}], "groups": 5}', PNG]),
    "tbviz/step/group-units-strings": (content(), [b'{"tiles": [{}], "groups": [{"units": '
                                                   b'["a"]}]}', PNG]),
    "tbviz/step/role-number": (content(), [b'{"tiles": [{"role": 5}]}', PNG]),
    "tbviz/step/crop-string": (content(sources="tbviz/good/probes", source_size=[16, 16]),
                               [crop_header("abc")]),
    "tbviz/step/crop-two": (content(sources="tbviz/good/probes", source_size=[16, 16]),
                            [crop_header([0, 4])]),
    "tbviz/step/crop-null": (content(sources="tbviz/good/probes", source_size=[16, 16]),
                             [crop_header(None)]),
    "tbviz/step/crop-floats": (content(sources="tbviz/good/probes", source_size=[16, 16]),
                               [crop_header([0.5, 4, 0, 4])]),
    "tbviz/step/crop-outside": (content(sources="tbviz/good/probes", source_size=[16, 16]),
                                [crop_header([0, 99, 0, 4])]),
    "tbviz/step/crop-empty": (content(sources="tbviz/good/probes", source_size=[16, 16]),
                              [crop_header([4, 4, 0, 4])]),
    "tbviz/step/crop-no-sources": (content(source_size=[16, 16]), [crop_header([0, 4, 0, 4])]),
    "tbviz/step/crop-source-negative": (
        content(sources="tbviz/good/probes", source_size=[16, 16]),
        [crop_header([0, 4, 0, 4], source=-1)]),
    "tbviz/step/crop-source-size-zero": (content(sources="tbviz/good/probes"),
                                         [crop_header([0, 4, 0, 4], source_size=[0, 0])]),
    "tbviz/step/crop-source-missing": (
        content(sources="tbviz/good/probes", source_size=[16, 16]),
        [crop_header([0, 4, 0, 4], source=7)]),
    "tbviz/step/crop-sources-tag-missing": (
        content(sources="tbviz/no/such/panel", source_size=[16, 16]),
        [crop_header([0, 4, 0, 4])]),
    "tbviz/step/server-fields": (content(), [json.dumps(
        {"tiles": [{"label": "a"}], "step": 999, "wall_time": "<b>x</b>", "images": 7,
         "error": "forged"}).encode(), PNG]),
    # -- images (the header is fine; the bytes are not) -------------------------------------
    "tbviz/image/not-an-image": (content(), [ONE_TILE, b"hello, not a picture"]),
    "tbviz/image/empty": (content(), [ONE_TILE, b""]),
    "tbviz/image/truncated-png": (content(), [ONE_TILE, PNG[:len(PNG) // 2]]),
    "tbviz/image/truncated-webp": (content(), [ONE_TILE, WEBP[:len(WEBP) // 2]]),
    "tbviz/image/gif": (content(), [ONE_TILE, gif()]),
    "tbviz/image/4096-one-colour": (content(), [ONE_TILE, big_png(4096, 4096)]),
    "tbviz/image/12000-one-colour": (content(), [ONE_TILE, big_png(12000, 12000)]),
    "tbviz/image/strip-2049x1": (content(), [ONE_TILE, big_png(2049, 1)]),
}
#: Panels that must be served as ever, beside the bad ones.
GOOD = {
    "tbviz/good/probes": (content(kind="probes"), [json.dumps(
        {"tiles": [{"label": "image 0", "index": 0}]}).encode(),
        metadata.encode_image(plugin_logs.photo(2, 16))]),
    "tbviz/good/stylized": (content(), [json.dumps(
        {"tiles": [{"label": "photo 0"}, {"label": "photo 1"}]}).encode(), PNG, WEBP]),
    "tbviz/good/topk": (content(kind="topk", layer="conv1", layer_index=0, model="net",
                                sources="tbviz/good/probes", source_size=[16, 16]),
                        [json.dumps({"tiles": [
                            {"role": "projection", "value": 1.5, "channel": 0},
                            {"role": "patch", "source": 0, "crop": [0, 8, 4, 12]}]}).encode(),
                         PNG]),
    # fields the tab only shows, of any type: served as written
    "tbviz/good/odd-fields": (content(), [json.dumps({"tiles": [
        {"label": 5, "value": "big", "channel": {"a": 1}, "index": None},
        {"label": ["x"], "image_index": -3}]}).encode(), PNG, PNG]),
}
#: Tags that /panels lists under problems, and words of their reason.
BAD_METADATA = {tag: why for tag, why in {
    "tbviz/meta/not-json": "not JSON",
    "tbviz/meta/not-utf8": "not JSON",
    "tbviz/meta/not-object": "not a JSON object",
    "tbviz/meta/deep-list": "more than the 65,536 allowed",  # 100,000 bytes of "["
    "tbviz/meta/deep-short": "deeper than",
    "tbviz/meta/deep-object": "deeper than",
    "tbviz/meta/huge": "more than the",
    "tbviz/meta/version-string": "no valid version",
    "tbviz/meta/version-bool": "no valid version",
    "tbviz/meta/version-future": "newer than this tbviz reads",
    "tbviz/meta/kind-number": "unknown panel kind 5",
    "tbviz/meta/kind-unknown": "unknown panel kind 'hologram'",
    "tbviz/meta/layer-number": "'layer' must be a string, got 5",
    "tbviz/meta/model-number": "'model' must be a string, got 5",
    "tbviz/meta/layer-index-string": "'layer_index' must be a whole number",
    "tbviz/meta/sources-number": "'sources' must be a string",
    "tbviz/meta/source-size-zero": "[height, width], whole numbers 1..2048, got [0, 0]",
    "tbviz/meta/source-size-string": "[height, width]",
}.items()}
#: Step tags whose frames carry an error, and words of it.
BAD_STEPS = {
    "tbviz/step/no-blobs": "no blobs",
    "tbviz/step/header-not-json": "not JSON",
    "tbviz/step/header-deep": "deeper than",
    "tbviz/step/header-not-object": "not a JSON object",
    "tbviz/step/header-huge": "more than the",
    "tbviz/step/tiles-string": "'tiles' must be a list",
    "tbviz/step/tiles-missing": "'tiles' must be a list",
    "tbviz/step/tiles-not-objects": "tile 0 must be a JSON object",
    "tbviz/step/too-many-tiles": "more than the 2048",
    "tbviz/step/more-tiles-than-images": "3 tiles with images for 1 images",
    "tbviz/step/fewer-tiles-than-images": "1 tiles with images for 3 images",
    "tbviz/step/groups-not-list": "'groups' must be a list",
    "tbviz/step/group-units-strings": "units must be a list of projection indices",
    "tbviz/step/role-number": "'role' must be a string",
    "tbviz/step/crop-string": "crop must be [top, bottom, left, right]",
    "tbviz/step/crop-two": "crop must be",
    "tbviz/step/crop-null": "crop must be",
    "tbviz/step/crop-floats": "crop must be",
    "tbviz/step/crop-outside": "0 <= top < bottom <= 16",
    "tbviz/step/crop-empty": "crop must be",
    "tbviz/step/crop-no-sources": "no sources tag",
    "tbviz/step/crop-source-negative": "source must be the index",
    "tbviz/step/crop-source-size-zero": "source_size must be [height, width]",
}
#: Tags whose steps read fine but whose images (or crop sources) do not: 4xx on the routes
#: that read them.
BAD_IMAGES = {
    "tbviz/image/not-an-image": "not a PNG or WebP image",
    "tbviz/image/empty": "empty",
    "tbviz/image/truncated-png": "truncated",
    "tbviz/image/truncated-webp": "",  # Pillow may find it truncated or not an image at all
    "tbviz/image/gif": "not a PNG or WebP image",
    "tbviz/image/4096-one-colour": "over the 2048 px allowed",
    "tbviz/image/12000-one-colour": "2048 px",
    "tbviz/image/strip-2049x1": "over the 2048 px allowed",
    "tbviz/step/crop-source-missing": "has no image 7",
    "tbviz/step/crop-sources-tag-missing": "tbviz/no/such/panel",
}
#: Odd names of runs, each holding one good panel: every route must serve them.
NAMES = ["运行/фото", 'quo"te/train', "back\\slash/train", "<img src=x onerror=alert(1)>",
         "sp ace & amp;/train", "emoji 🎨"]


def tensor(blobs) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=list(blobs),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(blobs))]))


def write_panels(run_dir, panels, steps=STEPS):
    """``{tag: (content, blobs)}`` as tbviz blob-sequence summaries at each of ``steps``,
    with TensorBoard's event writer (it writes whatever it is given)."""
    write_steps(run_dir, {step: panels for step in steps})


def write_steps(run_dir, panels_at):
    """``{step: {tag: (content, blobs)}}`` in one event file, steps in order. One file,
    because TensorBoard reads a run's files in name order, and names written in one second
    differ only by a counter (``.10`` sorts before ``.9``): a tag's step 1 read after its
    step 2 from another file would drop step 2 as orphaned."""
    writer = EventFileWriter(str(run_dir))
    for step, panels in sorted(panels_at.items()):
        for tag, (raw, blobs) in panels.items():
            md = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_BLOB_SEQUENCE)
            md.plugin_data.plugin_name = metadata.PLUGIN_NAME
            md.plugin_data.content = raw
            value = summary_pb2.Summary.Value(tag=tag, metadata=md, tensor=tensor(blobs))
            writer.add_event(event_pb2.Event(step=step, wall_time=1e9 + step,
                                             summary=summary_pb2.Summary(value=[value])))
    writer.close()


def write_convergence_scalar(run_dir, layer="conv1"):
    """A ConvergenceCallback-like scalar, so that panels' layers are matched to it."""
    writer = EventFileWriter(str(run_dir))
    md = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
    md.plugin_data.plugin_name = "scalars"
    value = summary_pb2.Summary.Value(
        tag=metadata.CONVERGENCE_TAG.format(layer=layer), metadata=md,
        tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5]))
    writer.add_event(event_pb2.Event(step=1, wall_time=1e9, summary=summary_pb2.Summary(
        value=[value])))
    writer.close()


def write_corpus(root):
    """The whole corpus under ``root``: ``fuzz/train`` (every case beside the good panels)
    and one run per odd name. Returns ``root``."""
    write_panels(os.path.join(root, *RUN.split("/")), {**CASES, **GOOD})
    write_convergence_scalar(os.path.join(root, *RUN.split("/")))
    for name in NAMES:
        write_panels(os.path.join(root, name), {"tbviz/good/stylized": GOOD["tbviz/good/stylized"]})
    return root


class Wsgi:
    """GET through TensorBoard's WSGI app (``--load_fast=false``): ``(status, headers,
    body)``."""

    fast = False

    def __init__(self, logdir):
        self.client = make_client(logdir)

    def get(self, route, **params):
        r = self.client.get(PREFIX + route, query_string=params)
        return r.status_code, r.headers, r.get_data()


class Live:
    """GET from a live ``tensorboard`` (default fast loading)."""

    fast = True

    def __init__(self, url):
        self.url = url

    def get(self, route, **params):
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{PREFIX}{route}?{query}", timeout=120) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module", params=["wsgi", pytest.param("live", marks=pytest.mark.slow)])
def server(request, corpus):
    if request.param == "wsgi":
        yield Wsgi(corpus)
        return
    with tbserver.tensorboard_process(corpus) as (url, _):
        tbserver.wait_for(lambda: all(
            tbserver.steps_loaded(url, run, "tbviz/good/stylized", len(STEPS))
            for run in [RUN, *NAMES]), timeout=120)
        yield Live(url)


def get_json(server, route, **params):
    status, _, body = server.get(route, **params)
    assert status == 200, body[:500]
    return json.loads(body)


def every_request(tag, run=RUN):
    """Every route asked about one tag: ``(route, params)``."""
    yield "/steps", {"run": run, "tag": tag}
    yield "/frames", {"run": run, "tag": tag, "steps": ",".join(map(str, STEPS))}
    for index in range(0, 5):
        yield "/blob", {"run": run, "tag": tag, "step": STEPS[0], "index": index}
    for fmt in ("gif", "apng"):
        for patches in (0, 1):
            yield "/animation", {"run": run, "tag": tag, "format": fmt, "patches": patches}


def test_panels_lists_every_good_panel_and_each_bad_one_under_problems(server):
    [item] = [i for i in get_json(server, "/panels")["items"] if i["run"] == RUN]
    listed = {p["tag"] for p in item["panels"]}
    assert set(GOOD) <= listed
    why = {p["tag"]: p["error"] for p in item["problems"]}
    assert set(why) == set(BAD_METADATA)
    for tag, words in BAD_METADATA.items():
        assert words in why[tag], (tag, why[tag])
    assert not listed & set(BAD_METADATA)
    assert item["skipped"] == len(BAD_METADATA)
    # the good top-k panel's layer is matched to the run's convergence scalars
    topk = next(p for p in item["panels"] if p["tag"] == "tbviz/good/topk")
    assert topk["convergence"]["layer"] == "conv1"


@pytest.mark.parametrize("tag", sorted(CASES))
def test_no_route_answers_5xx_and_each_refusal_says_why(server, tag):
    for route, params in every_request(tag):
        status, headers, body = server.get(route, **params)
        assert status < 500, (route, params, status, body[:300])
        if status >= 400:
            text = body.decode("utf-8", "replace")
            assert text.strip() and "<html" not in text.lower(), (route, params, text[:300])
            if route in ("/frames", "/animation") and tag in BAD_METADATA:
                assert tag in text and "not shown" in text


@pytest.mark.parametrize("tag", sorted(BAD_STEPS))
def test_a_bad_step_says_why_in_its_frame_and_is_never_animated(server, tag):
    frames = get_json(server, "/frames", run=RUN, tag=tag, steps="1,2")["frames"]
    assert [f["step"] for f in frames] == [1, 2]
    for f in frames:
        assert BAD_STEPS[tag] in f["error"], f
        assert isinstance(f["tiles"], list) and all(isinstance(t, dict) for t in f["tiles"])
    status, _, body = server.get("/animation", run=RUN, tag=tag)
    assert status == 422 and b"step 1" in body and BAD_STEPS[tag].encode() in body, body


@pytest.mark.parametrize("tag", sorted(BAD_IMAGES))
def test_an_unreadable_image_is_a_4xx_naming_the_panel(server, tag):
    status, _, body = server.get("/animation", run=RUN, tag=tag, format="gif")
    text = body.decode()
    assert status in (404, 422) and tag in text and BAD_IMAGES[tag] in text, text
    if "crop" not in tag:
        status, _, body = server.get("/blob", run=RUN, tag=tag, step=1, index=1)
        assert status == 422 and tag in body.decode() and "image 1" in body.decode(), body


def test_a_header_cannot_set_the_servers_fields(server):
    [f, _] = get_json(server, "/frames", run=RUN, tag="tbviz/step/server-fields",
                      steps="1,2")["frames"]
    assert f["step"] == 1 and f["wall_time"] == 1e9 + 1 and f["images"] == 1
    assert "error" not in f and f["tiles"] == [{"label": "a"}]


def test_the_good_panels_are_served_beside_the_bad_ones(server):
    for tag in GOOD:
        for route, params in every_request(tag):
            status, _, body = server.get(route, **params)
            index = params.get("index")
            if route == "/blob" and not 1 <= index <= len(GOOD[tag][1]) - 1:
                assert status == 404, body
                continue
            assert status == 200, (route, params, body[:300])
            if route == "/frames":
                assert all("error" not in f for f in json.loads(body)["frames"])
            if route == "/animation":
                assert Image.open(io.BytesIO(body)).n_frames == len(STEPS)
    # fields the tab only shows come back as written, whatever their type
    [f, _] = get_json(server, "/frames", run=RUN, tag="tbviz/good/odd-fields",
                      steps="1,2")["frames"]
    assert f["tiles"][0] == {"label": 5, "value": "big", "channel": {"a": 1}, "index": None}


@pytest.mark.parametrize("name", NAMES)
def test_any_run_name_works_on_every_route(server, name):
    tag = "tbviz/good/stylized"
    unreadable = server.fast and ('"' in name or "\\" in name)
    [item] = [i for i in get_json(server, "/panels")["items"] if i["run"] == name]
    assert [p["tag"] for p in item["panels"]] == [tag]
    for route, params in every_request(tag, run=name):
        status, headers, body = server.get(route, **params)
        if route == "/blob" and not 1 <= params["index"] <= 2:
            assert status == 404
        elif unreadable and route != "/steps":
            # TensorBoard's data server cannot read its blobs: said, with the flag that can
            assert status == 422 and b"--load_fast=false" in body, body
        else:
            assert status == 200, (route, params, body[:300])
        if route == "/animation" and status == 200:
            disposition = headers["Content-Disposition"]
            disposition.encode("latin-1")  # what an HTTP header can hold
            saved = urllib.parse.unquote(disposition.split("filename*=UTF-8''")[1])
            letters = [c for c in name if c.isalnum()]
            assert [c for c in saved if c.isalnum()][:len(letters)] == letters, saved
            assert saved.endswith(".gif" if params["format"] == "gif" else ".png")
