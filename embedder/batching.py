"""Cut length-sorted rows into batches under a padded-token budget (pure, no MLX)."""

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], budget: int, max_rows: int) -> list[list[int]]:
    """Indices of `lengths`, longest first, cut so that rows x longest <= budget.

    Padded cost (rows x longest), not the number of texts, is what bounds memory and time.
    A single row longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * longest > budget or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
