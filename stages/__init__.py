"""One module per DVC stage (check = params, prepare, train, evaluate, report) and the helpers they share."""

import os

# Quiet start-up: TensorFlow's C++ and absl lines, and the `failed call to cuInit` error that a CPU-only
# TensorFlow logs at every start (level 3 hides errors too; Python-side errors still reach the user). A
# level set by the user is kept when TensorFlow reads it (0-3); anything else (`banana`) lets lines through.
for _level in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL"):
    if os.environ.get(_level) not in ("0", "1", "2", "3"):
        os.environ[_level] = "3"
