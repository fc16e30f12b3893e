"""``metapeft report``: what the stored experience says about which method wins where."""

from ._analysis import analyse, frame
from ._render import markdown, render, render_map

__all__ = ["analyse", "frame", "markdown", "render", "render_map"]
