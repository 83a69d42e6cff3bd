"""tbviz.deconvnet checked against an independent NumPy deconvnet on small networks.

The reference below is written from the paper's description, not from TensorFlow:
a forward pass that records the max-pooling switches, then a backward pass by
hand (transposed filters, switches, and the rule's ReLU).
"""

import keras
import numpy as np
import pytest

import tbviz.core.layers
from tbviz import backend, deconvnet
from tbviz.methods.deconvnet import Unit
from tbviz.core.receptive_field import crop_plan

# Float results of different computations: ./scripts/test.sh --numerics runs these under
# other kernels and thread counts.
pytestmark = [pytest.mark.numerics, pytest.mark.backends]

L = keras.layers
RULES = ("deconvnet", "guided", "gradient")


# --------------------------------------------------------------------------------------------
# NumPy reference: ops act on one image (H, W, C) or a flat vector


def np_conv(x, w, b, padding):
    kh, kw = w.shape[:2]
    if padding == "same":  # stride 1, odd kernel: symmetric
        x = np.pad(x, (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2, (0, 0)))
    h, wd = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    out = np.empty((h, wd, w.shape[3]))
    for i in range(h):
        for j in range(wd):
            out[i, j] = np.tensordot(x[i:i + kh, j:j + kw], w, axes=3) + b
    return out


def np_conv_back(dy, w, in_shape, padding):
    kh, kw = w.shape[:2]
    ph, pw = ((kh - 1) // 2, (kw - 1) // 2) if padding == "same" else (0, 0)
    dx = np.zeros((in_shape[0] + 2 * ph, in_shape[1] + 2 * pw, in_shape[2]))
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            # The transposed filter: each output spreads back over its window.
            dx[i:i + kh, j:j + kw] += np.tensordot(w, dy[i, j], axes=([3], [0]))
    return dx[ph:ph + in_shape[0], pw:pw + in_shape[1]]


def np_pool(x):
    """2x2 max-pooling, stride 2; returns the output and the switches (argmax offsets)."""
    h, w, c = x.shape[0] // 2, x.shape[1] // 2, x.shape[2]
    out, switch = np.empty((h, w, c)), np.empty((h, w, c, 2), int)
    for i in range(h):
        for j in range(w):
            for k in range(c):
                win = x[2 * i:2 * i + 2, 2 * j:2 * j + 2, k]
                a = int(np.argmax(win))
                assert (win == win.max()).sum() == 1, "tie in a pooling window: change the data"
                out[i, j, k], switch[i, j, k] = win.max(), divmod(a, 2)
    return out, switch


def np_pool_back(dy, switch, in_shape):
    dx = np.zeros(in_shape)
    for i, j, k in np.ndindex(dy.shape):
        a, b = switch[i, j, k]
        dx[2 * i + a, 2 * j + b, k] += dy[i, j, k]
    return dx


def np_relu_back(dy, x, rule):
    if rule == "deconvnet":
        return np.maximum(dy, 0)
    if rule == "guided":
        return np.maximum(dy, 0) * (x > 0)
    return dy * (x > 0)


class Reference:
    """A tiny sequential network in NumPy: ``ops`` is a list of (kind, params) pairs."""

    def __init__(self, ops, outputs):
        self.ops = ops
        self.outputs = outputs  # layer name -> number of ops its output comes after

    def forward(self, x):
        trace = []  # (input, extra) per op
        for kind, p in self.ops:
            extra = None
            if kind == "conv":
                y = np_conv(x, p["w"], p["b"], p["padding"])
            elif kind == "relu":
                y = np.maximum(x, 0)
            elif kind == "pool":
                y, extra = np_pool(x)
            elif kind == "bn":
                y = p["gamma"] * (x - p["mean"]) / np.sqrt(p["var"] + p["eps"]) + p["beta"]
            elif kind == "scale":
                y = x * p["s"] + p["offset"]
            elif kind == "flatten":
                y = x.reshape(-1)
            elif kind == "dense":
                y = x @ p["w"] + p["b"]
            trace.append((x, extra))
            x = y
        return x, trace

    def activation(self, image, layer):
        x, _ = Reference(self.ops[:self.outputs[layer]], {}).forward(image.astype(np.float64))
        return x

    def project(self, image, layer, unit, rule):
        """The unit's own activation, all others zeroed, sent back to the pixels."""
        n = self.outputs[layer]
        out, trace = Reference(self.ops[:n], {}).forward(image.astype(np.float64))
        dy = np.zeros_like(out)
        dy[unit] = out[unit]
        for (kind, p), (x, extra) in zip(reversed(self.ops[:n]), reversed(trace)):
            if kind == "conv":
                dy = np_conv_back(dy, p["w"], x.shape, p["padding"])
            elif kind == "relu":
                dy = np_relu_back(dy, x, rule)
            elif kind == "pool":
                dy = np_pool_back(dy, extra, x.shape)
            elif kind == "bn":
                dy = dy * p["gamma"] / np.sqrt(p["var"] + p["eps"])
            elif kind == "scale":
                dy = dy * p["s"]
            elif kind == "flatten":
                dy = dy.reshape(x.shape)
            elif kind == "dense":
                dy = p["w"] @ dy
        return dy


def assert_close(ours, ref):
    scale = max(np.abs(ref).max(), 1e-6)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-5 * scale)


