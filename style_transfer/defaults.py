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

#: The demo's recipe when VGG19 has random weights (offline); see the README.
RANDOM_VGG_PRESET = dict(
    content_layer="block2_conv2",
    style_layers=("block1_conv1", "block2_conv1", "block3_conv1"),
    vgg_layers=("block1_conv1", "block2_conv1", "block3_conv1"),
)
