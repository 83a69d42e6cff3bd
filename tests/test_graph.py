"""GraphCallback: op graph with one scope per layer, and the Keras conceptual graph.

The backend tests run on TensorFlow, JAX and PyTorch (``@pytest.mark.backends``); the
ones that use TensorFlow itself, or its scope suffixes, run on TensorFlow only. The
browser test draws a JAX run and a PyTorch run (written by subprocesses, whatever the
backend of this one) in TensorBoard's Graphs dashboard; its screenshots land in the
test's tmp dir, and also in ``$TBVIZ_SCREENSHOT_DIR`` if set (``docs/graph-jax.png`` and
``docs/graph-torch.png`` come from there).
"""

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from tensorboard.plugins.graph import keras_util
from tensorboard.util.tensor_util import make_ndarray

import tbviz
from eventfiles import load, texts
from models import Subclassed, compile, data, functional_bn_nested, sequential, with_application
from tbviz import backend

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
#: The convolution and the rectifier as each backend records them.
CONV = {"tensorflow": "Conv2D", "jax": "conv_general_dilated", "torch": "conv2d"}[BACKEND]
RELU = {"tensorflow": "Relu", "jax": "max", "torch": "relu"}[BACKEND]
not_on_tensorflow = pytest.mark.skipif(BACKEND == "tensorflow",
                                       reason="TensorFlow draws its own graph (its own checks)")


def fit_with_graph(model, log_dir, shape=(12, 12, 3), **kwargs):
    x, y = data(16, shape)
    compile(model).fit(x, y, epochs=1, batch_size=8, verbose=0,
                       callbacks=[tbviz.GraphCallback(str(log_dir), strict=True, **kwargs)])
    return load(log_dir / "train")


def scopes(graph_def, depth):
    return {"/".join(n.name.split("/")[:depth]) for n in graph_def.node if n.name.count("/") >= depth}


def boxes(graph_def, scope):
    """The boxes directly inside ``scope``: what the Graphs dashboard shows when it is opened."""
    depth = scope.count("/") + 2
    return {s.rsplit("/", 1)[-1] for s in scopes(graph_def, depth) if s.startswith(scope + "/")}


def conceptual_nodes(acc):
    text = make_ndarray(acc.Tensors("keras")[0].tensor_proto).item().decode()
    return {n.name: list(n.input) for n in keras_util.keras_model_to_graph_def(json.loads(text)).node}


def ancestors(graph_def, name):
    """Every node ``name`` reads from, directly or not."""
    inputs = {n.name: [i.lstrip("^").split(":")[0] for i in n.input] for n in graph_def.node}
    seen, todo = set(), [name]
    while todo:
        for i in inputs[todo.pop()]:
            if i not in seen:
                seen.add(i)
                todo.append(i)
    return seen


def shapes(node):
    return [[d.size for d in s.dim] for s in node.attr["_output_shapes"].list.shape]


def top_level(graph_def, op):
    return [n for n in graph_def.node if "/" not in n.name and n.op == op]


@pytest.mark.backends
def test_sequential_op_graph_has_a_box_per_layer_holding_its_ops(tmp_path):
    model = sequential()
    acc = fit_with_graph(model, tmp_path)
    assert acc.Tags()["graph"]
    graph = acc.Graph()
    assert boxes(graph, "seq") == {layer.name for layer in model.layers}
    ops = {n.op for n in graph.node if n.name.startswith("seq/conv1/")}
    assert CONV in ops and RELU in ops  # conv1 = Conv2D(activation="relu")
    assert not any(n.op == CONV for n in graph.node if n.name.startswith("seq/head/"))


@pytest.mark.backends
def test_op_graph_is_wired_from_the_input_through_every_layer_to_the_output(tmp_path):
    model = sequential()
    graph = fit_with_graph(model, tmp_path).Graph()
    names = {n.name for n in graph.node}
    assert {i.lstrip("^").split(":")[0] for n in graph.node for i in n.input} <= names
    [output] = top_level(graph, "Identity")
    upstream = ancestors(graph, output.name)
    assert "input_0" in upstream
    for layer in model.layers:  # each layer's ops lie on the way from input to output
        assert any(a.startswith(f"seq/{layer.name}/") for a in upstream), layer.name


