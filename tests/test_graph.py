"""GraphCallback: op graph with one scope per layer, and the Keras conceptual graph."""

import json

import keras
import pytest
import tensorflow as tf
from tensorboard.plugins.graph import keras_util

import tbviz
from eventfiles import load
from models import Subclassed, compile, data, functional_bn_nested, sequential, with_application


def fit_with_graph(model, log_dir, shape=(12, 12, 3), **kwargs):
    x, y = data(16, shape)
    compile(model).fit(x, y, epochs=1, batch_size=8, verbose=0,
                       callbacks=[tbviz.GraphCallback(str(log_dir), **kwargs)])
    return load(log_dir / "train")


def scopes(graph_def, depth):
    return {"/".join(n.name.split("/")[:depth]) for n in graph_def.node if n.name.count("/") >= depth}


def conceptual_nodes(acc):
    text = tf.make_ndarray(acc.Tensors("keras")[0].tensor_proto).item().decode()
    return {n.name: list(n.input) for n in keras_util.keras_model_to_graph_def(json.loads(text)).node}


def test_sequential_op_graph_has_a_scope_per_layer(tmp_path):
    acc = fit_with_graph(sequential(), tmp_path)
    assert acc.Tags()["graph"]
    got = scopes(acc.Graph(), 2)
    assert {"seq/conv1", "seq/pool1", "seq/conv2", "seq/relu2", "seq/flat", "seq/head"} <= got
    ops = {n.op for n in acc.Graph().node if n.name.startswith("seq/conv1/")}
    assert "Conv2D" in ops and "Relu" in ops


def test_functional_nested_graph_nests_scopes_and_conceptual_graph_links_layers(tmp_path):
    acc = fit_with_graph(functional_bn_nested(), tmp_path)
    got = scopes(acc.Graph(), 3)
    assert {"func/block/inner_conv", "func/block/inner_pool"} <= got
    assert {"func/conv1", "func/bn1", "func/act1", "func/head"} <= scopes(acc.Graph(), 2)
    # No Keras double-scope suffixes left on layer scopes.
    assert not any(s.startswith("func_1") or s.startswith("func/conv1_1") for s in scopes(acc.Graph(), 2))
    nodes = conceptual_nodes(acc)
    assert nodes["func/head"] == ["func/gap"]
    assert nodes["func/block/inner_conv"]  # nested model expanded, wired to its input
    assert "func/bn1" in nodes["func/act1"]


def test_application_backbone_graph(tmp_path):
    model = with_application()
    acc = fit_with_graph(model, tmp_path, shape=(32, 32, 3))
    base = model.layers[1].name
    got = scopes(acc.Graph(), 3)
    assert f"app/{base}/Conv1" in got and f"app/{base}/block_1_expand" in got
    assert f"app/{base}/Conv1" in conceptual_nodes(acc)


def test_subclassed_model_gets_op_graph_after_first_step(tmp_path):
    acc = fit_with_graph(Subclassed(), tmp_path)
    assert {"sub/conv", "sub/gap", "sub/head"} <= scopes(acc.Graph(), 2)


def test_graph_fn_traces_a_custom_computation(tmp_path):
    model = sequential()

    def losses(x):
        with tf.name_scope("losses"):
            return tf.reduce_mean(tf.square(model(x, training=False)))

    acc = fit_with_graph(model, tmp_path, graph_fn=losses,
                         input_spec=tf.TensorSpec((None, 12, 12, 3)))
    assert {"losses/seq/conv1", "losses/seq/head"} <= scopes(acc.Graph(), 3)


def test_graph_fn_without_spec_on_uncalled_subclassed_model_is_traced_after_the_first_step(
        tmp_path):
    # The model is built by its first training step; the callback waits for it (it never
    # calls the model first), then finds the input shape there.
    model = compile(Subclassed())
    x, y = data(8)
    cb = tbviz.GraphCallback(str(tmp_path), graph_fn=lambda x: model(x), strict=True)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    graph = load(tmp_path / "train").Graph()
    assert any(node.op == "Conv2D" for node in graph.node)


def test_unwritable_log_dir_is_reported_at_train_begin(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    model = compile(sequential())
    x, y = data(8)
    with pytest.raises(ValueError, match="not writable"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[tbviz.GraphCallback(str(blocker / "run"))])


def test_bad_graph_fn_is_rejected_at_construction():
    with pytest.raises(ValueError, match="callable"):
        tbviz.GraphCallback("runs/x", graph_fn="not callable")


def test_rename_scopes_keeps_shared_layer_calls_apart():
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
