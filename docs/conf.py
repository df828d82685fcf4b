"""Sphinx configuration of the sb3_acktr documentation (``make docs``)."""

from pathlib import Path

project = "sb3_acktr"
author = "sb3_acktr contributors"
release = (Path(__file__).resolve().parents[1] / "sb3_acktr" / "version.txt").read_text().strip()
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "sphinx_rtd_theme"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]
html_theme = "sphinx_rtd_theme"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# SB3's docstrings (inherited members) use reST roles of their own documentation.
nitpicky = False
suppress_warnings = ["myst.xref_missing"]
