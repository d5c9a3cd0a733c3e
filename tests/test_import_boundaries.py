"""Import boundaries between the packages (docs/ARCHITECTURE.md), checked two ways: what each module's source
imports (every import statement, also inside functions) and what importing it really loads, in a fresh
interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where each of our packages lives in the checkout (each part installs from its own folder).
HOMES = {"mentallama": "client", "mentallama_interface": "client", "mentallama_server": "server",
         "mentallama_build": "engine_build", "mentallama_bench": "benchmarks"}  # fmt: skip
OUR_PACKAGES = {"mentallama", "mentallama_interface", "mentallama_server", "mentallama_build", "mentallama_bench"}
INFERENCE = {"openvino", "openvino_genai", "openvino_tokenizers", "torch", "transformers", "optimum", "nncf"}
HEAVY = INFERENCE | {"matplotlib", "pytriton", "tritonserver"}


def _modules(package: str) -> list[str]:
    home = REPO / HOMES[package.split(".")[0]]
    root = home / package.replace(".", "/")
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(home).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imported_roots(module: str, top_level_only: bool = False) -> set[str]:
    """Top-level names of what a module's source imports (relative imports resolve to our own package)."""
    parts = module.split(".")
    path = (REPO / HOMES[parts[0]]).joinpath(*parts)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    roots = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(parts[0] if node.level else (node.module or "").split(".")[0])
    return roots - {"__future__", ""}


def _loaded_by_importing(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing `modules` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(json.loads(out.stdout))


def test_the_sdk_imports_no_server_build_or_benchmark_code_and_nothing_heavy() -> None:
    for module in _modules("mentallama") + _modules("mentallama_interface"):
        roots = _imported_roots(module)
        assert not roots & (OUR_PACKAGES - {"mentallama", "mentallama_interface"}), (module, roots)
        assert not roots & HEAVY, (module, roots)
    loaded = _loaded_by_importing(_modules("mentallama"))
    assert not loaded & (HEAVY | OUR_PACKAGES - {"mentallama", "mentallama_interface"})


def test_the_wire_interface_is_standard_library_only() -> None:
    """Triton's model processes and the SDK both import it; neither must pay for the other's stack."""
    for module in _modules("mentallama_interface"):
        assert _imported_roots(module) <= set(sys.stdlib_module_names), module


def test_the_trtllm_profile_is_standard_library_only() -> None:
    """deploy/ runs it with the NGC container's own Python, which has none of our dependencies (deploy/ puts
    server/ and client/ on PYTHONPATH)."""
    module = "mentallama_server.launch.trtllm_profile"
    assert _imported_roots(module) <= set(sys.stdlib_module_names), _imported_roots(module)


@pytest.mark.parametrize("package", ["mentallama_server.models", "mentallama_server.launch"])
def test_model_logic_and_the_launch_side_load_no_inference_library(package: str) -> None:
    """Model logic runs in every Python model (numpy and tokenizers only); the launcher and CLI start fast and
    leave the engine to the engine step."""
    for module in _modules(package):
        assert not _imported_roots(module, top_level_only=True) & INFERENCE, module
    assert not _loaded_by_importing(_modules(package)) & HEAVY


def test_the_engine_loads_no_torch_or_transformers() -> None:
    """The serving processes stay light: OpenVINO only (torch and optimum-intel belong to the build step)."""
    for module in _modules("mentallama_server.engine"):
        assert not _imported_roots(module) & {"torch", "transformers", "optimum"}, module
    assert not _loaded_by_importing(_modules("mentallama_server.engine")) & {"torch", "transformers", "optimum"}


def test_server_packages_do_not_reach_into_the_benchmarks() -> None:
    for module in _modules("mentallama_server") + _modules("mentallama_build"):
        assert "mentallama_bench" not in _imported_roots(module), module


def _module_path(module: str) -> Path:
    parts = module.split(".")
    path = (REPO / HOMES[parts[0]]).joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imported_modules(module: str, ours: set[str]) -> set[str]:
    """Our modules that `module`'s source imports anywhere (also inside functions and under TYPE_CHECKING), each
    named by the longest of our module names its import starts with (`from pkg import mod` names `pkg.mod`)."""
    path = _module_path(module)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = ".".join([*package[: len(package) - node.level + 1], node.module or ""]).strip(".")
            else:
                base = node.module or ""
            targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    found = set()
    for target in targets:
        parts = target.split(".")
        while parts and ".".join(parts) not in ours:
            parts.pop()
        if parts and ".".join(parts) != module:
            found.add(".".join(parts))
    return found


def _import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        circles.append(sorted(group))
    return circles


def test_our_modules_import_no_circle() -> None:
    """A circle hidden by an import inside a function or under TYPE_CHECKING is still one: each module of the
    circle can be understood only with the others."""
    ours = {module for package in sorted(OUR_PACKAGES) for module in _modules(package)}
    graph = {module: _imported_modules(module, ours) for module in sorted(ours)}
    assert sum(len(edges) for edges in graph.values()) > 300  # the graph was built: our modules import each other
    assert _import_circles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _import_circles(graph) == [["a", "b", "c"]]


def test_other_packages_use_only_the_public_sdk() -> None:
    """The server, the build tool and the benchmark import the SDK's public modules only (`mentallama.cli.common`,
    `mentallama.cli.options`, ...), never an underscore module, whose names may change in any release."""
    ours = set(_modules("mentallama"))
    for package in ("mentallama_server", "mentallama_build", "mentallama_bench"):
        for module in _modules(package):
            private = {m for m in _imported_modules(module, ours) if any(p.startswith("_") for p in m.split("."))}
            assert not private, (module, private)

