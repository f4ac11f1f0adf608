"""Sharing experiments (docs/machines.md, "Sharing experiments"): `dvc exp push` from one clone to a Git
remote and a DVC remote, `dvc exp pull` in another clone, which then lists the experiment with its metrics and
restores its model. Real git and DVC: a bare repository as origin, a local folder as the DVC remote, a tiny
experiment."""

import csv
import io
import json

import pytest

from tests.conftest import dvc, git, make_project

pytestmark = pytest.mark.e2e  # trains and runs DVC: the whole module is outside the fast tier


def shown(repo):
    """{experiment name: its metrics/experiment.json test error and activation} as `dvc exp show` lists
    them."""
    out = dvc(
        "exp", "show", "--csv", "--drop", ".*", "--keep", "Experiment|activation|.*test_error", cwd=repo
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out[out.index("Experiment") :])))
    # the column is test_error, or metrics/experiment.json:test_error once the grid's metrics exist beside it
    error = next((k for k in rows[0] if k.endswith("test_error")), None) if rows else None
    return {r["Experiment"]: (r.get(error), r["activation"]) for r in rows if r["Experiment"]}


def test_an_experiment_pushed_from_one_clone_is_pulled_into_another(tmp_path, cifar10_archive):
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    git("init", "-q", "--bare", str(origin), cwd=tmp_path)
    mine = make_project(tmp_path / "mine", cifar10_archive)
    dvc("remote", "add", "-d", "shared", str(storage), cwd=mine)
    git("commit", "-qam", "shared remote", cwd=mine)
    git("remote", "add", "origin", str(origin), cwd=mine)
    git("push", "-q", "origin", "HEAD", cwd=mine)  # the branch git init made, as in the bare origin
    dvc(
        "exp", "run", "-n", "elu-exp", "-S", "activation=elu", cwd=mine
    )  # the tiny grid, its report, the model
    error = json.loads((mine / "metrics/experiment.json").read_text())["test_error"]
    dvc("exp", "push", "origin", "elu-exp", cwd=mine)
    assert list(storage.rglob("*")), "dvc exp push sent no cached output to the DVC remote"

    git("clone", "-q", str(origin), str(tmp_path / "theirs"), cwd=tmp_path)
    theirs = tmp_path / "theirs"
    assert "elu-exp" in dvc("exp", "list", "origin", cwd=theirs).stdout
    assert "elu-exp" not in shown(theirs)  # not here before the pull
    dvc("exp", "pull", "origin", "elu-exp", cwd=theirs)
    assert shown(theirs)["elu-exp"] == (f"{error:g}", "elu")
    dvc(
        "exp", "apply", "elu-exp", cwd=theirs
    )  # its model comes from the DVC remote: nothing was trained here
    assert (theirs / "models/experiment.keras").stat().st_size > 10_000
    assert json.loads((theirs / "metrics/experiment.json").read_text())["test_error"] == error
