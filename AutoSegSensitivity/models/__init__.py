"""Segmentation networks by name, so that configs and checkpoints can name their architecture.

``build_model(name, in_channels, out_channels, **kwargs)`` builds a network; ``available_models()`` lists
the names. The papers' networks are ours:

* ``unet2d``: the 2D U-Net of paper 000 (Bice et al. 2021), Table A1 (:mod:`.unet2d`).
* ``unet3d``: a 3D U-Net with group normalisation as in paper 002 (Smith et al.) (:mod:`.unet3d`).
* ``sepnet3d``: 3D-SepNet of paper 004 (Lei et al.), intra-/inter-slice separable convolutions
  (:mod:`.sepnet3d`).
* ``monai_unet``: MONAI's ``UNet`` offered beside ours for comparison (:mod:`.monai_nets`, needs monai).

Every network returns **logits** (no final activation) and has the attributes ``spatial_dims`` (2 or 3),
``final_activation`` (``"sigmoid"``: one independent channel per structure; ``"softmax"``: exclusive classes,
background first) that inference applies, and ``size_divisor`` (input sizes that are a multiple of it need
no padding). Inputs are (N, C, H, W) for 2D and (N, C, D, H, W) for 3D networks.

New networks register themselves with the :func:`register` decorator::

    @register("mynet")
    def _build(in_channels: int, out_channels: int, **kwargs) -> nn.Module: ...
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from ..errors import InputError

_REGISTRY: Dict[str, Callable[..., Any]] = {}
_LOADED = False
_BUILTIN = ("unet2d", "unet3d", "sepnet3d", "monai_nets")
_OPTIONAL = ("monai_nets",)


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a builder ``f(in_channels, out_channels, **kwargs) -> nn.Module`` under ``name``.

    A class works as a builder too. Registering a name twice is an error (names in checkpoints must stay
    unambiguous)."""
    if not isinstance(name, str) or not name:
        raise InputError("models", "name", "a non-empty string", got=repr(name))

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        old = _REGISTRY.get(name)
        same = old is not None and (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == (
            getattr(builder, "__module__", None), getattr(builder, "__qualname__", None))
        if old is not None and old is not builder and not same:  # a re-imported module may register again
            raise InputError("models", "name", "a name not registered yet", got=name)
        _REGISTRY[name] = builder
        return builder

    return deco


def _load_builtin() -> None:
    """Import the modules that register the built-in networks (lazily, so importing the package is cheap).

    A module that cannot be imported because an optional dependency is missing (monai) is skipped."""
    global _LOADED
    if _LOADED:
        return
    import importlib

    for module in _BUILTIN:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError:
            if module not in _OPTIONAL:
                raise
    _LOADED = True


def available_models() -> List[str]:
    """Names accepted by :func:`build_model`, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def build_model(name: str, in_channels: int, out_channels: int, **kwargs: Any) -> Any:
    """Build the network registered as ``name`` with ``in_channels`` input channels (intensity-transformed
    copies of the CT) and ``out_channels`` output channels (logits).

    Raises :class:`~AutoSegSensitivity.errors.InputError` for an unknown name (the message lists the known
    names) or non-positive channel counts; the builders raise ``InputError`` for bad keyword arguments."""
    _load_builtin()
    if name not in _REGISTRY:
        raise InputError("models", "name", f"one of {', '.join(sorted(_REGISTRY))}", got=repr(name))
    for field, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(name, field, "a positive integer", got=repr(value))
    return _REGISTRY[name](in_channels, out_channels, **kwargs)


def count_parameters(model: Any, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a torch module."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


__all__ = ["available_models", "build_model", "count_parameters", "register"]
