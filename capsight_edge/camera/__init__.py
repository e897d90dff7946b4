"""Camera: frame sources, the shared-memory frame bus, motion and barcode detection."""
