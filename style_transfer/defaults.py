"""Default settings of the pipeline, in one place (the parser, the recipe and the demo read them).

>>> from style_transfer.defaults import CONTENT_LAYER
>>> CONTENT_LAYER
'block4_conv2'
"""

#: VGG19 layer whose features the stylized photo must keep (Johnson et al.: relu4_2's conv).
CONTENT_LAYER = "block4_conv2"
#: VGG19 layers whose Gram matrices carry the style.
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")

# Weights for the losses of style_transfer.losses (features of Caffe-preprocessed
# [0, 255] images, Grams over C*H*W, Frobenius style distance): the ratios of the
# widely used TensorFlow implementation (content 7.5, style 100 on the mean over
# block1's 64x64 Gram entries, TV 200 on mean squared pixel differences),
# rewritten for a Frobenius sum.
CONTENT_WEIGHT = 7.5
STYLE_WEIGHT = 100.0 / 64**2
TV_WEIGHT = 200.0

#: Longest side the style image is resized to before its Grams are computed.
STYLE_SIZE = 512

#: Smallest training crop and probe photo: VGG19's block5 sees a 16 px image as 1x1.
MIN_IMAGE_SIZE = 16

#: Transform-net layers whose deconvnet projections are logged by default.
TRANSFORM_PROBE_LAYERS = ("conv1", "conv3", "res5", "up2")
#: VGG19 layers (seen through the stylized output) logged by default.
VGG_PROBE_LAYERS = ("block1_conv1", "block3_conv1", "block5_conv1")

#: The bundled paintings the demo can learn (``assets/styles/<name>.jpg``).
DEMO_STYLES = ("wave", "udnie", "the_scream")

#: The demo's recipe when VGG19 has random weights (offline), in place of the paper's
#: losses above, which give blown-out blobs there (see the README). Shallow layers, where
#: random-weight features still represent an image (He, Wang & Hopcroft 2016) and carry
#: texture (Ustyuzhaninov et al. 2017); each loss term divided by its value at unit weight
#: on the demo's first batch (content 6.82e3, style 2.09e8, TV 3.54e3; the paper's weights
#: fit trained features), then weighted content : style : TV = 1 : 10 : 1; and a
#: learning rate low enough that the transform-net's tanh output does not saturate in
#: the first steps (saturated pixels get no gradient back and stay blown out).
RANDOM_VGG_PRESET = dict(
    content_layer="block2_conv2",
    style_layers=("block1_conv1", "block2_conv1", "block3_conv1"),
    content_weight=1.0 / 6.82e3,
    style_weight=10.0 / 2.09e8,
    tv_weight=1.0 / 3.54e3,
    lr=5e-4,
    vgg_layers=("block1_conv1", "block2_conv1", "block3_conv1"),
)
