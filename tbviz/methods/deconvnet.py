"""Zeiler & Fergus' deconvnet: strongest activations projected back to pixel space.

Three functions of a model (arrays in, arrays out, no TensorBoard):

* :func:`strongest` - the k strongest units of a layer over some images (or the
  strongest unit of each of some feature maps, the view of the paper's Fig. 3);
* :func:`project` - each unit alone, all other units of its layer zeroed,
  projected back to input pixels with the ``"deconvnet"``, ``"guided"`` or
  ``"gradient"`` backward rule (see :mod:`tbviz.core.backward_rules`);
* :func:`patches` - the input crop under each unit's receptive field, to show
  beside its projection;
* :func:`scan` (in :mod:`tbviz.methods.scan`) - each feature map's strongest units over a
  whole dataset in one streaming pass, with the crops to project them from.

A projection is autodiff with a swapped ReLU rule: convolutions run their
transposed filters and max-pooling routes the signal to the recorded argmax
(the paper's switches). The signal that starts the projection is the unit's own
activation, so values are raw (not normalized) and scale with the activation.

All requested units are projected in batches by ``tf.function`` s traced once
per :class:`Projector`; projectors are cached per model, so repeated calls
(every epoch, say) never trace again. Three things keep the work small:

* one row per unit, a batch of rows per call (at most ``max_batch``), the
  forward pass stopping at the unit's layer (a sub-model up to it, where the
  model's graph allows: tracing covers only the layers a projection goes through);
* a unit only depends on the input under its receptive field, so where the
  field is known (see :mod:`tbviz.core.receptive_field`) its row is a crop of the
  image aligned to the layer's total stride, with the image's own padding at
  real borders, and the result is pasted back into a zero canvas: the same
  numbers for a fraction of the work;
* where all units of an image read the same row (the whole image, or a field
  about as large as it), they share one forward pass and their backward passes
  run as one vectorized batch, where pfor can vectorize every op (else they go
  one row each: no slow while-loop fallback). That costs one more trace per such
  layer: ``Projector(vectorize=False)`` (the deconvnet callback's default) skips it.

Which crop each unit gets and which units go into which call are pure NumPy
functions, :func:`crops` and :func:`batch_plan`, like :func:`top_units`.

A vision transformer's token layer ``(N, T, D)`` is a layer of units too: its patch
tokens are laid on their grid (:mod:`tbviz.core.tokens`: ``(N, h, w, D)``, a class token
dropped), so a unit is ``(image, row, col, channel)`` as for a feature map, channel =
token channel. Its input patch is the image region of its token
(:func:`token_window`), and it is projected with the ``"gradient"`` rule whatever
the projector's rule (attention mixes every token, so no activation rule describes
the path back; :meth:`Projector.rule_of` says which rule a layer's projections
follow). Where the grid cannot be found from the token count and the image shape, a
projector takes it as ``token_grid=(h, w)`` and ``class_token=``. The dataset scan
lays tokens out the same way through :meth:`Projector.unit_view`.

Example:
    >>> import numpy as np, keras
    >>> from tbviz import deconvnet
    >>> model = keras.Sequential([
    ...     keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
    ...     keras.layers.MaxPooling2D(2, name="pool1"),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv2")])
    >>> images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    >>> units = deconvnet.strongest(model, images, "conv2", k=3)
    >>> len(units), units[0]._fields
    (3, ('image_index', 'row', 'col', 'channel', 'value'))
    >>> deconvnet.project(model, images, "conv2", units).shape
    (3, 16, 16, 3)
    >>> deconvnet.patches(model, images, "conv2", [(0, 3, 3, 0)])[0].shape  # the 8x8 field
    (8, 8, 3)
"""

from tbviz.methods.projection import (Projector, batch_plan, crops, patches, project,
                                      projector, strongest, support_window, token_window,
                                      windows)
from tbviz.methods.scan import Scan, scan
from tbviz.methods.units import (DEFAULT_MAX_BATCH, Unit, top_channels, top_units,
                                 unit_table)

__all__ = ["Unit", "Projector", "projector", "strongest", "top_units", "top_channels",
           "unit_table", "crops", "batch_plan", "project", "patches", "windows", "support_window",
           "token_window", "scan", "Scan", "DEFAULT_MAX_BATCH"]
