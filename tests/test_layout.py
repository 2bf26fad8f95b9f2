"""The house rules of fuzz/: imports run one way (front -> kernel-c build -> kernel bridge -> engine -> judge ->
script -> the kernel interface -> machine), no import cycle, implementations only through the
kernel interface, and only the front prints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
# Lowest first: a module may import its own layer and those below it.
LAYERS = ("machine", "fuzz.errors", "fuzz.logs", "fuzz.atomic", "fuzz.implementation", "fuzz.script", "fuzz.judge",
          "fuzz.engine", "fuzz.kernel", "fuzz.kernelc", "fuzz.front")
BASE = ("machine", "fuzz.errors", "fuzz.logs", "fuzz.atomic")   # imported by any layer
IMPLEMENTATIONS = ("reference", "batched", "kernelc")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def fuzz_modules() -> list[Path]:
    return sorted(path for path in FUZZ.rglob("*.py") if "canaries" not in path.parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The modules path imports (all of them, or only those run at its import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def layer(name: str) -> int | None:
    for index, prefix in enumerate(LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            return index
    return None


@pytest.mark.parametrize("path", fuzz_modules(), ids=lambda path: module_name(path))
def test_imports_run_one_way(path):
    own = layer(module_name(path))
    if own is None:   # fuzz/__init__.py, fuzz/__main__.py
        return
    for name in imports(path):
        other = layer(name)
        if other is not None and LAYERS[other] not in BASE:
            assert other <= own, f"{module_name(path)} imports {name}, a layer above it"


@pytest.mark.parametrize("path", fuzz_modules(), ids=lambda path: module_name(path))
def test_implementations_are_reached_only_through_the_kernel_interface(path):
    for name in imports(path):
        assert name.split(".")[0] not in IMPLEMENTATIONS, f"{module_name(path)} imports {name}"


def test_no_import_cycle_among_the_modules_of_fuzz():
    modules = {module_name(path): path for path in fuzz_modules()}
    edges = {name: {other for other in imports(path, top_level_only=True) if other in modules and other != name}
             for name, path in modules.items()}
    visiting, done = set(), set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in visiting, " -> ".join((*trail, name))
        if name in done:
            return
        visiting.add(name)
        for other in edges[name]:
            visit(other, (*trail, name))
        visiting.discard(name)
        done.add(name)

    for name in modules:
        visit(name, ())


@pytest.mark.parametrize("path", [path for path in fuzz_modules() if "front" not in path.parts],
                         ids=lambda path: module_name(path))
def test_only_the_front_prints(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [node.lineno for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert calls == [], f"{module_name(path)} prints at lines {calls}"


def test_the_readme_layout_table_names_every_module_of_fuzz():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in fuzz_modules():
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(ROOT)
        named = f"`{relative}`" if len(relative.parts) == 2 else f"`{path.name}`"
        assert named in readme, f"README.md's layout table does not name {relative}"
    for package in sorted(path for path in FUZZ.iterdir() if (path / "__init__.py").exists()):
        assert f"`{package.relative_to(ROOT)}/`" in readme, f"README.md's layout table does not name {package}"
