"""Inference engines behind one narrow interface (see `parley.engines.base.Engine`)."""