@pytest.mark.backends
def test_functional_nested_graph_nests_scopes_and_conceptual_graph_links_layers(tmp_path):
    model = functional_bn_nested()
    acc = fit_with_graph(model, tmp_path)
    graph = acc.Graph()
    assert boxes(graph, "func/block") == {layer.name for layer in model.get_layer("block").layers}
    # Dropout does nothing at inference: no ops, no box. Every other layer has one.
    assert boxes(graph, "func") == {layer.name for layer in model.layers[1:]} - {"drop"}
    nodes = conceptual_nodes(acc)
    assert nodes["func/head"] == ["func/gap"]
    assert nodes["func/block/inner_conv"]  # nested model expanded, wired to its input
    assert "func/bn1" in nodes["func/act1"]


def graph_at_train_begin(model, log_dir):
    """What the callback writes at train begin, without the training (a backbone's train
    step takes a minute to compile on JAX; the graph is written before it runs)."""
    cb = tbviz.GraphCallback(str(log_dir), strict=True)
    cb.set_model(model)
    cb.on_train_begin()
    cb.on_train_end()
    return load(log_dir / "train")


@pytest.mark.backends
def test_application_backbone_graph(tmp_path):
    model = with_application()
    acc = graph_at_train_begin(model, tmp_path)
    base = model.layers[1]
    graph = acc.Graph()
    assert boxes(graph, "app") == {base.name, "gap", "head"}
    inner = boxes(graph, f"app/{base.name}")
    assert {"Conv1", "block_1_expand", "out_relu"} <= inner
    assert inner <= {layer.name for layer in base.layers}
    assert f"app/{base.name}/Conv1" in conceptual_nodes(acc)


@pytest.mark.backends
def test_subclassed_model_gets_op_graph_after_first_step(tmp_path):
    acc = fit_with_graph(Subclassed(), tmp_path)
    assert boxes(acc.Graph(), "sub") == {"conv", "gap", "head"}


@pytest.mark.backends
def test_graph_fn_in_a_keras_name_scope_holds_the_model(tmp_path):
    model = sequential()

    def losses(x):
        with keras.name_scope("losses"):
            return keras.ops.mean(keras.ops.square(model(x, training=False)))

    graph = fit_with_graph(model, tmp_path, graph_fn=losses,
                           input_spec=backend.Spec((None, 12, 12, 3))).Graph()
    assert boxes(graph, "losses") == {"seq"}
    assert boxes(graph, "losses/seq") == {layer.name for layer in model.layers}


@pytest.mark.backends
@not_on_tensorflow
def test_edges_carry_shapes_and_a_free_batch_is_unknown(tmp_path):
    model = sequential()
    graph = fit_with_graph(model, tmp_path).Graph()
    [inp], [out] = top_level(graph, "Placeholder"), top_level(graph, "Identity")
    assert shapes(inp) == [[-1, 12, 12, 3]]
    assert shapes(out) == [[-1 if d is None else d for d in model.output_shape]]
    weight = model.get_layer("conv1").kernel
    kernel = next(n for n in graph.node if n.attr["variable"].s == weight.path.encode())
    assert kernel.name == "seq/conv1/kernel" and kernel.op == "VariableV2"
    assert shapes(kernel) == [list(weight.shape)]


@pytest.mark.backends
@not_on_tensorflow
def test_a_fixed_batch_is_drawn_as_given(tmp_path):
    model = sequential()
    graph = fit_with_graph(model, tmp_path, input_spec=backend.Spec((4, 12, 12, 3))).Graph()
    assert shapes(top_level(graph, "Identity")[0]) == [[4, 3]]


