"""Checkpoint files and device choice, shared by training and inference (so neither imports the other).

A checkpoint is a dict written with ``torch.save`` (atomically) holding the weights, the config, the
preprocessing, the class names and what training recorded; :func:`read_checkpoint` checks its format and
version. Weights are always stored without the ``module.`` prefix that ``DistributedDataParallel`` adds
(:func:`plain_state_dict`), and a prefixed file written elsewhere is read back without it, so a checkpoint
from N processes loads in one and back.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import numpy as np

from . import __version__
from .atomic import write_with
from .errors import InputError

CHECKPOINT_FORMAT = "AutoSegSensitivity-checkpoint"
CHECKPOINT_VERSION = 1
DDP_PREFIX = "module."
AMP_DTYPES = ("auto", "bfloat16", "float16")


def library_versions() -> Dict[str, str]:
    """Versions of the libraries a checkpoint depends on."""
    import torch

    out = {"AutoSegSensitivity": __version__, "torch": str(torch.__version__), "numpy": np.__version__,
           "python": platform.python_version()}
    try:  # the installed version, without importing monai (slow)
        from importlib.metadata import version

        out["monai"] = version("monai")
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


def resolve_device(device: str) -> "Any":
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an :class:`InputError`."""
    import torch

    device = str(device or "auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device", None, "cpu or auto (no CUDA GPU is available here)", got=device)
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError("device", None, "auto, cpu or cuda", got=device)
    return torch.device(device)


def amp_dtype(device: Any, choice: str = "auto") -> Any:
    """The autocast dtype for mixed precision on ``device``: ``bfloat16`` or ``float16`` as asked, ``auto``
    -> bfloat16 where the GPU supports it (Ampere and later), else float16. ``None`` off CUDA (mixed
    precision is a CUDA feature here; CPU runs float32). bfloat16 needs no gradient scaler, float16 does
    (:func:`needs_grad_scaler`)."""
    import torch

    if choice not in AMP_DTYPES:
        raise InputError("amp_dtype", None, f"one of {AMP_DTYPES}", got=choice)
    if torch.device(device).type != "cuda":
        return None
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[choice]


def needs_grad_scaler(dtype: Any) -> bool:
    """True for float16 autocast (small gradients underflow without loss scaling)."""
    import torch

    return dtype == torch.float16


def strip_ddp_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """``state_dict`` without the ``module.`` prefix ``DistributedDataParallel`` puts on every key (only
    when every key has it, so a model with a sub-module really named ``module`` is left alone)."""
    keys = list(state_dict)
    if keys and all(k.startswith(DDP_PREFIX) for k in keys):
        return {k[len(DDP_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def plain_state_dict(model: Any) -> Dict[str, Any]:
    """CPU copies of the weights of ``model`` (a DDP wrapper is unwrapped), keys without ``module.``."""
    inner = getattr(model, "module", model)
    return strip_ddp_prefix({k: v.detach().cpu() for k, v in inner.state_dict().items()})


def save_checkpoint(path: Union[str, Path], payload: Dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (torch.save to a temporary file, then rename)."""
    import torch

    payload = _plain(dict(payload))
    payload.setdefault("format", CHECKPOINT_FORMAT)
    payload.setdefault("format_version", CHECKPOINT_VERSION)
    return write_with(path, lambda tmp: torch.save(payload, tmp))


def _plain(obj: Any) -> Any:
    """Numpy scalars/arrays inside a checkpoint become Python numbers/lists (so ``weights_only`` loading,
    which refuses arbitrary classes, reads every checkpoint we write)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, str) and type(obj) is not str:  # e.g. torch.__version__ (TorchVersion)
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def read_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> Dict[str, Any]:
    """Load and check a checkpoint dict; a file that is not one of ours, or of another format version,
    raises :class:`InputError` naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "an existing checkpoint file", got="no such file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, None, "a checkpoint written by AutoSegSensitivity (torch.save)",
                         got=f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "format", f"an {CHECKPOINT_FORMAT} file", got="another kind of file")
    version = data.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise InputError(path, "format_version",
                         f"{CHECKPOINT_VERSION} (this is AutoSegSensitivity {__version__}; retrain or use the "
                         f"version named in the file: {data.get('versions', {}).get('AutoSegSensitivity', '?')})",
                         got=version)
    if isinstance(data.get("state_dict"), Mapping):
        data["state_dict"] = strip_ddp_prefix(data["state_dict"])
    return data
