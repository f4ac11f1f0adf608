"""stages/source.py: the stamp of a local archive (its url and the md5 of its content), rewritten on every
`dvc repro`, so that an archive replaced at the same path reruns prepare and only what depends on it."""

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.archives import write_cifar
from tests.conftest import dvc, md5, set_params
from tests.test_prepare import load_split

# --- a local archive replaced at the same path --------------------------------------------------------------


@pytest.mark.e2e
def test_replaced_local_archive_reruns_prepare_and_only_what_depends_on_it(project, tmp_path):
    """Was: with md5 null, `dvc status` said up to date and `dvc repro` kept the old arrays."""
    archive = tmp_path / "local" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    first = write_cifar(archive, "cifar10", "python", train_per_class=2, test_per_class=1, seed=0)
    set_params(project, data={"cifar10": {"url": str(archive), "md5": None}})
    dvc("repro", "prepare@cifar10", cwd=project)
    np.testing.assert_array_equal(load_split(project, "cifar10", "test")[0], first["test"][0])

    # untouched, or touched without a change: the stamp is the same, prepare stays cached
    os.utime(archive)
    out = dvc("repro", "prepare@cifar10", cwd=project).stdout
    assert "Running stage 'source@cifar10'" in out and "Running stage 'prepare" not in out, out

    second = write_cifar(archive, "cifar10", "python", train_per_class=2, test_per_class=1, seed=7)
    status = dvc("status", cwd=project).stdout  # DVC cannot know without reading the file: never "up to date"
    assert "source@cifar10" in status and "always changed" in status and "up to date" not in status
    out = dvc("repro", "prepare@cifar10", cwd=project).stdout
    assert "Running stage 'prepare@cifar10'" in out, out
    x, y = load_split(project, "cifar10", "test")
    np.testing.assert_array_equal(x, second["test"][0])
    assert not np.array_equal(x, first["test"][0])
    stamp = yaml.safe_load(Path(project, "data/source/cifar10.json").read_text())
    assert stamp == {"url": str(archive), "md5": md5(archive)}
