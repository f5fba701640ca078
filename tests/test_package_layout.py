"""Monorepo rules: five src-layout packages, dependencies pointing one way (declared and imported),
no cycles, no torchvision anywhere in what we install, and tests that read only the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["vt-data", "vt-model", "vt-sft", "vt-grpo", "vt-eval"]
# The only allowed direction (style.md H13): data <- model <- {sft, grpo, eval}.
ALLOWED = {
    "vt-data": set(),
    "vt-model": {"vt-data"},
    "vt-sft": {"vt-data", "vt-model"},
    "vt-grpo": {"vt-data", "vt-model"},
    "vt-eval": {"vt-data", "vt-model"},
}


def import_name(dist: str) -> str:
    return dist.replace("-", "_")


def declared_vt_deps(dist: str) -> set[str]:
    meta = tomllib.loads((ROOT / "packages" / dist / "pyproject.toml").read_text())["project"]
    names = {d.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip()
             for d in meta.get("dependencies", [])}
    return {n for n in names if n in PACKAGES}


def imported_vt_packages(dist: str) -> dict[str, set[str]]:
    """vt package -> files of `dist`'s library code that import it (tests excluded)."""
    found: dict[str, set[str]] = {}
    src = ROOT / "packages" / dist / "src"
    for file in src.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                for other in PACKAGES:
                    if top == import_name(other) and other != dist:
                        found.setdefault(other, set()).add(str(file.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("dist", PACKAGES)
def test_package_has_src_layout_and_tests(dist):
    base = ROOT / "packages" / dist
    assert (base / "pyproject.toml").is_file()
    init = base / "src" / import_name(dist) / "__init__.py"
    assert init.is_file(), init
    assert ast.get_docstring(ast.parse(init.read_text())), f"{init} must say what the package holds"
    assert any((base / "tests").glob("test_*.py")), f"{dist} has no tests"
    meta = tomllib.loads((base / "pyproject.toml").read_text())["project"]
    assert meta["name"] == dist


@pytest.mark.parametrize("dist", PACKAGES)
def test_dependencies_point_one_way(dist):
    declared = declared_vt_deps(dist)
    assert declared <= ALLOWED[dist], f"{dist} declares {declared - ALLOWED[dist]}"
    imported = imported_vt_packages(dist)
    undeclared = {pkg: files for pkg, files in imported.items() if pkg not in declared}
    assert not undeclared, f"{dist} imports packages it does not declare: {undeclared}"


def test_declared_graph_has_no_cycle():
    graph = {dist: declared_vt_deps(dist) for dist in PACKAGES}
    visiting, done = set(), set()

    def visit(node, path):
        assert node not in visiting, f"cycle: {' -> '.join(path + [node])}"
        if node in done:
            return
        visiting.add(node)
        for nxt in graph[node]:
            visit(nxt, path + [node])
        visiting.discard(node)
        done.add(node)

    for dist in PACKAGES:
        visit(dist, [])


def test_torch_is_bounded_and_torchvision_never_required():
    for dist in PACKAGES:
        deps = tomllib.loads((ROOT / "packages" / dist / "pyproject.toml").read_text())["project"][
            "dependencies"]
        for dep in deps:
            assert not dep.startswith(("torchvision", "torchaudio")), (dist, dep)
            if dep.split(">")[0].split("=")[0].split("<")[0] == "torch":
                assert "<" in dep or "==" in dep, f"{dist}: unbounded torch would pull a CUDA build"
    for req in (ROOT / "requirements").glob("*.txt"):
        for line in req.read_text().splitlines():
            assert not line.strip().lower().startswith(("torchvision", "torchaudio")), (req, line)


# A test may read only the repository and its temporary folders: real-file fixtures live in tests/data/.
# The folder of reference files beside a development checkout (absent from a user's clone) is spelled
# from its parts, so that this file does not hold the paths it forbids.
_REFERENCE, _FILES = "sha" + "red", "exter" + "nal"
OUTSIDE_PATHS = re.compile(
    rf"""{_REFERENCE}/{_FILES}|\.\./{_REFERENCE}|["']{_REFERENCE}["']\s*/\s*["']{_FILES}["']""")


def test_tests_read_no_folder_outside_the_repository():
    sources = [*ROOT.glob("packages/*/tests/**/*.py"), *ROOT.glob("tests/**/*.py")]
    assert len(sources) > 20
    offenders = [f"{file.relative_to(ROOT)}:{number}: {line.strip()}"
                 for file in sources if file != Path(__file__).resolve()
                 for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1)
                 if OUTSIDE_PATHS.search(line)]
    assert not offenders, ("tests must read tests/data/, not a folder outside the repository:\n"
                           + "\n".join(offenders))


def test_every_test_data_file_is_documented():
    data = ROOT / "tests" / "data"
    readme = (data / "README.md").read_text(encoding="utf-8")
    files = [f for f in data.rglob("*") if f.is_file() and f.name != "README.md"]
    assert files
    undocumented = [str(f.relative_to(data)) for f in files if f.name not in readme]
    assert not undocumented, f"add origin, licence, size and users to tests/data/README.md: {undocumented}"
