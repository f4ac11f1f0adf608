"""The code's structure, held by tests: no import cycle among stages/ modules, every dvc.yaml stage lists the
stages/ modules its command runs (DVC reruns a stage, and the checkpoint fingerprint changes, for those only),
and docs/architecture.md draws the import graph as it is."""

import re
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


def test_every_stage_lists_the_modules_it_runs():
    g, stages = import_graph.graph(), stage_modules()
    assert {"check", "prepare", "train", "train_exp", "evaluate", "report"} <= set(stages)
    for name, (module, deps) in stages.items():
        needed = {f"stages/{m.split('.')[1]}.py" for m in import_graph.closure(g, module)}
        assert needed - deps == set(), (
            f"dvc.yaml: stage {name} runs {sorted(needed - deps)} without listing them in deps"
        )


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
