"""The dashboard's HTTP routes, through TensorBoard's own WSGI app and data provider.

The app is built the way ``tensorboard --logdir ... --load_fast=false`` builds it
(flags parsed by the plugin loaders, TensorBoard's Python data ingester, every
middleware) over runs written by the real ``DeconvnetCallback`` (see plugin_logs),
and the answers are checked against the event files read back independently with
``EventAccumulator``.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard import program
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_ingester
from tensorboard.plugins import base_plugin
from tensorboard.plugins.core import core_plugin
from werkzeug import test as werkzeug_test
from werkzeug import wrappers

import eventfiles
import plugin_logs
from tbviz.plugin import tbviz_plugin
from tbviz.summary import metadata

PREFIX = "/data/plugin/tbviz"


def make_client(logdir, loader=tbviz_plugin.TbvizLoader, *argv):
    """A werkzeug client of the whole TensorBoard app over ``logdir`` (Python loading path)."""
    tb = program.TensorBoard(plugins=[core_plugin.CorePluginLoader, loader],
                             assets_zip_provider=lambda: None)
    tb.configure(argv=["tensorboard", "--logdir", str(logdir), "--reload_interval", "0",
                       "--reload_task", "blocking", *argv])
    ingester = data_ingester.LocalDataIngester(tb.flags)
    ingester.start()
    app = application.TensorBoardWSGIApp(tb.flags, tb.plugin_loaders, ingester.data_provider,
                                         None, ingester.deprecated_multiplexer)
    return werkzeug_test.Client(app, wrappers.Response)


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    return plugin_logs.dashboard_logs(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def client(logdir):
    return make_client(logdir)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A client over a run with two broken tbviz tags (unreadable content, unreadable
    header) beside a good one."""
    root = tmp_path_factory.mktemp("broken_logs")
    with tf.summary.create_file_writer(os.path.join(root, "broken", "train")).as_default(step=3):
        md = metadata.create_panel_metadata("topk", layer="x", layer_index=0)
        md.plugin_data.content = b"{not json"
        tf.summary.write("tbviz/deconvnet/x/topk", tf.constant([b"{}"]), metadata=md)
        md = metadata.create_panel_metadata("stylized", name="probes")
        png = metadata.encode_png(np.zeros((2, 2, 3), np.uint8))
        tf.summary.write("tbviz/stylized/probes", tf.constant([b"\xff garbage", png]), metadata=md)
    plugin_logs.write_from_the_future(os.path.join(root, "broken", "train"))
    plugin_logs.write_attribution(os.path.join(root, "broken", "train"), [1], n=1)
    return make_client(root)


def get_json(client, route, **params):
    r = client.get(PREFIX + route, query_string=params)
    assert r.status_code == 200, r.get_data(as_text=True)
    return json.loads(r.get_data())


def written_blobs(logdir, run, tag, step):
    """The blobs of one step read straight from the event files (independent of the plugin)."""
    acc = eventfiles.load(os.path.join(logdir, *run.split("/")))
    [event] = [e for e in acc.Tensors(tag) if e.step == step]
    return list(tf.make_ndarray(event.tensor_proto))


