"""Reading event files back the way TensorBoard does, for assertions in tests.

Functions take a run directory or an ``EventAccumulator`` already loaded from one.
"""

import io

import numpy as np
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
