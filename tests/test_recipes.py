"""stages/recipes.py: every size printed with its command, offline form and measured times (the README's table
is the same), the README section the train stage points at exists, and the models `dvc repro` would train are
counted as `dvc status` counts them (dvc.lock against params.yaml and the code), not from files on disk."""

import json
import re
import subprocess
import sys

import pytest

from stages import recipes
from tests.conftest import ENV, ROOT, dvc, make_project, set_params

README = (ROOT / "README.md").read_text()


def printed(*args):
    p = subprocess.run(
        [sys.executable, "-m", "stages.recipes", *args], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert p.returncode == 0 and p.stderr == "", p.stderr
    return p.stdout


def test_every_size_is_printed_with_its_command_offline_form_and_times():
    out = printed()
    for name in recipes.WHAT:
        cmd = recipes.command(name) if name in recipes.RECIPES else recipes.GPU_COMMANDS[0]
        assert f"\n  {cmd}\n" in out and f"\n  offline: {cmd} {recipes.OFFLINE}\n" in out, name
        for size, kind, time, source in recipes.TIMES:
            if size == name:
                assert f"  {kind}: {time} ({source})" in out
    assert sorted({size for size, *_ in recipes.TIMES}) == sorted(recipes.WHAT)
    assert recipes.OTHER_ARCHIVE in out and recipes.GPU_COMMANDS[1] in out


def test_help_names_the_options():
    out = printed("--help")
    assert out.startswith("usage: python -m stages.recipes") and "--estimate" in out and "--markdown" in out


def test_the_readme_quotes_the_times_table_and_has_the_section_pointed_at():
    assert f"<!-- times: python -m stages.recipes --markdown -->\n{recipes.markdown()}\n" in README
    assert printed("--markdown") == recipes.markdown() + "\n"
    assert f"\n## {recipes.SECTION}\n" in README  # what the train stage and `python -m stages.recipes` name


def test_the_train_stages_pointer_names_a_section_that_exists(capsys):
    from stages.each_epoch import EachEpoch

    r = EachEpoch(
        history=[], live=None, ckpt_dir=None, probe_x=None, epochs=150, steps=351, queued=7, on_gpu=False
    )
    r.first_epoch, r.step_seconds = 0, 0.6
    r.say_expected_time()
    out = capsys.readouterr().out
    assert f"(README, {recipes.SECTION!r})" in out and f"\n## {recipes.SECTION}\n" in README


def test_every_time_is_measured_or_says_it_is_not():
    for size, kind, time, source in recipes.TIMES:
        assert time[0].isdigit() or time.startswith(("not measured", "not run")), (size, kind, time)
        assert source, (size, kind)


def write_outputs(repo, paths):
    """Placeholder files for a train stage's outputs, so that `dvc commit` records the stage in dvc.lock as
    DVC does after a run (counting needs dvc.lock, not trained models)."""
    for p in paths:
        p = repo / p
        if p.suffix:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(p.name)
        else:
            p.mkdir(parents=True, exist_ok=True)
            (p / "metrics.json").write_text("{}")


@pytest.mark.e2e
def test_the_estimate_counts_what_dvc_status_would_rerun(tmp_path, cifar10_archive, monkeypatch):
    from stages.entry import grid_entries
    from stages.params import load

    repo = make_project(tmp_path / "repo", cifar10_archive)  # TINY: grid relu, elu; the experiment's relu
    dvc("repro", "prepare@cifar10", cwd=repo)
    keys = ["cifar10-relu-False-0", "cifar10-elu-False-0"]
    stages = ["train_exp", *(f"train@{k}" for k in keys)]
    write_outputs(repo, ["models/experiment.keras", "models/experiment.json", "dvclive/experiment"])
    for k in keys:
        write_outputs(repo, [f"models/grid/{k}.keras", f"models/grid/{k}.json", f"dvclive/grid/{k}"])
    dvc("commit", "-f", *stages, cwd=repo)
    monkeypatch.chdir(repo)

    def counted(current=None):
        return sorted(
            e.key if not e.experiment else "experiment" for e in recipes.still_to_train(load(), current)
        )

    def status():
        return sorted(
            s for s in json.loads(dvc("status", "--json", cwd=repo).stdout) if s.startswith("train")
        )

    assert status() == [] and counted() == []
    # another width: every train stage reruns, though every model's file is on disk; the experiment's model
    # is the grid's relu (same fingerprint, trained once), so two models
    set_params(repo, model={"width": 0.25})
    assert status() == sorted(stages)
    assert counted() == ["cifar10-elu-False-0", "experiment"]
    relu = grid_entries(load())[0]
    assert counted(relu) == ["cifar10-elu-False-0"]  # the train stage's "N other models"
    set_params(repo, model={"width": 0.125})
    assert status() == [] and counted() == []
    # the code: an edit to a module the train stages list reruns them all
    with open(repo / "stages/pipeline.py", "a") as f:
        f.write("# edited\n")
    assert status() == sorted(stages) and counted() == ["cifar10-elu-False-0", "experiment"]
    # a param only the experiment's stage records: the experiment's own model alone
    (repo / "stages/pipeline.py").write_text((ROOT / "stages/pipeline.py").read_text())
    set_params(repo, activation="elu")
    assert status() == ["train_exp"] and counted() == ["experiment"]


def minutes(seconds):
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def test_a_time_measured_here_quotes_its_committed_log():
    """A TIMES row whose source is a log under docs/times/ quotes that run (GNU time's -v report of the whole
    `dvc exp run`): its wall-clock and CPU minutes, and how many models it saved."""
    rows = [(t, s, re.search(r"docs/times/\S+\.txt", s)) for *_, t, s in recipes.TIMES]
    assert any(m for *_, m in rows)
    for time, source, m in rows:
        if m:
            log = (ROOT / m[0]).read_text()
            wall = re.search(
                r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", log
            )
            seconds = int(wall[1] or 0) * 3600 + int(wall[2]) * 60 + float(wall[3])
            cpu = sum(
                float(re.search(rf"{k} time \(seconds\): ([\d.]+)", log)[1]) for k in ("User", "System")
            )
            quoted = f"{minutes(seconds)} ({minutes(cpu)} CPU)"
            if "\nrc 0\n" in log:  # a whole run: its time
                assert time == quoted, (m[0], time, quoted)
            else:  # stopped: how far it came, never a time for the whole
                saved = len(re.findall(r"^saved models/", log, re.M))
                assert f"{saved} of 9 models in {quoted}" in source and time.startswith("not measured")
