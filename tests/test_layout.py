"""The walls of the house (README "Architecture"): layers, no import cycles, no private imports,
every file written through the one atomic writer, no absolute paths in tests."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "physics", "phantoms", "workflows")


def _modules():
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, f


MODULES = dict(_modules())


def _imports(name, f):
    """(imported module, imported names) for every import statement of a module, local ones too."""
    is_pkg = f.name == "__init__.py"
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            yield mod, [a.name for a in node.names]


def _graph():
    g = {}
    for name, f in MODULES.items():
        deps = set()
        for mod, names in _imports(name, f):
            for n in names or [None]:
                full = f"{mod}.{n}" if n else mod
                if full in MODULES:
                    deps.add(full)
                elif mod in MODULES:
                    deps.add(mod)
        deps.discard(name)
        g[name] = deps
    return g


def test_layers():
    for name, deps in _graph().items():
        for d in deps:
            if name.startswith("physics"):
                assert d.startswith("physics"), f"{name} imports {d}: physics imports only physics"
            if not name.startswith("workflows"):
                assert not d.startswith("workflows"), f"library module {name} imports {d}"


def test_no_import_cycles():
    g = _graph()
    state = {}

    def visit(v, path):
        state[v] = 1
        for w in sorted(g[v]):
            if state.get(w) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(w):] + [w]))
            if w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(g):
        if v not in state:
            visit(v, [v])


def test_no_private_names_across_modules():
    """Only a package's private Numba kernels module (``_kernels``) may be imported by name."""
    bad = []
    for name, f in MODULES.items():
        for mod, names in _imports(name, f):
            if mod is None or mod.split(".")[0] in PACKAGES:
                bad += [f"{name}: {mod}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__") and n != "_kernels"]
    assert bad == []


def test_files_are_written_through_the_atomic_writer():
    """No hand-made temporary-file-and-rename outside physics/atomic.py."""
    pattern = re.compile(r"os\.replace\(|tempfile\.mkstemp|\.tmp-")
    hits = [f"{n}" for n, f in MODULES.items() if n != "physics.atomic" and pattern.search(f.read_text(encoding="utf-8"))]
    assert hits == []


def test_tests_name_no_absolute_paths():
    hits = []
    for f in (ROOT / "tests").rglob("*.py"):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"[\"'](/work|/home|/root|/tmp)/", line):
                hits.append(f"{f.relative_to(ROOT)}:{i}")
    assert hits == []
