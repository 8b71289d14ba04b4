"""Turning results into understanding: analysis (numpy), figures (matplotlib), views, reports and run files.

Takes results and arrays, never a model.
"""
