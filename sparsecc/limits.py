"""Size limits on what users give sparsecc, checked before anything is allocated or parsed.

Every input is checked for type and size before use, and a refusal states the limit: a model
that declares a 3.6 TiB tensor in a tiny file, an input shape no machine can hold, a recipe
whose YAML aliases expand to gigabytes, a plan or a timing cache of the wrong shape.
"""

from __future__ import annotations

import os

# --shape: each dimension (ONNX Runtime and the plugin kernels index with int32 along one axis)
MAX_DIMENSION = 2**31 - 1
# all the inputs at the compile shapes, as a share of the machine's memory: the checks hold each input,
# the activations computed from it and both graphs' outputs at once
MAX_INPUT_SHARE_OF_MEMORY = 0.25
# recipe files (text), and the values a recipe may hold once YAML aliases are expanded
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_VALUES = 100_000
MAX_RECIPE_TEXT = 10_000
# plan.json (the masks are in the .npz beside it: each mask is checked against the shape it declares)
MAX_PLAN_JSON_BYTES = 64 << 20
# the timing cache file
MAX_TIMING_CACHE_BYTES = 256 << 20


def physical_memory() -> int | None:
    """The machine's memory in bytes (None where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} PiB"


def count_values(data, limit: int) -> int | None:
    """How many values a parsed YAML/JSON document holds, counting shared (aliased) parts each time they
    appear; None as soon as it exceeds ``limit`` (a few hundred bytes of aliases can expand to billions)."""
    count = 0
    stack = [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return None
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count
