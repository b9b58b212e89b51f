"""Render targets: lowered rulesets and the model -> the files a node reads (one module per
target, listed in fwc.backend.render.registry; the files themselves: fwc.backend.files)."""
