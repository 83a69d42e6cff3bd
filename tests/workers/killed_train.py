"""Run by test_reliability_resume.py: ``style-transfer train`` that SIGKILLs itself.

    python killed_train.py KILL_AT_STEP train --content-dir ... [--resume]

Once global step KILL_AT_STEP has been fully processed (every callback ran, so a
checkpoint due at that step is on disk), the process sends itself SIGKILL: no
``finally`` block, no atexit handler and no flush runs, as when the OOM killer or
a preempted machine ends a job. KILL_AT_STEP 0 never kills.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from style_transfer import callbacks, cli  # noqa: E402

kill_at = int(sys.argv[1])
original = callbacks.Checkpointing.on_train_batch_end


def on_train_batch_end(self, batch, logs=None):
    original(self, batch, logs)  # Checkpointing is the last callback of the train command
    if int(self.model.optimizer.iterations.numpy()) == kill_at:
        print(f"killing myself after step {kill_at}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


callbacks.Checkpointing.on_train_batch_end = on_train_batch_end
sys.exit(cli.main(sys.argv[2:]))
