"""Class-disjoint train / validation / test splits.

Few-shot results only mean something on classes the method never saw, so a split assigns whole
classes, never particles. Splits are drawn from a seed (fractions) or given as explicit lists, and
are saved with the data set so every method sees the same ones.
"""

from __future__ import annotations

import math

import numpy as np

from fewshot_cryoet.core.errors import FscError, SettingError

SPLITS = ("train", "val", "test")
#: Default fractions (train, val, test): 20 classes → 8 / 4 / 8, enough test classes for 8-way.
DEFAULT_FRACTIONS = (0.4, 0.2, 0.4)


def assign_splits(
    class_names: list[str],
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    explicit: dict[str, list[str]] | None = None,
) -> dict[str, str]:
    """Map each class name to ``train``, ``val`` or ``test``.

    With ``explicit`` lists (any of the three keys), listed classes go where listed and the rest
    go to ``train``. Otherwise the classes are shuffled with ``seed`` and cut by ``fractions``
    (test size rounded up, validation size rounded, each at least one class when there are ≥ 3
    classes).
    """
    if explicit:
        assignment = {name: "train" for name in class_names}
        for split, names in explicit.items():
            if split not in SPLITS:
                raise FscError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
            for name in names:
                if name not in assignment:
                    raise FscError(
                        f"split lists class {name!r}, which is not among the data set's classes "
                        f"({', '.join(class_names)})"
                    )
                assignment[name] = split
        return assignment
    if len(fractions) != 3 or not all(0 <= f <= 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise SettingError("split", f"split fractions must be three numbers in [0, 1] summing to 1 (train,val,test), "
                                    f"got {','.join(map(str, fractions))}")
    if fractions[0] == 0 or fractions[2] == 0:
        raise SettingError("split", f"split {','.join(map(str, fractions))}: a data set needs training and test "
                                    "classes; give both a share")
    n = len(class_names)
    order = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(n)
    n_test = math.ceil(fractions[2] * n) if fractions[2] > 0 else 0
    n_val = round(fractions[1] * n) if fractions[1] > 0 else 0
    if n >= 3:
        n_test, n_val = max(n_test, 1 if fractions[2] > 0 else 0), max(n_val, 1 if fractions[1] > 0 else 0)
    while n_test + n_val > n - (1 if fractions[0] > 0 and n >= 3 else 0) and (n_test or n_val):
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    assignment = {}
    for rank, idx in enumerate(order):
        if rank < n_test:
            assignment[class_names[idx]] = "test"
        elif rank < n_test + n_val:
            assignment[class_names[idx]] = "val"
        else:
            assignment[class_names[idx]] = "train"
    return assignment
