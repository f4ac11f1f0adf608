"""One module per DVC stage (check = params, prepare, train, evaluate, report) and the helpers they share."""

import os

# Quiet start-up: TensorFlow's C++ and absl lines, and the `failed call to cuInit` error that a CPU-only
# TensorFlow logs at every start (level 3 hides errors too; Python-side errors still reach the user).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
