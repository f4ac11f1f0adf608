"""stages/outputs.py's writers (issue 21, item 2): a folder output never writes through a symbolic link nor
replaces a folder it did not write; `python -m stages.report FOLDER` with FOLDER/plots a link once deleted the
link target's files (a thesis.tex beside it) and, with plots/grid a link, ended half replaced."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.cli import UserError
from stages.outputs import atomic_path
from tests.conftest import ENV, ROOT
from tests.test_publish_run import snapshot


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the working directory) and a folder outside it holding someone's work."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/thesis.tex").write_text("not the project's\n")
    (tmp_path / "outside/grid").mkdir()
    (tmp_path / "outside/grid/figure.png").write_bytes(b"png")
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    return tmp_path / "proj"


def write_folder(path, names=("a.png",)):
    with atomic_path(path, directory=True) as d:
        for n in names:
            (d / n).parent.mkdir(parents=True, exist_ok=True)
            (d / n).write_bytes(b"new")


@pytest.mark.parametrize(
    "link, target, expected",
    [
        ("plots", "ABS", "outside"),  # absolute link to a folder outside
        ("plots", "../outside", "outside"),  # relative: survives a git clone
        ("plots/grid", "../../outside/grid", "a symbolic link"),
        ("plots/grid", "../metrics", "a symbolic link"),  # a link inside the project: never followed either
        ("plots", "metrics", "a symbolic link or '..'"),
    ],
)
def test_a_folder_output_through_a_symbolic_link_is_refused(project, link, target, expected):
    (project / "metrics").mkdir()
    (project / "metrics/keep.json").write_text("{}\n")
    Path(link).parent.mkdir(parents=True, exist_ok=True)
    Path(link).symlink_to(str(project.parent / "outside") if target == "ABS" else target)
    before = snapshot(project.parent)
    with pytest.raises(UserError, match=expected) as e:
        write_folder("plots/grid")
    assert str(e.value).startswith("plots/grid: ") and "\n" not in str(e.value)
    assert snapshot(project.parent) == before  # nothing removed or written anywhere


@pytest.mark.parametrize("path", ["../outside/grid", "plots/../../outside/grid", ".", ""])
def test_a_folder_output_outside_the_project_or_the_project_itself_is_refused(project, path):
    before = snapshot(project.parent)
    with pytest.raises(UserError):
        write_folder(path)
    assert snapshot(project.parent) == before


def test_a_file_output_in_a_linked_folder_is_refused(project):
    Path("reports").symlink_to(project.parent / "outside")
    with pytest.raises(UserError, match="reports/report.md: resolves to .*outside"):
        with atomic_path("reports/report.md") as tmp:
            tmp.write_text("# report\n", encoding="utf-8")
    assert sorted(p.name for p in (project.parent / "outside").iterdir()) == ["grid", "thesis.tex"]


def test_a_file_output_that_is_a_link_is_replaced_not_written_through(project):
    Path("summary.json").symlink_to(project.parent / "outside/thesis.tex")
    with atomic_path("summary.json") as tmp:
        tmp.write_text("{}\n", encoding="utf-8")
    assert not Path("summary.json").is_symlink() and Path("summary.json").read_text() == "{}\n"
    assert (project.parent / "outside/thesis.tex").read_text() == "not the project's\n"


def test_an_existing_folder_of_what_the_writer_writes_is_replaced(project):
    write_folder("plots/grid", ["old.png", "older.png"])
    write_folder("plots/grid", ["new.png"])
    assert sorted(p.name for p in Path("plots/grid").iterdir()) == ["new.png"]
    write_folder("metrics/rank", ["cifar10/1-relu.json"])
    write_folder("metrics/rank", ["cifar100/1-elu.json"])
    assert [str(p.relative_to("metrics/rank")) for p in Path("metrics/rank").rglob("*.json")] == [
        "cifar100/1-elu.json"
    ]
    assert not [p for p in Path("plots").iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("foreign", ["thesis.tex", "sub/a.png", "LINK", "FILE"])
def test_an_existing_folder_the_writer_did_not_write_is_kept(project, foreign):
    Path("plots/grid").mkdir(parents=True)
    Path("plots/grid/a.png").write_bytes(b"old")
    if foreign == "LINK":
        Path("plots/grid/link.png").symlink_to(project.parent / "outside/grid/figure.png")
    elif foreign == "FILE":
        shutil.rmtree("plots/grid")
        Path("plots/grid").write_text("a file\n")
    else:
        Path("plots/grid", foreign).parent.mkdir(parents=True, exist_ok=True)
        Path("plots/grid", foreign).write_text("mine\n")
    before = snapshot(project.parent)
    with pytest.raises(UserError, match="plots/grid: (an existing folder this writer did not write|exists)"):
        write_folder("plots/grid")
    assert snapshot(project.parent) == before


def report_folder(tmp_path):
    """A published run (its inputs and outputs) to remake the report of."""
    folder = tmp_path / "run"
    shutil.copytree(ROOT / "docs/results/cifar10-cpu", folder)
    return folder


@pytest.mark.parametrize("link", ["plots-absolute", "plots-relative", "plots/grid", "metrics/rank"])
def test_report_folder_mode_refuses_linked_outputs_in_one_line(tmp_path, link):
    folder = report_folder(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/thesis.tex").write_text("mine\n")
    name = link.split("-")[0]
    shutil.move(folder / name, tmp_path / "elsewhere" / Path(name).name)
    target = tmp_path / "elsewhere" / Path(name).name
    (folder / name).symlink_to(
        os.path.relpath(target, (folder / name).parent) if link != "plots-absolute" else target
    )
    before = snapshot(tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "stages.report", str(folder)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {name}"), p.stderr[-3000:]
    assert snapshot(tmp_path) == before  # nothing half replaced, nothing outside touched
