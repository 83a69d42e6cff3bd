"""Reading event files back the way TensorBoard does, for assertions in tests.

Functions take a run directory or an ``EventAccumulator`` already loaded from one.
"""

import io

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.util.tensor_util import make_ndarray

from tbviz.summary import metadata


def load(run_dir):
    """An ``EventAccumulator`` over ``run_dir`` with nothing sampled away."""
    if isinstance(run_dir, ea.EventAccumulator):
        return run_dir
    acc = ea.EventAccumulator(
        str(run_dir),
        size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0,
                       ea.GRAPH: 0, ea.META_GRAPH: 0, ea.COMPRESSED_HISTOGRAMS: 0},
    )
    acc.Reload()
    return acc


def scalars(run_dir, tag):
    """``[(step, value), ...]`` of a scalar tag, whether written as scalar or tensor summary."""
    acc = load(run_dir)
    if tag in acc.Tags().get("scalars", []):
        return [(e.step, e.value) for e in acc.Scalars(tag)]
    return [(e.step, float(make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def image_steps(event):
    """Decoded images of one ``tf.summary.image`` event: it holds ``[width, height, png...]``."""
    blobs = make_ndarray(event.tensor_proto)
    width, height = int(blobs[0]), int(blobs[1])
    pics = [decode(b) for b in blobs[2:]]
    assert all(p.shape[:2] == (height, width) for p in pics)
    return pics


def images(run_dir, tag):
    """``[(step, [uint8 arrays])]`` of a ``tf.summary.image`` tag."""
    acc = load(run_dir)
    assert tag in acc.Tags()["tensors"], sorted(acc.Tags()["tensors"])
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "images"
    return [(event.step, image_steps(event)) for event in acc.Tensors(tag)]


def panels(run_dir, tag):
    """``(content, [(step, header, [uint8 array per tile])])`` of a tbviz panel tag: each
    tile's image as the dashboard shows it, a tile with a ``crop`` cut out of its source
    image (the content's ``sources`` panel at the tile's ``source_step``, else the same
    step)."""
    acc = load(run_dir)
    md = acc.SummaryMetadata(tag)
    assert md.plugin_data.plugin_name == metadata.PLUGIN_NAME
    content = metadata.parse_panel_metadata(md.plugin_data.content)
    sources = {}  # tag -> {step: images}

    def source(tile, step):
        tag = tile.get("sources", content.get("sources"))
        if tag not in sources:
            sources[tag] = {s: pics for s, _, pics in panels(acc, tag)[1]}
        image = sources[tag][step][tile["source"]]
        assert list(image.shape[:2]) == tile.get("source_size", content.get("source_size"))
        return image

    steps = []
    for event in acc.Tensors(tag):
        blobs = make_ndarray(event.tensor_proto)
        header = metadata.parse_header(blobs[0])
        own = iter(decode(b) for b in blobs[1:])
        pics = []
        for t in header["tiles"]:
            if "crop" in t:
                top, bottom, left, right = t["crop"]
                pics.append(source(t, t.get("source_step", event.step))[top:bottom, left:right])
            else:
                pics.append(next(own))
        assert next(own, None) is None, f"{tag} step {event.step}: images no tile describes"
        steps.append((event.step, header, pics))
    return content, steps


def tags(run_dir):
    return sorted(load(run_dir).Tags()["tensors"])


def texts(run_dir, tag):
    """``[(step, str)]`` of a ``tf.summary.text`` tag, as TensorBoard's text plugin reads it."""
    acc = load(run_dir)
    assert tag in acc.Tags()["tensors"], sorted(acc.Tags()["tensors"])
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "text"
    return [(e.step, make_ndarray(e.tensor_proto).item().decode()) for e in acc.Tensors(tag)]


def histogram_steps(run_dir, tag):
    """Steps at which histogram ``tag`` was written (as TensorBoard's histogram plugin reads it)."""
    acc = load(run_dir)
    if tag not in acc.Tags()["tensors"]:
        return []
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "histograms"
    return [e.step for e in acc.Tensors(tag)]


def assert_same_run(got, want, rtol, skip=("tbviz/cost/",)):
    """``got`` holds every tag, step and panel of ``want``: numbers (scalars, histograms) to
    ``rtol`` of each tensor's largest value, images and panel tiles decoded and within one
    level of 255 (a value on a rounding edge), panel headers alike with their floats to
    ``rtol``. Tags starting with one of ``skip`` (wall-clock costs) are not compared."""
    a, b = load(got), load(want)
    tags_a = {t for t in a.Tags()["tensors"] if not t.startswith(skip)}
    tags_b = {t for t in b.Tags()["tensors"] if not t.startswith(skip)}
    assert tags_a == tags_b, sorted(tags_a ^ tags_b)

    def close(x, y, where):
        if isinstance(x, dict):
            assert isinstance(y, dict) and x.keys() == y.keys(), where
            for key in x:
                close(x[key], y[key], f"{where}.{key}")
        elif isinstance(x, list):
            assert isinstance(y, list) and len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                close(u, v, f"{where}[{i}]")
        elif isinstance(x, float):
            assert y == pytest.approx(x, rel=rtol, abs=0), where
        else:
            assert x == y, where

    def same_pixels(p, q, where):
        assert p.shape == q.shape, where
        assert np.abs(p.astype(int) - q.astype(int)).max() <= 1, where

    for tag in sorted(tags_b):
        events_a, events_b = a.Tensors(tag), b.Tensors(tag)
        assert [e.step for e in events_a] == [e.step for e in events_b], tag
        plugin = b.SummaryMetadata(tag).plugin_data.plugin_name
        if plugin == metadata.PLUGIN_NAME:
            content_a, steps_a = panels(a, tag)
            content_b, steps_b = panels(b, tag)
            close(content_a, content_b, tag)
            for (step, header_a, pics_a), (_, header_b, pics_b) in zip(steps_a, steps_b):
                close(header_a, header_b, f"{tag}@{step}")
                for i, (p, q) in enumerate(zip(pics_a, pics_b)):
                    same_pixels(p, q, f"{tag}@{step} tile {i}")
            continue
        for x, y in zip(events_a, events_b):
            u, v = make_ndarray(x.tensor_proto), make_ndarray(y.tensor_proto)
            where = f"{tag}@{x.step}"
            if plugin == "images":
                assert list(u[:2]) == list(v[:2]), where
                for p, q in zip(u[2:], v[2:]):
                    same_pixels(decode(p), decode(q), where)
            elif u.dtype == object:
                assert u.tolist() == v.tolist(), where
            else:
                assert u.shape == v.shape, where
                scale = float(np.abs(v).max()) if v.size else 0.0
                np.testing.assert_allclose(u, v, rtol=0, atol=rtol * scale, err_msg=where)

