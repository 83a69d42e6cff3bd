"""Reading tbviz image and panel summaries back with TensorBoard's EventAccumulator."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from eventfiles import load
from tbviz.summary import metadata


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def images(run_dir, tag):
    """``[(step, [uint8 arrays])]`` of a ``tf.summary.image`` tag."""
    acc = load(run_dir)
    assert tag in acc.Tags()["tensors"], sorted(acc.Tags()["tensors"])
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "images"
    out = []
    for event in acc.Tensors(tag):
        blobs = tf.make_ndarray(event.tensor_proto)
        width, height = int(blobs[0]), int(blobs[1])
        pics = [decode(b) for b in blobs[2:]]
        assert all(p.shape[:2] == (height, width) for p in pics)
        out.append((event.step, pics))
    return out


def panels(run_dir, tag):
    """``(content, [(step, header, [uint8 arrays])])`` of a tbviz panel tag."""
    acc = load(run_dir)
    md = acc.SummaryMetadata(tag)
    assert md.plugin_data.plugin_name == metadata.PLUGIN_NAME
    content = metadata.parse_content(md.plugin_data.content)
    steps = []
    for event in acc.Tensors(tag):
        blobs = tf.make_ndarray(event.tensor_proto)
        steps.append((event.step, metadata.parse_header(blobs[0]), [decode(b) for b in blobs[1:]]))
    return content, steps


def tags(run_dir):
    return sorted(load(run_dir).Tags()["tensors"])
