#!/usr/bin/env bash
# Set up .venv, install the project, and run the main job on its embedded default:
# fast style transfer trained for a few minutes on the bundled public-domain photos and
# painting (no downloads), instrumented end to end with tbviz. Writes runs/demo/ and
# prints what to open in TensorBoard. Extra arguments go to `style-transfer demo`
# (e.g. --style udnie --epochs 5).
. "$(dirname "$0")/_venv.sh"
.venv/bin/style-transfer demo --log-dir runs/demo "$@"
echo "(TensorBoard with the tbviz tab is installed in .venv: .venv/bin/tensorboard --logdir runs/demo)"
