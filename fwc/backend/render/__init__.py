"""Renderers: lowered rulesets and the model -> the files a node reads."""
