"""Turning results into understanding: analysis in numpy (word_matching, connector_attention,
spatial_maps), figures (matplotlib), views (the one place figures of a run or a probe are
assembled), the report and run files.

Takes results and arrays, never a model.
"""
