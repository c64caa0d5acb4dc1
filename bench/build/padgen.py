"""Builder of the padding store path (run by Nix with /usr/bin/python3).

Writes ``padBytes`` bytes of incompressible, seeded pseudo-random content as
a store-shaped tree: many small files and a few large ones (98 % log-uniform
in 100 B .. 64 KiB, 2 % in 64 KiB .. 4 MiB), one directory per ~8 files and
one symlink per ~22 files, about the proportions of Debian's /usr.
"""

import math
import os
import random

out = os.environ["out"]  # noqa: SIM112 (names Nix chose)
target = int(os.environ["padBytes"])  # noqa: SIM112
rng = random.Random(int(os.environ["seed"]))  # noqa: SIM112
SUBDIRS = ("lib", "share", "bin", "include")


def log_uniform(lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


total = i = 0
while total < target:
    d = i // 8
    kind = SUBDIRS[d % 4]
    rel = f"p{d // 64:03d}/{kind}/d{d:05d}"
    path = f"{out}/{rel}"
    if i % 8 == 0:
        os.makedirs(path)
    size = log_uniform(64 << 10, 4 << 20) if rng.random() < 0.02 else log_uniform(100, 64 << 10)
    size = min(size, target - total) or 1
    name = f"f{i:06d}"
    with open(f"{path}/{name}", "wb") as f:
        f.write(rng.randbytes(size))
    if kind == "bin":
        os.chmod(f"{path}/{name}", 0o555)
    if i % 22 == 0:
        os.symlink(name, f"{path}/{name}.so")
    if i % 220 == 0:  # a long absolute one, stored in a block of its own
        os.symlink(f"{out}/{rel}/{name}", f"{path}/{name}.abs")
    total += size
    i += 1
