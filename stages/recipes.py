"""Named recipes: the sizes a user runs the study at, as the `dvc exp run -S` values that set them.

params.yaml holds the GPU study (width 1.0, 150 epochs: weeks on a CPU). On a CPU:
- quick-look: ~6 min on 2 cores with bf16; a quarter of the width on 8,000 images for 4 epochs: the pipeline
  end to end, no ranking.
- cpu-study: about 2 h on 2 cores with bf16 (docs/results/cifar10-cpu/): all 45,000 training images,
  10 epochs, 2 seeds: the variants separate.
The step schedule is in fractions of training, so it scales with the epochs as it is.
"""

import shlex

RECIPES = {
    "quick-look": {
        "model.width": 0.25,
        "train.limit": 8000,
        "train.validation": 1000,
        "train.epochs": 4,
        "train.batch_size": 64,
        "train.learning_rate": 0.05,
    },
    "cpu-study": {"model.width": 0.25, "train.epochs": 10, "train.learning_rate": 0.05, "grid.seed": "[0,1]"},
}


def command(name):
    """The one command that runs a recipe as a named DVC experiment."""
    return f"dvc exp run -n {name} " + " ".join(
        f"-S {shlex.quote(f'{k}={v}')}" for k, v in RECIPES[name].items()
    )


if __name__ == "__main__":
    for name in RECIPES:
        print(command(name))
