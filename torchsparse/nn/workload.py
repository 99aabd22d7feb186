"""PointAcc workload records from one forward pass of a torchsparse network (`trace`).

The network runs once in inference mode with forward hooks on every `Conv3d` and `torch.nn.Linear`; the
records, in execution order, are:

- ``downsample`` for each strided layer that creates a new coordinate level (n_in, n_out, stride);
- ``kmap`` for each distinct kernel map the engine built (n_in, n_out, kernel_size, stride, submanifold,
  coords_in, coords_out, ...), before the first convolution that uses it; a transposed convolution reuses the
  search of its forward map and gets none;
- ``sparse_conv`` for each Conv3d call (map, n_in, n_out, c_in, c_out, kernel_volume, transposed, ...);
- ``linear`` for each nn.Linear call (n, c_in, c_out).

The arrays hold "coords.s<stride>" int32 (N, 4) per coordinate level and, per map M, "M.in" / "M.out" int32 (P,)
and "M.sizes" int64 (K,) with the pairs as the convolution uses them (swapped for transposed ones, whose map is
called "<forward map>.T"). `pointacc.workload.write_workload` writes both as trace.jsonl + maps.npz
(tools/export_workload.py is the command line).
"""

from __future__ import annotations

import collections
import math

import numpy as np
import torch

from torchsparse.conv_output import KernelMap, conv_output
from torchsparse.nn.modules.conv import Conv3d
from torchsparse.tensor import SparseTensor

__all__ = ["Recorder", "trace"]


def _fmt(triple) -> str:
    """'2' for (2, 2, 2), '1x1x2' otherwise."""
    values = [int(v) for v in triple]
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _rows(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.int32)


