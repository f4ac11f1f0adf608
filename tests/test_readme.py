"""README.md as a user guide: every `dvc` and `python -m` command of its bash blocks, and of the docs pages
it sends a user to for reference, is valid (DVC's own argument parser; a module that exists and whose --help
names every flag used), its links lead to files that exist, and its recovery line undoes a failed
experiment: params.yaml byte-identical to HEAD, `git status` clean."""

import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys

import pytest
from dvc.cli import DvcParserError
from dvc.cli.parser import get_main_parser
from dvc.utils.serialize import modify_yaml

from tests.conftest import ENV, ROOT, dvc, git, make_project, run

README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
# other engineers' work, not in this branch yet: the lead empties these at the merge (the tests below then
# fail until it is done, so they cannot stay stale)
PENDING_MODULES = set()
PENDING_DOCS = set()


def commands(text=README):
    """Every `dvc …` and `python -m …` command of text's bash blocks as its words (quotes and comments as the
    shell reads them), a line split at &&, ;, | and ||."""
    found = []
    for block in BLOCK.findall(text):
        for line in block.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            words, part = [*lexer, "&&"], []
            for w in words:
                if w in ("&&", ";", "|", "||"):
                    while part and re.fullmatch(r"[A-Z_]+=\S*", part[0]):  # CUDA_VISIBLE_DEVICES=0 dvc …
                        part = part[1:]
                    if part[:1] == ["dvc"] or part[:2] == ["python", "-m"]:
                        found.append(part)
                    part = []
                else:
                    part.append(w)
    return found


def dvc_parses(words):
    """None if DVC's own parser takes the command line, else what it printed."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            get_main_parser().parse_args(words[1:])
        except (SystemExit, DvcParserError):
            return err.getvalue()[-500:] or "refused"
    return None


# the reference pages the README sends a user to, whose commands are held to the same check
DOCS = "".join((ROOT / "docs" / page).read_text() for page in ("pipeline.md", "backends.md", "machines.md"))
DVC = [c for c in commands(README + DOCS) if c[0] == "dvc"]
PYTHON = [c for c in commands(README + DOCS) if c[0] == "python"]


def test_the_readme_has_the_newcomers_path():
    """Install, the quick look, the baseline, one experiment compared three ways, the recovery: all
    present."""
    lines = [" ".join(c) for c in commands() if c[0] == "dvc"]
    for step in ("dvc exp run", "dvc metrics diff", "dvc exp show", "dvc plots diff", "dvc checkout"):
        assert any(line.startswith(step) for line in lines), step
    assert "pip install -r requirements.txt" in README and 'git commit -m "baseline' in README


@pytest.mark.parametrize("words", DVC, ids=[" ".join(c)[:60] for c in DVC])
def test_every_dvc_command_parses(words):
    assert dvc_parses(words) is None, (" ".join(words), dvc_parses(words))


def test_a_wrong_dvc_command_is_refused():
    """The check above can fail: a flag DVC does not have, a subcommand it does not have."""
    assert dvc_parses(["dvc", "exp", "show", "--only-changd"]) is not None
    assert dvc_parses(["dvc", "metrics", "difff"]) is not None
    assert commands("```bash\nX=1 dvc repro && git add -A  # dvc push\npython -m x -j 2 | tee\n```") == [
        ["dvc", "repro"],
        ["python", "-m", "x", "-j", "2"],
    ]


@pytest.mark.parametrize("words", PYTHON, ids=[" ".join(c)[:60] for c in PYTHON])
def test_every_python_module_exists_and_takes_its_flags(words):
    module = words[2]
    if module in PENDING_MODULES:
        assert importlib.util.find_spec(module) is None, f"{module} is merged: remove it from PENDING_MODULES"
        return
    assert importlib.util.find_spec(module) is not None, module
    p = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    flags = {w.split("=")[0] for w in words[3:] if w.startswith("-")}
    assert {f for f in flags if f not in p.stdout} == set(), (module, p.stdout[-2000:])


def test_every_link_leads_to_a_file():
    links = set(re.findall(r"\]\(((?!https?:|#)[^)#]+)", README))
    assert {"docs/pipeline.md", "docs/faults.md", "docs/machines.md", "docs/backends.md"} <= links
    for link in links:
        if link in PENDING_DOCS:
            assert not (ROOT / link).exists(), f"{link} is merged: remove it from PENDING_DOCS"
        else:
            assert (ROOT / link).exists(), link


def section(title):
    """The text of the README's section `## title`, up to the next one."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


@pytest.mark.e2e
def test_the_recovery_undoes_a_failed_experiment(tmp_path, cifar10_archive):
    """After `dvc exp run -S train.epochs=-3` fails at the check, the README's recovery leaves params.yaml
    byte-identical to HEAD and `git status` clean; the failed run deletes no tracked file. params.yaml is
    in DVC's own YAML style and epochs two characters wide, so DVC's rewrite keeps its size, as in issue 22
    (git's stat cache then took the bad file for the committed one)."""
    repo = make_project(tmp_path / "repo", cifar10_archive)
    with modify_yaml(repo / "params.yaml") as params:  # what `dvc exp run -S` writes with
        params["train"]["epochs"] = 10
    dvc("repro", "check", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "baseline", cwd=repo)
    committed = (repo / "params.yaml").read_bytes()
    failed = dvc("exp", "run", "-S", "train.epochs=-3", cwd=repo, check=False)
    assert failed.returncode != 0 and "train.epochs = -3" in failed.stdout, failed.stdout[-2000:]
    assert b"epochs: -3" in (repo / "params.yaml").read_bytes()
    status = git("status", "--porcelain", cwd=repo).stdout
    assert not [line for line in status.splitlines() if line[:2].strip() == "D"], status  # nothing deleted

    recovery = BLOCK.findall(section("When a run fails or is interrupted"))[0].strip()
    run(["bash", "-c", recovery], repo)
    assert (repo / "params.yaml").read_bytes() == committed
    assert git("status", "--porcelain", cwd=repo).stdout == ""
