"""evaluate@<entry> (and evaluate_exp): test-set metrics of one trained model.

Outputs: metrics/<...>.json, flat headline keys that `dvc metrics show` reads as a table;
results/<...>.json, the detail (per-class accuracy, confusion matrix).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from stages.outputs import write_json
from stages.params import DATASETS, UserError, cli, load
from stages.train import load_split, paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("activation")
    ap.add_argument("batch_norm", choices=["true", "false", "True", "False"])
    ap.add_argument("seed", type=int)
    ap.add_argument("--experiment", action="store_true")
    a = ap.parse_args()
    batch_size = load()["evaluate"]["batch_size"]
    out = paths(a.dataset, a.activation, a.batch_norm.lower() == "true", a.seed, a.experiment)
    data_dir = Path("data/prepared", a.dataset)
    classes = json.loads((data_dir / "classes.json").read_text())
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
