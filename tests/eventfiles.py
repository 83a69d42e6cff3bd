"""Reading event files back the way TensorBoard does, for assertions in tests."""

from tensorboard.backend.event_processing import event_accumulator as ea


def load(run_dir):
    """An ``EventAccumulator`` over ``run_dir`` with nothing sampled away."""
    acc = ea.EventAccumulator(
        str(run_dir),
        size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0,
                       ea.GRAPH: 0, ea.META_GRAPH: 0, ea.COMPRESSED_HISTOGRAMS: 0},
    )
    acc.Reload()
    return acc


def scalars(run_dir, tag):
    """``[(step, value), ...]`` of a scalar tag, whether written as scalar or tensor summary."""
    import tensorflow as tf

    acc = load(run_dir)
    if tag in acc.Tags().get("scalars", []):
        return [(e.step, e.value) for e in acc.Scalars(tag)]
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
