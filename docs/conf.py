"""Sphinx configuration of the mosgeo documentation.

Build: ``make docs`` (= ``python -m sphinx -W --keep-going -b html docs docs/_build/html``).
The build needs no network (no intersphinx) and neither does the built site: MathJax comes
with it (``sphinx-mathjax-offline`` copies MathJax 3 into ``_static/mathjax``). Checks that
fail the build (docs/_ext/docchecks.py): every name of an ``__all__`` is documented and every
documented object has a docstring of its own (``_check_api_coverage``); the built HTML loads
nothing remote and every internal link and anchor resolves.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: Sphinx depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, also without `pip install -e .`
sys.path.insert(0, str(ROOT / "docs" / "_ext"))  # docchecks: the checks of this site
os.environ.setdefault("OMP_NUM_THREADS", "1")  # autodoc imports torch

# Links for newcomers, from [project.urls] in pyproject.toml, the one place to set them.
# The repository has no public address yet: with none set, the pages simply do not link one.
with open(ROOT / "pyproject.toml", "rb") as _f:
    PROJECT_URLS = tomllib.load(_f)["project"].get("urls", {})
REPOSITORY_URL = PROJECT_URLS.get("Repository", "")
PAPER_URL = PROJECT_URLS.get("Paper", "https://arxiv.org/abs/2602.14490")
PAPER_TITLE = "Parameter-Efficient Fine-Tuning of LLMs with Mixture of Space Experts"

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
    "docchecks",  # docstring check (below) and the check of the built HTML (docs/_ext)
    "sphinxarg.ext",  # sphinx-argparse: the command-line reference from the parser
    "sphinx_copybutton",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown: $…$ and $$…$$ math, ::: fences, heading anchors for links between pages
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "substitution"]
myst_heading_anchors = 3
# {{ paper }} and {{ repository }} on the pages (the latter empty while no address is set)
myst_substitutions = {
    "paper": f"*{PAPER_TITLE}* ([arXiv:{PAPER_URL.rsplit('/', 1)[-1]}]({PAPER_URL}))",
    "repository": f"The source code is at <{REPOSITORY_URL}>." if REPOSITORY_URL else "",
}

# The command-line reference (docs/cli.md, directive `mosgeo-cli`) is generated from this
# argparse parser, "module:function" returning an ArgumentParser.
CLI_PARSER = "mosgeo_lora.finetune.cli:build_parser"

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
napoleon_numpy_docstring = False  # Google style only, project-wide
napoleon_use_rtype = False

# viewcode: [source] links only for objects documented in the module that defines them. With
# the default (True) a re-export (e.g. mosgeo.math.clamp_abs, defined in mosgeo.numerics)
# sets the anchor prefix of its defining module's source page, and that page's [docs]
# back-links then point to ids that do not exist (#mosgeo.math.Guards). The object's own
# entry (mosgeo.numerics.clamp_abs) keeps its [source] link.
viewcode_follow_imported_members = False

# Copy buttons on code blocks; the copied text drops the prompts ">>> ", "... " and "$ ", and
# in a block with prompts only the prompt lines are copied (not the printed output).
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
copybutton_line_continuation_character = "\\"

html_theme = "furo"
html_title = "mosgeo"
html_theme_options = {
    "footer_icons": [{"name": "Paper", "url": PAPER_URL, "html": "paper (arXiv)", "class": ""}]
    + (
        [{"name": "Repository", "url": REPOSITORY_URL, "html": "source", "class": ""}]
        if REPOSITORY_URL
        else []
    ),
}
html_static_path = ["_static"]
html_css_files = ["mosgeo.css"]  # wide tables and long code lines stay inside the column
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# The modules of the API reference. Every name in their ``__all__`` must be documented
# somewhere in the reference: the check below turns a missing one into a warning (an error
# under -W). A package's re-export counts when the object is documented under one of these
# modules.
API_MODULES = [
    "mosgeo",
    "mosgeo.math",
    "mosgeo.compiled",
    "mosgeo.charts",
    "mosgeo.numerics",
    "mosgeo.manifold",
    "mosgeo.distributions",
    "mosgeo_lora",
    "mosgeo_lora.constants",
    "mosgeo_lora.config",
    "mosgeo_lora.layer",
    "mosgeo_lora.experts",
    "mosgeo_lora.router",
    "mosgeo_lora.balance",
    "mosgeo_lora.model",
    "mosgeo_lora.registry",
    "mosgeo_lora.optim",
    "mosgeo_lora.stats",
    "mosgeo_lora.callbacks",
    "mosgeo_lora.plot",
    "mosgeo_lora.finetune",
    "mosgeo_lora.finetune.cli",
    "mosgeo_lora.finetune.config",
    "mosgeo_lora.finetune.train",
    "mosgeo_lora.finetune.evaluate",
    "mosgeo_lora.finetune.compare",
    "mosgeo_lora.finetune.methods",
    "mosgeo_lora.finetune.baselines",
    "mosgeo_lora.finetune.baselines.melora",
    "mosgeo_lora.finetune.baselines.hmora",
    "mosgeo_lora.finetune.base_models",
    "mosgeo_lora.finetune.callbacks",
    "mosgeo_lora.finetune.data",
    "mosgeo_lora.finetune.data.examples",
    "mosgeo_lora.finetune.data.shims",
    "mosgeo_lora.finetune.data.seeds",
    "mosgeo_lora.finetune.data.generator",
    "mosgeo_lora.finetune.data.frozen",
    "mosgeo_lora.finetune.data.training",
    "mosgeo_lora.finetune.data.prompts",
    "mosgeo_lora.finetune.data.collate",
    "mosgeo_lora.finetune.tasks",
    "mosgeo_lora.finetune.tasks.base",
    "mosgeo_lora.finetune.tasks.answers",
    "mosgeo_lora.finetune.tasks.metrics",
    "mosgeo_lora.finetune.tasks.math",
    "mosgeo_lora.finetune.tasks.nlu",
    "mosgeo_lora.finetune.tasks.registry",
    "mosgeo_lora.finetune.tasks.sources",
    "mosgeo_lora.finetune.tasks.mix",
]


def _check_api_coverage(app, env) -> None:
    import docchecks
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
    # ...and every documented object (module, class, function, method, property, data) has a
    # docstring of its own: not empty, not only inherited (e.g. from geoopt)
    docchecks.check_docstrings(app, env)


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
    # MoSELoraModel.target_module_mapping is FFN_TARGET_MODULES, documented in constants
    return True if name == "target_module_mapping" else None


def _cli_reference_directive():
    """sphinx-argparse's ``argparse`` directive with the parser of CLI_PARSER and prog
    ``mosgeo-lora`` filled in, so the page does not repeat the module path."""
    from docutils import nodes
    from sphinxarg.ext import ArgParseDirective

    class CLIReference(ArgParseDirective):
        def run(self):
            module, func = CLI_PARSER.split(":")
            self.options.setdefault("module", module)
            self.options.setdefault("func", func)
            self.options.setdefault("prog", "mosgeo-lora")
            out = super().run()
            for node in out:  # the usage lines are not Python: no syntax colours
                for block in node.findall(nodes.literal_block):
                    block["language"] = "text"
            return out

    return CLIReference


def setup(app):
    app.add_directive("mosgeo-cli", _cli_reference_directive())
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("env-check-consistency", _check_api_coverage)
    app.connect("missing-reference", _resolve_reexports)