# --------------------------------------------------------------------------------------------
# The small networks


def weights(seed=25):  # a seed whose pooling windows have no ties (asserted)
    rng = np.random.default_rng(seed)
    return {
        "c1": (rng.normal(0, 0.5, (3, 3, 2, 3)), np.array([1.2, 0.9, 1.0])),
        "c2": (rng.normal(0, 0.5, (3, 3, 3, 4)), rng.normal(0, 0.1, 4)),
        "fc": (rng.normal(0, 0.5, (16, 5)), rng.normal(0, 0.1, 5)),
    }


def relu(kind, name):
    """The ReLU after a conv written three ways; returns (conv activation, extra layers)."""
    if kind == "activation":
        return "relu", []
    if kind == "ReLU":
        return None, [L.ReLU(name=name)]
    return None, [L.Activation("relu", name=name)]


def small_net(relu_kind, w):
    """conv3x3(same)+relu -> maxpool2 -> conv3x3(valid)+relu -> flatten -> dense+relu.

    The post-ReLU outputs are named block1, block2, fc whichever way ReLU is written.
    """
    layers = [keras.Input((8, 8, 2))]
    for name, conv, padding in (("1", "c1", "same"), ("2", "c2", "valid")):
        act, extra = relu(relu_kind, "block" + name)
        layers.append(L.Conv2D(w[conv][0].shape[-1], 3, padding=padding, activation=act,
                               name="block" + name if act else "conv" + name))
        layers += extra
        if name == "1":
            layers.append(L.MaxPooling2D(2, name="pool1"))
    layers += [L.Flatten(name="flat"), L.Dense(5, activation="relu", name="fc")]
    model = keras.Sequential(layers)
    for name in ("c1", "c2", "fc"):
        layer = {"c1": "block1", "c2": "block2", "fc": "fc"}[name]
        if relu_kind != "activation" and name != "fc":
            layer = "conv" + layer[-1]
        model.get_layer(layer).set_weights([v.astype("float32") for v in w[name]])
    return model


def small_reference(w):
    f32 = {k: tuple(v.astype(np.float32).astype(np.float64) for v in vs) for k, vs in w.items()}
    ops = [("conv", {"w": f32["c1"][0], "b": f32["c1"][1], "padding": "same"}), ("relu", {}),
           ("pool", {}),
           ("conv", {"w": f32["c2"][0], "b": f32["c2"][1], "padding": "valid"}), ("relu", {}),
           ("flatten", {}), ("dense", {"w": f32["fc"][0], "b": f32["fc"][1]}), ("relu", {})]
    return Reference(ops, {"conv1": 1, "block1": 2, "pool1": 3, "conv2": 4, "block2": 5,
                           "fc": 8})


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return rng.normal(0, 1, (3, 8, 8, 2)).astype("float32")


def all_units(shape, n_images, step=1):
    if len(shape) == 1:
        return [(i, 0, 0, c) for i in range(n_images) for c in range(shape[0])]
    return [u for u in np.ndindex((n_images,) + shape)][::step]


# --------------------------------------------------------------------------------------------
# Tests


def test_switch_and_transposed_filter_worked_by_hand():
    # One 2x2 filter, then ReLU and a 2x2 max-pool over its 3x3 output: one pooled unit.
    model = keras.Sequential([keras.Input((4, 4, 1)),
                              L.Conv2D(1, 2, use_bias=False, activation="relu", name="conv"),
                              L.MaxPooling2D(2, name="pool")])
    kernel = np.array([[1.0, -2.0], [0.5, 3.0]], "float32")
    model.get_layer("conv").set_weights([kernel.reshape(2, 2, 1, 1)])
    image = np.zeros((1, 4, 4, 1), "float32")
    image[0, 1:3, 1:3, 0] = [[0.0, 0.0], [0.0, 2.0]]  # conv output peaks at (1, 1): 3 * 2 = 6
    # conv out (valid 3x3): only windows covering pixel (2, 2) are non-zero:
    #   (1,1) -> 3*2 = 6, (1,2) -> 0.5*2 = 1, (2,1) -> -2*2 -> relu 0, (2,2) -> 1*2 = 2.
    # The pool's window is the top-left 2x2 of that map, so the switch is (1, 1), value 6.
    units = deconvnet.strongest(model, image, "pool", k=1)
    assert units == [Unit(0, 0, 0, 0, 6.0)]
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = 6.0 * kernel  # the transposed filter placed at the switch
    for rule in RULES:
        got = deconvnet.project(model, image, "pool", units, rule=rule)
        np.testing.assert_allclose(got[0, ..., 0], expected, rtol=1e-6)
    patch = deconvnet.patches(model, image, "pool", units)[0]
    np.testing.assert_array_equal(patch, image[0, 0:3, 0:3])  # 2x2 conv then 2x2 pool: 3x3


