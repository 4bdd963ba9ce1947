"""Checks of the documentation site: docstrings of the API reference, and the built HTML.

``docs/conf.py`` loads this file as a Sphinx extension; ``tests/test_docs_site.py`` tests the
checks on tiny fake projects and sites. Two checks, both reported as Sphinx warnings (errors
under ``-W``, as ``make docs`` runs it):

* **Docstrings** (:func:`check_docstrings`, called by ``conf.py``'s ``_check_api_coverage``):
  every object autodoc documents (modules, classes, functions, methods, properties, data)
  needs a docstring of its own. An empty one, or one that autodoc only found on a base class
  (e.g. geoopt's), is reported. Names in the config value ``docstring_allowlist`` are only
  counted, unless the environment variable ``MOSGEO_DOCS_STRICT=1`` is set (``make
  docstrings`` sets it and lists every one).
* **The built site** (:func:`check_site`, after every HTML build): no page loads a remote
  script or stylesheet, and every internal link (``href``/``src``: file and ``#anchor``)
  resolves to an existing file and id. External links are not fetched.
"""

from __future__ import annotations

import inspect
import os
import posixpath
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sphinx.util import logging

log = logging.getLogger("mosgeo.docs")

STRICT_ENV = "MOSGEO_DOCS_STRICT"


# ----------------------------------------------------------------------------- docstrings
def _own_doc(what: str, obj) -> str | None:
    """The docstring written on the object itself (not one inherited from a base class), or
    ``None`` when it has none; only for the kinds of object that carry their own ``__doc__``."""
    if what in ("class", "exception"):
        return vars(obj).get("__doc__") if isinstance(obj, type) else None
    if isinstance(obj, property):
        return obj.__doc__ or (obj.fget.__doc__ if obj.fget else None)
    if what in ("module", "function", "method", "property", "classmethod", "staticmethod"):
        return getattr(inspect.unwrap(getattr(obj, "__func__", obj)), "__doc__", None)
    return None


def _attr_comment(name: str) -> list[str] | None:
    """The ``#:`` comment above the class attribute ``name`` (``module.Class.attr``)."""
    from sphinx.pycode import ModuleAnalyzer

    parts = name.split(".")
    for i in range(len(parts) - 2, 0, -1):
        try:
            docs = ModuleAnalyzer.for_module(".".join(parts[:i])).find_attr_docs()
        except Exception:  # not a module (or no source): try a shorter prefix
            continue
        return docs.get((".".join(parts[i:-1]), parts[-1]))
    return None


def docstring_problem(what: str, obj, lines: list[str], name: str = "") -> str | None:
    """Why the docstring autodoc found for ``obj`` does not count, or ``None`` if it does.

    Args:
        what: autodoc's kind of object (``"method"``, ``"class"``, ``"data"``, ...).
        obj: The object.
        lines: The docstring lines autodoc is about to render.
        name: The object's full name (to find a property's ``#:`` comment).
    """
    text = "\n".join(lines).strip()
    if not text:
        return "has no docstring"
    if what in ("data", "attribute"):
        type_doc = inspect.getdoc(type(obj)) or ""
        if type_doc and text == type_doc.strip():
            return "has only the docstring of its type"
        return None
    if what not in ("class", "exception", "function", "method", "property"):
        return None
    if (_own_doc(what, obj) or "").strip():
        return None
    if what == "property" and name and _attr_comment(name):
        return None
    return "has only an inherited docstring"


def _record_docstring(app, what, name, obj, options, lines) -> None:
    problem = docstring_problem(what, obj, lines, name)
    if problem:
        env = app.env
        gaps = env.__dict__.setdefault("mosgeo_docstring_gaps", {})
        gaps.setdefault(env.docname, {})[name] = problem


def _record_undescribed(app, doctree) -> None:
    """Attributes and data that autodoc shows without any description. (autodoc fires no
    ``autodoc-process-docstring`` for a class attribute without a ``#:`` comment.)"""
    from sphinx import addnodes

    env = app.env
    for desc in doctree.findall(addnodes.desc):
        if desc.get("domain") != "py" or desc.get("objtype") not in ("attribute", "data"):
            continue
        content = next(iter(desc.findall(addnodes.desc_content)), None)
        if content is not None and content.astext().strip():
            continue
        for sig in desc.findall(addnodes.desc_signature):
            name = ".".join(filter(None, (sig.get("module"), sig.get("fullname"))))
            gaps = env.__dict__.setdefault("mosgeo_docstring_gaps", {})
            gaps.setdefault(env.docname, {}).setdefault(name, "has no docstring")


