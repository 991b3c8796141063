"""The import graph: the package format, the converter, the native runtime and the server are layers whose
imports all point one way (issue 24). Every `import` in a layer's files, at the top or inside a function,
is read with `ast`; a layer may import only the layers listed beside it."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {                                   # layer -> its folder, and what it may import
    "format": (ROOT / "format", {"schemas"}),
    "converter": (ROOT / "converter", {"format", "schemas"}),
    "engine": (ROOT / "engine", {"format", "schemas", "shaders"}),
    "serve": (ROOT / "webmoe" / "serve", {"engine", "format", "schemas", "shaders", "web"}),
}


def webmoe_imports(path: Path) -> set[str]:
    """The webmoe subpackages a file imports (webmoe.engine.errors -> engine), relative imports excluded."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "webmoe" and len(parts) > 1:
                out.add(parts[1])
            elif parts[0] == "webmoe":
                out.add("webmoe")
    return out


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer):
    folder, allowed = LAYERS[layer]
    files = sorted(folder.rglob("*.py"))
    assert files
    wrong = {f"{p.relative_to(ROOT)} imports webmoe.{name}" for p in files
             for name in webmoe_imports(p) - allowed - {layer}}
    assert not wrong, sorted(wrong)


def test_the_reader_sees_imports_inside_functions(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("from . import x\nimport webmoe.engine.errors\ndef f():\n    from webmoe.serve.server import create_app\n")
    assert webmoe_imports(p) == {"engine", "serve"}
