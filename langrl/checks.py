"""Field checks shared by the config dataclasses: one wording for every refusal.

Each check raises ``ValueError("Owner.field must be ..., got value")`` so that a bad value
names the field it came from; ``langrl.training.config.load_config`` turns it into a
one-line ``ConfigError``. Pure Python: config modules import this, never torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check", "check_int", "check_ints", "is_int"]


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never to a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check(condition: bool, owner: str, message: str) -> None:
    """Raise ``ValueError(f"{owner}: {message}")`` unless ``condition`` (not ``assert``:
    validation must survive ``python -O``)."""
    if not condition:
        raise ValueError(f"{owner}: {message}")


def check_int(
    owner: str, name: str, value: Any, low: int | None = None, *, optional: bool = False
) -> None:
    """``value`` is an int ``>= low`` (any int when ``low`` is None); ``None`` passes when
    ``optional``. Refuses with ``"{owner}.{name} must be an int >= {low}, got {value!r}"``."""
    if optional and value is None:
        return
    if is_int(value) and (low is None or value >= low):
        return
    wanted = "an int" if low is None else f"an int >= {low}"
    if optional:
        wanted = f"None or {wanted}"
    raise ValueError(f"{owner}.{name} must be {wanted}, got {value!r}")


def check_ints(obj: Any, low_by_name: dict[str, int | None], *, optional: bool = False) -> None:
    """``check_int`` on several fields of a dataclass instance, named after its class."""
    owner = type(obj).__name__
    for name, low in low_by_name.items():
        check_int(owner, name, getattr(obj, name), low, optional=optional)
