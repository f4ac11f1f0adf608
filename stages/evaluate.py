"""evaluate@<entry> (and evaluate_exp): test-set metrics of one trained model.

Outputs: metrics/<...>.json, flat headline keys that `dvc metrics show` reads as a table;
results/<...>.json, the detail (per-class accuracy, confusion matrix).
"""
import json
import time

import numpy as np

from stages.outputs import write_json
from stages.params import UserError, cli, load
from stages.train import entry, load_split


def main():
    _, out, data_dir, classes = entry(__doc__.splitlines()[0])
    batch_size = load()["evaluate"]["batch_size"]
    x, y = load_split(data_dir / "test.npz", len(classes))
    summary = json.loads(out["summary"].read_text())

    import keras
    try:
        model = keras.models.load_model(out["model"])
    except Exception as e:
        raise UserError(f"{out['model']}: cannot be loaded ({type(e).__name__}: {e}); retrain it with "
                        f"`dvc repro -f` on its train stage")
    x = x.astype("float32")
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)  # warm-up: tracing is not inference
    t0 = time.perf_counter()
    p = model.predict(x, batch_size=batch_size, verbose=0).astype("float64")  # (N, classes) softmax
    seconds = time.perf_counter() - t0
    pred = p.argmax(1)
    loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())
    accuracy = float((pred == y).mean())
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (y, pred), 1)  # rows: true class, columns: predicted
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    write_json(out["results"], {"classes": classes, "per_class_accuracy": dict(zip(classes, per_class.tolist())),
                                "confusion": confusion.tolist()})
    write_json(out["metrics"], {
        "test_accuracy": accuracy, "test_error": 1 - accuracy, "test_loss": loss,
        "worst_class_accuracy": float(per_class.min()), "parameters": summary["parameters"],
        "epochs": summary["epochs_completed"], "train_seconds": summary["train_seconds"],
        "seconds_per_epoch": summary["seconds_per_epoch"], "inference_images_per_second": len(y) / seconds,
        "diverged": summary["diverged"]})
    print(f"{out['metrics']}: test accuracy {accuracy:.4f}, loss {loss:.4f}"
          + (" (diverged: last finite weights)" if summary["diverged"] else ""))


if __name__ == "__main__":
    cli(main)
