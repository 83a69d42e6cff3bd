"""Run by test_distributed_backends.py in a subprocess: fit a small model with every part of
TensorBoardViz on JAX or PyTorch (``KERAS_BACKEND``), alone or distributed, and print
what the test checks as JSON on the last line.

    python backend_fit.py LOG_DIR {single|data_parallel|jax_processes|torch_ranks}

* ``single``: one device, no distribution.
* ``data_parallel`` (JAX): ``keras.distribution.DataParallel`` over this process's
  devices (the test gives two host devices through ``XLA_FLAGS``).
* ``jax_processes`` (JAX): one process of a two-process job (``jax.distributed``, the
  coordinator in ``TBVIZ_COORDINATOR``, the index in ``TBVIZ_PROCESS``), each fitting on
  its own device.
* ``torch_ranks`` (PyTorch): one rank of a ``torch.distributed`` gloo job (``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).

The weights do not move (SGD with learning rate 0), so every panel of a distributed run
can be compared with a single-device one: what is tested is tbviz under distribution, not
the reduction order of the distributed training step. The scan data (48 images) is
scanned at every epoch, split among the processes.
"""

import json
import os
import sys

mode = sys.argv[2]
if mode == "jax_processes":
    import jax

    jax.distributed.initialize(coordinator_address=os.environ["TBVIZ_COORDINATOR"],
                               num_processes=2, process_id=int(os.environ["TBVIZ_PROCESS"]))
if mode == "torch_ranks":
    import torch.distributed

    torch.distributed.init_process_group("gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tbviz  # noqa: E402
from models import sequential  # noqa: E402
from tbviz import backend  # noqa: E402

log_dir = sys.argv[1]
devices = None
if mode in ("data_parallel", "jax_processes"):
    import jax

    devices = [str(d) for d in jax.devices()]
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))

keras.utils.set_random_seed(0)
model = sequential()  # no BatchNorm or Dropout: per-device statistics would differ
model.compile(keras.optimizers.SGD(0.0),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x = rng.random((64, 12, 12, 3), dtype=np.float32)
y = np.clip((x.mean((1, 2, 3)) * 6 - 2).astype("int32"), 0, 2)
scan_data = rng.uniform(0, 1, (48, 12, 12, 3)).astype("float32")
# strict: any part that fails raises here rather than switching itself off. The op graph
# is left out: its JAX and PyTorch side (tbviz.backend._graphdef) is tested on its own.
viz = tbviz.TensorBoardViz(log_dir, probe_images=x[:4], probe_labels=y[:4], graph=False,
                           losses={"every_n_steps": 1}, attribution=["saliency", "grad_cam"],
                           deconvnet={"scan_data": scan_data, "channels": 2}, strict=True)
fit_x, fit_y = x, y
if mode == "jax_processes":  # each process feeds its half of every global batch
    index = jax.process_index()
    fit_x, fit_y = x.reshape(4, 2, 8, *x.shape[1:])[:, index].reshape(32, *x.shape[1:]), \
        y.reshape(4, 2, 8)[:, index].reshape(32)
    keras.distribution.distribution().auto_shard_dataset = False
model.fit(fit_x, fit_y, batch_size=16 if mode != "jax_processes" else 8, epochs=2, verbose=0,
          shuffle=False, callbacks=[viz])

count, index = backend.processes(model)
found = tbviz.deconvnet.scan(model, scan_data, ["conv2"], k=3)
print(json.dumps({
    "processes": [count, index], "chief": backend.is_chief(model), "devices": devices,
    # where the weights live: every device of the distribution under DataParallel
    "weight_devices": sorted(str(d) for d in getattr(model.weights[0].value, "devices",
                                                     lambda: [])()),
    "units": {str(ch): [list(u[:4]) for u in us] for ch, us in found["conv2"].items()},
}))
if mode == "torch_ranks":
    torch.distributed.destroy_process_group()
