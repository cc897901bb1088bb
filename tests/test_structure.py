"""The project's modules form layers: no two import each other, at module level or inside a
function. A package's `__init__.py` counts as a module, so a submodule that imports names from
its own package while the package imports it is a cycle too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "diagnostics", "envs", "experiments", "regularizers")


def module_files(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for the root-level modules and the packages under `root`."""
    files = {path.stem: path for path in root.glob("*.py")}
    for package in sorted(p for p in root.iterdir() if (p / "__init__.py").is_file()):
        for path in package.glob("*.py"):
            name = package.name if path.stem == "__init__" else f"{package.name}.{path.stem}"
            files[name] = path
    return files


def imported_modules(path: Path, own_name: str, modules: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its code (function-level imports too).
    `from pkg import x` imports pkg.x when that is a module, else pkg's __init__."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            # `import envs.shifts` runs envs/__init__ first, but that is Python's package
            # machinery, not this module depending on the package's names.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != own_name:
                imported.add(name)
    return imported


def import_cycles(root: Path) -> list[list[str]]:
    """Every cycle of the import graph, each as its list of modules (the first repeated last)."""
    files = module_files(root)
    graph = {name: imported_modules(path, name, set(files)) for name, path in files.items()}
    cycles, finished = [], set()

    def visit(name: str, path: list[str]) -> None:
        for imported in sorted(graph[name]):
            if imported in path:
                cycles.append(path[path.index(imported) :] + [imported])
            elif imported not in finished:
                visit(imported, path + [imported])
        finished.add(name)

    for name in sorted(graph):
        if name not in finished:
            visit(name, [name])
    return cycles


def test_no_two_modules_import_each_other():
    files = module_files(ROOT)
    assert set(PACKAGES) <= set(files), "the layout changed: update PACKAGES"
    cycles = import_cycles(ROOT)
    assert not cycles, "modules that import each other: " + "; ".join(
        " -> ".join(cycle) for cycle in cycles
    )


@pytest.mark.parametrize(
    "package_init, submodule, expect_cycle",
    [
        # the submodule reads a name from its own package, which imports the submodule
        ("from pkg.a import f\n", "import pkg\n\ndef f():\n    return pkg.g\n", True),
        ("from pkg.a import f\n", "def f():\n    from pkg import g\n    return g\n", True),
        # the submodule imports a sibling through the package: no cycle
        ("from pkg.a import f\n", "from pkg import b\n\ndef f():\n    return b\n", False),
    ],
)
def test_the_cycle_check_sees_a_package_and_its_submodule(
    tmp_path, package_init, submodule, expect_cycle
):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(package_init + "g = 1\n")
    (tmp_path / "pkg" / "a.py").write_text(submodule)
    (tmp_path / "pkg" / "b.py").write_text("")
    cycles = import_cycles(tmp_path)
    assert (cycles == [["pkg", "pkg.a", "pkg"]]) if expect_cycle else (cycles == [])
