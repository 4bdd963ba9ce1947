"""The checks of the documentation site can fail.

``make docs`` builds the real site with warnings as errors, and two checks run inside that
build (``docs/_ext/docchecks.py``): every documented object has a docstring of its own, and
the built HTML loads nothing remote and has no broken internal link or anchor. Building the
real site here again would double ``make test``'s docs time, so these tests run the same
checks on tiny fake sites and tiny Sphinx projects (a few seconds in all), each once with a
defect (the check must fail) and once without (it must pass). The last tests check mosgeo's
docstrings directly: a one-line summary first, Google style.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

pytest.importorskip("sphinx", reason="the docs extra is not installed (make test installs it)")
import docchecks  # noqa: E402  (after the path and the skip)

# Sphinx 9's napoleon reads autodoc options the deprecated way: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The mapping interface for autodoc options")

_ids = itertools.count()


# ----------------------------------------------------------------------- the built-HTML check
def write_site(root: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<!DOCTYPE html><html><head></head><body>{body}</body></html>")
    return root


GOOD = {
    "index.html": '<link rel="stylesheet" href="_static/style.css">'
    '<script src="_static/app.js"></script>'
    '<a href="page.html">page</a> <a href="page.html#part">part</a> <a href="#top">top</a>'
    '<a href="sub/">sub</a> <a href="https://arxiv.org/abs/2602.14490">paper</a>'
    '<a href="mailto:x@example.invalid">mail</a> <span id="top"></span>',
    "page.html": '<section id="part"><a href="index.html#top">back</a></section>'
    '<img src="_static/fig.png">',
    "sub/index.html": '<a href="../page.html#part">up</a>',
    "_static/style.css": "",  # not an HTML page: only a target
    "_static/app.js": "",
    "_static/fig.png": "",
}


def test_site_check_passes_a_clean_site(tmp_path) -> None:
    # external links (the arXiv one) are not fetched: there is no network here
    assert docchecks.check_site(write_site(tmp_path, GOOD)) == []


@pytest.mark.parametrize(
    "page, expected",
    [
        ('<script src="https://cdn.example.invalid/mathjax.js"></script>', "loads a remote"),
        ('<script src="//cdn.example.invalid/x.js"></script>', "loads a remote"),
        ('<link rel="stylesheet" href="http://cdn.example.invalid/k.css">', "loads a remote"),
        ('<a href="missing.html">x</a>', "missing.html does not exist"),
        ('<a href="page.html#nowhere">x</a>', "no id 'nowhere' in page.html"),
        ('<a href="#nowhere">x</a>', "no id 'nowhere' in index.html"),
        ('<img src="_static/missing.png">', "_static/missing.png does not exist"),
        ('<a href="../outside.html">x</a>', "points outside the site"),
    ],
)
def test_site_check_finds_each_defect(tmp_path, page, expected) -> None:
    site = write_site(tmp_path, {**GOOD, "index.html": GOOD["index.html"] + page})
    problems = docchecks.check_site(site)
    assert len(problems) == 1 and expected in problems[0], problems


# ----------------------------------------------------------------------- tiny Sphinx projects
def sphinx_build(src: Path, out: Path) -> tuple[int, str]:
    """Build ``src`` as ``make docs`` does (-W --keep-going); the exit status and warnings."""
    from sphinx.cmd.build import build_main

    warnings = out.parent / f"{out.name}-warnings.txt"
    status = build_main(
        ["-W", "--keep-going", "-q", "-E", "-b", "html", "-w", str(warnings), str(src), str(out)]
    )
    return status, warnings.read_text() if warnings.exists() else ""


def project(tmp_path: Path, conf: str, pages: dict[str, str], module: str = "") -> Path:
    """A Sphinx project in ``tmp_path``; ``module`` is the source of a module with a fresh
    name (autodoc imports it once per process), written FAKEMOD in ``conf`` and ``pages``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    name = f"fakemod_{next(_ids)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module))
    head = f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        sys.path.insert(0, {str(ROOT / "docs" / "_ext")!r})
        project = "fake"
    """
    conf = textwrap.dedent(head) + textwrap.dedent(conf)
    (tmp_path / "conf.py").write_text(conf.replace("FAKEMOD", name))
    for page, text in pages.items():
        (tmp_path / page).write_text(textwrap.dedent(text).replace("FAKEMOD", name))
    return tmp_path


DOCSTRING_CONF = """
    extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "docchecks"]
    docstring_allowlist = ALLOW

    def setup(app):
        import docchecks

        app.connect("env-check-consistency", docchecks.check_docstrings)
