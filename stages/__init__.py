"""One module per DVC stage (check = params, prepare, train, evaluate, report) and the helpers they share."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides the epoch lines
