"""Run by test_reliability_runs.py: ``style-transfer train`` that SIGKILLs itself, and that
can save what its first step did.

    python killed_train.py KILL_AT_STEP train --content-dir ... [--resume]

Once global step KILL_AT_STEP has been fully processed (every callback ran, so a
checkpoint due at that step is on disk), the process sends itself SIGKILL: no
``finally`` block, no atexit handler and no flush runs, as when the OOM killer or
a preempted machine ends a job. KILL_AT_STEP 0 never kills.

With ``FIRST_STEP_NPZ=path`` in the environment, a run that starts from scratch saves
into ``path`` the transform-net's weights before its first step (``w0/<i>``), after it
(``w1/<i>``), Adam's moments after it (``m/<i>``, ``v/<i>``), the step's ``loss`` and
Adam's hyperparameters, ``i`` indexing ``transform_net.trainable_variables``.
"""

import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from style_transfer import callbacks, cli  # noqa: E402

kill_at = int(sys.argv[1])
dump = os.environ.get("FIRST_STEP_NPZ")
original_begin = callbacks.Checkpointing.on_train_begin
original_end = callbacks.Checkpointing.on_train_batch_end
first_step = {}


def values(prefix, variables):
    return {f"{prefix}/{i}": np.asarray(v.numpy()) for i, v in enumerate(variables)}


def on_train_begin(self, logs=None):
    original_begin(self, logs)
    if dump and int(self.model.optimizer.iterations.numpy()) == 0:
        first_step.update(values("w0", self.model.transform_net.trainable_variables))


def on_train_batch_end(self, batch, logs=None):
    original_end(self, batch, logs)  # Checkpointing is the last callback of the train command
    step = int(self.model.optimizer.iterations.numpy())
    if first_step and step == 1:
        # Keras' Adam, inside the train command's SkipNonFinite wrapper, keeps its moments in
        # variable order.
        opt = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        np.savez(dump, **first_step, **values("w1", self.model.transform_net.trainable_variables),
                 **values("m", opt._momentums), **values("v", opt._velocities),
                 loss=np.asarray(logs["loss"]).reshape(()), learning_rate=opt.learning_rate.numpy(),
                 beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon)
    if step == kill_at:
        print(f"killing myself after step {kill_at}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


callbacks.Checkpointing.on_train_begin = on_train_begin
callbacks.Checkpointing.on_train_batch_end = on_train_batch_end
sys.exit(cli.main(sys.argv[2:]))