"""
FAKEMOD = '''
    """A fake module."""


    def documented():
        """Has a docstring."""


    def empty():
        return 1


    class Base:
        """A base class."""

        def method(self):
            """The base class's docstring."""


    class Child(Base):
        """A subclass."""

        #: A class attribute with a comment.
        commented = 1
        bare = 2

        def method(self):
            return 2
'''
AUTOMODULE = {
    "index.rst": """
        Fake
        ====

        .. automodule:: FAKEMOD
           :members:
           :undoc-members:
    """
}


GAPS = ["FAKEMOD.Child.bare", "FAKEMOD.Child.method", "FAKEMOD.empty"]


def flagged(warnings: str) -> list[str]:
    return sorted(
        line.split("API reference: ", 1)[1] for line in warnings.splitlines() if "API ref" in line
    )


def test_docstring_check_fails_on_empty_and_inherited_docstrings(tmp_path) -> None:
    src = project(tmp_path / "src", DOCSTRING_CONF.replace("ALLOW", "set()"), AUTOMODULE, FAKEMOD)
    status, warnings = sphinx_build(src, tmp_path / "html")
    mod = next(src.glob("fakemod_*.py")).stem
    assert status != 0
    assert flagged(warnings) == [
        f"{mod}.Child.bare has no docstring",
        f"{mod}.Child.method has only an inherited docstring",
        f"{mod}.empty has no docstring",
    ], warnings


def test_docstring_allowlist_silences_and_must_shrink(tmp_path) -> None:
    conf = DOCSTRING_CONF.replace("ALLOW", repr(set(GAPS)))
    src = project(tmp_path / "a", conf, AUTOMODULE, FAKEMOD)
    status, warnings = sphinx_build(src, tmp_path / "a-html")
    assert status == 0, warnings
    # an allow-listed name that has a docstring (or is gone) is a warning: the list shrinks
    conf = DOCSTRING_CONF.replace("ALLOW", repr({*GAPS, "FAKEMOD.documented"}))
    src = project(tmp_path / "b", conf, AUTOMODULE, FAKEMOD)
    status, warnings = sphinx_build(src, tmp_path / "b-html")
    mod = next(src.glob("fakemod_*.py")).stem
    assert status != 0 and f"{mod}.documented has a docstring now" in warnings, warnings


def test_docstring_check_strict_mode_ignores_the_allowlist(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(docchecks.STRICT_ENV, "1")  # what `make docstrings` sets
    conf = DOCSTRING_CONF.replace("ALLOW", repr(set(GAPS)))
    src = project(tmp_path / "src", conf, AUTOMODULE, FAKEMOD)
    status, warnings = sphinx_build(src, tmp_path / "html")
    assert status != 0 and len(flagged(warnings)) == 3, warnings


MATH_PAGE = {
    "index.rst": """
        Fake
        ====

        A formula :math:`x \\oplus_\\kappa y` and `a link <#nowhere>`_.
    """
}


def test_site_check_runs_in_the_build_and_fails_it(tmp_path) -> None:
    """The built-HTML check is a post-build step: a broken anchor fails the build, and so
    does MathJax from a CDN (Sphinx's default), the defect this site had."""
    src = project(tmp_path / "src", 'extensions = ["sphinx.ext.mathjax", "docchecks"]\n', MATH_PAGE)
    status, warnings = sphinx_build(src, tmp_path / "html")
    assert status != 0
    assert "built site: index.html: '#nowhere': no id 'nowhere' in index.html" in warnings
    assert "index.html: <script src='https://cdn.jsdelivr.net/" in warnings, warnings


def test_mathjax_is_bundled_with_the_site(tmp_path) -> None:
    """With the docs' MathJax setup the page loads MathJax from the site itself."""
    page = {"index.rst": MATH_PAGE["index.rst"].replace(" and `a link <#nowhere>`_", "")}
    conf = 'extensions = ["sphinx.ext.mathjax", "sphinx-mathjax-offline", "docchecks"]\n'
    src = project(tmp_path / "src", conf, page)
    out = tmp_path / "html"
    status, warnings = sphinx_build(src, out)
    assert status == 0, warnings
    html = (out / "index.html").read_text()
    assert 'src="_static/mathjax/tex-chtml.js"' in html
    assert (out / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000
    fonts = list((out / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "MathJax's fonts are not in the site"


# ----------------------------------------------------------------------- mosgeo's docstrings
MOSGEO_MODULES = [
    "mosgeo",
    "mosgeo.math",
    "mosgeo.charts",
    "mosgeo.numerics",
    "mosgeo.radial",
    "mosgeo.manifold",
    "mosgeo.distributions",
]


def public_docstrings():
    """``(name, docstring)`` of mosgeo's modules, public names and their classes' members."""
    seen = set()
    for modname in MOSGEO_MODULES:
        module = importlib.import_module(modname)
        yield modname, module.__doc__
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.ismodule(obj) or id(obj) in seen or not callable(obj):
                continue
            if getattr(obj, "__module__", modname) != modname:
                continue  # a re-export: checked where it is defined
            seen.add(id(obj))
            yield f"{modname}.{attr}", obj.__doc__
            if inspect.isclass(obj):
                for name, member in vars(obj).items():
                    if name.startswith("_"):
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if isinstance(member, property) and member.__doc__ is None:
                        continue  # documented by a #: comment (checked by the docs build)
                    if inspect.isfunction(member) or isinstance(member, property):
                        yield f"{modname}.{attr}.{name}", member.__doc__


@pytest.mark.parametrize("name, doc", list(public_docstrings()), ids=lambda v: str(v)[:60])
def test_mosgeo_docstrings_start_with_a_one_line_summary(name, doc) -> None:
    assert doc and doc.strip(), f"{name} has no docstring"
    lines = inspect.cleandoc(doc).splitlines()
    assert lines[0].strip(), f"{name}: the first line is empty"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{name}: the summary runs over two lines (Google style: one line, then a blank line)"
    )
    assert "----------" not in doc, f"{name}: numpydoc section; the project uses Google style"


def _rst_errors(text: str) -> list[str]:
    """reStructuredText errors in ``text`` (Sphinx's own roles and directives are unknown to
    plain docutils and not counted)."""
    import docutils.core
    import docutils.utils

    doctree = docutils.core.publish_doctree(
        text, settings_overrides={"report_level": 5, "halt_level": 5, "warning_stream": False}
    )
    unknown = ("Unknown interpreted text role", "Unknown directive type", "No role entry",
               "No directive entry", "Trying ")  # fmt: skip
    return [
        msg.astext()
        for msg in doctree.findall(docutils.nodes.system_message)
        if msg["level"] >= docutils.utils.Reporter.ERROR_LEVEL
        and not any(u in msg.astext() for u in unknown)
    ]


def test_rst_error_check_can_fail() -> None:
    bad = "====  ===\na     b\n====  ===\nlonger_name  x\n====  ===\n"
    assert _rst_errors(bad)
    assert not _rst_errors(":func:`x` and a table:\n\n===  ===\na    b\n===  ===\n")


def _every_module() -> list[str]:
    import pkgutil

    names = []
    for package in ("mosgeo", "mosgeo_lora"):
        root = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
    return sorted(n for n in names if not n.endswith("__main__"))


@pytest.mark.parametrize("modname", _every_module())
def test_module_docstrings_are_valid_rst(modname) -> None:
    # the docs build (make docs, -W) fails on a malformed table in a module docstring; this
    # finds it in a second, where the build takes minutes
    doc = importlib.import_module(modname).__doc__ or ""
    assert not _rst_errors(inspect.cleandoc(doc)), (modname, _rst_errors(inspect.cleandoc(doc)))
