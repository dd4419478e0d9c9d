"""The shape of the code (shared/ in rooms, benchmarks outside it): the import graph between the rooms runs one way,
config -> data -> models -> inference -> training -> eval, with bench/ above them all, and loading a model does not
import the Trainer."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["config", "data", "models", "inference", "training", "eval"]  # a room may import only rooms to its left


def imports(file: Path) -> set[str]:
    """Every slm module a file imports (at the top or inside a function), dotted."""
    out = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.split(".")[0] in ("shared", "bench")}


def room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "bench":
        return "bench"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_rooms_import_only_rooms_below_them():
    wrong = []
    for file in sorted((REPO / "shared").rglob("*.py")):
        here = file.relative_to(REPO / "shared").parts[0]
        if here not in LAYERS:
            continue
        for module in imports(file):
            there = room(module)
            if there == "bench" or (there in LAYERS and LAYERS.index(there) > LAYERS.index(here)):
                wrong.append(f"{file.relative_to(REPO)} imports {module}")
    assert not wrong, "imports that run back up the rooms:\n" + "\n".join(wrong)


def test_no_module_is_left_flat_in_shared():
    assert [p.name for p in (REPO / "shared").glob("*.py")] == ["__init__.py"]
    for folder in [REPO / "shared" / r for r in LAYERS] + [REPO / "bench"]:
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"{folder}/__init__.py must say what the room holds"


def test_no_import_cycle_between_modules():
    graph = {}
    for file in [*(REPO / "shared").rglob("*.py"), *(REPO / "bench").glob("*.py")]:
        name = ".".join(file.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = imports(file)
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}

    def visit(m, path):
        if m in path:
            return path[path.index(m):] + [m]
        for d in graph[m]:
            cycle = visit(d, path + [m])
            if cycle:
                return cycle
        return None
    for m in graph:
        cycle = visit(m, [])
        assert cycle is None, " -> ".join(cycle)


def test_loading_a_model_does_not_import_the_trainer():
    code = ("import sys, shared.models.registry, shared.inference.generate, shared.inference.chat; "
            "print(sorted(m for m in sys.modules if m in ('transformers.trainer', 'trl') or m.startswith('shared.training')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