@pytest.mark.parametrize("relu_kind", ["activation", "ReLU", "Activation"])
@pytest.mark.parametrize("rule", RULES)
def test_projections_match_numpy_reference(relu_kind, rule, images):
    w = weights()
    model = small_net(relu_kind, w)
    ref = small_reference(w)
    layers = ["block1", "pool1", "block2", "fc"]
    proj = deconvnet.Projector(model, layers, rule)
    shapes = proj.output_shapes(images.shape[1:])
    units = {layer: all_units(shapes[layer], len(images), step=5 if layer == "block1" else 1)
             for layer in layers}
    got = proj.project(images, units, max_batch=16)
    for layer in layers:
        for u, p in zip(units[layer], got[layer]):
            unit = u[3:] if layer == "fc" else u[1:]
            want = ref.project(images[u[0]], layer, unit, rule)
            assert_close(p, want)
    # The data must make the rules disagree, or this test could not tell them apart.
    u = units["fc"][0]
    outs = {r: ref.project(images[u[0]], "fc", u[3:], r) for r in RULES}
    assert np.abs(outs["deconvnet"] - outs["gradient"]).max() > 1e-3
    assert np.abs(outs["deconvnet"] - outs["guided"]).max() > 1e-3


def test_strongest_matches_numpy(images):
    w = weights()
    model = small_net("activation", w)
    ref = small_reference(w)
    acts = np.stack([ref.activation(im, "block2") for im in images])
    flat = acts.reshape(-1)
    order = np.argsort(-flat)[:5]
    got = deconvnet.strongest(model, images, "block2", k=5)
    assert [u[:4] for u in got] == [np.unravel_index(i, acts.shape) for i in order]
    np.testing.assert_allclose([u.value for u in got], flat[order], rtol=1e-5)
    # Fig. 3 view: the strongest unit of each chosen feature map, in the order asked.
    got = deconvnet.strongest(model, images, "block2", channels=[3, 0])
    for u, c in zip(got, [3, 0]):
        assert u.channel == c
        assert u.value == pytest.approx(acts[..., c].max(), rel=1e-5)
    # A flat (Dense) layer: row and col are 0.
    fc = deconvnet.strongest(model, images, "fc", k=3)
    assert all(u.row == 0 and u.col == 0 for u in fc)
    ref_fc = np.stack([ref.activation(im, "fc") for im in images])
    assert fc[0].value == pytest.approx(ref_fc.max(), rel=1e-5)


def test_top_units_skips_non_finite():
    a = np.zeros((1, 2, 2, 2))
    a[0, 0, 0, 0] = np.nan
    a[0, 1, 1, 1] = np.inf
    a[0, 0, 1, 0] = 2.0
    units = deconvnet.top_units(a, k=3)
    assert units[0] == Unit(0, 0, 1, 0, 2.0)
    assert all(np.isfinite(u.value) for u in units)
    a[..., 1] = np.nan
    assert [u.channel for u in deconvnet.top_units(a, channels=[1, 0])] == [0]


