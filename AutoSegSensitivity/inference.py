"""Inference: a checkpoint plus a CT Volume gives a float32 probability map per structure on the input grid.

The checkpoint's own preprocessing is applied (intensity transform(s), centre crop, resize; see
``AutoSegSensitivity.data``) and inverted exactly, so every map has the input's shape, spacing, origin and
direction. 2D models run slice by slice in batches and write into the output as they go (host memory is
the output maps plus one batch); 3D models run sliding windows with Gaussian blending
(``monai.inferers.sliding_window_inference``). Maps are never thresholded here: threshold tuning works on
them. ``LoadedModel.thresholds`` holds one threshold per structure (0.5 until tuned thresholds are stored
with :func:`store_thresholds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .checkpoint import amp_dtype, read_checkpoint, resolve_device, save_checkpoint
from .data import Preprocessor, pad_to_multiple
from .errors import InputError
from .train_config import TrainConfig
from .volume import Volume


@dataclass
class LoadedModel:
    """A network ready for inference plus what its checkpoint says about it."""

    model: Any
    class_names: List[str]
    config: Any
    preprocessor: Preprocessor
    spec: Dict[str, Any]
    prominence: Dict[str, float] = field(default_factory=dict)
    thresholds: Dict[str, float] = field(default_factory=dict)
    thresholds_source: str = "default 0.5"
    path: Optional[Path] = None
    epoch: int = 0
    device: Any = "cpu"
    info: Dict[str, Any] = field(default_factory=dict)
    _fast: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def inference_network(self, channels_last: bool = False) -> Any:
        """An eval-only copy of :attr:`model` for prediction: BatchNorm folded into the convolution before it
        (:func:`fold_batchnorm`), in the given memory layout. Cached; rebuilt when the weights, the device or
        the layout change (so :attr:`model` itself stays exactly the checkpoint's network)."""
        import torch

        tensors = list(self.model.parameters()) + list(self.model.buffers())
        key = (id(self.model), str(tensors[0].device) if tensors else "cpu", bool(channels_last),
               sum(t._version for t in tensors))
        if key not in self._fast:
            net = fold_batchnorm(self.model)
            net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            self._fast.clear()
            self._fast[key] = net
        return self._fast[key]

    @property
    def spatial_dims(self) -> int:
        return int(self.spec["spatial_dims"])

    @property
    def final_activation(self) -> str:
        return str(self.spec["final_activation"])

    @property
    def thresholds_tuned(self) -> bool:
        """True when the thresholds were stored by threshold tuning (not the 0.5 default)."""
        return self.thresholds_source != "default 0.5"


def load_checkpoint(path: Union[str, Path], device: str = "cpu") -> LoadedModel:
    """Rebuild the network of a checkpoint (``best.pt`` or ``last.pt``) in eval mode on ``device``."""
    from .models import build_model

    path = Path(path)
    data = read_checkpoint(path)
    dev = resolve_device(device)
    spec = data["model"]
    try:
        model = build_model(spec["name"], int(spec["in_channels"]), int(spec["out_channels"]), **spec.get("kwargs", {}))
        model.load_state_dict(data["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise InputError(path, "model", f"weights that fit the model {spec.get('name')!r} of this version",
                         got=str(exc).splitlines()[0][:200]) from exc
    model.to(dev).eval()
    cfg = TrainConfig.from_dict(data["config"], source=str(path))
    info = {k: data.get(k) for k in ("split", "versions", "best", "history", "created", "stop_reason", "kind")}
    return LoadedModel(model=model, class_names=list(data["class_names"]), config=cfg,
                       preprocessor=Preprocessor.from_dict(data["preprocess"]), spec=dict(spec),
                       prominence=dict(data.get("prominence", {})),
                       thresholds={n: float(data.get("thresholds", {}).get(n, 0.5)) for n in data["class_names"]},
                       thresholds_source=str(data.get("thresholds_source", "default 0.5")), path=path,
                       epoch=int(data.get("epoch", 0)), device=dev, info=info)


def fold_batchnorm(net: Any) -> Any:
    """An eval-mode copy of ``net`` in which every BatchNorm that directly follows a convolution (2D/3D,
    also transposed) in an ``nn.Sequential`` is folded into that convolution's weights and bias (the
    running statistics are fixed at inference, so ``bn(conv(x))`` is one affine map: same outputs up to
    float rounding, one memory pass fewer per block), and ReLU/LeakyReLU run in place. ``net`` itself is
    unchanged."""
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
                module.inplace = True
            if not isinstance(module, nn.Sequential):
                continue
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if (isinstance(conv, convs) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                        and bn.track_running_stats and bn.running_mean is not None):
                    transpose = isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d))
                    module._modules[a] = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                    module._modules[b] = nn.Identity()
    return net


