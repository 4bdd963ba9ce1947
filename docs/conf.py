"""Sphinx configuration of the mosgeo documentation.

Build: ``make docs`` (= ``python -m sphinx -W --keep-going -b html docs docs/_build/html``).
The build needs no network (no intersphinx) and neither does the built site: MathJax comes
with it (``sphinx-mathjax-offline`` copies MathJax 3 into ``_static/mathjax``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, also without `pip install -e .`
os.environ.setdefault("OMP_NUM_THREADS", "1")  # autodoc imports torch

project = "mosgeo"
author = "the mosgeo authors"
copyright = "the mosgeo authors"
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # sets mathjax_path to the bundled copy, copies it after the build
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown: $…$ and $$…$$ math, ::: fences, heading anchors for links between pages
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference from the docstrings
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False

html_theme = "furo"
html_title = "mosgeo"
html_static_path = ["_static"]
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# The modules of the API reference. Every name in their ``__all__`` must be documented
# somewhere in the reference: the check below turns a missing one into a warning (an error
# under -W). A package's re-export counts when the object is documented under one of these
# modules.
API_MODULES = [
    "mosgeo",
    "mosgeo.math",
    "mosgeo.charts",
    "mosgeo.numerics",
    "mosgeo.manifold",
    "mosgeo.distributions",
    "mosgeo_lora",
    "mosgeo_lora.config",
    "mosgeo_lora.layer",
    "mosgeo_lora.experts",
    "mosgeo_lora.router",
    "mosgeo_lora.model",
    "mosgeo_lora.peft",
    "mosgeo_lora.optim",
    "mosgeo_lora.stats",
    "mosgeo_lora.callbacks",
    "mosgeo_lora.plot",
]


def _check_api_coverage(app, env) -> None:
    from sphinx.util import logging

    log = logging.getLogger("mosgeo.api")
    py = env.get_domain("py")
    documented = set(py.objects) | set(py.modules)
    modules = {name: importlib.import_module(name) for name in API_MODULES}
    for name, module in modules.items():
        if name not in py.modules:
            log.warning("API reference: module %s has no page", name)
            continue
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.ismodule(obj):
                if obj.__name__ not in py.modules:
                    log.warning("API reference: %s.%s (module) is not documented", name, attr)
                continue
            homes = [f"{m}.{attr}" for m, mod in modules.items() if getattr(mod, attr, None) is obj]
            if not documented.intersection(homes):
                log.warning("API reference: %s.%s is not documented", name, attr)


def _resolve_reexports(app, env, node, contnode):
    """Let ``mosgeo.Stereographic`` (a package re-export, as the docstrings write it) link to
    the documented ``mosgeo.manifold.Stereographic``."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    package, _, attr = target.rpartition(".")
    if package not in ("mosgeo", "mosgeo_lora"):
        return None
    obj = getattr(importlib.import_module(package), attr, None)
    home = getattr(obj, "__module__", None)
    if home is None or home == package:
        return None
    py = env.get_domain("py")
    canonical = f"{home}.{attr}"
    if canonical not in py.objects:
        return None
    return py.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
    )


def _skip_member(app, what, name, obj, skip, options):
    # MoSELoraModel.target_module_mapping is FFN_TARGET_MODULES, documented with the module
    return True if name == "target_module_mapping" else None


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("env-check-consistency", _check_api_coverage)
    app.connect("missing-reference", _resolve_reexports)
