"""Checks every node of the pack makes before it runs.

ComfyUI 0.3.64 skips its own min/max check for each input a node's ``validate_inputs`` receives, and never checks a
V3 combo value against its options. :class:`ValidatedNode` therefore receives every input and checks each value
against what the node's schema declares (``min``/``max``, an integer ``step``, the combo ``options`` of a freshly
built schema, so a model file added after start-up is accepted), then the node's own cross-input checks. A declared
limit is never repeated by hand. :func:`require_fits` refuses an allocation that cannot fit, saying what to change.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from comfy_api.latest import io

_SHOWN_OPTIONS = 8


class InvalidInput(ValueError):
    """A value a node refuses. ``validate_inputs`` raises it instead of returning the message: ComfyUI repeats a
    returned message once per input the function receives, and reports an exception once."""


def _choices(options: list) -> str:
    shown = ", ".join(repr(o) for o in options[:_SHOWN_OPTIONS])
    return shown + (f", ... ({len(options)} in all)" if len(options) > _SHOWN_OPTIONS else "")


def schema_error(inputs: Iterable[Any], values: Mapping[str, Any]) -> str | None:
    """The first value in ``values`` that its input (a V3 schema's ``inputs``) does not allow: a combo value not
    among ``options``, a number outside ``min``..``max`` or, for integers, not a multiple of ``step``; None when all
    are allowed. Values of linked inputs (None while ComfyUI validates) and absent optional ones are not judged."""
    for inp in inputs:
        value = values.get(inp.id)
        if value is None:
            continue
        options = getattr(inp, "options", None)
        if options is not None:
            if value not in options:
                if not options:
                    where = f" ({inp.tooltip})" if getattr(inp, "tooltip", None) else ""
                    return (f"{inp.id}: {value!r} is not available and there is nothing to pick: add the model "
                            f"files{where}, then press R in ComfyUI to refresh the lists")
                return f"{inp.id}: {value!r} is not available; pick one of {_choices(options)}"
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        lo, hi = getattr(inp, "min", None), getattr(inp, "max", None)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return f"{inp.id} must be in {lo}..{hi}, got {value}"
        step = getattr(inp, "step", None)
        if isinstance(value, int) and isinstance(step, int) and step > 1 and value % step:
            return f"{inp.id} must be a multiple of {step}, got {value}; try {max(lo or 0, value // step * step)}"
    return None


class ValidatedNode(io.ComfyNode):
    """Base of the pack's nodes: ``validate_inputs`` first lists every missing model file at once (with how to get
    it), then checks every widget value against the schema, then :meth:`check_inputs`."""

    #: model-file inputs: input id -> the ComfyUI model folder its value names a file or folder of
    FILE_INPUTS: dict[str, str] = {}

    @classmethod
    def validate_inputs(cls, **values) -> bool:
        inputs = cls.define_schema().inputs
        options = {inp.id: getattr(inp, "options", None) for inp in inputs}
        missing = cls.missing_files(values, options)
        if missing:
            from ..live2diff_core.downloads import missing_message

            raise InvalidInput(missing_message(missing))
        message = schema_error(inputs, values) or cls.check_inputs(**values)
        if message:
            raise InvalidInput(message)
        return True

    @classmethod
    def missing_files(cls, values: Mapping[str, Any], options: Mapping[str, list | None]) -> list[tuple[str, str]]:
        """``(folder, name)`` of each model file the values name that is not in its folder (not in the freshly
        listed options). Names that could leave their folder are left to the schema check, which refuses them."""
        if not cls.FILE_INPUTS:
            return []
        from .paths import NONE, is_plain_name

        out = []
        for key, folder in cls.FILE_INPUTS.items():
            value, listed = values.get(key), options.get(key) or []
            if isinstance(value, str) and value != NONE and value not in listed and is_plain_name(value):
                out.append((folder, value))
        return out

    @classmethod
    def check_inputs(cls, **values) -> str | None:
        """A node's checks across inputs, after the schema's (a linked input's value is None here); the problem or
        None."""
        return None


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def require_fits(needed: int, available: int, what: str, where: str, hint: str) -> None:
    """Refuse, before allocating, ``needed`` bytes of ``what`` when only ``available`` are free ``where``; ``hint``
    says what to change."""
    if needed > available:
        raise MemoryError(f"{what} needs {_gib(needed)} but only {_gib(available)} is free {where}: {hint}")
