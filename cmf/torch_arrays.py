"""numpy <-> torch through bytes, never values: every cmf dtype (bf16, fp8, unsigned ints)
crosses bit for bit, NaN payloads too, without a copy where the memory allows. Needs PyTorch;
used by cmf.torch, cmf.transformers and the PyTorch-checkpoint reader."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .dtypes import BY_NAME
from .errors import CmfError

_TORCH_TO_CMF = {  # torch dtype name -> cmf dtype name
    "float64": "f64",
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "f8_e4m3",
    "float8_e5m2": "f8_e5m2",
    "int8": "i8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "uint8": "u8",
    "uint16": "u16",
    "uint32": "u32",
    "uint64": "u64",
    "bool": "bool",
}
# cmf dtype name <-> torch dtype (a torch without uint16/32/64, before 2.3, lacks those three)
TORCH_DTYPES: dict[str, Any] = {
    cmf: getattr(torch, name) for name, cmf in _TORCH_TO_CMF.items() if hasattr(torch, name)
}
CMF_OF: dict[Any, str] = {t: cmf for cmf, t in TORCH_DTYPES.items()}
_NATIVE = {"f64", "f32", "f16", "i8", "i16", "i32", "i64", "u8", "bool"}  # torch.from_numpy's
_CARRIER = {
    1: (np.uint8, torch.uint8),
    2: (np.int16, torch.int16),
    4: (np.int32, torch.int32),
    8: (np.int64, torch.int64),
}  # same-size integers that carry other dtypes' bytes


# ----------------------------------------------------------------------------- conversion
def to_torch(array: np.ndarray, device: Any = "cpu") -> torch.Tensor:
    """``array`` (a cmf dtype) as a tensor of the same dtype and bytes, sharing its memory on the
    CPU (a copy only if ``array`` is read-only or not C-contiguous), then moved to ``device``."""
    name = _cmf_name_of_array(array)
    if name not in TORCH_DTYPES:
        raise CmfError(f"dtype {name} has no torch equivalent in torch {torch.__version__}")
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, copy=True, order="C")
    if name in _NATIVE:
        tensor = torch.from_numpy(array)
    else:
        carrier, _ = _CARRIER[array.dtype.itemsize]
        tensor = torch.from_numpy(array.view(carrier)).view(TORCH_DTYPES[name])
    return _to_device(tensor, device)


def to_numpy(name: str, tensor: torch.Tensor) -> np.ndarray:
    """The exact values of ``tensor`` as a C-contiguous numpy array (a view of its memory when
    it is a contiguous CPU tensor). CmfError for dtypes and layouts cmf does not store."""
    if not isinstance(tensor, torch.Tensor):
        raise CmfError(f"tensor {name!r}: expected a torch.Tensor, found {type(tensor).__name__}")
    cmf = CMF_OF.get(tensor.dtype)
    if cmf is None:
        raise CmfError(
            f"tensor {name!r}: torch dtype {tensor.dtype} is not one cmf stores "
            f"({', '.join(TORCH_DTYPES)})"
        )
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
        raise CmfError(
            f"tensor {name!r}: only dense tensors with data are stored "
            f"(found layout {tensor.layout}, device {tensor.device})"
        )
    t = tensor.detach().to("cpu").contiguous()
    if cmf in _NATIVE:
        return t.numpy()
    _, carrier = _CARRIER[t.element_size()]
    return t.view(carrier).numpy().view(BY_NAME[cmf].numpy)


def _cmf_name_of_array(array: np.ndarray) -> str:
    from .dtypes import of_array

    return of_array(array).name


def _to_device(tensor: torch.Tensor, device: Any) -> torch.Tensor:
    return tensor if device is None or str(device) == "cpu" else tensor.to(device)
