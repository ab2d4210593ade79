"""Who meets whom in an anonymous battle."""

from __future__ import annotations

import random

from parley.errors import ParleyError


def pick_pair(models: list[str], weights: dict[str, float] | None = None,
              rng: random.Random | None = None) -> tuple[str, str]:
    """Two different models, drawn in proportion to their weights (every listed model gets weight 1 unless
    `weights` names it; a weight of 0 leaves it out), in random order."""
    rng = rng or random.Random()
    weights = weights or {}
    pool = [(m, float(weights.get(m, 1.0))) for m in dict.fromkeys(models)]
    pool = [(m, w) for m, w in pool if w > 0]
    if len(pool) < 2:
        names = ", ".join(models) or "none"
        raise ParleyError(f"a battle needs two models; the controller lists: {names}")
    first = rng.choices([m for m, _ in pool], [w for _, w in pool])[0]
    rest = [(m, w) for m, w in pool if m != first]
    second = rng.choices([m for m, _ in rest], [w for _, w in rest])[0]
    return (first, second) if rng.random() < 0.5 else (second, first)


def parse_weights(text: str | None) -> dict[str, float]:
    """`model=weight,model=weight` (from --battle-weights)."""
    weights: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ParleyError(f"--battle-weights: {part!r} is not MODEL=NUMBER") from None
        if weights[name.strip()] < 0:
            raise ParleyError(f"--battle-weights: {part!r}: a weight cannot be negative")
    return weights
