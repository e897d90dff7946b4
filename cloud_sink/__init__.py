"""cloud_sink: receives, indexes and pre-labels the fleet's captures."""

__version__ = "0.1.0"
