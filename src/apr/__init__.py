"""apr: a certification workbench that proves whether an LLM checkpoint is fit to ship."""

__version__ = "0.1.0"