def test_nested_model_path(images):
    w = weights()
    inner = keras.Sequential([
        keras.Input((8, 8, 2)),
        L.Conv2D(3, 3, padding="same", activation="relu", name="block1"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(4, 3, activation="relu", name="block2"),
    ], name="features")
    inner.get_layer("block1").set_weights([v.astype("float32") for v in w["c1"]])
    inner.get_layer("block2").set_weights([v.astype("float32") for v in w["c2"]])
    x = keras.Input((8, 8, 2))
    y = L.Rescaling(0.5, offset=0.25, name="prep")(x)
    y = inner(y)
    y = L.GlobalAveragePooling2D()(y)
    outer = keras.Model(x, L.Dense(2)(y), name="loss_net")
    ref = small_reference(w)
    ref = Reference([("scale", {"s": 0.5, "offset": 0.25})] + ref.ops[:5],
                    {"features/block2": 6})
    units = deconvnet.strongest(outer, images, "features/block2", k=6)
    for u in units:
        want = ref.activation(images[u.image_index], "features/block2")[u.row, u.col, u.channel]
        assert u.value == pytest.approx(want, rel=1e-5)
    got = deconvnet.project(outer, images, "features/block2", units, rule="guided")
    for u, p in zip(units, got):
        assert_close(p, ref.project(images[u.image_index], "features/block2", u[1:4], "guided"))


def test_batchnorm_and_dropout_run_in_inference_mode(images):
    rng = np.random.default_rng(11)
    model = keras.Sequential([
        keras.Input((8, 8, 2)),
        L.Conv2D(3, 3, padding="same", name="conv1"),
        L.BatchNormalization(name="bn"),
        L.ReLU(name="relu1"),
        L.Dropout(0.5, name="drop"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(4, 3, activation="relu", name="block2"),
    ])
    w = weights()
    model.get_layer("conv1").set_weights([v.astype("float32") for v in w["c1"]])
    model.get_layer("block2").set_weights([v.astype("float32") for v in w["c2"]])
    bn = {"gamma": rng.uniform(0.5, 2, 3), "beta": rng.normal(0, 0.3, 3),
          "mean": rng.normal(0, 0.3, 3), "var": rng.uniform(0.5, 2, 3), "eps": 1e-3}
    model.get_layer("bn").set_weights([bn[k].astype("float32")
                                       for k in ("gamma", "beta", "mean", "var")])
    bn = {k: v if k == "eps" else v.astype("float32").astype(np.float64) for k, v in bn.items()}
    before = [v.copy() for v in model.get_weights()]
    ref = Reference([("conv", {"w": w["c1"][0].astype("float32").astype(float),
                               "b": w["c1"][1].astype("float32").astype(float),
                               "padding": "same"}),
                     ("bn", bn), ("relu", {}), ("pool", {}),
                     ("conv", {"w": w["c2"][0].astype("float32").astype(float),
                               "b": w["c2"][1].astype("float32").astype(float),
                               "padding": "valid"}), ("relu", {})],
                    {"block2": 6})
    units = deconvnet.strongest(model, images, "block2", k=8)
    for rule in ("deconvnet", "guided"):
        got = deconvnet.project(model, images, "block2", units, rule=rule)
        for u, p in zip(units, got):
            assert_close(p, ref.project(images[u.image_index], "block2", u[1:4], rule))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # moving statistics untouched


def test_patches_are_the_receptive_fields(images):
    model = small_net("activation", weights())
    # block2: 3x3 same conv, 2x2 pool, 3x3 valid conv -> 8x8 field, stride 2, from row -1.
    units = [(0, 0, 0, 0), (1, 1, 1, 2), (2, 0, 1, 3)]
    got = deconvnet.patches(model, images, "block2", units)
    np.testing.assert_array_equal(got[0], images[0, 0:7, 0:7])    # clipped at the top left
    np.testing.assert_array_equal(got[1], images[1, 1:8, 1:8])    # clipped at the bottom right
    np.testing.assert_array_equal(got[2], images[2, 0:7, 1:8])
    assert deconvnet.windows(model, images.shape[1:], "block2", units) == [
        (0, 7, 0, 7), (1, 8, 1, 8), (0, 7, 1, 8)]
    # After a Dense layer the whole image is the field.
    whole = deconvnet.patches(model, images, "fc", [(1, 0, 0, 2)])[0]
    np.testing.assert_array_equal(whole, images[1])


def strided_net(size):
    """Strided 'same' convs (asymmetric padding), explicit padding, dilation, pools, a merge."""
    x = keras.Input(size + (3,))
    y = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c1")(x)
    y = L.ZeroPadding2D(((1, 0), (0, 2)), name="pad")(y)
    y = L.MaxPooling2D(3, strides=2, padding="same", name="p1")(y)
    a = L.Conv2D(4, 3, dilation_rate=2, padding="same", name="c2")(y)
    b = L.Conv2D(4, 1, name="skip")(y)
    y = L.Activation("relu", name="r2")(L.Add(name="add")([a, b]))
    y = L.AveragePooling2D(2, name="p2")(y)
    y = L.Conv2D(5, 2, padding="valid", activation="relu", name="c3")(y)
    return keras.Model(x, L.Dense(2, name="head")(L.Flatten()(y)))


@pytest.mark.parametrize("rule,size", [("deconvnet", (61, 53)), ("gradient", (61, 53)),
                                       ("guided", (37, 30))])
def test_receptive_field_crops_give_the_whole_image_result(rule, size):
    # On 61x53 every field is smaller than the image: one crop size per layer. On 37x30
    # the deepest fields are not: each unit gets the smallest crop that holds its field.
    model = strided_net(size)
    rng = np.random.default_rng(5)
    images = rng.normal(0, 1, (2,) + size + (3,)).astype("float32")
    layers = ["c1", "p1", "r2", "c3"]
    proj = deconvnet.Projector(model, layers, rule)
    shapes = proj.output_shapes(images.shape[1:])
    acts = proj.activations(images)
    units = {layer: all_units(shapes[layer], 2, step=29 if layer == "c1" else 7)
             + deconvnet.top_units(acts[layer], k=4) for layer in layers}
    for layer in layers:  # units alone are projected from crops, else this proves nothing
        table = proj.unit_table(layer, images.shape[1:], units[layer], n_images=2)
        field = proj.field(layer, images.shape[1:])
        boxes = np.concatenate([deconvnet.crops(table[k:k + 1], field, size)[0]
                                for k in range(len(table))])
        assert ((boxes[:, 1] < size[0]) | (boxes[:, 3] < size[1])).mean() >= 0.5, layer
    cropped = proj.project(images, units)
    whole = proj.project(images, units, crop=False)
    for layer in layers:
        scale = np.abs(whole[layer]).max()
        assert scale > 0
        np.testing.assert_allclose(cropped[layer], whole[layer], rtol=0, atol=1e-6 * scale)
    # One unit at a time (its own crop, no shared forward pass) gives the same again.
    for layer in layers:
        some = units[layer][::5]
        alone = np.concatenate([proj.project(images, {layer: [u]})[layer] for u in some])
        np.testing.assert_allclose(alone, whole[layer][::5], rtol=0,
                                   atol=1e-6 * np.abs(whole[layer]).max())


@pytest.mark.parametrize("dilation", [1, 2])
def test_receptive_field_is_where_the_gradient_reaches(dilation):
    # Positive weights, no ReLU, average pooling: every pixel of the field gets a non-zero
    # gradient, so the support of a projection is the (clipped) receptive field. A dilated
    # kernel leaves holes between its taps: then the field is the hull of the support.
    x = keras.Input((29, 26, 1))
    y = L.Conv2D(2, 3, strides=2, padding="same", kernel_initializer="ones", name="c1")(x)
    y = L.AveragePooling2D(2, padding="same", name="p1")(y)
    y = L.Conv2D(2, 3, dilation_rate=dilation, padding="same", kernel_initializer="ones",
                 name="c2")(y)
    y = L.Conv2D(2, 2, strides=2, kernel_initializer="ones", name="c3")(y)
    model = keras.Model(x, y)
    images = np.ones((1, 29, 26, 1), "float32")
    for layer in ("c1", "p1", "c2", "c3"):
        shape = deconvnet.projector(model, (layer,)).output_shapes(images.shape[1:])[layer]
        units = [(0, r, c, 0) for r in range(shape[0]) for c in range(shape[1])]
        got = deconvnet.project(model, images, layer, units, rule="gradient", crop=False)
        boxes = deconvnet.windows(model, images.shape[1:], layer, units)
        for g, (t, b, lft, r) in zip(got, boxes):
            inside = np.zeros(g.shape[:2], bool)
            inside[t:b, lft:r] = True
            support = g[..., 0] != 0
            assert not (support & ~inside).any()  # nothing reaches outside the field
            if dilation == 1 or layer in ("c1", "p1"):
                np.testing.assert_array_equal(support, inside)


def test_model_untouched_and_training_bit_identical(images):
    def build():
        keras.utils.set_random_seed(42)
        m = keras.Sequential([keras.Input((8, 8, 2)),
                              L.Conv2D(3, 3, padding="same", name="c1"),
                              L.BatchNormalization(name="bn"), L.ReLU(name="r1"),
                              L.Dropout(0.3), L.MaxPooling2D(2), L.Flatten(),
                              L.Dense(2, name="fc")])
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return m

    rng = np.random.default_rng(1)
    y = rng.normal(0, 1, (len(images), 2)).astype("float32")
    probed, plain = build(), build()
    before = [v.copy() for v in probed.get_weights()]
    units = deconvnet.strongest(probed, images, "r1", k=4)
    deconvnet.project(probed, images, "r1", units, rule="guided")
    deconvnet.patches(probed, images, "r1", units)
    for a, b in zip(before, probed.get_weights()):
        np.testing.assert_array_equal(a, b)
    keras.utils.set_random_seed(7)
    probed.fit(images, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
    keras.utils.set_random_seed(7)
    plain.fit(images, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(probed.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(backend.name == "torch", reason="PyTorch runs eagerly: nothing is traced")
def test_traced_once_for_repeated_calls(images):
    model = small_net("ReLU", weights())
    proj = deconvnet.projector(model, ("block1", "block2"))
    assert deconvnet.projector(model, ["block1", "block2"]) is proj  # cached per model
    proj.prepare(images.shape[1:])
    # Activations, one row-per-unit projection per layer, and the shared (vectorized) one only
    # for block2, whose field is about the whole image: block1's small crops go one row each.
    fields = [proj.field(layer, images.shape[1:]) for layer in ("block1", "block2")]
    assert [all(crop_plan(a) is None for a in f) for f in fields] == [False, True]
    if backend.name == "tensorflow":  # every trace happens in prepare(), whatever comes later
        assert proj.trace_count == 1 + 2 + 1
    rng = np.random.default_rng(0)

    def epochs():
        for epoch in range(5):
            probe = images + rng.normal(0, 0.1, images.shape).astype("float32")
            acts = proj.activations(probe[: 2 + epoch % 2])
            units = {layer: deconvnet.top_units(acts[layer], k=3 + epoch) for layer in acts}
            proj.project(probe[: 2 + epoch % 2], units)
            deconvnet.project(model, probe, "block1", units["block1"][:1])  # a cached projector

    traced = proj.trace_count
    epochs()  # JAX compiles per shape at the first call (batch sizes padded to powers of two)
    if backend.name == "tensorflow":
        assert proj.trace_count == traced
    traced = proj.trace_count
    epochs()
    assert proj.trace_count == traced
    if backend.name == "tensorflow":
        assert deconvnet.projector(model, ("block1",)).trace_count == 2  # activations, projection


def test_errors_name_the_choices(images):
    model = small_net("activation", weights())
    with pytest.raises(ValueError, match=r"unknown layer.*'nope'.*block1, pool1, block2"):
        deconvnet.strongest(model, images, "nope")
    with pytest.raises(ValueError, match=r"expects \(N,\) \+ \(8, 8, 2\)"):
        deconvnet.project(model, np.zeros((1, 9, 8, 2)), "block2", [(0, 0, 0, 0)])
    with pytest.raises(ValueError, match=r"row 2 out of range 0..1.*output shape \(N,\) \+ "
                                         r"\(2, 2, 4\)"):
        deconvnet.project(model, images, "block2", [(0, 2, 0, 0)])
    with pytest.raises(ValueError, match=r"image_index 3 out of range 0..2"):
        deconvnet.patches(model, images, "block2", [(3, 0, 0, 0)])
    with pytest.raises(ValueError, match=r"channel 4 is out of range"):
        deconvnet.strongest(model, images, "block2", channels=[4])
    with pytest.raises(ValueError, match=r"integer tuple \(image_index, row, col, channel\)"):
        deconvnet.project(model, images, "block2", [(0, 1)])
    with pytest.raises(ValueError, match=r"unknown rule 'deconv'.*deconvnet, guided, gradient"):
        deconvnet.project(model, images, "block2", [(0, 0, 0, 0)], rule="deconv")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        deconvnet.strongest(model, images, "block2", k=0)


class _TwoBranches(keras.Model):
    """A subclassed model with a layer that never sees the image, and one never called."""

    def __init__(self):
        super().__init__(name="branches")
        self.conv = L.Conv2D(2, 3, name="conv")
        self.bias_net = L.Dense(2, name="bias_net")
        self.unused = L.Dense(2, name="unused")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bias_net.build((1, 3))
        self.unused.build((1, 3))

    def call(self, x):
        bias = self.bias_net(keras.ops.ones((1, 3)))
        return self.conv(x) + bias[:, None, None, :]


def test_layers_off_the_image_path_are_refused(images):
    model = _TwoBranches()
    model(images)
    model = keras.Sequential([keras.Input((8, 8, 2)), model])
    with pytest.raises(ValueError, match="does not depend on the image input"):
        deconvnet.strongest(model, images, "branches/bias_net")
    with pytest.raises(ValueError, match="did not run"):
        deconvnet.strongest(model, images, "branches/unused")
    # The subclassed model's own conv still works, from whole images (no graph to analyse).
    units = deconvnet.strongest(model, images, "branches/conv", k=2)
    assert deconvnet.project(model, images, "branches/conv", units).shape == (2, 8, 8, 2)


def no_sub_model(model, path):
    """Stands in for :func:`tbviz.layers.up_to` where a model's graph allows no sub-model."""
    raise ValueError("no sub-model")


def test_a_model_that_cannot_run_on_crops_falls_back_to_whole_images(images, monkeypatch):
    # The head needs the static size of its input: tracing it on crops of unknown size fails.
    x = keras.Input((8, 8, 2))
    y = L.Conv2D(3, 3, padding="same", activation="relu", name="c1")(x)
    flat = L.Lambda(lambda t: keras.ops.reshape(t, (-1, t.shape[1] * t.shape[2] * t.shape[3])),
                    name="static_flatten")(y)
    model = keras.Model(x, L.Dense(2)(flat))
    model.get_layer("c1").set_weights([v.astype("float32") for v in weights()["c1"]])
    # c1's projections run a sub-model up to c1, so the head never runs: crops work.
    assert ("c1", images.shape[1:]) not in deconvnet.Projector(model, ["c1"]).prepare(
        images.shape[1:])._whole
    # Where no sub-model can be built (a layer called twice, say), the whole model runs,
    # head included: then c1 is projected from whole images.
    monkeypatch.setattr(tbviz.layers, "up_to", no_sub_model)
    proj = deconvnet.Projector(model, ["c1"]).prepare(images.shape[1:])
    units = deconvnet.top_units(proj.activations(images)["c1"], k=5)
    got = proj.project(images, {"c1": units})["c1"]
    # (found while tracing on TensorFlow; where crops compile per size, at the first call)
    assert ("c1", images.shape[1:]) in proj._whole
    ref = small_reference(weights())
    for u, p in zip(units, got):
        assert_close(p, ref.project(images[u.image_index], "block1", u[1:4], "deconvnet"))


def test_distinct_top_units_take_one_unit_per_image_and_map():
    rng = np.random.default_rng(3)
    acts = rng.random((3, 5, 5, 4))
    units = deconvnet.top_units(acts, k=6, distinct=True)
    pairs = [(u.image_index, u.channel) for u in units]
    assert len(set(pairs)) == 6
    # Independent: the 6 largest per-(image, map) maxima, each at its argmax.
    maxima = acts.max(axis=(1, 2))
    expect = sorted(((maxima[n, c], n, c) for n in range(3) for c in range(4)), reverse=True)[:6]
    assert [(n, c) for _, n, c in expect] == pairs
    for u in units:
        assert acts[u.image_index, u.row, u.col, u.channel] == u.value == maxima[u.image_index, u.channel]


def test_distinct_fills_up_with_the_next_strongest_when_pairs_run_out():
    acts = np.zeros((1, 3, 3, 2))
    acts[0, 0, 0, 0], acts[0, 1, 1, 0], acts[0, 2, 2, 1], acts[0, 0, 2, 0] = 9, 8, 7, 6
    units = deconvnet.top_units(acts, k=4, distinct=True)
    assert [(u.row, u.col, u.channel, u.value) for u in units] == [
        (0, 0, 0, 9.0), (2, 2, 1, 7.0), (1, 1, 0, 8.0), (0, 2, 0, 6.0)]


def test_support_window_is_square_inside_the_image_and_holds_the_support():
    rng = np.random.default_rng(4)
    for _ in range(50):
        h, w = rng.integers(4, 30, 2)
        p = rng.normal(size=(h, w, 3)) * 1e-4  # the faint global part
        r, c = rng.integers(0, h), rng.integers(0, w)
        p[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] += 5.0
        t, b, lft, rt = deconvnet.support_window(p)
        assert 0 <= t < b <= h and 0 <= lft < rt <= w
        assert t <= r < b and lft <= c < rt
        assert b - t == min(max(b - t, rt - lft), h) and rt - lft == min(max(b - t, rt - lft), w)
    assert deconvnet.support_window(np.zeros((5, 7, 3))) == (0, 5, 0, 7)


def test_support_window_leaves_out_specks_not_connected_to_the_peak():
    p = np.zeros((40, 40, 3))
    p[20:23, 10:13] = 1.0          # the unit's own field
    p[2, 35] = p[38, 1] = 0.5      # global terms of a normalization on two bright pixels
    t, b, lft, r = deconvnet.support_window(p, margin=0)
    assert (t, b, lft, r) == (20, 23, 10, 13)


@pytest.mark.parametrize("size", [(61, 53), (37, 30)])
def test_crops_hold_each_units_field_aligned_to_the_stride(size):
    # The plan alone (no TensorFlow run): every crop lies in the image, starts on the layer's
    # stride, holds the unit's clipped field, and the unit's position in it maps back.
    model = strided_net(size)
    proj = deconvnet.Projector(model, ["c1", "p1", "r2", "c3"])
    for layer in proj.layers:
        field = proj.field(layer, size)
        shape = proj.output_shapes(size + (3,))[layer]
        units = all_units(shape, 3, step=3)
        table = deconvnet.unit_table(units, shape, n_images=3)
        boxes, positions = deconvnet.crops(table, field, size)
        for (image, row, col, channel), (top, h, left, w), pos in zip(table, boxes, positions):
            for axis, start, length, i, p in ((field[0], top, h, row, pos[0]),
                                              (field[1], left, w, col, pos[1])):
                lo, hi = axis.window(i, clip=True)
                assert 0 <= start <= lo and hi <= start + length <= axis.image_length
                assert start % axis.jump == 0 and (axis.image_length - length) % axis.jump == 0
                assert p == i - start // axis.jump
            assert pos[2] == channel


def test_batch_plan_takes_every_unit_once_in_batches_that_fit():
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.integers(0, 3, 40), rng.integers(0, 5, 40),
                             rng.integers(0, 5, 40), rng.integers(0, 4, 40)])
    # Crops of two sizes; units of one image often share one.
    boxes = np.array([(0, 8, 0, 8) if r < 3 else (r, 4, c, 4) for _, r, c, _ in table])
    for share in (True, False):
        plan = deconvnet.batch_plan(table, boxes, max_batch=5, share=share)
        taken = np.concatenate([ks for _, ks in plan])
        assert sorted(taken.tolist()) == list(range(40))
        for shared, ks in plan:
            assert 1 <= len(ks) <= 5
            if shared:  # one input row: same image, same crop
                assert share and len({(table[k, 0],) + tuple(boxes[k]) for k in ks}) == 1
            else:  # rows of one size batch together
                assert len({tuple(boxes[k, [1, 3]]) for k in ks}) == 1
        assert any(s for s, _ in plan) == share


def test_reflection_padding_projects_without_pfor_fallback(caplog):
    # tf.pad(mode="REFLECT")'s gradient (MirrorPadGrad) has no pfor rule: units of one image
    # are then projected one row each, with the same result, and no while-loop fallback.
    x = keras.Input((10, 10, 2))
    y = L.Lambda(lambda t: keras.ops.pad(t, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect"),
                 name="reflect")(x)
    y = L.Conv2D(3, 3, activation="relu", name="c1")(y)
    y = L.Conv2D(3, 3, padding="same", activation="relu", name="c2")(y)
    model = keras.Model(x, y)
    images = np.random.default_rng(1).normal(0, 1, (2, 10, 10, 2)).astype("float32")
    proj = deconvnet.Projector(model, ["c2"])
    units = deconvnet.top_units(proj.activations(images)["c2"], k=6)
    assert len({u.image_index for u in units}) < len(units)  # some share an image
    with caplog.at_level("WARNING"):
        together = proj.project(images, {"c2": units})["c2"]
    assert not [r for r in caplog.records if "while_loop" in r.getMessage()]
    alone = np.concatenate([proj.project(images, {"c2": [u]})["c2"] for u in units])
    # The same rows through the same graph, batched differently: float32 summation order.
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6 * np.abs(alone).max())
    assert np.abs(alone).max() > 0


def test_projections_trace_only_the_layers_up_to_their_own(images, monkeypatch):
    # Count the head's Python calls: a probe traced through the whole model runs it once per
    # trace, one stopping at the projected layer never does.
    model = small_net("ReLU", weights())
    head = model.get_layer("fc")
    calls = []
    original = head.call
    object.__setattr__(head, "call", lambda *a, **k: calls.append(1) or original(*a, **k))
    proj = deconvnet.Projector(model, ["block1", "block2"]).prepare(images.shape[1:])
    units = {layer: deconvnet.top_units(acts, k=5)
             for layer, acts in proj.activations(images).items()}
    prefix = proj.project(images, units)
    assert calls == []
    # The same units through the whole model (as where no sub-model can be built): the same
    # projections, up to float32 rounding of the same ops grouped into other graphs.
    monkeypatch.setattr(tbviz.layers, "up_to", no_sub_model)
    whole = deconvnet.Projector(model, ["block1", "block2"]).project(images, units)
    assert calls != []
    for layer in units:
        assert_close(prefix[layer], whole[layer])


def test_a_depthwise_model_pays_no_vectorized_trace_that_would_fail():
    # pfor cannot vectorize a depthwise convolution's backward over units: seen in the
    # one-row function's graph, so no vectorized function is traced just to fail.
    x = keras.Input((8, 8, 2))
    y = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    y = L.Conv2D(3, 3, padding="same", activation="relu", name="c2")(y)
    y = L.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="c3")(y)
    model = keras.Model(x, y)
    images = np.random.default_rng(2).normal(0, 1, (2, 8, 8, 2)).astype("float32")
    proj = deconvnet.Projector(model, ["c3"]).prepare(images.shape[1:])
    field = proj.field("c3", images.shape[1:])
    assert all(crop_plan(a) is None for a in field)  # its units would share their image
    units = deconvnet.top_units(proj.activations(images)["c3"], k=6)
    together = proj.project(images, {"c3": units})["c3"]
    if backend.name == "tensorflow":  # activations and the one-row projection only
        assert proj.trace_count == 2
    # Each unit alone through the whole image gives the same (float32 summation order only).
    alone = np.concatenate([proj.project(images, {"c3": [u]}, crop=False)["c3"] for u in units])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6 * np.abs(alone).max())
    assert np.abs(alone).max() > 0


def test_without_vectorizing_the_units_of_an_image_run_one_row_each(images):
    # block2's field is about the whole image, so by default its units of one image share
    # a forward pass (one more trace); vectorize=False projects them one row each instead.
    model = small_net("ReLU", weights())
    shared = deconvnet.Projector(model, ["block1", "block2"]).prepare(images.shape[1:])
    rows = deconvnet.Projector(model, ["block1", "block2"], vectorize=False)
    rows.prepare(images.shape[1:])
    tf = backend.name == "tensorflow"  # traces counted where all happen in prepare()
    assert not tf or (shared.trace_count, rows.trace_count) == (1 + 2 + 1, 1 + 2)
    units = {layer: deconvnet.top_units(acts, k=6)
             for layer, acts in rows.activations(images).items()}
    assert len({u.image_index for u in units["block2"]}) < 6  # some units share an image
    got, want = rows.project(images, units), shared.project(images, units)
    assert not tf or rows.trace_count == 1 + 2
    ref = small_reference(weights())
    for u, p in zip(units["block2"], got["block2"]):
        assert_close(p, ref.project(images[u.image_index], "block2", u[1:4], "deconvnet"))
    for layer in units:  # the same rows batched otherwise: float32 summation order only
        np.testing.assert_allclose(got[layer], want[layer], rtol=0,
                                   atol=1e-6 * np.abs(want[layer]).max())