@pytest.mark.backends
@not_on_tensorflow
def test_a_shared_layer_is_one_box_and_names_stay_as_given(tmp_path):
    inp = keras.Input((4,))
    shared = keras.layers.Dense(4, name="dense")
    out = keras.layers.Dense(2, name="dense_1")(shared(shared(inp)))
    model = keras.Model(inp, out, name="m")
    graph = tbviz.core.graphs.op_graph(model)
    assert boxes(graph, "m") == {"dense", "dense_1"}
    # Both calls of the shared layer are in its box: its kernel is read by two products.
    kernel = next(n.name for n in graph.node
                  if n.attr["variable"].s == shared.kernel.path.encode())
    readers = [n for n in graph.node if any(i.split(":")[0] == kernel for i in n.input)]
    assert len(readers) == 2 and all(n.name.startswith("m/dense/") for n in readers)


@pytest.mark.backends
def test_a_pass_that_cannot_be_drawn_is_said_once_and_no_graph_is_written(tmp_path, caplog):
    model = compile(sequential())
    x, y = data(16)

    def broken(x):
        raise RuntimeError("this pass cannot be traced")

    cb = tbviz.GraphCallback(str(tmp_path), graph_fn=broken, input_spec=backend.Spec((None, 12, 12, 3)))
    with caplog.at_level(logging.WARNING, logger="tbviz"):
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    assert len(history.history["loss"]) == 2  # training went on
    warnings = [r.getMessage() for r in caplog.records if "graph failed" in r.getMessage()]
    assert len(warnings) == 1 and "this pass cannot be traced" in warnings[0]
    acc = load(tmp_path / "train")
    assert not acc.Tags()["graph"]
    [(_, text)] = texts(tmp_path / "train", "tbviz/errors")
    assert "graph failed" in text and "this pass cannot be traced" in text
    assert conceptual_nodes(acc)["seq/head"] == ["seq/flat"]  # the conceptual graph still is


