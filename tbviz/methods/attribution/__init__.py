"""Attribution: which input pixels a model's score for a target depends on.

Every method has one call shape, as in Captum: ``method(model, images, target,
..., max_batch=...)``, NumPy in and NumPy out, nothing written anywhere.

* ``images``: ``(N, H, W, C)`` (or one ``(H, W, C)`` image) in the model's input range.
* ``target``: a class index for all images, a sequence with one index per image,
  or a callable from the model's output batch to one score per row (it is also
  applied to batches of perturbed copies, so it must work row by row). Probes are
  cached per callable: reuse one function object rather than a new lambda per call.
* ``max_batch``: the most images sent through the model at once. Methods that
  need many forward passes (SmoothGrad's noisy copies, occlusion's patches) batch
  them across images and chunk by ``max_batch``; none loops over images in Python.

========================  ====================================  ========================
function                  returns                               literature
========================  ====================================  ========================
``saliency``              gradient, shape of ``images``         Simonyan et al. 2013
``smoothgrad``            mean noisy gradient, same shape       Smilkov et al. 2017
``guided_backprop``       guided gradient, same shape           Springenberg et al. 2014
``gradient_x_input``      gradient times image, same shape      Shrikumar et al. 2016
``integrated_gradients``  path-integrated gradient, same shape  Sundararajan et al. 2017
``squaregrad``            mean squared noisy gradient, same     Hooker et al. 2019
``vargrad``               variance of noisy gradients, same     Adebayo et al. 2018
``occlusion``             score drop per pixel ``(N,H,W)``      Zeiler & Fergus 2013
``rise``                  masked-score map ``(N,H,W)``          Petsiuk et al. 2018
``cam``                   class activation map ``(N,H,W)``      Zhou et al. 2016
``grad_cam``              Grad-CAM map ``(N,H,W)``              Selvaraju et al. 2017
``grad_cam_plus_plus``    Grad-CAM++ map ``(N,H,W)``            Chattopadhay et al. 2018
========================  ====================================  ========================

Gradient methods (saliency to Grad-CAM++, Integrated Gradients' completeness included)
differentiate the class score *before* a final softmax when the model ends in one, as
the papers do (a callable target gets the model's actual outputs). The black-box ones,
occlusion and RISE, measure the output itself (a probability, for a softmax classifier,
as in Zeiler & Fergus and Petsiuk et al.). How faithful a map is, measured:
:mod:`tbviz.methods.faithfulness`. Probes run with ``training=False``
and are traced once per model and image shape.

Example:
    >>> import numpy as np, keras
    >>> from tbviz import attribution
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="head")])
    >>> x = np.random.rand(2, 16, 16, 3).astype("float32")
    >>> attribution.saliency(model, x, target=1).shape
    (2, 16, 16, 3)
    >>> attribution.occlusion(model, x, target=[0, 1], patch=4).shape
    (2, 16, 16)
    >>> attribution.grad_cam(model, x, target=0).shape      # layer "conv", found by itself
    (2, 16, 16)
"""

from tbviz.methods.attribution.cam import (cam, cam_head, grad_cam, grad_cam_layer,  # noqa: F401
                                           last_conv_layer, saliency_and_grad_cam)
from tbviz.methods.attribution.cam_plus_plus import grad_cam_plus_plus  # noqa: F401
from tbviz.methods.attribution.gradients import (gradient_x_input, guided_backprop,  # noqa: F401
                                                 saliency, smoothgrad)
from tbviz.methods.attribution.heatmaps import heatmap  # noqa: F401
from tbviz.methods.attribution.integrated import integrated_gradients  # noqa: F401
from tbviz.methods.attribution.noisy import squaregrad, vargrad  # noqa: F401
from tbviz.methods.attribution.occlusion import occlusion  # noqa: F401
from tbviz.methods.attribution.rise import rise  # noqa: F401
from tbviz.methods.attribution.registry import METHODS, method_options  # noqa: F401
from tbviz.methods.attribution.targets import check_target, top_classes  # noqa: F401
# Last: the sanity check runs the methods above by name (Adebayo et al. 2018, see there).
from tbviz.methods.attribution.sanity import sanity_check  # noqa: E402,F401
