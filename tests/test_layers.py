"""The package's layers (README, "Layout"): every module imports only from its own layer or the ones below."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "visual_dr3"
# bottom to top
LAYERS = [("errors", "fileio", "safe_load"), ("envs",), ("data",), ("learner",), ("checkpoint",), ("evaluation", "report"),
          ("app",)]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("visual_dr3."):
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("visual_dr3."):
                    yield alias.name, node.lineno


def test_no_module_imports_a_layer_above_its_own():
    files = sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG)
    assert len(files) > 40
    upward = []
    for path in files:
        rel = path.relative_to(PKG)
        own = rel.parts[0].removesuffix(".py")
        assert own in RANK, f"{rel}: not in a layer of tests/test_layers.py (add it there and to the README)"
        for module, line in _imports(path):
            if RANK[_part(module)] > RANK[own]:
                upward.append(f"{rel}:{line} imports {module}")
    assert not upward, upward
    assert (PKG / "learner").is_dir() and RANK["learner"] < RANK["evaluation"] < RANK["app"]
