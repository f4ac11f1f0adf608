"""evaluate@<key> (and evaluate_exp): test-set metrics of one trained model, on train.backend.

Outputs: metrics/<...>.json, flat headline keys that `dvc metrics show` reads as a table;
results/<...>.json, the detail: per-class accuracy, confusion matrix, and every test image's label and
prediction (the report's McNemar tests compare two models on the same images).
"""

import time

import numpy as np

from stages.cli import UserError, cli
from stages.entry import from_command_line, load_split, read_classes, read_json
from stages.outputs import write_json

SUMMARY_KEYS = (
    "parameters",
    "epochs_completed",
    "train_seconds",
    "seconds_per_epoch",
    "diverged",
    "precision",
)


def load_model(path):
    import keras

    import stages.layers  # noqa: F401  registers the study's BatchNorm and PReLU, which saved models name

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras' messages span lines (a refused lambda layer explains safe_mode at length)
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise UserError(
            f"{path}: cannot be loaded ({type(e).__name__}: {first[:200]}); retrain it with "
            f"`dvc repro -f` on its train stage"
        ) from None


def predict(model, x, batch_size):
    """(softmax (N, classes) float64, seconds of inference after a warm-up batch: tracing is not
    inference)."""
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    t0 = time.perf_counter()
    p = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(p, dtype=np.float64), time.perf_counter() - t0


def training_summary(entry):
    """models/<...>.json of a trained entry, checked: the model and its summary exist and it holds what its
    stage writes."""
    out = entry.paths
    stage = "train_exp" if entry.experiment else f"train@{entry.key}"
    if not (out["summary"].is_file() and out["model"].is_file()):
        raise UserError(f"{out['model']}: missing; train it first: dvc repro {stage}")
    return read_json(
        out["summary"],
        SUMMARY_KEYS,
        f"retrain it with `dvc repro -f {stage}` or restore it with `dvc checkout {out['summary']}`",
    )


def scores(p, y, classes):
    """(results, accuracy, loss) of softmax p (N, classes) against labels y (N,): results/<...>.json's
    per-class accuracy, confusion matrix (rows: true class, columns: predicted) and every prediction."""
    pred = p.argmax(1)
    loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())  # cross-entropy, nats
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    results = {
        "classes": classes,
        "per_class_accuracy": dict(zip(classes, per_class.tolist())),
        "confusion": confusion.tolist(),
        "labels": y.tolist(),
        "predictions": pred.tolist(),
    }
    return results, float((pred == y).mean()), loss


def main():
    entry, params = from_command_line(__doc__.splitlines()[0])
    out = entry.paths
    classes = read_classes(entry.dataset, params)
    x, y = load_split(entry.dataset, "test", len(classes))
    summary = training_summary(entry)
    p, seconds = predict(load_model(out["model"]), x.astype("float32"), params["evaluate"]["batch_size"])
    results, accuracy, loss = scores(p, y, classes)
    write_json(out["results"], results)
    write_json(
        out["metrics"],
        {
            "test_accuracy": accuracy,
            "test_error": 1 - accuracy,
            "test_loss": loss,
            "test_images": len(y),
            "worst_class_accuracy": min(results["per_class_accuracy"].values()),
            "parameters": summary["parameters"],
            "epochs": summary["epochs_completed"],
            "train_seconds": summary["train_seconds"],
            "seconds_per_epoch": summary["seconds_per_epoch"],
            "inference_images_per_second": len(y) / seconds,
            "diverged": summary["diverged"],
            "backend": summary.get("backend"),
            "precision": summary["precision"],
        },
    )
    print(
        f"{out['metrics']}: test accuracy {accuracy:.4f}, loss {loss:.4f}"
        + (" (diverged: last finite weights)" if summary["diverged"] else "")
    )


if __name__ == "__main__":
    cli(main)
