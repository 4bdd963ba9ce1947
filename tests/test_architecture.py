"""The layout's rules, checked on the code itself.

* The import graph of ``mosgeo`` and ``mosgeo_lora`` (every ``import`` statement, module level
  and inside functions) has no cycle.
* The geometry (``mosgeo``) imports nothing of ``mosgeo_lora``; the PEFT tuner
  (``mosgeo_lora`` outside ``finetune/``) imports nothing of the application
  (``mosgeo_lora.finetune``), and no third-party package but torch, PEFT, transformers and,
  in the plots, matplotlib.
* No module imports another's private (``_``) name, and private torch/PEFT API is used only in
  ``mosgeo/_compat.py`` and ``mosgeo_lora/_compat.py`` (one per package: ``mosgeo`` must not
  import the tuner).
* ``import mosgeo_lora`` loads neither matplotlib, nor the data generator, nor the Trainer
  helpers, nor the application.
* One docstring convention (Google style; no numpydoc sections), design references that
  resolve in ``docs/design.md``, and a README layout that names every module there is.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mosgeo", "mosgeo_lora")
APP = "mosgeo_lora.finetune"
THIRD_PARTY_OF_TUNER = {"torch", "peft", "transformers", "mosgeo", "mosgeo_lora"}
PLOTS = {"mosgeo_lora.plot": {"matplotlib"}}


def _module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> Iterator[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` of every import statement."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                yield target, alias.name, node.lineno


def import_graph(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    """Edges between our modules; ``from pkg import sub`` counts as an edge to ``pkg.sub``."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module in modules:
        for target, name, _ in imports(module):
            if f"{target}.{name}" in modules:
                graph[module].add(f"{target}.{name}")
            elif target in modules:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first = last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_relative_imports_resolve():
    graph = import_graph()
    assert "mosgeo_lora.constants" in graph["mosgeo_lora.config"]
    assert "mosgeo_lora.finetune.data" in graph["mosgeo_lora.finetune.train"]  # from . import
    assert "mosgeo_lora.finetune.data.examples" in graph["mosgeo_lora.finetune.data.collate"]
    assert "mosgeo.numerics" in graph["mosgeo.charts"]


def test_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None


def _tuner_modules() -> list[str]:
    return [m for m in MODULES if m.startswith("mosgeo_lora") and not m.startswith(APP)]


def test_geometry_and_tuner_do_not_import_what_builds_on_them():
    bad = []
    for module in MODULES:
        for target, name, line in imports(module):
            full = f"{target}.{name}" if name else target
            if module.startswith("mosgeo.") or module == "mosgeo":
                if target.split(".")[0] == "mosgeo_lora":
                    bad.append(f"{module}:{line} imports {full}")
            elif not module.startswith(APP) and (full.startswith(APP) or target.startswith(APP)):
                bad.append(f"{module}:{line} imports {full}")
    assert not bad, bad


def test_tuner_third_party_imports():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for module in _tuner_modules():
        allowed = THIRD_PARTY_OF_TUNER | PLOTS.get(module, set())
        for target, _, line in imports(module):
            top = target.split(".")[0]
            if top and top not in stdlib and top not in allowed:
                bad.append(f"{module}:{line} imports {target}")
    assert not bad, bad


def test_no_private_name_crosses_a_module_boundary():
    bad = []
    for module in MODULES:
        for target, name, line in imports(module):
            ours = target.split(".")[0] in PACKAGES
            if ours and name.startswith("_") and name != "__version__":
                bad.append(f"{module}:{line} imports {target}.{name}")
    assert not bad, bad


def test_private_torch_and_peft_api_only_in_compat():
    private = re.compile(r"\b(torch|peft)(\.\w+)*\._\w+")
    bad = []
    for module, path in MODULES.items():
        if module in ("mosgeo._compat", "mosgeo_lora._compat"):  # one per package
            continue
        for target, name, line in imports(module):
            if target.split(".")[0] in ("torch", "peft") and (
                name.startswith("_") or any(p.startswith("_") for p in target.split("."))
            ):
                bad.append(f"{module}:{line} imports {target}.{name}")
        for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = text.split("#")[0]
            if private.search(code) and "``" not in code:
                bad.append(f"{module}:{i}: {text.strip()}")
    assert not bad, bad


