"""The CUDA driver's VMM calls through ctypes, shared by the probes that run no gpu-arena code
(scripts/vmm_stall.py, async_map_probe.py, mapping_speed_probe.py, map_cost_probe.py): the structures of
cuMemCreate / cuMemSetAccess, libcuda, and a check that turns a CUresult into an exception."""
import ctypes
import time

PAGE = 2 << 20

u64 = ctypes.c_uint64
size_t = ctypes.c_size_t


class Loc(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class AllocFlags(ctypes.Structure):
    _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]


class Prop(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", Loc),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", AllocFlags)]


class AccessDesc(ctypes.Structure):
    _fields_ = [("location", Loc), ("flags", ctypes.c_int)]


cu = ctypes.CDLL("libcuda.so.1")


def ck(r, what):
    """Raises unless the driver call returned CUDA_SUCCESS."""
    if r != 0:
        raise RuntimeError(f"{what} failed: CUresult {r}")


def device_memory(dev):
    """(pinned device memory properties for cuMemCreate, read-write access for cuMemSetAccess) on `dev`."""
    prop = Prop()
    prop.type = 1  # CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location = Loc(1, dev)  # CU_MEM_LOCATION_TYPE_DEVICE
    access = AccessDesc(Loc(1, dev), 3)  # CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    return prop, access


def create_handle(prop, size=PAGE):
    """A new physical handle of `size` bytes (cuMemCreate with `prop`)."""
    h = u64()
    ck(cu.cuMemCreate(ctypes.byref(h), size_t(size), ctypes.byref(prop), u64(0)), "create")
    return h


def tensor_over(va, nbytes, typestr):
    """A PyTorch tensor over `nbytes` at device address `va` (mapped, with access, when this is called),
    through the CUDA array interface: what a caller gets from an allocator; its kernels take the raw
    pointer. `typestr` is a 4-byte type ("<i4", "<f4")."""
    import torch

    class Cai:
        __cuda_array_interface__ = {"shape": (nbytes // 4,), "typestr": typestr, "data": (va, False),
                                    "version": 3, "strides": None}

    return torch.as_tensor(Cai(), device="cuda")


def unmap_release_timed(base, nbytes, handles, t):
    """Gives back `handles`, mapped side by side over `nbytes` at `base`: one cuMemUnmap over the run, then
    cuMemRelease of each; the seconds of each phase go to t["unmap"] and t["release"]."""
    t0 = time.perf_counter()
    ck(cu.cuMemUnmap(u64(base), size_t(nbytes)), "unmap")
    t["unmap"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h in handles:
        ck(cu.cuMemRelease(h), "release")
    t["release"] = time.perf_counter() - t0
