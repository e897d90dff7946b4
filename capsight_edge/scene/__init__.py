"""The synthetic cart scene: a product catalogue with real barcodes and a basket-view renderer.

Public API (the trainer uses it to make training data): ``Catalogue``, ``Product``,
``render_ean13``, ``SceneRenderer``.
"""
