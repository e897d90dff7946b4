"""The simulated fleet's world: its product catalogue (real barcodes, a distinct look per SKU)
and the conditions of its stores.

Public API: ``Catalogue``, ``Product``, ``render_ean13`` (``scene.catalogue``), ``StoreConditions``,
``Conditions``, ``CLEAN`` (``scene.conditions``). The renderer that draws this world for the
synthetic camera is a simulator and lives with the others: ``capsight_edge.devices.render``.
"""
