"""Sphinx configuration of the course website: the chapters, with their saved outputs, rendered by myst-nb.

`make docs` runs `docs/build.py`, which processes the notebooks with nbdev's own processors into `_proc/` and builds
the HTML from there into `_docs/`. Nothing is executed: every output is the one committed with the notebook."""
project = "minillm"
author = "minillm contributors"
copyright = "2026 onwards, minillm contributors"

extensions = ["myst_nb"]
nb_execution_mode = "off"  # render the outputs saved in the notebooks; never run them here
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "alabaster"
html_title = "minillm"
html_theme_options = {"description": "Build and pretrain a small Llama the way TinyLlama was built", "page_width": "1180px",
                      "sidebar_width": "260px", "fixed_sidebar": True}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