def test_import_mosgeo_lora_loads_only_the_tuner():
    code = """
import json, sys
import mosgeo_lora
before = sorted(sys.modules)
cb = mosgeo_lora.CurvatureCallback  # the lazy Trainer helper, on first use
after = sorted(sys.modules)
print(json.dumps({"before": before, "after": after}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = set(loaded["before"]), set(loaded["after"])
    unwanted = ("matplotlib", "mathematics_dataset", APP, "mosgeo_lora.callbacks")
    unwanted += ("mosgeo_lora.plot", "transformers.trainer", "transformers.trainer_callback")
    assert not [m for m in before if m.startswith(unwanted)]
    assert "mosgeo_lora.callbacks" in after
    assert not [m for m in after if m.startswith(("matplotlib", "mathematics_dataset", APP))]


# --------------------------------------------------------------------------- docs in the code
def test_one_docstring_convention():
    numpydoc = re.compile(r"^\s*(Parameters|Returns|Raises|Attributes|Examples)\n\s*-{3,}$", re.M)
    bad = [m for m, p in MODULES.items() if numpydoc.search(p.read_text(encoding="utf-8"))]
    assert not bad, f"numpydoc sections (use Google style Args:/Returns:): {bad}"


def _design_sections() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    return set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", text, re.M))


def test_design_references_resolve_in_the_repository():
    sections = _design_sections()
    assert {"1", "2", "2.1", "2.2"} <= sections
    sources = [*MODULES.values(), *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    for folder in ("tests", "benchmarks", "examples"):
        sources += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")]
    sources = [p for p in sources if p.resolve() != Path(__file__).resolve()]
    bad = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        if "DESIGN" in text or "shared/DESIGN.md" in text:
            bad.append(f"{path.relative_to(ROOT)} cites the brief outside the repository")
        for ref in re.findall(r"design\.md`*\s*§\s*(\d+(?:\.\d+)*)", text):
            if ref not in sections:
                bad.append(f"{path.relative_to(ROOT)}: docs/design.md §{ref} does not exist")
    assert not bad, bad


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_module_and_nothing_else():
    block = _layout_block()
    named = set(re.findall(r"\b([a-z_][a-z0-9_]*\.py)\b", block))
    files = {p.name for p in ROOT.glob("mosgeo*/**/*.py")} - {"__init__.py", "__main__.py"}
    files |= {p.name for p in ROOT.glob("benchmarks/*.py")} | {"conftest.py"}
    assert files - {"_report.py"} <= named | {"_report.py"}, sorted(files - named)
    every = {p.name for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    assert named <= every, sorted(named - every)
    for folder in re.findall(r"\b([a-z_]+)/", block):
        assert list(ROOT.rglob(folder)), folder


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_docstring(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree)
    assert doc and doc.strip().splitlines()[0], module


def test_design_names_only_files_that_exist():
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([a-z_][a-z0-9_/]*\.py)\b", text))
    every = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    missing = [n for n in named if not any(e == n or e.endswith("/" + n) for e in every)]
    assert not missing, missing
    tuner = {p.name for p in (ROOT / "mosgeo_lora").glob("*.py")} - {"__init__.py"}
    assert all(f"`{name}`" in text for name in tuner), sorted(
        n for n in tuner if f"`{n}`" not in text
    )


def test_paths_named_in_the_docs_exist():
    # a moved test or benchmark file leaves its old path in the pages that cite it as evidence
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pattern = re.compile(r"\b((?:tests|benchmarks|mosgeo|mosgeo_lora)/[A-Za-z0-9_/.-]+\.py)\b")
    missing = [
        f"{page.relative_to(ROOT)}: {path}"
        for page in pages
        for path in pattern.findall(page.read_text(encoding="utf-8"))
        if not (ROOT / path).exists()
    ]
    assert not missing, missing


#: ``mosgeo_lora.__all__`` of 0.1.0: the public API a user may import from the package.
PUBLIC_0_1_0 = (
    "MoSELoraConfig", "MoSELoraModel", "MoSELoraLayer", "MoSELoraLinear", "MOSELORA",
    "PRESETS", "FFN_TARGET_MODULES", "wrap", "param_groups", "curvatures", "routing_stats",
    "reset_routing_stats", "CurvatureCallback", "plot_curvature_dynamics", "plot_expert_load",
)  # fmt: skip


def test_the_public_api_of_0_1_0_is_still_there():
    import mosgeo_lora

    assert set(PUBLIC_0_1_0) <= set(mosgeo_lora.__all__)
    for name in PUBLIC_0_1_0:
        assert getattr(mosgeo_lora, name) is not None, name
    assert set(dir(mosgeo_lora)) >= set(PUBLIC_0_1_0)
