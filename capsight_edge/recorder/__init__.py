"""Recording: encoders, outputs, pre-roll and capture bundles."""
