"""Several MultiWorkerMirroredStrategy workers as local processes on 127.0.0.1, for tests."""

import json
import subprocess

from tbserver import free_port


def run_workers(command, base_env, n=2, env=None, timeout=300):
    """Run ``command`` as the ``n`` workers of one TF_CONFIG cluster on loopback ports.

    ``env(index)`` adds environment variables per worker. Returns ``[(pid, stdout)]`` in
    worker order (worker 0 is the chief); a worker that fails fails the test with the
    end of its stderr. Every worker is killed if the test stops early.
    """
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(n)]}
    procs = []
    for index in range(n):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        worker_env = {**base_env, **(env(index) if env else {}), "TF_CONFIG": tf_config}
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=worker_env))
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            outs.append((p.pid, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs
