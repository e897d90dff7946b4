"""Still frames for datasets, from the same scene renderer the simulated camera uses: a product
held up to the camera or going into the basket, or no product in hand, in a store's conditions
(:data:`~capsight_edge.scene.conditions.CLEAN` for the studio). The trainer's ``render-dataset``
draws its frames here: what is simulated stays in ``devices/``."""

from __future__ import annotations

import random
from typing import Any

from capsight_edge.devices.render import SceneRenderer
from firmware_bridge.sim.scenario import HandWave, ItemEvent, Scenario


def lighting(gain: float) -> str:
    return "dim" if gain < 0.85 else "bright" if gain > 1.15 else "normal"


def conditions_of(truth: Any) -> dict[str, str]:
    """What a dataset item records of a frame's conditions (the gate's slices)."""
    c = truth.conditions
    out = {"lighting": lighting(truth.light_gain)}
    if c is not None:
        out |= {
            "blur": "yes" if c.blur_px else "no",
            "glare": "yes" if c.glare else "no",
            "occlusion": "yes" if c.occluded else "no",
            "crumpled": "yes" if c.crumpled else "no",
        }
    return out


def product_frame(
    catalogue: Any, sku: str, store: Any, size: tuple[int, int], seed: int
) -> tuple[Any, Any] | None:
    """One frame of ``sku`` held up (scanning) or going into the basket; None when the draw
    left the product mostly out of view."""
    rng = random.Random(seed)
    scan_s, hand_s = rng.uniform(0.9, 1.6), rng.uniform(0.4, 0.9)
    ev = ItemEvent(
        t_s=2.0 + scan_s,
        grams=catalogue.by_sku(sku).weight_g,
        hand_s=hand_s,
        x=rng.uniform(0.2, 0.8),
        y=rng.uniform(0.25, 0.8),
        sku=sku,
        scanned=rng.random() < 0.75,
        scan_s=scan_s,
    )
    # A cart in use: up to four products already lie in the basket, the shopper's earlier
    # picks (a recogniser trained on lone products mistakes those for the one in the hand).
    scenario = Scenario(
        duration_s=6.0, items=[*_in_basket(catalogue, rng, avoid=sku), ev], seed=seed
    )
    renderer = SceneRenderer(
        scenario,
        catalogue,
        width=size[0],
        height=size[1],
        seed=seed,
        conditions=store,
    )
    # Mostly the slow part of a scan (the product shown), sometimes entering or going down.
    phase = rng.random()
    if phase < 0.6:
        t = ev.t_s - scan_s * rng.uniform(0.05, 0.7)
    elif phase < 0.8:
        t = ev.t_s - scan_s * rng.uniform(0.7, 0.95)
    else:
        t = ev.t_s + hand_s * rng.uniform(0.0, 0.6)
    frame, truth = renderer.render(t)
    box = truth.item_bbox
    if box is None or box[2] * box[3] < 0.5 * _area(catalogue.by_sku(sku), renderer):
        return None
    return frame, truth


def _area(product: Any, renderer: Any) -> float:
    w, h = product.size_px
    return w * h * renderer.scale * renderer.scale * 0.55 * 0.55


def no_product_frame(
    catalogue: Any, store: Any, size: tuple[int, int], seed: int
) -> tuple[Any, Any]:
    """A frame with no product in hand: the basket (empty or with items in it), a hand waving
    over it now and then."""
    rng = random.Random(seed)
    items = _in_basket(catalogue, rng)
    waves = [HandWave(t_s=3.0, duration_s=2.0)] if rng.random() < 0.4 else []
    scenario = Scenario(duration_s=6.0, items=items, waves=waves, seed=seed)
    renderer = SceneRenderer(
        scenario, catalogue, width=size[0], height=size[1], seed=seed, conditions=store
    )
    return renderer.render(rng.uniform(3.1, 4.9) if waves else 5.0)


def _in_basket(catalogue: Any, rng: random.Random, avoid: str = "") -> list[ItemEvent]:
    """0 to 4 products put in the basket before the frame (none of them ``avoid``)."""
    choices = [p for p in catalogue.products if p.sku != avoid]
    return [
        ItemEvent(
            t_s=0.5 + i * 0.01,
            grams=p.weight_g,
            hand_s=0.001,
            x=rng.uniform(0.2, 0.8),
            y=rng.uniform(0.25, 0.8),
            sku=p.sku,
            scanned=False,
            scan_s=0.0,
        )
        for i, p in enumerate(rng.sample(choices, min(len(choices), rng.randrange(0, 5))))
    ]
