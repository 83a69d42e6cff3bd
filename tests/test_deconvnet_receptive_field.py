"""Receptive fields found by walking the Keras graph (tbviz.receptive_field)."""

import keras
import pytest

from tbviz.core.receptive_field import Axis, crop_plan, crop_start, receptive_field, unit_crop

L = keras.layers


def test_vgg19_fields_match_the_published_sizes():
    # Fields of VGG19 worked out by hand: 3x3 convs add 2 * stride, 2x2 pools add stride.
    vgg = keras.applications.VGG19(weights=None, include_top=False, input_shape=(224, 224, 3))
    want = {"block1_conv2": (5, 1, -2), "block2_conv2": (14, 2, -6),
            "block3_conv4": (48, 4, -22), "block4_conv4": (116, 8, -54),
            "block5_conv4": (252, 16, -118), "block5_pool": (268, 32, -118)}
    for layer, (size, jump, start) in want.items():
        rows, cols = receptive_field(vgg, layer, (224, 224))
        assert rows == cols
        assert (rows.size, rows.jump, rows.start) == (size, jump, start), layer
    assert crop_plan(receptive_field(vgg, "block4_conv4", (224, 224))[0]) == 128
    assert crop_plan(receptive_field(vgg, "block5_conv4", (224, 224))[0]) is None  # > image


def test_same_padding_puts_the_odd_pixel_at_the_end():
    # 3x3 stride 2 'same' on 10 pixels: 5 outputs, 1 pixel of padding, after (TensorFlow).
    # On 9 pixels: 5 outputs, 2 pixels of padding, one on each side.
    for n, start in ((10, 0), (9, -1)):
        m = keras.Sequential([keras.Input((n, n, 1)), L.Conv2D(1, 3, strides=2, padding="same",
                                                                name="c")])
        rows, _ = receptive_field(m, "c", (n, n))
        assert rows == Axis(size=3, jump=2, start=start, length=5, image_length=n)


def test_unknown_geometry_falls_back_to_the_whole_image():
    x = keras.Input((16, 16, 3))
    y = L.Conv2D(4, 3, name="c1")(x)
    up = L.UpSampling2D(name="up")(y)
    t = L.Conv2DTranspose(2, 3, name="tconv")(y)
    flat = L.Flatten(name="flat")(y)
    d = L.Dense(3, name="dense")(flat)
    m = keras.Model(x, [up, t, d])
    assert receptive_field(m, "c1", (16, 16)) is not None
    for layer in ("up", "tconv", "flat", "dense"):
        assert receptive_field(m, layer, (16, 16)) is None


def test_merges_take_the_union_and_nested_models_compose():
    x = keras.Input((20, 20, 3))
    a = L.Conv2D(2, 5, padding="same", name="wide")(x)
    b = L.Conv2D(2, 1, name="narrow")(x)
    s = L.Add(name="add")([a, b])
    c = L.Concatenate(name="cat")([a, b])
    inner = keras.Sequential([keras.Input((20, 20, 4)), L.MaxPooling2D(2, name="pool"),
                              L.Conv2D(2, 3, name="conv")], name="inner")
    m = keras.Model(x, [s, inner(c)])
    assert receptive_field(m, "add", (20, 20))[0] == Axis(5, 1, -2, 20, 20)
    assert receptive_field(m, "cat", (20, 20))[0] == Axis(5, 1, -2, 20, 20)
    # pool adds 1, conv 3x3 at stride 2 adds 4: 10 pixels, from -2.
    assert receptive_field(m, "inner/conv", (20, 20))[0] == Axis(10, 2, -2, 8, 20)


def test_a_crop_aligned_to_the_stride_covers_every_field():
    axis = Axis(size=14, jump=4, start=-5, length=25, image_length=99)
    length = crop_plan(axis)
    assert length % 4 == 99 % 4 and length >= 14
    for i in range(axis.length):
        lo, hi = axis.window(i, clip=True)
        start = crop_start(axis, i, length)
        assert start % 4 == 0 and 0 <= start and start + length <= 99
        assert start <= lo and hi <= start + length
    # A field larger than the image: each unit its own, smallest aligned crop.
    big = Axis(size=252, jump=16, start=-118, length=14, image_length=224)
    lengths = []
    for i in range(big.length):
        start, length = unit_crop(big, i)
        lo, hi = big.window(i, clip=True)
        assert start % 16 == 0 and length % 16 == 224 % 16
        assert start <= lo and hi <= start + length <= 224
        lengths.append(length)
    assert min(lengths) == 144 and max(lengths) == 224


def test_layer_errors():
    m = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(1, 3, name="c")])
    with pytest.raises(ValueError, match="unknown layer.*'d'.*layers are: c"):
        receptive_field(m, "d", (8, 8))


def test_custom_layer_marked_pointwise_is_seen_through():
    class Shift(keras.layers.Layer):
        tbviz_pointwise = True

        def call(self, x):
            return x - 1.0

    class Opaque(keras.layers.Layer):
        def call(self, x):
            return x - 1.0

    def model(pre):
        return keras.Sequential([keras.Input((16, 16, 3)), pre,
                                 keras.layers.Conv2D(2, 3, name="c")])

    rows, cols = receptive_field(model(Shift()), "c", (16, 16))
    assert rows.size == cols.size == 3
    assert receptive_field(model(Opaque()), "c", (16, 16)) is None
