"""What the train stage does after each epoch (and a few steps into the first): prints the epoch's line and
the expected time, logs the curves (dvclive) and bias-shift statistics, checkpoints a finite epoch, and stops
the run where the loss diverged. Imports Keras: import it
after params.load() has chosen the backend."""

import time

import keras
import numpy as np
from dvclive.utils import standardize_metric_name

from stages import checkpoint
from stages.model import ACT_PREFIX

SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")
TIMED_STEPS = (3, 13)  # the expected time comes from steps 3..13 of the first epoch run (after compilation)
CPU_PATIENCE = 4 * 3600  # seconds: a grid expected to take longer on a CPU gets a pointer to the CPU recipe
# the pointer names the recipe rather than spelling its command: training does not import stages/recipes.py,
# so that a new recipe retrains nothing
CPU_POINTER = (
    "note: these are GPU-sized params; on a CPU, the recipe cpu-study ranks the variants in 2-6 h on 2 "
    "cores, AMX to AVX2 (README, 'Sizes and times'); `python -m stages.recipes` prints its command"
)


def log_epoch(live, logs):
    """One epoch's logs to dvclive, named as dvclive.keras names them (train/<m>, eval/<m> for val_<m>)."""
    for name, value in logs.items():
        live.log_metric(standardize_metric_name(name, "dvclive.keras"), value)
    live.next_step()


def activation_stats(probe, probe_x):
    """{act<i>_mean, act<i>_std}: each activation layer's output on a fixed batch, inference mode. Reduced in
    float64 from float32 copies: numpy reduces bf16 in bf16, which loses nearly everything."""
    stats = {}
    for i, a in enumerate(probe.predict(probe_x, batch_size=256, verbose=0), start=1):
        a = np.asarray(a, dtype=np.float32)
        stats[f"{ACT_PREFIX}{i}_mean"] = float(a.mean(dtype=np.float64))
        stats[f"{ACT_PREFIX}{i}_std"] = float(a.std(dtype=np.float64))
    return stats


def duration(seconds):
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min" if m else f"{seconds:.2g} s"


class EachEpoch(keras.callbacks.Callback):
    """Per epoch: adds learning rate, seconds and activation statistics to the logs, checkpoints a finite
    epoch, logs it to dvclive and prints it; stops training at the first non-finite value. `history` holds the
    epochs done before (a resumed run's) and grows by one dict per finite epoch. Its batch hook reads no logs,
    so Keras may run it in a thread (async_safe) and keep dispatching steps without waiting for each one's
    loss (a per-step check such as TerminateOnNaN would sync every step: a non-finite epoch is caught at its
    end)."""

    async_safe = True

    def __init__(self, *, history, live, ckpt_dir, probe_x, epochs, steps, queued, on_gpu):
        super().__init__()
        self.history, self.live, self.ckpt_dir, self.probe_x = history, live, ckpt_dir, probe_x
        self.epochs, self.steps, self.queued, self.on_gpu = epochs, steps, queued, on_gpu
        self.diverged_epoch, self.step_seconds = None, None

    def on_train_begin(self, logs=None):
        acts = [layer.output for layer in self.model.layers if layer.name.startswith(ACT_PREFIX)]
        self.probe = keras.Model(self.model.input, acts)
        self.first_epoch = len(self.history)

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.step_seconds is None and batch in TIMED_STEPS:
            if batch == TIMED_STEPS[0]:
                self.t_step = time.perf_counter()
            else:
                self.step_seconds = (time.perf_counter() - self.t_step) / (TIMED_STEPS[1] - TIMED_STEPS[0])
                self.say_expected_time()

    def say_expected_time(self):
        epoch = self.step_seconds * self.steps
        left = epoch * (self.epochs - self.first_epoch)
        msg = f"expected: {duration(epoch)} per epoch, {duration(left)} for this model"
        if self.queued:
            msg += (
                f", about {duration(left + self.queued * epoch * self.epochs)} with the grid's other "
                f"{self.queued} model{'s' * (self.queued > 1)} not trained yet "
                f"(`python -m stages.recipes --estimate` counts what `dvc repro` would train)"
            )
        print(msg, flush=True)
        if not self.on_gpu and left + self.queued * epoch * self.epochs > CPU_PATIENCE:
            print(CPU_POINTER, flush=True)

    def epoch_seconds(self, epoch, seconds):
        """An epoch's time, for the time left: the first epoch of a run also compiled the model (on JAX,
        20-40x a small model's epoch), so there the pace of its timed steps stands for it, as in the expected
        time. (On JAX the batch hooks run in a thread as each step's result arrives, often out of order, and
        the main loop dispatches an epoch's steps at once: no later point of the first epoch times its steps
        better.)"""
        return self.step_seconds * self.steps if epoch == self.first_epoch and self.step_seconds else seconds

    def on_epoch_end(self, epoch, logs):
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["seconds"] = time.perf_counter() - self.t0
        logs.update(activation_stats(self.probe, self.probe_x))
        if not all(np.isfinite(v) for v in logs.values()):
            self.diverged_epoch = epoch + 1
            self.model.stop_training = True
            log_epoch(self.live, logs)  # the curves show where it diverged
            return
        self.history.append({k: float(v) for k, v in logs.items()})
        checkpoint.save(self.ckpt_dir, self.model, self.history)
        log_epoch(self.live, self.history[-1])
        left = self.epoch_seconds(epoch, logs["seconds"]) * (self.epochs - epoch - 1)
        print(
            f"epoch {epoch + 1}/{self.epochs}: "
            + "  ".join(f"{k} {logs[k]:.4g}" for k in SHOWN if k in logs)
            + (f"  (about {duration(left)} left)" if left else ""),
            flush=True,
        )
