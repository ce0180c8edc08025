"""mgpath: few-shot whole-slide-image classification with MGPATH (multi-granular prompts + optimal transport)."""
__version__ = "0.1.0"