@pytest.mark.backends
@not_on_tensorflow
def test_tensorflow_is_not_imported_on_jax_and_pytorch(tmp_path):
    code = (
        "import sys, keras, tbviz\n"
        "from models import compile, data, functional_bn_nested\n"
        "model = compile(functional_bn_nested()); x, y = data(8)\n"
        f"model.fit(x, y, verbose=0, callbacks=[tbviz.GraphCallback({str(tmp_path)!r}, strict=True)])\n"
        "print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT / "tests", capture_output=True,
                         text=True, timeout=300,
                         env={**os.environ, "KERAS_BACKEND": BACKEND, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "False"
    assert load(tmp_path / "train").Tags()["graph"]


@pytest.mark.backends
def test_unwritable_log_dir_is_reported_at_train_begin(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    model = compile(sequential())
    x, y = data(8)
    with pytest.raises(ValueError, match="not writable"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[tbviz.GraphCallback(str(blocker / "run"))])


@pytest.mark.backends
def test_bad_graph_fn_is_rejected_at_construction():
    with pytest.raises(ValueError, match="callable"):
        tbviz.GraphCallback("runs/x", graph_fn="not callable")


# -- TensorFlow only ------------------------------------------------------------------------------

def test_graph_fn_without_spec_on_uncalled_subclassed_model_is_traced_after_the_first_step(
        tmp_path):
    # Only TensorFlow's fit leaves a subclassed model unbuilt until the first step (JAX's
    # and PyTorch's build it first). The callback waits for that step (a guest never calls
    # the model first), then finds the input shape there.
    model = compile(Subclassed())
    x, y = data(8)
    cb = tbviz.GraphCallback(str(tmp_path), graph_fn=lambda x: model(x), strict=True)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    graph = load(tmp_path / "train").Graph()
    assert any(node.op == "Conv2D" for node in graph.node)


def test_graph_fn_traces_a_custom_computation_in_a_tf_name_scope(tmp_path):
    import tensorflow as tf

    model = sequential()

    def losses(x):
        with tf.name_scope("losses"):
            return tf.reduce_mean(tf.square(model(x, training=False)))

    acc = fit_with_graph(model, tmp_path, graph_fn=losses,
                         input_spec=tf.TensorSpec((None, 12, 12, 3)))
    assert {"losses/seq/conv1", "losses/seq/head"} <= scopes(acc.Graph(), 3)


def test_tensorflow_suffixes_are_stripped_and_shared_layer_calls_kept_apart():
    inp = keras.Input((4,))
    shared = keras.layers.Dense(4, name="dense")
    out = keras.layers.Dense(2, name="dense_1")(shared(shared(inp)))
    model = keras.Model(inp, out, name="m")
    from tbviz.core.graphs import op_graph

    gd = op_graph(model)
    names = [n.name for n in gd.node]
    assert len(names) == len(set(names))
    got = scopes(gd, 2)
    assert {"m/dense", "m/dense_1"} <= got
    assert len([s for s in got if s.startswith("m/dense")]) == 3  # two calls + dense_1
    inputs = {i.lstrip("^").split(":")[0] for n in gd.node for i in n.input}
    assert inputs <= set(names)  # every edge points at an existing node
    assert not any(s.startswith("m_1") for s in scopes(gd, 1))


# -- the Graphs dashboard, in a browser ------------------------------------------------------------

WRITER = """
import sys, tbviz
from models import compile, data, functional_bn_nested
model = compile(functional_bn_nested()); x, y = data(8)
model.fit(x, y, verbose=0, callbacks=[tbviz.GraphCallback(sys.argv[1], strict=True)])
"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.cross_backend
def test_graphs_dashboard_draws_one_box_per_layer_for_jax_and_pytorch_runs(tmp_path):
    import tbserver

    runs = [b for b in ("jax", "torch") if importlib.util.find_spec(b)]
    if not runs:
        pytest.skip("neither jax nor torch is installed")
    writers = [subprocess.Popen(  # both runs written at once: each mostly waits on imports
        [sys.executable, "-c", WRITER, str(tmp_path / "logs" / name)], cwd=ROOT / "tests",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "KERAS_BACKEND": name, "PYTHONPATH": str(ROOT)}) for name in runs]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-3000:]
    model = functional_bn_nested()
    top = {layer.name for layer in model.layers[1:]} - {"drop"}  # Dropout: no ops at inference
    inner = {layer.name for layer in model.get_layer("block").layers}
    convolution = {"jax": "conv_general_dilated", "torch": "conv2d"}

    def shown(page, scope):
        names = page.eval_on_selector_all("g.node", "els => els.map(e => e.dataset.name)")
        return {n[len(scope) + 1:] for n in names
                if n.startswith(scope + "/") and "/" not in n[len(scope) + 1:] and "~~" not in n}

    with tbserver.browser() as browser:
        for name in runs:  # a server per run: the dashboard opens on it, nothing to pick
            with tbserver.tensorboard(tmp_path / "logs" / name) as url:
                page = browser.new_page(viewport={"width": 1300, "height": 900})
                page.set_default_timeout(60_000)
                page.goto(f"{url}/#graphs")
                page.wait_for_selector('g.node[data-name="func"]')
                assert shown(page, "func") == set()  # closed until opened, as for TensorFlow
                page.dblclick('g.node[data-name="func"] .nodeshape')
                page.wait_for_selector('g.node[data-name="func/head"]')
                assert shown(page, "func") == top
                page.dblclick('g.node[data-name="func/block"] .nodeshape')
                page.wait_for_selector('g.node[data-name="func/block/inner_conv"]')
                assert shown(page, "func/block") == inner
                page.dblclick('g.node[data-name="func/conv1"] .nodeshape')
                page.wait_for_selector('g.node[data-name="func/conv1/kernel"]')
                assert {convolution[name], "kernel", "bias"} <= shown(page, "func/conv1")
                page.click('g.node[data-name="func/conv1"] .nodeshape')  # its info card
                page.click("text=Fit to screen")
                page.wait_for_timeout(1500)  # the zoom's transition
                path = tmp_path / f"graph-{name}.png"
                page.screenshot(path=str(path))
                if os.environ.get("TBVIZ_SCREENSHOT_DIR"):
                    shutil.copy(path, Path(os.environ["TBVIZ_SCREENSHOT_DIR"]) / path.name)
                page.close()