class Recorder:
    """Turns Conv3d and Linear calls into workload records; one instance per traced forward pass.

    Attributes:
        ops: records in execution order.
        arrays: npz name -> numpy array (coordinates and kernel maps).
    """

    def __init__(self) -> None:
        self.ops: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}
        # Maps and coordinates are identified by object identity (the engine caches and shares them); the
        # objects are kept alive here so that their ids cannot be reused during the pass.
        self._alive: list[object] = []
        self._maps: dict[int, str] = {}  # id(KernelMap) -> map name (forward maps and transposed ones)
        self._forward_names: dict[int, str] = {}  # id(forward KernelMap) -> its map name
        self._forward_of: dict[str, str] = {}  # transposed map name -> its forward map's name
        self._coords: dict[int, str] = {}  # id(coords tensor) -> array name
        self._calls: collections.Counter = collections.Counter()

    def _name(self, base: str) -> str:
        self._calls[base] += 1
        return base if self._calls[base] == 1 else f"{base}.call{self._calls[base]}"

    def _unique(self, base: str) -> str:
        name, n = base, 1
        while f"{name}.sizes" in self.arrays or name in self.arrays:
            n += 1
            name = f"{base}.v{n}"
        return name

    def coords(self, coords: torch.Tensor, stride) -> tuple[str, bool]:
        """Array name of a coordinate tensor at tensor stride `stride`, and whether it is a new level.

        A different tensor with the same stride and the same rows (e.g. recomputed by another strided
        layer) shares the name; one with other rows gets a ".v<n>" suffix.
        """
        known = self._coords.get(id(coords))
        if known is not None:
            return known, False
        array = _rows(coords)
        base, n = f"coords.s{_fmt(stride)}", 1
        name = base
        while name in self.arrays:
            if np.array_equal(self.arrays[name], array):
                self._coords[id(coords)] = name
                self._alive.append(coords)
                return name, False
            n += 1
            name = f"{base}.v{n}"
        self.arrays[name] = array
        self._coords[id(coords)] = name
        self._alive.append(coords)
        return name, True

    def _store_map(self, name: str, in_rows, out_rows, sizes) -> int:
        self.arrays[f"{name}.in"] = _rows(in_rows)
        self.arrays[f"{name}.out"] = _rows(out_rows)
        self.arrays[f"{name}.sizes"] = sizes.detach().cpu().numpy().astype(np.int64)
        return int(self.arrays[f"{name}.sizes"].sum())

    def _kmap_record(self, map_name: str, layer: str, n_in: int, n_out: int, module, coords_in: str,
                     coords_out: str, submanifold: bool, pairs: int, **extra) -> None:
        self.ops.append({
            "op": "kmap", "name": f"kmap.{map_name}", "layer": layer, "map": map_name, "n_in": n_in,
            "n_out": n_out, "kernel_size": list(module.kernel_size), "stride": list(module.stride),
            "submanifold": submanifold, "coords_in": coords_in, "coords_out": coords_out,
            "kernel_volume": math.prod(module.kernel_size), "dilation": list(module.dilation), "pairs": pairs,
            **extra,
        })

    def conv(self, name: str, module: Conv3d, inputs: tuple, output) -> None:
        """Forward hook of a Conv3d: records its map (when new) and the convolution."""
        x = inputs[0]
        transposed = bool(module.transposed or module.generative)
        # The same arguments as F.conv3d: the cache returns the very objects the convolution just used.
        out = conv_output(x, module.kernel_size, module.stride, module.dilation, module.padding, transposed,
                          bool(module.generative), module.downsample_mode)
        # Generative maps are not cached but recomputed, deterministically, by every call.
        if out.coords is not output.coords and not module.generative:
            raise RuntimeError(f"{name}: the kernel map cache did not return the map this convolution used")
        kmap: KernelMap = out.kmap
        n_in, n_out = int(x.coords.shape[0]), int(output.coords.shape[0])
        coords_in, _ = self.coords(x.coords, x.stride)
        coords_out, new_level = self.coords(output.coords, output.stride)
        record_name = self._name(name)
        extra = {}
        map_name = self._maps.get(id(kmap))
        if map_name is None:
            self._alive.append(kmap)
            base = f"s{_fmt(x.stride)}.k{_fmt(module.kernel_size)}"
            if module.stride != (1, 1, 1):
                base += f".s{_fmt(module.stride)}"
            if module.dilation != (1, 1, 1):
                base += f".d{_fmt(module.dilation)}"
            if not transposed:
                map_name = self._unique(base)
                if new_level and module.stride != (1, 1, 1):
                    self.ops.append({
                        "op": "downsample", "name": f"downsample.{coords_out}", "layer": name, "n_in": n_in,
                        "n_out": n_out, "stride": list(module.stride), "coords_in": coords_in,
                        "coords_out": coords_out,
                    })
                pairs = self._store_map(map_name, kmap.in_rows, kmap.out_rows, kmap.sizes)
                submanifold = out.coords is x.coords
                self._kmap_record(map_name, name, n_in, n_out, module, coords_in, coords_out, submanifold, pairs)
                self._forward_names[id(kmap)] = map_name
            else:
                # KernelMap.transposed keeps the forward map it was made from.
                source = kmap.transposed_from
                forward = self._forward_names.get(id(source))
                if forward is None:
                    # No forward conv used this map: the engine searched it (or generated it) for this call.
                    forward = self._unique(f"s{_fmt(out.stride)}.k{_fmt(module.kernel_size)}.s{_fmt(module.stride)}")
                    pairs = self._store_map(forward, source.in_rows, source.out_rows, source.sizes)
                    self._kmap_record(forward, name, n_out, n_in, module, coords_out, coords_in, False, pairs,
                                      generative=bool(module.generative))
                    self._forward_names[id(source)] = forward
                    self._alive.append(source)
                map_name = self._unique(f"{forward}.T")
                self._store_map(map_name, kmap.in_rows, kmap.out_rows, kmap.sizes)
                self._forward_of[map_name] = forward
            self._maps[id(kmap)] = map_name
        if transposed:
            extra["forward_map"] = self._forward_of[map_name]
        self.ops.append({
            "op": "sparse_conv", "name": record_name, "layer": name, "map": map_name, "n_in": n_in,
            "n_out": n_out, "c_in": module.in_channels, "c_out": module.out_channels,
            "kernel_volume": math.prod(module.kernel_size), "transposed": transposed,
            "kernel_size": list(module.kernel_size), "stride": list(module.stride),
            "pairs": int(self.arrays[f"{map_name}.sizes"].sum()), **extra,
        })

    def linear(self, name: str, module: torch.nn.Linear, inputs: tuple, output) -> None:
        """Forward hook of an nn.Linear: one linear record over every row it transformed."""
        rows = inputs[0].numel() // module.in_features
        self.ops.append({
            "op": "linear", "name": self._name(name), "layer": name, "n": int(rows), "c_in": module.in_features,
            "c_out": module.out_features,
        })


def trace(model: torch.nn.Module, x: SparseTensor) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Runs `model(x)` once in eval and inference mode with recording hooks.

    Args:
        model: a torchsparse network (MinkUNet, SPVCNN, ...), on the CPU.
        x: its input, with a fresh cache (maps built earlier would not be attributed to this pass).

    Returns:
        (ops, arrays): the records in execution order and the npz arrays they refer to.
    """
    recorder = Recorder()
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, Conv3d):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: recorder.conv(name, m, i, o)))
        elif isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: recorder.linear(name, m, i, o)))
    model.eval()
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return recorder.ops, recorder.arrays