def store_thresholds(path: Union[str, Path], thresholds: Mapping[str, float], source: str = "tuned") -> Path:
    """Store tuned thresholds (``{structure: t}``, t in [0, 1]) inside a checkpoint, atomically; structures
    not named keep their threshold. ``source`` says where they came from (e.g. ``"sweep dice val"``)."""
    path = Path(path)
    data = read_checkpoint(path)
    names = list(data["class_names"])
    current = {n: float(data.get("thresholds", {}).get(n, 0.5)) for n in names}
    for name, t in thresholds.items():
        if name not in names:
            raise InputError("thresholds", name, f"a structure of {path.name} ({names})", got="unknown structure")
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise InputError("thresholds", name, "a threshold in [0, 1]", got=t)
        current[name] = t
    data["thresholds"] = current
    data["thresholds_source"] = str(source) if source and source != "default 0.5" else "tuned"
    return save_checkpoint(path, data)


def _activation(logits: Any, kind: str) -> Any:
    import torch

    if kind == "softmax":
        return torch.softmax(logits.float(), dim=1)[:, 1:]
    return torch.sigmoid(logits.float())


def sliding_window_logits(model: Any, x: Any, roi: Sequence[int], overlap: float, sw_batch_size: int,
                          pad_values: Any, divisor: int, dtype: Any = None,
                          out_device: Any = None) -> Any:
    """Gaussian-blended sliding-window logits of a 3D model for ``x`` (1, C, D, H, W); volumes smaller than
    ``roi`` are padded with ``pad_values`` (per channel) and the output cropped back. ``dtype``: the
    autocast dtype (``None``: float32)."""
    import torch
    from monai.inferers import sliding_window_inference

    sizes = tuple(int(s) for s in x.shape[2:])
    target = tuple(max(s, int(r)) for s, r in zip(sizes, roi))
    if target != sizes:
        vals = torch.as_tensor(np.asarray(pad_values, dtype=np.float32), device=x.device).reshape(1, -1, 1, 1, 1)
        big = vals.expand((x.shape[0], x.shape[1]) + target).clone()
        big[:, :, : sizes[0], : sizes[1], : sizes[2]] = x
        x = big

    def predictor(patch: Any) -> Any:
        with torch.autocast(device_type=patch.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(patch).float()

    out = sliding_window_inference(x, tuple(int(r) for r in roi), int(sw_batch_size), predictor, overlap=float(overlap),
                                   mode="gaussian", device=out_device)
    out = torch.as_tensor(out)
    return out[:, :, : sizes[0], : sizes[1], : sizes[2]]


def predict_volume(model: LoadedModel, volume: Volume, device: Any = None, batch_size: Optional[int] = None,
                   progress: Optional[Callable[[int, int], None]] = None, channels_last: Optional[bool] = None,
                   amp: bool = False) -> Dict[str, Volume]:
    """Probability maps (float32 in [0, 1], one Volume per structure, on ``volume``'s grid) for a CT in HU.

    ``batch_size``: slices per forward pass (2D) or windows per pass (3D); default from the config.
    The network runs with its BatchNorm folded into the convolutions (:meth:`LoadedModel.inference_network`).
    ``channels_last`` (2D models; NHWC layout, default on: 1.5-3x faster with CPU oneDNN kernels and on
    tensor-core GPUs, maps equal to 1e-5) and ``amp`` (mixed precision on CUDA in the config's ``amp_dtype``;
    off by default, also for models trained with it: bfloat16 logits carry about 3 significant digits, so the
    maps would move by ~1e-2 around the thresholds this tool tunes on a 0.01 grid). On CUDA each batch
    goes through page-locked memory with a non-blocking copy.
    ``progress(done, total)`` is called after each batch (slices for 2D, once for 3D)."""
    import torch

    if not isinstance(volume, Volume):
        raise InputError("predict_volume", "volume", "a Volume", got=type(volume).__name__)
    dev = torch.device(device) if device is not None else torch.device(model.device)
    if str(dev) != str(model.device) or next(model.model.parameters()).device != dev:
        model.model.to(dev)
        model.device = dev
    pre = model.preprocessor
    cfg = model.config
    batch = int(batch_size or cfg.inference_batch_size)
    if batch < 1:
        raise InputError("predict_volume", "batch_size", "a positive integer", got=batch_size)
    dtype = amp_dtype(dev, cfg.amp_dtype) if amp else None
    cl = (True if channels_last is None else bool(channels_last)) and model.spatial_dims == 2
    net = model.inference_network(cl)
    pad_values = pre.pad_values()
    divisor = int(getattr(net, "size_divisor", 16))
    nz, ny, nx = volume.shape
    k = len(model.class_names)
    out = [np.zeros((nz, ny, nx), dtype=np.float32) for _ in range(k)]
    hu = volume.array
    with torch.inference_mode():
        if model.spatial_dims == 2:
            for s in range(0, nz, batch):
                x = _to_device(torch.from_numpy(pre.image(hu[s:s + batch])), dev)
                xp, sizes = pad_to_multiple(x, divisor, pad_values, dims=2)
                if cl:
                    xp = xp.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    logits = net(xp)
                prob = _activation(logits[..., : sizes[0], : sizes[1]], model.final_activation).cpu().numpy()
                prob = pre.invert(prob, (ny, nx))
                for c in range(k):
                    out[c][s:s + prob.shape[0]] = prob[:, c]
                if progress is not None:
                    progress(min(nz, s + batch), nz)
        else:
            x = _to_device(torch.from_numpy(np.ascontiguousarray(np.moveaxis(pre.image(hu), 1, 0)))[None], dev)
            logits = sliding_window_logits(net, x, tuple(cfg.patch_size), cfg.sliding_window_overlap, batch,
                                           pad_values, divisor, dtype, out_device=torch.device("cpu"))
            del x
            prob = _activation(logits, model.final_activation)[0]  # (K, D, ry, rx)
            del logits
            step = 16
            for s in range(0, nz, step):
                part = pre.invert(np.ascontiguousarray(prob[:, s:s + step].movedim(1, 0).numpy()), (ny, nx))
                for c in range(k):
                    out[c][s:s + part.shape[0]] = part[:, c]
            if progress is not None:
                progress(nz, nz)
    return {name: Volume(np.clip(arr, 0.0, 1.0, out=arr), volume.spacing, volume.origin, volume.direction.copy())
            for name, arr in zip(model.class_names, out)}


def _to_device(x: Any, dev: Any) -> Any:
    """``x`` on ``dev``; to CUDA through page-locked memory with a non-blocking copy."""
    if dev.type != "cuda":
        return x
    return x.pin_memory().to(dev, non_blocking=True)


def threshold_maps(probs: Mapping[str, Volume], thresholds: Union[float, Mapping[str, float]]) -> "Any":
    """A :class:`~AutoSegSensitivity.segmentation.Segmentation` with ``prob >= t`` per structure
    (one threshold for all, or one per structure)."""
    from .segmentation import Segmentation

    names = list(probs)
    if not names:
        raise InputError("threshold_maps", "probs", "at least one probability map", got=0)
    seg = Segmentation.on_grid(probs[names[0]])
    for name in names:
        t = float(thresholds[name] if isinstance(thresholds, Mapping) else thresholds)
        if not 0.0 <= t <= 1.0:
            raise InputError("threshold", name, "a threshold in [0, 1]", got=t)
        seg.add(name, probs[name].array >= t)
    return seg
