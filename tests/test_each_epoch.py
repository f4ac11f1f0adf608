"""stages/each_epoch.py: what the train stage does after each epoch, here its expected-time line and the
pointer to the CPU recipe, in-process (the per-epoch logs, checkpoints and divergence are trained in
tests/test_train.py and tests/test_faults.py)."""

import subprocess
import sys

import pytest

from tests.conftest import ENV, ROOT


@pytest.mark.parametrize(
    "on_gpu, step_seconds, pointer", [(False, 0.6, True), (False, 0.01, False), (True, 0.6, False)]
)
def test_expected_time_points_cpu_users_to_the_cpu_recipe_only_when_it_is_long(
    capsys, on_gpu, step_seconds, pointer
):
    """0.6 s a step of 128 images: width 1.0 on a CPU (150 epochs of 351 steps, 8 more models: days)."""
    from stages.each_epoch import EachEpoch

    r = EachEpoch(
        history=[], live=None, ckpt_dir=None, probe_x=None, epochs=150, steps=351, queued=7, on_gpu=on_gpu
    )
    r.first_epoch, r.step_seconds = 0, step_seconds
    r.say_expected_time()
    out = capsys.readouterr().out
    if step_seconds == 0.6:
        assert out.startswith(
            "expected: 4 min per epoch, 8 h 46 min for this model, about 70 h 12 min with the "
            "grid's other 7 models not trained yet"
        )
    assert (
        "the recipe cpu-study" in out and "`python -m stages.recipes` prints its command" in out
    ) == pointer


def test_the_command_the_pointer_names_prints_the_cpu_recipe():
    """The pointer names the recipe and the command that prints it (training does not import the recipes)."""
    p = subprocess.run(
        [sys.executable, "-m", "stages.recipes"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    assert any(line.strip().startswith("dvc exp run -n cpu-study -S ") for line in p.stdout.splitlines())
