"""Capture bundles: the manifest schema (shared with the cloud sink) and atomic sealing."""