def _purge(app, env, docname) -> None:
    env.__dict__.get("mosgeo_docstring_gaps", {}).pop(docname, None)


def _merge(app, env, docnames, other) -> None:
    gaps = env.__dict__.setdefault("mosgeo_docstring_gaps", {})
    for docname, found in other.__dict__.get("mosgeo_docstring_gaps", {}).items():
        if docname in docnames:
            gaps[docname] = found


def docstring_gaps(env) -> dict[str, tuple[str, str]]:
    """``{name: (docname, problem)}`` of every documented object without its own docstring."""
    out = {}
    for docname, found in sorted(env.__dict__.get("mosgeo_docstring_gaps", {}).items()):
        for name, problem in found.items():
            out.setdefault(name, (docname, problem))
    return out


def check_docstrings(app, env) -> None:
    """Warn for every documented object without a docstring of its own (see the module
    docstring); the allow-listed ones only when ``MOSGEO_DOCS_STRICT=1``."""
    allow = set(app.config.docstring_allowlist)
    strict = os.environ.get(STRICT_ENV, "") not in ("", "0")
    gaps = docstring_gaps(env)
    allowed = []
    for name, (docname, problem) in sorted(gaps.items()):
        if name in allow and not strict:
            allowed.append(name)
            continue
        log.warning("API reference: %s %s", name, problem, location=docname)
    if not strict:
        for name in sorted(allow - set(gaps)):
            log.warning(
                "docstring_allowlist: %s has a docstring now (or is gone): remove it from the "
                "list in docs/conf.py",
                name,
            )
    if allowed:
        log.info(
            "docstrings: %d allow-listed names still lack one (`make docstrings` lists them)",
            len(allowed),
        )


# ----------------------------------------------------------------------------- built site
class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, url)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name") if tag in ("a", "span", "div") else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "a" and a.get("href") is not None:
            self.refs.append((tag, "href", a["href"]))
        elif tag == "link" and a.get("href") is not None:
            self.refs.append((tag, "href", a["href"]))
        elif tag in ("script", "img", "iframe", "source") and a.get("src"):
            self.refs.append((tag, "src", a["src"]))


def _remote(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme and parts.scheme not in ("file",)) or url.startswith("//")


def check_site(outdir: Path | str) -> list[str]:
    """Problems of a built HTML site: remote scripts or stylesheets, and internal links
    (files and ``#anchors``) that do not resolve. External links are not fetched."""
    outdir = Path(outdir)
    pages: dict[str, _Page] = {}
    for path in sorted(outdir.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        pages[path.relative_to(outdir).as_posix()] = page
    problems = []
    for rel, page in pages.items():
        for tag, attr, url in page.refs:
            parts = urlsplit(url)
            if _remote(url):
                if tag in ("script", "link", "iframe", "source") or (tag == "img"):
                    problems.append(f"{rel}: <{tag} {attr}={url!r}> loads a remote resource")
                continue
            if parts.scheme in ("mailto", "javascript", "data"):
                continue
            target = rel
            if parts.path:
                target = posixpath.normpath(
                    posixpath.join(posixpath.dirname(rel), unquote(parts.path))
                )
                if target.startswith("../"):
                    problems.append(f"{rel}: {url!r} points outside the site")
                    continue
                full = outdir / target
                if full.is_dir():
                    target = posixpath.join(target, "index.html")
                    full = outdir / target
                if not full.is_file():
                    problems.append(f"{rel}: {url!r}: {target} does not exist")
                    continue
            fragment = unquote(parts.fragment)
            if fragment and tag == "a" and target in pages and fragment not in pages[target].ids:
                problems.append(f"{rel}: {url!r}: no id {fragment!r} in {target}")
    return problems


def _check_built_site(app, exc) -> None:
    if exc is not None or app.builder.format != "html" or app.builder.name not in ("html",):
        return
    for problem in check_site(app.outdir):
        log.warning("built site: %s", problem)


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")  # its event, below
    app.add_config_value("docstring_allowlist", set(), "env", types=frozenset({set, list}))
    # early, before napoleon rewrites the lines (it only matters for the message)
    app.connect("autodoc-process-docstring", _record_docstring, priority=100)
    app.connect("doctree-read", _record_undescribed)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    # late: after sphinx-mathjax-offline has copied MathJax into the site
    app.connect("build-finished", _check_built_site, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
