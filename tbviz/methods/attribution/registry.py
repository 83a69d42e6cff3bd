"""The attribution methods by name, as callbacks and the sanity check ask for them.

>>> from tbviz.methods.attribution.registry import METHODS, method_options
>>> METHODS[:2]
('saliency', 'smoothgrad')
>>> method_options("occlusion")
['patch', 'stride', 'baseline', 'max_batch']
"""

from __future__ import annotations

import inspect

from tbviz.methods.attribution.cam import cam, grad_cam
from tbviz.methods.attribution.cam_plus_plus import grad_cam_plus_plus
from tbviz.methods.attribution.gradients import (gradient_x_input, guided_backprop, saliency,
                                                 smoothgrad)
from tbviz.methods.attribution.integrated import integrated_gradients
from tbviz.methods.attribution.noisy import squaregrad, vargrad
from tbviz.methods.attribution.occlusion import occlusion
from tbviz.methods.attribution.rise import rise

#: Every method's function, by the name callbacks take.
FUNCTIONS = {"saliency": saliency, "smoothgrad": smoothgrad, "guided_backprop": guided_backprop,
             "occlusion": occlusion, "cam": cam, "grad_cam": grad_cam,
             "gradient_x_input": gradient_x_input, "integrated_gradients": integrated_gradients,
             "grad_cam_plus_plus": grad_cam_plus_plus, "rise": rise, "vargrad": vargrad,
             "squaregrad": squaregrad}
METHODS = tuple(FUNCTIONS)


def get(method: str):
    """The function of ``method``; a ``ValueError`` listing the methods otherwise."""
    if method not in FUNCTIONS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    return FUNCTIONS[method]


def method_options(method: str) -> list[str]:
    """Keyword options a method takes beyond ``(model, images, target)``."""
    return list(inspect.signature(get(method)).parameters)[3:]