def test_tab_is_listed_and_its_module_served(client):
    listing = json.loads(client.get("/data/plugins_listing").get_data())
    tab = listing["tbviz"]
    assert tab["enabled"] and tab["tab_name"] == "tbviz"
    assert tab["loading_mechanism"] == {"type": "IFRAME",
                                        "module_path": PREFIX + "/index.js"}
    js = client.get(PREFIX + "/index.js")
    assert js.status_code == 200 and js.mimetype == "text/javascript"
    assert "export async function render" in js.get_data(as_text=True)
    css = client.get(PREFIX + "/style.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_panels_list_every_run_with_its_contract(client):
    page = get_json(client, "/panels")
    runs = {item["run"]: item for item in page["items"]}
    assert sorted(runs) == ["cnn/train", "long/train", "style/train"]
    assert page["total"] == 3 and page["next_offset"] is None
    cnn = {p["tag"]: p for p in runs["cnn/train"]["panels"]}
    # only tbviz panels: the callback's opt-in image grids and raw tensors are not listed
    assert sorted(cnn) == ["tbviz/attribution/grad_cam",
                           "tbviz/deconvnet/block/inner_conv/evolution",
                           "tbviz/deconvnet/block/inner_conv/perimage",
                           "tbviz/deconvnet/block/inner_conv/topk",
                           "tbviz/deconvnet/conv1/evolution", "tbviz/deconvnet/conv1/perimage",
                           "tbviz/deconvnet/conv1/topk", "tbviz/deconvnet/func/probes"]
    assert cnn["tbviz/deconvnet/func/probes"]["kind"] == "probes"
    assert cnn["tbviz/deconvnet/conv1/topk"]["sources"] == "tbviz/deconvnet/func/probes"
    inner, conv1 = cnn["tbviz/deconvnet/block/inner_conv/topk"], cnn["tbviz/deconvnet/conv1/topk"]
    assert (inner["kind"], inner["layer"], inner["rule"], inner["k"], inner["max_step"]) == \
        ("topk", "block/inner_conv", "deconvnet", 9, 5)
    assert conv1["layer_index"] < inner["layer_index"]  # network order, for the layer picker
    assert "projections" in inner["description"]
    assert runs["style/train"]["panels"][0]["kind"] == "stylized"
    assert all(item["skipped"] == 0 for item in page["items"])


def test_unreadable_panels_are_not_served_and_say_why(broken):
    [item] = get_json(broken, "/panels")["items"]
    assert item["run"] == "broken/train" and item["skipped"] == 3
    assert [p["tag"] for p in item["panels"]] == ["tbviz/attribution/grad_cam",
                                                  "tbviz/stylized/probes"]
    why = {p["tag"]: p["error"] for p in item["problems"]}
    assert why == {
        "tbviz/deconvnet/x/topk": "unreadable panel metadata (not JSON)",
        "tbviz/future/topk": f"panel format version {metadata.VERSION + 1} is newer than this "
                             f"tbviz reads ({metadata.VERSION}); upgrade tbviz to see it",
        "tbviz/future/hologram": "unknown panel kind 'hologram' (this tbviz knows "
                                 f"{', '.join(metadata.KINDS)}); upgrade tbviz to see it"}
    [f] = get_json(broken, "/frames", run="broken/train", tag="tbviz/stylized/probes",
                   steps="3")["frames"]
    assert f["tiles"] == [] and f["images"] == 1 and "unreadable" in f["error"]
    r = broken.get(PREFIX + "/blob", query_string=dict(run="broken/train",
                                                      tag="tbviz/deconvnet/x/topk", step=3,
                                                      index=1))
    assert r.status_code == 404 and "step 3 has no images" in r.get_data(as_text=True)


def test_panels_are_paged_over_runs(client):
    whole = get_json(client, "/panels")["items"]
    pages, offset = [], 0
    while offset is not None:
        page = get_json(client, "/panels", offset=offset, limit=2)
        assert len(page["items"]) <= 2 and page["total"] == 3
        pages.append(page["items"])
        offset = page["next_offset"]
    assert [len(p) for p in pages] == [2, 1]
    assert sum(pages, []) == whole


def test_all_50_logged_steps_are_kept_and_paged(logdir, client):
    tag = "tbviz/deconvnet/conv1/evolution"
    page = get_json(client, "/steps", run="long/train", tag=tag, limit=20)
    assert page["total"] == 50 and page["next_offset"] == 20
    steps, offset = [], 0
    while offset is not None:
        page = get_json(client, "/steps", run="long/train", tag=tag, offset=offset, limit=20)
        steps += [s["step"] for s in page["items"]]
        offset = page["next_offset"]
    written = sorted(e.step for e in eventfiles.load(logdir / "long" / "train").Tensors(tag))
    assert steps == written == list(range(1, 51))  # one logged step per epoch
    # Why the plugin ships a loader: TensorBoard keeps 10 steps of a plugin it does not know.
    plain = make_client(logdir, base_plugin.BasicLoader(tbviz_plugin.TbvizPlugin))
    assert get_json(plain, "/steps", run="long/train", tag=tag)["total"] == 10
    # ... and an explicit --samples_per_plugin still wins over the loader's default.
    capped = make_client(logdir, tbviz_plugin.TbvizLoader, "--samples_per_plugin", "tbviz=7")
    assert get_json(capped, "/steps", run="long/train", tag=tag)["total"] == 7


def test_frames_carry_the_headers_the_callbacks_wrote(logdir, client):
    tag = "tbviz/deconvnet/block/inner_conv/topk"
    frames = get_json(client, "/frames", run="cnn/train", tag=tag, steps="5,1,3")["frames"]
    assert [f["step"] for f in frames] == [5, 1, 3]
    for f in frames:
        blobs = written_blobs(logdir, "cnn/train", tag, f["step"])
        header = json.loads(blobs[0])
        assert f["tiles"] == header["tiles"] and f["groups"] == header["groups"]
        assert f["images"] == len(blobs) - 1 == 9  # the projections; patches are crops
        assert "error" not in f
        roles = [t["role"] for t in f["tiles"]]
        assert roles == ["projection"] * 9 + ["patch"] * 9
        assert all(("crop" in t) == (t["role"] == "patch") for t in f["tiles"])
        values = [t["value"] for t in f["tiles"][:9]]
        assert values == sorted(values, reverse=True)  # strongest first


@pytest.mark.parametrize("run, tag, mime", [
    ("cnn/train", "tbviz/deconvnet/block/inner_conv/topk", "image/webp"),  # DeconvnetCallback's
    ("style/train", "tbviz/stylized/probes", "image/png"),  # written with encode_png
])
def test_blob_is_the_written_image_with_its_type_and_cache_headers(logdir, client, run, tag, mime):
    step = 4 if run == "cnn/train" else 1
    blobs = written_blobs(logdir, run, tag, step)
    for index in [i for i in (1, 5, 9) if i < len(blobs)]:
        r = client.get(PREFIX + "/blob", query_string=dict(run=run, tag=tag, step=step,
                                                          index=index))
        assert r.status_code == 200 and r.mimetype == mime
        assert Image.open(io.BytesIO(r.get_data())).format == mime.split("/")[1].upper()
        assert "max-age=86400" in r.headers["Cache-Control"]
        served = np.asarray(Image.open(io.BytesIO(r.get_data())))
        expected = np.asarray(Image.open(io.BytesIO(blobs[index])))
        assert served.ndim == 3 and served.shape[-1] == 3 and served.shape[0] >= 8
        assert np.array_equal(served, expected)


def test_a_patch_is_its_probe_image_served_once_and_cut_to_the_units_field(client):
    [cnn] = [item for item in get_json(client, "/panels")["items"] if item["run"] == "cnn/train"]
    panel = next(p for p in cnn["panels"] if p["tag"] == "tbviz/deconvnet/block/inner_conv/topk")
    [frame] = get_json(client, "/frames", run="cnn/train", tag=panel["tag"], steps="5")["frames"]
    size = panel["source_size"][0]
    for t in frame["tiles"][9:]:
        r = client.get(PREFIX + "/blob", query_string=dict(
            run="cnn/train", tag=panel["sources"], step=t.get("source_step", 5),
            index=t["source"] + 1))
        source = np.asarray(Image.open(io.BytesIO(r.get_data())))
        # the probe images are plugin_logs.photo(i) / 255, shown back in [0, 255]
        np.testing.assert_array_equal(source, plugin_logs.photo(t["image_index"], size))
        top, bottom, left, right = t["crop"]
        assert 0 <= top < bottom <= size and 0 <= left < right <= size


BAD = [
    # (route, params, status, what the message names)
    ("/steps", dict(tag="tbviz/stylized/probes"), 400, "run"),
    ("/steps", dict(run="nope", tag="tbviz/stylized/probes"), 404, "nope"),
    ("/steps", dict(run="style/train", tag="tbviz/nope"), 404, "tbviz/nope"),
    ("/steps", dict(run="../../../../etc/passwd", tag="tbviz/stylized/probes"), 404, "passwd"),
    ("/steps", dict(run="cnn/train", tag="deconvnet/conv1/projections"), 404, "projections"),
    ("/steps", dict(run="cnn/train", tag="deconvnet/conv1/raw"), 404, "raw"),  # tbviz_raw
    ("/steps", dict(run="style/train", tag="tbviz/stylized/probes", offset=-1), 400, "offset"),
    ("/steps", dict(run="style/train", tag="tbviz/stylized/probes", limit=10**6), 400, "limit"),
    ("/panels", dict(limit="ten"), 400, "limit"),
    ("/frames", dict(run="style/train", tag="tbviz/stylized/probes", steps="1,4"), 404, "4"),
    ("/frames", dict(run="style/train", tag="tbviz/stylized/probes", steps="1;ls"), 400, "steps"),
    ("/frames", dict(run="style/train", tag="tbviz/stylized/probes",
                     steps=",".join(["1"] * 51)), 400, "50"),
    ("/blob", dict(run="style/train", tag="tbviz/stylized/probes", step=1, index=0), 404, "1..3"),
    ("/blob", dict(run="style/train", tag="tbviz/stylized/probes", step=1, index=4), 404, "1..3"),
    ("/blob", dict(run="style/train", tag="tbviz/stylized/probes", step=1, index=-1), 404, "1..3"),
    ("/blob", dict(run="style/train", tag="tbviz/stylized/probes", step=99, index=1), 404, "99"),
    ("/blob", dict(run="style/train", tag="tbviz/stylized/probes", step="1.5", index=1), 400,
     "step"),
]


@pytest.mark.parametrize("route,params,status,names", BAD,
                         ids=[f"{r}-{'-'.join(map(str, p.values()))[:40]}" for r, p, *_ in BAD])
def test_bad_requests_are_rejected_with_a_reason(client, route, params, status, names):
    r = client.get(PREFIX + route, query_string=params)
    assert r.status_code == status
    assert names in r.get_data(as_text=True)


def test_no_request_reads_a_file(logdir, client):
    event_file = next((logdir / "style" / "train").iterdir())
    secret = logdir / "secret.txt"
    secret.write_text("do not serve")
    for run in (str(logdir / "style" / "train"), str(secret), "style/train/../../secret.txt",
                "file:///etc/passwd"):
        for tag in (str(event_file), "tbviz/stylized/probes", "../../secret.txt"):
            r = client.get(PREFIX + "/blob", query_string=dict(run=run, tag=tag, step=1, index=1))
            assert r.status_code == 404
            assert b"do not serve" not in r.get_data()
    r = client.get(PREFIX + "/../../secret.txt")
    assert r.status_code == 404 and b"do not serve" not in r.get_data()


def test_plugin_loads_without_tensorflow():
    # TensorBoard does not import TensorFlow; the tab must not make it (seconds, memory).
    code = ("import sys, tbviz.plugin.tbviz_plugin; "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, timeout=120,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, "importing the plugin imported tensorflow or keras"


def test_docstring_example_runs():
    import doctest

    result = doctest.testmod(tbviz_plugin)
    assert result.attempted >= 3 and result.failed == 0
    result = doctest.testmod(metadata)  # the panel contract's examples
    assert result.attempted >= 10 and result.failed == 0
