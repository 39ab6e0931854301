"""No module imports one from a higher layer (the README's layout table, docs in DESIGN): the registry and
GGUF I/O at the bottom, then kernels, model, runtime, the tools that run the model (eval, quant), the
planner, and the user-facing API and CLI."""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "edgellm"
LAYERS = [
    {"errors", "files"},
    {"formats", "tokenizer", "chat_template", "hub"},
    {"kernels"},
    {"model"},
    {"runtime"},
    {"eval", "quant", "sparse"},
    {"planner", "distributed"},
    {"api", "server", "cli", "fuzz", "__init__", "__main__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def upward_imports(package: Path, rank: dict[str, int]) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        here = parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(parts[:-1])[: len(parts) - node.level]
                target = base + (node.module.split(".") if node.module else [node.names[0].name])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgellm."):
                target = node.module.split(".")[1:]
            else:
                continue
            if target and rank.get(target[0], -1) > rank[here]:
                found.append(f"{path.relative_to(package)} imports {'.'.join(target)}")
    return found


def test_every_package_has_a_layer():
    tops = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert tops <= set(RANK), sorted(tops - set(RANK))


def test_no_module_imports_a_higher_layer():
    assert upward_imports(PACKAGE, RANK) == []


def test_the_check_sees_an_upward_import():
    swapped = RANK | {"eval": RANK["runtime"] - 1}  # pretend eval sat below runtime
    assert any("eval/" in line and "runtime" in line for line in upward_imports(PACKAGE, swapped))
