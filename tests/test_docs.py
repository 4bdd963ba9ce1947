"""The documentation cannot drift from the code.

* Every ``python`` block on a page of ``docs/`` is executed, and every ``pycon`` block is
  run as a doctest (its printed output compared), in page order with one namespace per page.
* Every example script a page includes (``literalinclude``) is run; the output the page
  quotes (a ``text`` block after a ``% output of <script>`` comment) must appear in what the
  script prints, and the script's results are checked (κ crosses 0, the tree embedding's
  distortion, the figures it writes).
* Every ``literalinclude`` marker exists in its file, every figure exists and has a caption,
  and the API reference has a page for every public module.

The Sphinx build itself (``make docs``, warnings as errors) checks the rest: that every name
in a module's ``__all__`` is documented (``docs/conf.py``) and that the pages are well formed.
"""

from __future__ import annotations

import doctest
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mosgeo
import mosgeo_lora

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
SCRIPTS = ("tutorial_geometry.py", "tutorial_finetune.py")

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


def blocks(page: Path) -> list[tuple[int, str, str, str]]:
    """``(line, info, body, comment)`` of every fenced block of a MyST page; ``comment`` is
    the ``%`` comment line right before the fence, if any."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        comment = lines[i - 1].strip() if i > 0 and lines[i - 1].startswith("%") else ""
        body, j = [], i + 1
        while j < len(lines) and not (
            lines[j].startswith(fence[0] * len(fence)) and lines[j].strip(fence[0]) == ""
        ):
            body.append(lines[j])
            j += 1
        out.append((i + 1, info, "\n".join(body) + "\n", comment))
        i = j + 1
    return out


def code_pages() -> list[Path]:
    return [p for p in PAGES if any(b[1] in ("python", "pycon") for b in blocks(p))]


# ----------------------------------------------------------------------- code on the pages
@pytest.mark.parametrize("page", code_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    torch.set_num_threads(1)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for line, info, body, _ in blocks(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        if info == "python":
            exec(compile(body, where, "exec"), namespace)  # noqa: S102 - the point
        elif info == "pycon":
            test = doctest.DocTestParser().get_doctest(body, namespace, where, str(page), line)
            runner = doctest.DocTestRunner(optionflags=flags)
            report: list[str] = []
            runner.run(test, out=report.append, clear_globs=False)
            assert runner.failures == 0, "".join(report)
            namespace.update(test.globs)  # DocTest ran on a copy of the namespace


# ----------------------------------------------------------------------- the example scripts
@pytest.fixture(scope="module")
def script_runs(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """Run each tutorial script once: its stdout and its figure folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    runs = {}
    for script in SCRIPTS:
        out = tmp_path_factory.mktemp(script.removesuffix(".py"))
        proc = subprocess.run(
            [sys.executable, str(ROOT / "examples" / script), "--out", str(out / "figures")],
            cwd=out,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
        runs[script] = (proc.stdout, out / "figures")
    return runs


def quoted_outputs() -> list[tuple[Path, int, str, str]]:
    """``(page, line, script, text)`` for every output block a page quotes."""
    out = []
    for page in PAGES:
        for line, info, body, comment in blocks(page):
            m = re.fullmatch(r"%\s*output of\s+(\S+)", comment)
            if m and info == "text":
                out.append((page, line, m.group(1), body))
    return out


def test_pages_quote_outputs() -> None:
    scripts = {q[2] for q in quoted_outputs()}
    assert scripts == set(SCRIPTS), scripts


NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _close(expected: float, got: float) -> bool:
    """Numbers quoted on a page are what one run printed; another machine may differ in the
    last digits (rounding-level values anywhere below 1e-9, or a slightly different
    trajectory), not in substance."""
    if abs(expected) < 1e-9:
        return abs(got) < 1e-9
    return abs(expected - got) <= max(0.1 * abs(expected), min(0.02, abs(expected)))


def _line_matches(expected: str, printed: str) -> bool:
    """``expected`` with ``...`` matching anything and its numbers matching close numbers."""
    parts = re.split(f"(\\.\\.\\.|{NUMBER})", expected)
    pattern, numbers = "", []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            pattern += re.escape(part)
        elif part == "...":
            pattern += ".*?"
        else:
            pattern += f"({NUMBER})"
            numbers.append(float(part))
    m = re.fullmatch(pattern, printed)
    return bool(m) and all(_close(e, float(g)) for e, g in zip(numbers, m.groups(), strict=True))


@pytest.mark.parametrize(
    "page, line, script, text",
    quoted_outputs(),
    ids=lambda v: str(v.relative_to(DOCS)) if isinstance(v, Path) else str(v),
)
def test_quoted_output_matches_script(script_runs, page, line, script, text) -> None:
    """Each quoted line is a line the script printed (numbers within tolerance)."""
    printed = [p.rstrip() for p in script_runs[script][0].splitlines()]
    for expected in filter(None, (s.rstrip() for s in text.splitlines())):
        assert any(_line_matches(expected, p) for p in printed), (
            f"{page.name}:{line}: {script} no longer prints\n  {expected}\nit printed:\n"
            + "\n".join(printed)
        )


def _value(stdout: str, pattern: str) -> tuple[str, ...]:
    m = re.search(pattern, stdout)
    assert m, f"no line matches {pattern!r} in\n{stdout}"
    return m.groups()


def test_geometry_tutorial_results(script_runs) -> None:
    stdout, figures = script_runs["tutorial_geometry.py"]
    for err in re.findall(r"max \|geoopt - mosgeo\| = (\S+)", stdout):
        assert float(err) < 1e-12  # the switch changes nothing where geoopt is right
    crossed, final, target = _value(
        stdout, r"crossed 0 at step (\d+); final κ = (\S+) \(κ\* = (\S+)\)"
    )
    assert 0 < int(crossed) < 800 and abs(float(final) - float(target)) < 1e-3
    hyp = _value(stdout, r"Poincaré disk +\d+ nodes, mean distortion (\S+), worst (\S+)")
    flat = _value(stdout, r"plane +\d+ nodes, mean distortion (\S+), worst (\S+)")
    assert float(hyp[0]) < 0.15 and float(hyp[0]) < 0.7 * float(flat[0])
    assert float(hyp[1]) < float(flat[1])
    for name in ("kappa_path.png", "charts.png", "tree.png"):
        assert (figures / name).stat().st_size > 10_000, name


def test_finetune_tutorial_results(script_runs) -> None:
    stdout, figures = script_runs["tutorial_finetune.py"]
    assert "8 experts, top-4, r = 8" in stdout
    loss, lm_loss, aux, router = _value(
        stdout, r"forward: loss (\S+) = LM loss (\S+); aux_loss (\S+); router gradient (\S+)"
    )
    assert loss == lm_loss  # outputs.loss is the model's own loss ...
    assert 0.9 < float(aux) < 8 and float(router) > 0  # ... the balance term is in the gradient
    (gap,) = _value(stdout, r"max \|logits\(loaded\) - logits\(trained\)\| = (\S+)")
    assert float(gap) < 1e-5
    (nonlinear,) = _value(stdout, r"‖Δ\(2x\) − 2Δ\(x\)‖ / ‖2Δ\(x\)‖ = (\S+)")
    assert float(nonlinear) > 0.05  # not a linear map: nothing to merge
    assert "merge: MoSELoRA cannot be merged" in stdout
    for name in ("curvature_dynamics.png", "expert_load.png"):
        assert (figures / name).stat().st_size > 10_000, name


# ----------------------------------------------------------------------- page structure
def includes() -> list[tuple[Path, int, Path, dict[str, str]]]:
    out = []
    for page in PAGES:
        for line, info, body, _ in blocks(page):
            if info.startswith("{literalinclude}"):
                target = (page.parent / info.split(None, 1)[1].strip()).resolve()
                opts = dict(re.findall(r"^:([\w-]+):\s*(.*)$", body, flags=re.M))
                out.append((page, line, target, {k: v.strip('"') for k, v in opts.items()}))
    return out


def test_literalincludes_point_at_markers() -> None:
    found = includes()
    assert found, "no page includes example code"
    for page, line, target, opts in found:
        assert target.is_file(), f"{page.name}:{line}: {target} does not exist"
        text = target.read_text(encoding="utf-8")
        for key in ("start-after", "end-before"):
            if key in opts:
                assert opts[key] in text, f"{page.name}:{line}: marker {opts[key]!r} not found"
        assert target.name in SCRIPTS, f"{page.name}:{line}: {target.name} is not run here"


def test_figures_exist_and_have_captions() -> None:
    seen = 0
    for page in PAGES:
        for line, info, body, _ in blocks(page):
            if not info.startswith("{figure}"):
                continue
            seen += 1
            image = page.parent / info.split(None, 1)[1].strip()
            assert image.is_file(), f"{page.name}:{line}: {image} missing (run the example)"
            # MyST does not continue an option (:alt: ...) on an indented line: that line
            # would start the caption, and the real caption would become the legend
            head = body.split("\n\n", 1)[0].splitlines()
            assert not any(s[:1].isspace() for s in head), (
                f"{page.name}:{line}: a figure option continues on an indented line; MyST puts "
                "that text into the caption: keep each option on one line"
            )
            caption = [s for s in body.splitlines() if s.strip() and not s.startswith(":")]
            assert len(" ".join(caption)) > 80, f"{page.name}:{line}: the figure needs a caption"
    assert seen >= 5


def test_api_reference_covers_every_public_module() -> None:
    """Every public module and subpackage, recursively, has an ``automodule`` on an API page."""
    pages = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    for package in (mosgeo, mosgeo_lora):
        assert f"automodule:: {package.__name__}\n" in pages
        for mod in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if any(part.startswith("_") for part in mod.name.split(".")):
                continue  # private modules (_compat) and __main__
            assert f"automodule:: {mod.name}\n" in pages, f"no API page documents {mod.name}"


def test_readme_examples_are_the_executed_ones() -> None:
    """The README's MoSELoRA examples are code blocks of docs/getting-started.md, which
    ``test_page_code_runs`` executes: the README cannot show code that does not run."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## MoSELoRA in ten lines", 1)[1].split("\n## ", 1)[0]
    shown = re.findall(r"```python\n(.*?)```", section, re.S)
    executed = {
        body for _, info, body, _ in blocks(DOCS / "getting-started.md") if info == "python"
    }
    assert len(shown) >= 3  # ten lines, TRL, several GPUs
    for body in shown:
        assert body in executed, body
