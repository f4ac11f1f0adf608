"""The code's structure, held by tests: no import cycle among stages/ modules, every dvc.yaml stage lists
exactly the stages/ modules its command runs (DVC reruns a stage, and the checkpoint fingerprint changes, for
those only), docs/architecture.md draws the import graph as it is, and no stages/ function is over 40 lines.
What an edit of each module reruns in a finished study is tested in tests/test_workflow.py."""

import ast
import re
import subprocess
import sys

import yaml

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import import_graph  # noqa: E402


def stage_modules():
    """{stage name: (the stages module its command runs, the stages/*.py files its deps list)}."""
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        module = re.match(r"python -m (stages\.\w+)", stage["cmd"]).group(1)
        out[name] = (module, {d for d in stage.get("deps", []) if d.startswith("stages/")})
    return out


def test_stages_modules_import_no_cycle():
    g = import_graph.graph()
    assert len(g) >= 15 and "stages.cli" in g["stages.params"]
    assert import_graph.cycles(g) == []


def needed(g, module):
    """The stages/*.py files that running `python -m module` imports, directly or not."""
    return {f"stages/{m.split('.')[1]}.py" for m in import_graph.closure(g, module)}


def test_every_stage_lists_the_modules_it_runs_and_no_other():
    """A module missing from deps: an edit to it changes the output unseen; one too many: an edit to it reruns
    the stage for nothing (a grid of models retrained)."""
    g, stages = import_graph.graph(), stage_modules()
    assert {"check", "prepare", "train", "train_exp", "evaluate", "report"} <= set(stages)
    for name, (module, deps) in stages.items():
        missing, extra = sorted(needed(g, module) - deps), sorted(deps - needed(g, module))
        assert missing == [], f"dvc.yaml: stage {name} runs {missing} without listing them in deps"
        assert extra == [], f"dvc.yaml: stage {name} lists {extra}, which its command does not import"


def test_training_does_not_import_the_reader_the_recipes_the_report_or_prepare():
    for module in ("stages.train", "stages.evaluate"):
        imported = needed(import_graph.graph(), module)
        for other in ("cifar", "recipes", "report", "prepare", "source"):
            assert f"stages/{other}.py" not in imported, (module, other)


def test_the_checkpoint_fingerprint_hashes_the_code_train_lists(monkeypatch):
    from stages.checkpoint import code_digest

    monkeypatch.chdir(ROOT)
    g = import_graph.graph()
    for stage in ("train", "train_exp"):
        digest = code_digest(stage)
        assert set(digest) == needed(g, "stages.train") and all(len(h) == 64 for h in digest.values())


def test_a_cycle_and_a_missing_dep_are_found():
    """The checks above can fail: a cycle and an unlisted module of a made-up graph."""
    g = {"stages.a": {"stages.b"}, "stages.b": {"stages.c"}, "stages.c": {"stages.a"}, "stages.d": set()}
    assert ["stages.a", "stages.b", "stages.c", "stages.a"] in import_graph.cycles(g)
    assert import_graph.closure(g, "stages.b") == {"stages.a", "stages.b", "stages.c"}
    assert import_graph.cycles({"stages.a": {"stages.b"}, "stages.b": set()}) == []


def test_the_architecture_doc_draws_the_graph_as_it_is():
    doc = (ROOT / "docs/architecture.md").read_text()
    assert f"```mermaid\n{import_graph.mermaid(import_graph.graph())}\n```" in doc, (
        "docs/architecture.md: regenerate the diagram with `python scripts/import_graph.py`"
    )


KNOWN_LONG = set()  # functions over the limit that are being split now: none


def long_functions(root, limit=40):
    """'path:name (lines)' of every function under root/stages/ over limit lines (docstring included)."""
    out = []
    for path in sorted((root / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > limit:
                out.append(f"{path.relative_to(root)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    return out


def test_no_stages_function_is_over_40_lines(tmp_path):
    assert [f for f in long_functions(ROOT) if f.split(" ")[0] not in KNOWN_LONG] == []
    (tmp_path / "stages").mkdir()  # the check can fail: a function of 41 lines
    (tmp_path / "stages/x.py").write_text("def f():\n" + "    pass\n" * 40)
    assert long_functions(tmp_path) == ["stages/x.py:f (41)"]


def ruff(*args, cwd=ROOT):
    """`python -m ruff ARGS` in cwd, with the project's pyproject.toml: (exit status, its output)."""
    p = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def test_ruff_finds_nothing_to_lint_or_format():
    for args in (["check", "."], ["format", "--check", "."]):
        status, out = ruff(*args)
        assert status == 0, f"ruff {' '.join(args)}:\n{out[-3000:]}"


def test_ruff_finds_a_long_line_and_unformatted_code(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "x.py").write_text(f"x = 1\n# {'a' * 110}\n")  # a 112-character comment
    status, out = ruff("check", ".", "--output-format", "concise", cwd=tmp_path)
    assert status == 1 and out.startswith("x.py:2:111: E501 Line too long (112 > 110)")
    (tmp_path / "x.py").write_text("x = {'a':1}\n")
    assert ruff("format", "--check", ".", cwd=tmp_path)[0] == 1


STAGE_ORDER = ["check", "source", "prepare", "train", "train_exp", "evaluate", "evaluate_exp", "report"]
GRID = {"source", "prepare", "train", "evaluate"}  # one stage per dataset or entry: named <stage>@


def rerun_table(reruns):
    """docs/architecture.md's table of what an edit reruns, from tests/test_workflow.py's RERUNS: a row per
    module, those that rerun the most first."""
    rows = ["| edit `stages/…` | `dvc repro` reruns |", "|---|---|"]
    for module in sorted(reruns, key=lambda m: (-len(reruns[m]), m)):
        stages = [f"{s}@" if s in GRID else s for s in STAGE_ORDER if s in reruns[module]]
        rows.append(f"| `{module}.py` | {', '.join(stages) or 'nothing'} |")
    return "\n".join(rows)


def test_the_architecture_doc_says_what_each_edit_reruns():
    from tests.test_workflow import RERUNS

    table = rerun_table(RERUNS)
    assert table in (ROOT / "docs/architecture.md").read_text(), (
        f"docs/architecture.md: its table of what an edit reruns is not test_workflow.py's RERUNS:\n{table}"
    )
