"""The import graph of stages/: which stage module imports which, at module level or inside a function.

    python scripts/import_graph.py        # the mermaid diagram of docs/architecture.md

tests/test_structure.py holds the project to it: no cycle, and every dvc.yaml stage lists in its deps exactly
the stages/ modules its command runs (transitively), since DVC reruns a stage, and the train stage's
checkpoint fingerprint changes, for the files listed there and only for them.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path):
    """The stages modules a file imports, by module name ('stages.params')."""
    found = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "stages":  # from stages import backend
            found |= {f"stages.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stages.")}
    return found


def graph(root=ROOT):
    """{module: the stages modules it imports} for every module under stages/."""
    return {
        f"stages.{p.stem}": imports(p) for p in sorted((root / "stages").glob("*.py")) if p.stem != "__init__"
    }


def closure(g, module):
    """module and everything it imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(g.get(m, ()))
    return seen


def cycles(g):
    """Every module that can reach itself, with the path that does."""
    out = []
    for start in g:
        stack = [(start, [start])]
        while stack:
            m, path = stack.pop()
            for n in g.get(m, ()):
                if n == start:
                    out.append(path + [n])
                elif n not in path:
                    stack.append((n, path + [n]))
    return out


def mermaid(g):
    lines = ["flowchart LR"]
    lines += [f"  {m.split('.')[1]} --> {n.split('.')[1]}" for m in sorted(g) for n in sorted(g[m])]
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid(graph()))
