"""The few CUDA runtime calls the native TensorRT runner and the GPU memory budget need.

Through ctypes on libcudart, so a deployment needs no torch, pycuda or cuda-python: the
library ships with the CUDA toolkit and with the `nvidia-cuda-runtime-cu12` wheel that
TensorRT's wheels pull in. Loaded on first use only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

import numpy as np

from .errors import BackendError

_H2D, _D2H = 1, 2          # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost
_LIB = None


def _candidates() -> list[str]:
    names = [ctypes.util.find_library("cudart") or "", "libcudart.so", "libcudart.so.13",
             "libcudart.so.12", "libcudart.so.11.0", "cudart64_12.dll", "cudart64_110.dll"]
    for base in sys.path:   # pip wheels: site-packages/nvidia/cuda_runtime/lib/libcudart.so.*
        names += sorted(glob.glob(os.path.join(base, "nvidia", "cu*", "lib", "libcudart.so*")))
        names += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    return [n for n in names if n]


def cudart():
    """The loaded libcudart (ctypes.CDLL), or BackendError saying how to get it."""
    global _LIB
    if _LIB is not None:
        return _LIB
    tried = _candidates()
    for name in tried:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        for fn in ("cudaMalloc", "cudaFree", "cudaMemcpyAsync", "cudaStreamCreate",
                   "cudaStreamSynchronize", "cudaStreamDestroy", "cudaMemGetInfo", "cudaSetDevice",
                   "cudaGetDeviceCount"):
            getattr(lib, fn).restype = ctypes.c_int
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        _LIB = lib
        return lib
    raise BackendError(f"the CUDA runtime library (libcudart) was not found (tried {tried[:6]}...); "
                       f"the native TensorRT backend and the GPU memory budget need it. Fix: install "
                       f"the CUDA 12 runtime (pip install nvidia-cuda-runtime-cu12, or the CUDA toolkit) "
                       f"and put it on LD_LIBRARY_PATH")


def _check(err: int, what: str) -> None:
    if err != 0:
        msg = cudart().cudaGetErrorString(err)
        raise BackendError(f"CUDA {what} failed: error {err} "
                           f"({msg.decode() if msg else 'unknown'})")


def device_count() -> int:
    n = ctypes.c_int(0)
    _check(cudart().cudaGetDeviceCount(ctypes.byref(n)), "cudaGetDeviceCount")
    return n.value


def set_device(device_id: int) -> None:
    _check(cudart().cudaSetDevice(int(device_id)), f"cudaSetDevice({device_id})")


def mem_get_info() -> tuple[int, int]:
    """(free, total) bytes on the current device."""
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    _check(cudart().cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)), "cudaMemGetInfo")
    return free.value, total.value


class DeviceBuffer:
    """A growable device allocation (never shrinks; freed on close)."""

    def __init__(self) -> None:
        self.ptr = 0
        self.size = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.size:
            self.close()
            p = ctypes.c_void_p()
            _check(cudart().cudaMalloc(ctypes.byref(p), ctypes.c_size_t(max(nbytes, 1))),
                   f"cudaMalloc({nbytes} bytes)")
            self.ptr, self.size = int(p.value), nbytes
        return self.ptr

    def close(self) -> None:
        if self.ptr:
            cudart().cudaFree(ctypes.c_void_p(self.ptr))
            self.ptr, self.size = 0, 0


class Stream:
    def __init__(self) -> None:
        s = ctypes.c_void_p()
        _check(cudart().cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        self.handle = int(s.value or 0)

    def htod(self, dst: int, src: np.ndarray) -> None:
        _check(cudart().cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src.ctypes.data),
                                        ctypes.c_size_t(src.nbytes), _H2D, ctypes.c_void_p(self.handle)),
               "cudaMemcpyAsync host->device")

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        _check(cudart().cudaMemcpyAsync(ctypes.c_void_p(dst.ctypes.data), ctypes.c_void_p(src),
                                        ctypes.c_size_t(dst.nbytes), _D2H, ctypes.c_void_p(self.handle)),
               "cudaMemcpyAsync device->host")

    def synchronize(self) -> None:
        _check(cudart().cudaStreamSynchronize(ctypes.c_void_p(self.handle)), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle:
            cudart().cudaStreamDestroy(ctypes.c_void_p(self.handle))
            self.handle = 0
