"""Composite trigger rules: which moments are worth capturing."""
