#!/usr/bin/env python3
"""Probe the exact CUresult codes of the CUDA VMM API for rule violations.

Run on a GPU machine:  python3 research/vmm_probe.py
Prints one line per case:  CASE <name>: <CUresult name> (<int>) <extra>
Cases that could crash the process (use-after-free handles, CPU access to
VMM memory, a stream waiting on a host flag) run in a child process
(`--sub <name>`), so a crash there is reported, not fatal.
"""
import ctypes
import os
import re
import statistics
import subprocess
import sys
import time
import traceback

from cuda.bindings import driver as cu

RESULTS = []  # (name, codename, code, extra)
SUB = None  # set in child mode


# ----------------------------------------------------------------- helpers
def rc(x):
    """(name, int) of a CUresult or a tuple whose first element is one."""
    if isinstance(x, tuple):
        x = x[0]
    name = getattr(x, "name", None)
    val = getattr(x, "value", x)
    try:
        val = int(val)
    except Exception:
        pass
    return (name if name is not None else str(x)), val


def ok(x):
    return rc(x)[1] == 0


def out(name, codename, code, extra=""):
    line = f"CASE {name}: {codename} ({code}) {extra}".rstrip()
    print(line, flush=True)
    if SUB is None:
        RESULTS.append((name, codename, code, extra))


def case(name, fn):
    """fn() returns a CUresult / tuple, or (result, extra_str)."""
    try:
        r = fn()
        extra = ""
        if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], str):
            r, extra = r
        n, v = rc(r)
        out(name, n, v, extra)
        return r
    except Exception as e:  # never abort
        out(name, "PYEXC", -1, repr(e).replace("\n", " ")[:300])
        return None


def note(s):
    print(f"NOTE {s}", flush=True)


def enum(cls, name, fallback):
    c = getattr(cu, cls, None)
    return getattr(c, name, fallback) if c is not None else fallback


LT_DEVICE = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
LT_HOST = enum("CUmemLocationType", "CU_MEM_LOCATION_TYPE_HOST", None)
LT_HOST_NUMA = enum("CUmemLocationType", "CU_MEM_LOCATION_TYPE_HOST_NUMA", None)
RW = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
RO = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READ


def make_prop(ltype=LT_DEVICE, lid=0):
    p = cu.CUmemAllocationProp()
    p.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    p.location.type = ltype
    p.location.id = lid
    return p


def loc(ltype=LT_DEVICE, lid=0):
    l = cu.CUmemLocation()
    l.type = ltype
    l.id = lid
    return l


def adesc(ltype=LT_DEVICE, lid=0, flags=RW):
    d = cu.CUmemAccessDesc()
    d.location.type = ltype
    d.location.id = lid
    d.flags = flags
    return d


def reserve(size, align=0, addr=0, flags=0):
    r = cu.cuMemAddressReserve(size, align, addr, flags)
    return r[0], (int(r[1]) if len(r) > 1 and r[1] is not None else 0)


def create(size, prop=None, flags=0):
    r = cu.cuMemCreate(size, prop if prop is not None else PROP, flags)
    h = r[1] if len(r) > 1 else None
    return r[0], h


def cmap(ptr, size, off, h, flags=0):
    return cu.cuMemMap(ptr, size, off, h, flags)


def setacc(ptr, size, descs=None, count=None):
    if descs is None:
        descs = [adesc()]
    if count is None:
        count = len(descs)
    return cu.cuMemSetAccess(ptr, size, descs, count)


def unmap(ptr, size):
    return cu.cuMemUnmap(ptr, size)


def release(h):
    return cu.cuMemRelease(h)


def free(ptr, size):
    return cu.cuMemAddressFree(ptr, size)


def quiet(f, *a):
    try:
        return rc(f(*a))
    except Exception as e:
        return ("PYEXC", repr(e))


def memset8(ptr, val, n):
    return cu.cuMemsetD8(ptr, val, n)


def d2h(ptr, n):
    buf = (ctypes.c_ubyte * n)()
    r = cu.cuMemcpyDtoH(ctypes.addressof(buf), ptr, n)
    return r[0], bytes(buf)


def sync():
    return cu.cuCtxSynchronize()


def health(tag):
    try:
        s = rc(sync())
        r = cu.cuMemAlloc(4096)
        a = rc(r)
        extra = f"sync={s[0]}({s[1]}) alloc={a[0]}({a[1]})"
        if a[1] == 0:
            p = int(r[1])
            m = rc(memset8(p, 0x11, 4096))
            e, b = d2h(p, 16)
            extra += f" memset={m[0]} readback_ok={b == bytes([0x11]) * 16} d2h={rc(e)[0]}"
            cu.cuMemFree(p)
        print(f"HEALTH {tag}: {extra}", flush=True)
    except Exception as e:
        print(f"HEALTH {tag}: PYEXC {e!r}", flush=True)


def fmt_list(l):
    return "[" + ",".join(f"{n}({v})" for n, v in l) + "]"


# ------------------------------------------------------------------- setup
def setup():
    global DEV, CTX, PROP, G, GREC
    print("SETUP cuInit", rc(cu.cuInit(0)), flush=True)
    e, DEV = cu.cuDeviceGet(0)
    print("SETUP cuDeviceGet", rc(e), flush=True)
    e, CTX = cu.cuDevicePrimaryCtxRetain(DEV)
    print("SETUP cuDevicePrimaryCtxRetain", rc(e), flush=True)
    print("SETUP cuCtxSetCurrent", rc(cu.cuCtxSetCurrent(CTX)), flush=True)
    PROP = make_prop()
    e, G = cu.cuMemGetAllocationGranularity(
        PROP, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM)
    e2, GREC = cu.cuMemGetAllocationGranularity(
        PROP, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)
    G = int(G)
    GREC = int(GREC)


def info():
    try:
        e, v = cu.cuDriverGetVersion()
        note(f"cuDriverGetVersion={v}")
    except Exception as ex:
        note(f"cuDriverGetVersion PYEXC {ex!r}")
    try:
        e, nm = cu.cuDeviceGetName(128, DEV)
        nm = bytes(nm).split(b"\x00")[0].decode(errors="replace")
        note(f"device name={nm}")
    except Exception as ex:
        note(f"cuDeviceGetName PYEXC {ex!r}")
    try:
        import importlib.metadata as md
        note(f"cuda-bindings version={md.version('cuda-bindings')}")
    except Exception as ex:
        note(f"cuda-bindings version unknown {ex!r}")
    for an in ["CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED",
               "CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID",
               "CU_DEVICE_ATTRIBUTE_HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED",
               "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED",
               "CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM",
               "CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS",
               "CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR",
               "CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING"]:
        a = getattr(cu.CUdevice_attribute, an, None)
        if a is None:
            note(f"attr {an}: not in bindings")
            continue
        try:
            e, v = cu.cuDeviceGetAttribute(a, DEV)
            note(f"attr {an} = {v} ({rc(e)[0]})")
        except Exception as ex:
            note(f"attr {an} PYEXC {ex!r}")
    try:
        e, free_b, tot = cu.cuMemGetInfo()
        note(f"cuMemGetInfo free={int(free_b)} total={int(tot)}")
    except Exception as ex:
        note(f"cuMemGetInfo PYEXC {ex!r}")
    note(f"device G(min)={G} ({G >> 20} MiB) recommended={GREC}")
    for lname, lt, lid in [("HOST", LT_HOST, 0), ("HOST_NUMA", LT_HOST_NUMA, 0)]:
        if lt is None:
            note(f"granularity {lname}: location type not in bindings")
            continue
        for gname in ["MINIMUM", "RECOMMENDED"]:
            def f(lt=lt, lid=lid, gname=gname):
                r = cu.cuMemGetAllocationGranularity(
                    make_prop(lt, lid),
                    getattr(cu.CUmemAllocationGranularity_flags,
                            "CU_MEM_ALLOC_GRANULARITY_" + gname))
                return r[0], f"granularity={int(r[1]) if len(r) > 1 else None}"
            case(f"granularity.{lname}.{gname}", f)


# ------------------------------------------------------------- 1. reserve
def s1():
    TiB = 1 << 40
    for nm, size in [("reserve.size0", 0), ("reserve.size_G/2", G // 2),
                     ("reserve.size_G+4096", G + 4096)]:
        def f(size=size):
            e, p = reserve(size)
            x = f"ptr={p:#x}"
            if ok(e):
                x += f" free={rc(free(p, size))[0]}"
            return e, x
        case(nm, f)

    def f64():
        t0 = time.perf_counter()
        e, p = reserve(64 * TiB)
        t1 = time.perf_counter()
        x = f"ptr={p:#x} t_reserve_us={(t1 - t0) * 1e6:.1f}"
        if ok(e):
            t0 = time.perf_counter()
            fr = rc(free(p, 64 * TiB))
            x += f" free={fr[0]}({fr[1]}) t_free_us={(time.perf_counter() - t0) * 1e6:.1f}"
        return e, x
    case("reserve.64TiB(+free)", f64)

    for nm, size in [("reserve.128TiB", 128 * TiB), ("reserve.256TiB", 256 * TiB)]:
        def f(size=size):
            e, p = reserve(size)
            x = f"ptr={p:#x}"
            if ok(e):
                x += f" free={rc(free(p, size))[0]}"
            return e, x
        case(nm, f)

    for nm, al in [("reserve.align_4G", 4 * G), ("reserve.align_3G(non-pow2)", 3 * G),
                   ("reserve.align_4096(<G)", 4096), ("reserve.align_1GiB", 1 << 30)]:
        def f(al=al):
            e, p = reserve(4 * G, al)
            x = f"ptr={p:#x} aligned={p % al == 0 if al else None}"
            if ok(e):
                x += f" free={rc(free(p, 4 * G))[0]}"
            return e, x
        case(nm, f)

    # addr hint: find a free address by reserve+free, then ask for it
    def fhint():
        e, p = reserve(16 * G, 16 * G)
        if not ok(e):
            return e, "probe reserve failed"
        free(p, 16 * G)
        e, q = reserve(4 * G, 0, p + 4 * G)
        x = f"hint={p + 4 * G:#x} got={q:#x} honored={q == p + 4 * G}"
        if ok(e):
            free(q, 4 * G)
        return e, x
    case("reserve.addr_hint_free_region", fhint)

    def fhint_un():
        e, p = reserve(16 * G, 16 * G)
        free(p, 16 * G)
        e, q = reserve(4 * G, 0, p + 4096)
        x = f"hint={p + 4096:#x} got={q:#x} honored={q == p + 4096}"
        if ok(e):
            free(q, 4 * G)
        return e, x
    case("reserve.addr_hint_unaligned", fhint_un)

    def fflags():
        e, p = reserve(4 * G, 0, 0, 1)
        x = f"ptr={p:#x}"
        if ok(e):
            free(p, 4 * G)
        return e, x
    case("reserve.flags=1", fflags)


# -------------------------------------------------------------- 2. create
def s2():
    for nm, size in [("create.size0", 0), ("create.size_G/2", G // 2),
                     ("create.size_G+4096", G + 4096), ("create.size_1<<50", 1 << 50),
                     ("create.size_G", G)]:
        def f(size=size):
            e, h = create(size)
            x = ""
            if ok(e):
                x = f"handle={int(h):#x} release={rc(release(h))[0]}"
            return e, x
        case(nm, f)

    def fflags():
        e, h = create(G, PROP, 1)
        if ok(e):
            release(h)
        return e
    case("create.flags=1", fflags)

    def fdev1():
        e, h = create(G, make_prop(LT_DEVICE, 1))
        if ok(e):
            release(h)
        return e
    case("create.device_id_1(nonexistent)", fdev1)

    def fhostsize(lt, lname):
        def f():
            e, h = create(G, make_prop(lt, 0))
            x = ""
            if ok(e):
                x = f"release={rc(release(h))[0]}"
            return e, x
        return f
    for lname, lt in [("HOST", LT_HOST), ("HOST_NUMA", LT_HOST_NUMA)]:
        if lt is None:
            note(f"{lname} location type missing in bindings")
            continue
        case(f"create.location_{lname}_id0_size_G", fhostsize(lt, lname))
    if LT_HOST_NUMA is not None:
        def fnuma1():
            e, h = create(G, make_prop(LT_HOST_NUMA, 1))
            if ok(e):
                release(h)
            return e
        case("create.location_HOST_NUMA_id1", fnuma1)
    # CPU-access tests in child processes (may segfault)
    for sub in ["cpu_HOST_dev", "cpu_HOST_devhost", "cpu_HOST_host",
                "cpu_HOST_NUMA_dev", "cpu_HOST_NUMA_devhost", "cpu_HOST_NUMA_host",
                "cpu_HOST_NUMA_devnuma", "cpu_DEVICE_devhost"]:
        run_sub(sub)


def sub_cpu(lname, acc):
    lt = {"HOST": LT_HOST, "HOST_NUMA": LT_HOST_NUMA, "DEVICE": LT_DEVICE}[lname]
    tag = f"cpu.{lname}.{acc}"
    e, h = create(G, make_prop(lt, 0))
    out(f"{tag}.create", *rc(e))
    if not ok(e):
        return
    e, p = reserve(G)
    out(f"{tag}.reserve", *rc(e), f"ptr={p:#x}")
    out(f"{tag}.map", *rc(cmap(p, G, 0, h)))
    descs = []
    if acc.startswith("dev"):
        descs.append(adesc(LT_DEVICE, 0, RW))
    if acc.endswith("host"):
        descs.append(adesc(LT_HOST, 0, RW))
    if acc.endswith("numa"):
        descs.append(adesc(LT_HOST_NUMA, 0, RW))
    e = setacc(p, G, descs)
    out(f"{tag}.set_access", *rc(e), f"descs={acc}")
    try:
        for gl, gt in [("DEVICE0", loc(LT_DEVICE, 0)), ("HOST", loc(LT_HOST, 0))]:
            g = get_access(p, gt.type, gt.id)
            out(f"{tag}.get_access_{gl}", *rc(g[0]), g[1])
    except Exception as ex:
        out(f"{tag}.get_access", "PYEXC", -1, repr(ex))
    if acc.startswith("dev") and ok(e):
        m = rc(memset8(p, 0x42, G))
        s = rc(sync())
        out(f"{tag}.gpu_memsetD8", m[0], m[1], f"sync={s[0]}({s[1]})")
    print(f"NOTE {tag}: about to CPU-read {p:#x}", flush=True)
    b = ctypes.string_at(p, 8)
    out(f"{tag}.cpu_read", "OK", 0, f"bytes={b.hex()} (0x42 expected if GPU memset ran)")
    print(f"NOTE {tag}: about to CPU-write {p:#x}", flush=True)
    ctypes.memset(p, 0x37, 8)
    b2 = ctypes.string_at(p, 8)
    out(f"{tag}.cpu_write_readback", "OK", 0, f"bytes={b2.hex()}")
    if acc.startswith("dev"):
        e2, bb = d2h(p, 8)
        out(f"{tag}.gpu_DtoH_after_cpu_write", *rc(e2), f"bytes={bb.hex()} (37.. expected)")
    out(f"{tag}.unmap", *rc(unmap(p, G)))
    out(f"{tag}.release", *rc(release(h)))
    out(f"{tag}.free", *rc(free(p, G)))


# ----------------------------------------------------------------- 3. map
class Scope:
    """Tracks resources of a case and tears them down afterwards."""

    def __init__(self):
        self.maps, self.handles, self.res = [], [], []

    def r(self, size, align=0, addr=0):
        e, p = reserve(size, align, addr)
        if not ok(e):
            raise RuntimeError(f"reserve {size} failed {rc(e)}")
        self.res.append((p, size))
        return p

    def h(self, size, prop=None):
        e, h = create(size, prop)
        if not ok(e):
            raise RuntimeError(f"create {size} failed {rc(e)}")
        self.handles.append(h)
        return h

    def m(self, p, size, off, h):
        e = cmap(p, size, off, h)
        if ok(e):
            self.maps.append((p, size))
        return e

    def close(self):
        codes = []
        for p, s in reversed(self.maps):
            codes.append(quiet(unmap, p, s))
        for h in self.handles:
            codes.append(quiet(release, h))
        for p, s in self.res:
            codes.append(quiet(free, p, s))
        bad = [c for c in codes if c[1] != 0]
        if bad:
            print(f"NOTE cleanup non-success codes: {bad}", flush=True)


def scoped(name, fn):
    sc = Scope()
    try:
        case(name, lambda: fn(sc))
    finally:
        sc.close()


def s3():
    def normal(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        return sc.m(p, 2 * G, 0, h)
    scoped("map.normal(2G handle into 4G res @0)", normal)

    def off_va(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        return sc.m(p + G, 2 * G, 0, h), "va=base+G"
    scoped("map.at_va_offset_G", off_va)

    def off_handle(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        return sc.m(p, G, G, h), "handle offset=G size=G"
    scoped("map.handle_offset_G(size G of 2G)", off_handle)

    def off_handle_over(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        return sc.m(p, 2 * G, G, h), "handle offset=G size=2G (runs past handle)"
    scoped("map.handle_offset_G_size_2G(past end)", off_handle_over)

    def off_unal(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        return sc.m(p, G, 4096, h)
    scoped("map.handle_offset_4096(unaligned)", off_unal)

    def smaller(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        return sc.m(p, G, 0, h)
    scoped("map.size_G_of_2G_handle(smaller)", smaller)

    def larger(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        return sc.m(p, 2 * G, 0, h)
    scoped("map.size_2G_of_G_handle(larger)", larger)

    def over_same(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        e0 = sc.m(p, 2 * G, 0, h)
        return sc.m(p, 2 * G, 0, h), f"first={rc(e0)[0]}"
    scoped("map.over_mapped_same_handle", over_same)

    def over_diff(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        h2 = sc.h(2 * G)
        e0 = sc.m(p, 2 * G, 0, h)
        return sc.m(p, 2 * G, 0, h2), f"first={rc(e0)[0]}"
    scoped("map.over_mapped_diff_handle", over_diff)

    def over_partial(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        h2 = sc.h(2 * G)
        e0 = sc.m(p, 2 * G, 0, h)
        return sc.m(p + G, 2 * G, 0, h2), f"first={rc(e0)[0]} second at base+G overlaps 1G"
    scoped("map.partial_overlap_diff_handle", over_partial)

    def past_res(sc):
        # find a base whose tail is not reserved: reserve 8G, free, re-reserve 4G at it
        e, q = reserve(8 * G, 8 * G)
        free(q, 8 * G)
        p = sc.r(4 * G, 0, q)
        h = sc.h(G)
        return sc.m(p + 4 * G, G, 0, h), f"res_at_hint={p == q} va=base+res_size"
    scoped("map.va_at_res_end(outside)", past_res)

    def low_addr(sc):
        h = sc.h(G)
        return sc.m(0x200000, G, 0, h), "va=0x200000 (G-aligned, never reserved)"
    scoped("map.va_never_reserved_0x200000", low_addr)

    def low_addr2(sc):
        h = sc.h(G)
        return sc.m(0x1000, G, 0, h), "va=0x1000"
    scoped("map.va_0x1000", low_addr2)

    def run_past(sc):
        e, q = reserve(8 * G, 8 * G)
        free(q, 8 * G)
        p = sc.r(4 * G, 0, q)
        h = sc.h(2 * G)
        return sc.m(p + 3 * G, 2 * G, 0, h), f"res_at_hint={p == q} va=base+3G size 2G in 4G res"
    scoped("map.runs_past_res_end", run_past)

    def span_two_res(sc):
        e, q = reserve(8 * G, 8 * G)
        free(q, 8 * G)
        p1 = sc.r(2 * G, 0, q)
        p2 = sc.r(2 * G, 0, q + 2 * G)
        h = sc.h(2 * G)
        return sc.m(p1 + G, 2 * G, 0, h), f"adjacent={p1 + 2 * G == p2} map spans res1 tail+res2 head"
    scoped("map.spans_two_adjacent_reservations", span_two_res)

    def unal(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        return sc.m(p + 4096, G, 0, h)
    scoped("map.unaligned_va(base+4096)", unal)

    def unal_size(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        return sc.m(p, G + 4096, 0, h)
    scoped("map.unaligned_size(G+4096)", unal_size)

    def size0(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        return sc.m(p, 0, 0, h)
    scoped("map.size0", size0)

    def flags1(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        e = cmap(p, G, 0, h, 1)
        if ok(e):
            sc.maps.append((p, G))
        return e
    scoped("map.flags=1", flags1)

    def bogus0(sc):
        p = sc.r(4 * G)
        return sc.m(p, G, 0, 0)
    scoped("map.handle_0", bogus0)

    run_sub("map_released_handle")
    run_sub("map_handle_12345")


def sub_map_released():
    p = reserve(4 * G)[1]
    e, h = create(G)
    hv = int(h)
    out("map.released_handle.release", *rc(release(h)), f"handle={hv:#x}")
    e = cmap(p, G, 0, hv)
    out("map.released_handle", *rc(e))
    if ok(e):
        out("map.released_handle.unmap", *rc(unmap(p, G)))
    free(p, 4 * G)


def sub_map_12345():
    p = reserve(4 * G)[1]
    e = cmap(p, G, 0, 12345)
    out("map.handle_12345", *rc(e))
    if ok(e):
        unmap(p, G)
    free(p, 4 * G)


# --------------------------------------------------------------- 4. unmap
def s4():
    def whole(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = unmap(p, 2 * G)
        if ok(e):
            sc.maps.clear()
        return e
    scoped("unmap.whole_mapping", whole)

    def part(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = unmap(p, G)
        x = ""
        if ok(e):
            e2 = unmap(p + G, G)
            x = f"then unmap rest={rc(e2)[0]}"
            sc.maps.clear()
        return e, x
    scoped("unmap.first_G_of_2G_mapping", part)

    def part_tail(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = unmap(p + G, G)
        x = ""
        if ok(e):
            e2 = unmap(p, G)
            x = f"then unmap head={rc(e2)[0]}"
            sc.maps.clear()
        return e, x
    scoped("unmap.last_G_of_2G_mapping", part_tail)

    def two(sc):
        p = sc.r(4 * G)
        h1 = sc.h(G)
        h2 = sc.h(G)
        a = sc.m(p, G, 0, h1)
        b = sc.m(p + G, G, 0, h2)
        e = unmap(p, 2 * G)
        if ok(e):
            sc.maps.clear()
        return e, f"maps={rc(a)[0]},{rc(b)[0]}"
    scoped("unmap.two_adjacent_mappings_one_call", two)

    def plus_hole(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        sc.m(p, G, 0, h)
        e = unmap(p, 2 * G)
        if ok(e):
            sc.maps.clear()
        return e, "mapping [0,G) + hole [G,2G)"
    scoped("unmap.mapping_plus_unmapped_tail", plus_hole)

    def hole_plus(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        sc.m(p + G, G, 0, h)
        e = unmap(p, 2 * G)
        if ok(e):
            sc.maps.clear()
        return e, "hole [0,G) + mapping [G,2G)"
    scoped("unmap.unmapped_head_plus_mapping", hole_plus)

    def hole(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        sc.m(p, G, 0, h)
        return unmap(p + 2 * G, G), "nothing mapped at [2G,3G)"
    scoped("unmap.unmapped_range_in_res", hole)

    def hole_empty(sc):
        p = sc.r(4 * G)
        return unmap(p, G), "reservation with no mappings at all"
    scoped("unmap.empty_reservation", hole_empty)

    def twice(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        sc.m(p, G, 0, h)
        e1 = unmap(p, G)
        if ok(e1):
            sc.maps.clear()
        return unmap(p, G), f"first={rc(e1)[0]}"
    scoped("unmap.twice", twice)

    def size0(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        sc.m(p, G, 0, h)
        return unmap(p, 0)
    scoped("unmap.size0", size0)

    def unal(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        return unmap(p + 4096, G)
    scoped("unmap.unaligned_va", unal)

    def unal_size(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = unmap(p, 2 * G - 4096)
        if ok(e):
            sc.maps.clear()
        return e, "size 2G-4096 of 2G mapping"
    scoped("unmap.unaligned_size", unal_size)

    def never(sc):
        return unmap(0x200000, G)
    scoped("unmap.never_reserved_0x200000", never)


# ---------------------------------------------------------- 5. set_access
def get_access(p, lt=LT_DEVICE, lid=0):
    r = cu.cuMemGetAccess(loc(lt, lid), p)
    fl = r[1] if len(r) > 1 else None
    return r[0], f"flags={int(fl) if fl is not None else None}"


def s5():
    def mapped(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        g0 = get_access(p)
        e = setacc(p, 2 * G)
        g1 = get_access(p)
        gh = get_access(p, LT_HOST, 0) if LT_HOST is not None else ("n/a", "")
        return e, (f"get_access_before={rc(g0[0])[0]} {g0[1]}; after={rc(g1[0])[0]} {g1[1]};"
                   f" host_loc_after={rc(gh[0])[0] if gh[0] != 'n/a' else 'n/a'} {gh[1]}")
    scoped("set_access.mapped_dev0_RW", mapped)

    def unmapped(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        return setacc(p + 2 * G, G)
    scoped("set_access.unmapped_range_of_res", unmapped)

    def mapped_plus_hole(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        return setacc(p, 3 * G), "mapped [0,2G) + hole [2G,3G)"
    scoped("set_access.mapping_plus_unmapped_tail", mapped_plus_hole)

    def two(sc):
        p = sc.r(4 * G)
        h1 = sc.h(G)
        h2 = sc.h(G)
        sc.m(p, G, 0, h1)
        sc.m(p + G, G, 0, h2)
        e = setacc(p, 2 * G)
        x = ""
        if ok(e):
            m = rc(memset8(p, 0x5C, 2 * G))
            s = rc(sync())
            e2, b = d2h(p + 2 * G - 8, 8)
            x = f"memset={m[0]} sync={s[0]} tail_bytes={b.hex()}"
        return e, x
    scoped("set_access.two_adjacent_mappings_one_call", two)

    def part(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = setacc(p, G)
        g0 = get_access(p)
        g1 = get_access(p + G)
        return e, (f"get_access[0]={rc(g0[0])[0]} {g0[1]}; get_access[G]={rc(g1[0])[0]} {g1[1]}")
    scoped("set_access.first_G_of_2G_mapping", part)

    def part_second_half_after(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = setacc(p + G, G)
        return e, "second half only"
    scoped("set_access.last_G_of_2G_mapping", part_second_half_after)

    def ro(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = setacc(p, 2 * G, [adesc(flags=RO)])
        g = get_access(p)
        x = f"get_access={rc(g[0])[0]} {g[1]}"
        if ok(e):
            e2, b = d2h(p, 8)
            x += f" DtoH_read={rc(e2)[0]}"
        return e, x
    scoped("set_access.READ_only", ro)

    def ro_then_rw(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e0 = setacc(p, 2 * G, [adesc(flags=RO)])
        e = setacc(p, 2 * G, [adesc(flags=RW)])
        g = get_access(p)
        return e, f"first(RO)={rc(e0)[0]} get_access={rc(g[0])[0]} {g[1]}"
    scoped("set_access.RO_then_RW(upgrade)", ro_then_rw)

    def none_flag(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e0 = setacc(p, 2 * G)
        fn = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_NONE
        e = setacc(p, 2 * G, [adesc(flags=fn)])
        g = get_access(p)
        return e, f"first(RW)={rc(e0)[0]} get_access={rc(g[0])[0]} {g[1]}"
    scoped("set_access.PROT_NONE_after_RW(revoke)", none_flag)

    if LT_HOST is not None:
        def host(sc):
            p = sc.r(4 * G)
            h = sc.h(2 * G)
            sc.m(p, 2 * G, 0, h)
            return setacc(p, 2 * G, [adesc(LT_HOST, 0, RW)]), "device memory, HOST location RW"
        scoped("set_access.HOST_loc_on_device_mem", host)

    def dev1(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        return setacc(p, 2 * G, [adesc(LT_DEVICE, 1, RW)])
    scoped("set_access.device_id_1(nonexistent)", dev1)

    def count0(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        return setacc(p, 2 * G, [adesc()], 0)
    scoped("set_access.count0", count0)

    def size0(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        return setacc(p, 0)
    scoped("set_access.size0", size0)

    def unal(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        return setacc(p + 4096, G)
    scoped("set_access.unaligned_va", unal)

    def never(sc):
        return setacc(0x200000, G)
    scoped("set_access.never_reserved_0x200000", never)

    def ga_unmapped(sc):
        p = sc.r(4 * G)
        h = sc.h(G)
        sc.m(p, G, 0, h)
        setacc(p, G)
        return get_access(p + 2 * G)
    scoped("get_access.unmapped_addr_in_res", ga_unmapped)

    def ga_mid(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        setacc(p, 2 * G)
        return get_access(p + G + 12345)
    scoped("get_access.interior_unaligned_addr", ga_mid)

    def ga_never(sc):
        return get_access(0x200000)
    scoped("get_access.never_reserved_0x200000", ga_never)

    def ga_dev1(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        setacc(p, 2 * G)
        return get_access(p, LT_DEVICE, 1)
    scoped("get_access.location_device1", ga_dev1)

    def remap_keeps(sc):
        # does access survive unmap+remap of the same VA? (expected: no)
        p = sc.r(4 * G)
        h = sc.h(G)
        sc.m(p, G, 0, h)
        setacc(p, G)
        unmap(p, G)
        sc.maps.clear()
        e = sc.m(p, G, 0, h)
        g = get_access(p)
        return e, f"remap then get_access={rc(g[0])[0]} {g[1]}"
    scoped("get_access.after_unmap_remap_same_va", remap_keeps)


# ------------------------------------------------------------- 6. release
def s6():
    def while_mapped(sc):
        p = sc.r(4 * G)
        e, h = create(2 * G)
        sc.m(p, 2 * G, 0, h)
        setacc(p, 2 * G)
        er = release(h)
        x = ""
        if not ok(er):
            sc.handles.append(h)
        m = rc(memset8(p, 0xA7, 2 * G))
        s = rc(sync())
        e2, b = d2h(p, 8)
        e3, b3 = d2h(p + 2 * G - 8, 8)
        x += (f"after release: memsetD8={m[0]}({m[1]}) sync={s[0]} DtoH={rc(e2)[0]} "
              f"bytes={b.hex()},{b3.hex()} usable={b == b3 == bytes([0xA7]) * 8}")
        g = get_access(p)
        x += f" get_access={rc(g[0])[0]} {g[1]}"
        eu = unmap(p, 2 * G)
        if ok(eu):
            sc.maps.clear()
        x += f"; unmap after release={rc(eu)[0]}({rc(eu)[1]})"
        return er, x
    scoped("release.while_mapped", while_mapped)

    def get_handle(sc):
        # cuMemRetainAllocationHandle after release-while-mapped
        p = sc.r(4 * G)
        e, h = create(2 * G)
        sc.m(p, 2 * G, 0, h)
        setacc(p, 2 * G)
        release(h)
        r = cu.cuMemRetainAllocationHandle(p)
        x = ""
        if ok(r[0]):
            x = f"retained handle={int(r[1]):#x} (orig {int(h):#x}) release again={rc(release(r[1]))[0]}"
        return r[0], x
    scoped("release.retain_handle_from_va_after_release", get_handle)

    def get_handle_unmapped(sc):
        p = sc.r(4 * G)
        return cu.cuMemRetainAllocationHandle(p)[0]
    scoped("retain_handle.unmapped_va", get_handle_unmapped)

    run_sub("release_twice")
    run_sub("release_bogus")


def sub_release_twice():
    e, h = create(G)
    hv = int(h)
    out("release.twice.first", *rc(release(h)), f"handle={hv:#x}")
    out("release.twice.second", *rc(release(hv)))


def sub_release_bogus():
    out("release.handle_0", *rc(release(0)))
    out("release.handle_12345", *rc(release(12345)))


# ---------------------------------------------------------------- 7. free
def s7():
    def with_maps(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        setacc(p, 2 * G)
        e = free(p, 4 * G)
        x = ""
        if ok(e):
            sc.res.clear()
            eu = unmap(p, 2 * G)
            x = f"unmap after free={rc(eu)[0]}({rc(eu)[1]})"
            if ok(eu):
                sc.maps.clear()
        return e, x
    scoped("free.with_mappings", with_maps)

    def sub_range(sc):
        p = sc.r(4 * G)
        e = free(p, G)
        x = ""
        if ok(e):
            e2 = free(p + G, 3 * G)
            x = f"then free rest={rc(e2)[0]}({rc(e2)[1]})"
            sc.res.clear()
            if not ok(e2):
                sc.res.append((p + G, 3 * G))
        return e, x
    scoped("free.sub_range_head(G of 4G)", sub_range)

    def sub_mid(sc):
        p = sc.r(4 * G)
        e = free(p + G, G)
        return e
    scoped("free.sub_range_middle", sub_mid)

    def wrong_big(sc):
        p = sc.r(4 * G)
        return free(p, 8 * G)
    scoped("free.size_larger_than_res", wrong_big)

    def wrong_small(sc):
        p = sc.r(4 * G)
        e = free(p, 2 * G)
        if ok(e):
            sc.res.clear()
            sc.res.append((p + 2 * G, 2 * G))
        return e
    scoped("free.size_smaller_than_res(2G of 4G)", wrong_small)

    def size0(sc):
        p = sc.r(4 * G)
        return free(p, 0)
    scoped("free.size0", size0)

    def twice(sc):
        e, p = reserve(4 * G)
        e1 = free(p, 4 * G)
        return free(p, 4 * G), f"first={rc(e1)[0]}"
    scoped("free.twice", twice)

    def never(sc):
        return free(0x200000, G)
    scoped("free.never_reserved_0x200000", never)

    def never_hi(sc):
        e, q = reserve(8 * G, 8 * G)
        free(q, 8 * G)
        return free(q, 8 * G), f"addr={q:#x} (was reserved, now free)"
    scoped("free.freed_region_high_addr", never_hi)

    def span_two(sc):
        e, q = reserve(8 * G, 8 * G)
        free(q, 8 * G)
        p1 = sc.r(2 * G, 0, q)
        p2 = sc.r(2 * G, 0, q + 2 * G)
        e = free(p1, 4 * G)
        if ok(e):
            sc.res.clear()
        return e, f"adjacent={p1 + 2 * G == p2} one free over two reservations"
    scoped("free.spanning_two_adjacent_reservations", span_two)


# ------------------------------------------------------------- 8. aliasing
def s8():
    def two_res(sc):
        pa = sc.r(2 * G)
        pb = sc.r(2 * G)
        h = sc.h(2 * G)
        a = sc.m(pa, 2 * G, 0, h)
        b = sc.m(pb, 2 * G, 0, h)
        sa = setacc(pa, 2 * G)
        sb = setacc(pb, 2 * G)
        x = f"maps={rc(a)[0]},{rc(b)[0]} acc={rc(sa)[0]},{rc(sb)[0]}"
        memset8(pa, 0xAB, 2 * G)
        sync()
        e, bb = d2h(pb + G + 100, 8)
        x += f"; memset via A, read via B: {bb.hex()} same={bb == bytes([0xAB]) * 8}"
        memset8(pb, 0xCD, 2 * G)
        sync()
        e, ba = d2h(pa, 8)
        x += f"; memset via B, read via A: {ba.hex()} same={ba == bytes([0xCD]) * 8}"
        eu = unmap(pa, 2 * G)
        sc.maps = [m for m in sc.maps if m[0] != pa]
        e2, bb2 = d2h(pb, 8)
        x += f"; unmap A={rc(eu)[0]}, read via B={rc(e2)[0]} {bb2.hex()}"
        return b, x
    scoped("alias.one_handle_two_reservations", two_res)

    def one_res(sc):
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        a = sc.m(p, 2 * G, 0, h)
        b = sc.m(p + 2 * G, 2 * G, 0, h)
        s = setacc(p, 4 * G)
        x = f"maps={rc(a)[0]},{rc(b)[0]} one set_access over both={rc(s)[0]}"
        memset8(p, 0x3E, G)
        sync()
        e, bb = d2h(p + 2 * G, 8)
        x += f"; write first G via range1, read range2: {bb.hex()} same={bb == bytes([0x3E]) * 8}"
        return b, x
    scoped("alias.one_handle_two_ranges_same_res", one_res)

    def sub_alias(sc):
        # map the second half of a 2G handle at offset G, check it equals range [G,2G) of full mapping
        p = sc.r(4 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        b = sc.m(p + 2 * G, G, G, h)
        setacc(p, 3 * G)
        memset8(p, 0x01, G)
        memset8(p + G, 0x02, G)
        sync()
        e, bb = d2h(p + 2 * G, 8)
        return b, f"view of handle offset G reads {bb.hex()} (02.. expected)"
    scoped("alias.handle_offset_view", sub_alias)


# ------------------------------------------------------------- 9. timing
def med_us(xs):
    return statistics.median(xs) / 1000.0


def s9():
    N = 20
    acc = [adesc()]
    for label, size in [("2MiB", 2 << 20), ("64MiB", 64 << 20), ("1GiB", 1 << 30)]:
        if size % G:
            note(f"timing {label}: not a multiple of G, skipped")
            continue
        try:
            e, p = reserve(size)
            if not ok(e):
                out(f"timing.{label}", *rc(e), "reserve failed")
                continue
            t = {k: [] for k in ["create", "map", "set_access", "unmap", "release"]}
            codes = set()
            for i in range(N):
                t0 = time.perf_counter_ns()
                e, h = cu.cuMemCreate(size, PROP, 0)
                t1 = time.perf_counter_ns()
                e2 = cu.cuMemMap(p, size, 0, h, 0)
                t2 = time.perf_counter_ns()
                e3 = cu.cuMemSetAccess(p, size, acc, 1)
                t3 = time.perf_counter_ns()
                e4 = cu.cuMemUnmap(p, size)
                t4 = time.perf_counter_ns()
                e5 = cu.cuMemRelease(h)
                t5 = time.perf_counter_ns()
                codes.update(rc(x)[1] for x in [e, e2, e3, e4, e5])
                for k, a, b in [("create", t0, t1), ("map", t1, t2), ("set_access", t2, t3),
                                ("unmap", t3, t4), ("release", t4, t5)]:
                    t[k].append(b - a)
            free(p, size)
            parts = " ".join(f"{k}={med_us(v):.1f}" for k, v in t.items())
            tot = med_us([sum(z) for z in zip(*t.values())])
            print(f"TIMING {label} median_us(N={N}): {parts} total={tot:.1f} codes={sorted(codes)}",
                  flush=True)
            RESULTS.append((f"timing.{label}", "median_us", 0,
                            parts + f" total={tot:.1f} codes={sorted(codes)}"))
        except Exception as ex:
            out(f"timing.{label}", "PYEXC", -1, repr(ex))
    # reservation timing
    for label, size in [("reserve+free 64TiB", 64 << 40), ("reserve+free 4GiB", 4 << 30)]:
        try:
            tr, tf = [], []
            for i in range(N):
                t0 = time.perf_counter_ns()
                e, p = cu.cuMemAddressReserve(size, 0, 0, 0)
                t1 = time.perf_counter_ns()
                e2 = cu.cuMemAddressFree(p, size)
                t2 = time.perf_counter_ns()
                tr.append(t1 - t0)
                tf.append(t2 - t1)
            s = f"reserve={med_us(tr):.1f} free={med_us(tf):.1f} codes={rc(e)[0]},{rc(e2)[0]}"
            print(f"TIMING {label} median_us(N={N}): {s}", flush=True)
            RESULTS.append((f"timing.{label}", "median_us", 0, s))
        except Exception as ex:
            out(f"timing.{label}", "PYEXC", -1, repr(ex))
    # for comparison: cuMemAlloc/cuMemFree 2MiB and 64MiB
    for label, size in [("cuMemAlloc+Free 2MiB", 2 << 20), ("cuMemAlloc+Free 64MiB", 64 << 20)]:
        try:
            ta, tf = [], []
            for i in range(N):
                t0 = time.perf_counter_ns()
                e, p = cu.cuMemAlloc(size)
                t1 = time.perf_counter_ns()
                cu.cuMemFree(p)
                t2 = time.perf_counter_ns()
                ta.append(t1 - t0)
                tf.append(t2 - t1)
            s = f"alloc={med_us(ta):.1f} free={med_us(tf):.1f}"
            print(f"TIMING {label} median_us(N={N}): {s}", flush=True)
            RESULTS.append((f"timing.{label}", "median_us", 0, s))
        except Exception as ex:
            out(f"timing.{label}", "PYEXC", -1, repr(ex))


# ------------------------------------------------- 10. adjacent two handles
def s10():
    def clean(sc):
        p = sc.r(2 * G)
        h1 = sc.h(G)
        h2 = sc.h(G)
        a = sc.m(p, G, 0, h1)
        b = sc.m(p + G, G, 0, h2)
        s = setacc(p, 2 * G)
        m = rc(memset8(p, 0x77, 2 * G))
        sy = rc(sync())
        e1, b1 = d2h(p, 4)
        e2, b2 = d2h(p + 2 * G - 4, 4)
        return s, (f"map1={rc(a)[0]} map2={rc(b)[0]} memset={m[0]} sync={sy[0]} "
                   f"head={b1.hex()} tail={b2.hex()}")
    scoped("adjacent.two_handles_one_set_access", clean)

    def clean_unmap_one(sc):
        p = sc.r(2 * G)
        h1 = sc.h(G)
        h2 = sc.h(G)
        sc.m(p, G, 0, h1)
        sc.m(p + G, G, 0, h2)
        setacc(p, 2 * G)
        e = unmap(p, G)
        if ok(e):
            sc.maps = [m for m in sc.maps if m[0] != p]
        g = get_access(p + G)
        e2, bb = d2h(p + G, 4)
        return e, f"unmap first only; second still get_access={rc(g[0])[0]} {g[1]} DtoH={rc(e2)[0]}"
    scoped("adjacent.unmap_one_of_two", clean_unmap_one)


# ---------------------------------------------------- 11. overlapping hint
def s11():
    def ov(sc):
        p = sc.r(4 * G)
        e, q = reserve(4 * G, 0, p)
        x = f"existing={p:#x} hint={p:#x} got={q:#x} different={q != p}"
        if ok(e):
            sc.res.append((q, 4 * G))
        return e, x
    scoped("reserve.hint_exact_overlap_existing", ov)

    def ov2(sc):
        p = sc.r(4 * G)
        e, q = reserve(4 * G, 0, p + G)
        x = f"existing={p:#x} hint={p + G:#x} got={q:#x} overlaps={p <= q < p + 4 * G or q <= p < q + 4 * G}"
        if ok(e):
            sc.res.append((q, 4 * G))
        return e, x
    scoped("reserve.hint_partial_overlap_existing", ov2)

    def ov3(sc):
        # hint just below the existing one so that [hint, hint+size) overlaps its head
        e0, q0 = reserve(16 * G, 16 * G)
        free(q0, 16 * G)
        p = sc.r(4 * G, 0, q0 + 8 * G)
        e, q = reserve(4 * G, 0, p - 2 * G)
        x = f"existing={p:#x} hint={p - 2 * G:#x} got={q:#x}"
        if ok(e):
            sc.res.append((q, 4 * G))
        return e, x
    scoped("reserve.hint_overlapping_head_of_existing", ov3)


# ---------------------------------------------------------- 12. events
def s12():
    try:
        flags_nt = int(getattr(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING, "value",
                               cu.CUevent_flags.CU_EVENT_DISABLE_TIMING))
        nb = int(getattr(cu.CUstream_flags.CU_STREAM_NON_BLOCKING, "value",
                         cu.CUstream_flags.CU_STREAM_NON_BLOCKING))
        e, ev = cu.cuEventCreate(flags_nt)
        out("event.create_DISABLE_TIMING", *rc(e))
        out("event.query_never_recorded", *rc(cu.cuEventQuery(ev)))
        e, st = cu.cuStreamCreate(nb)
        out("stream.create_NON_BLOCKING", *rc(e))
        out("event.record_empty_stream", *rc(cu.cuEventRecord(ev, st)))
        sync()
        out("event.query_after_empty_record", *rc(cu.cuEventQuery(ev)))
        e, buf = cu.cuMemAlloc(4 << 30)
        out("event.alloc_4GiB", *rc(e))
        if ok(e):
            for i in range(50):
                cu.cuMemsetD8Async(buf, i & 0xFF, 4 << 30, st)
            out("event.record_after_50x4GiB_memsetAsync", *rc(cu.cuEventRecord(ev, st)))
            out("event.query_pending", *rc(cu.cuEventQuery(ev)))
            out("stream.query_pending", *rc(cu.cuStreamQuery(st)))
            t0 = time.perf_counter()
            out("event.synchronize", *rc(cu.cuEventSynchronize(ev)),
                f"waited_ms={(time.perf_counter() - t0) * 1e3:.1f}")
            out("event.query_done", *rc(cu.cuEventQuery(ev)))
            out("stream.query_done", *rc(cu.cuStreamQuery(st)))
            cu.cuMemFree(buf)
        try:
            e, ev2 = cu.cuEventCreate(0)
            out("event.elapsed_on_DISABLE_TIMING_event",
                *rc(cu.cuEventElapsedTime(ev, ev) if hasattr(cu, "cuEventElapsedTime") else (None,)))
            cu.cuEventDestroy(ev2)
        except Exception as ex:
            out("event.elapsed_on_DISABLE_TIMING_event", "PYEXC", -1, repr(ex))
        out("event.destroy", *rc(cu.cuEventDestroy(ev)))
        out("stream.destroy", *rc(cu.cuStreamDestroy(st)))
    except Exception as ex:
        out("event.section", "PYEXC", -1, repr(ex))
        traceback.print_exc()
    run_sub("wait_value")


def sub_wait_value():
    e, hp = cu.cuMemHostAlloc(4096, 0x02)  # CU_MEMHOSTALLOC_DEVICEMAP
    out("waitvalue.hostalloc", *rc(e))
    hp = int(hp)
    ctypes.memset(hp, 0, 16)
    e, dp = cu.cuMemHostGetDevicePointer(hp, 0)
    out("waitvalue.host_dev_ptr", *rc(e))
    e, st = cu.cuStreamCreate(1)
    e, ev = cu.cuEventCreate(2)
    geq = int(getattr(enum("CUstreamWaitValue_flags", "CU_STREAM_WAIT_VALUE_GEQ", 0), "value", 0))
    out("waitvalue.cuStreamWaitValue32", *rc(cu.cuStreamWaitValue32(st, dp, 1, geq)))
    out("waitvalue.event_record", *rc(cu.cuEventRecord(ev, st)))
    out("waitvalue.query_pending", *rc(cu.cuEventQuery(ev)))
    time.sleep(0.2)
    out("waitvalue.query_pending_after_200ms", *rc(cu.cuEventQuery(ev)))
    ctypes.c_uint32.from_address(hp).value = 1
    t0 = time.perf_counter()
    r = None
    while time.perf_counter() - t0 < 5:
        r = cu.cuEventQuery(ev)
        if ok(r):
            break
        time.sleep(0.001)
    out("waitvalue.query_after_flag_set", *rc(r), f"after_ms={(time.perf_counter() - t0) * 1e3:.1f}")
    if ok(r):
        cu.cuEventDestroy(ev)
        cu.cuStreamDestroy(st)
        cu.cuMemFreeHost(hp)


# ------------------------------------------------ 13. follow-ups (run 2)
def free_region(size):
    """An address whose [a, a+size) was just reserved and freed (so currently free)."""
    e, q = reserve(size, size)
    free(q, size)
    return q


def s13():
    def past_end_verify(sc):
        q = free_region(8 * G)
        p = sc.r(4 * G, 0, q)
        h = sc.h(2 * G)
        e = sc.m(p + 3 * G, 2 * G, 0, h)
        x = f"res_at_hint={p == q}"
        if ok(e):
            a = rc(setacc(p + 3 * G, 2 * G))
            m = rc(memset8(p + 3 * G, 0x66, 2 * G))
            s = rc(sync())
            e2, b = d2h(p + 5 * G - 8, 8)
            x += f" set_access={a[0]} memset={m[0]} sync={s[0]} tail(beyond res) DtoH={rc(e2)[0]} {b.hex()}"
            try:
                r = cu.cuMemGetAddressRange(p + 4 * G + 100)
                x += f" cuMemGetAddressRange(beyond)={rc(r)[0]}"
                if ok(r[0]):
                    x += f" base={int(r[1]):#x} size={int(r[2]):#x}"
            except Exception as ex:
                x += f" GetAddressRange PYEXC {ex!r}"
            e3, q3 = reserve(G, 0, p + 4 * G)
            x += f"; reserve(G, hint=res_end)={rc(e3)[0]} got={q3:#x} same_as_hint={q3 == p + 4 * G}"
            if ok(e3):
                sc.res.append((q3, G))
        return e, x
    scoped("followup.map_runs_past_res_end_verify", past_end_verify)

    def far_past(sc):
        q = free_region(64 * G)
        p = sc.r(4 * G, 0, q)
        h = sc.h(16 * G)
        return sc.m(p + 3 * G, 16 * G, 0, h), f"res_at_hint={p == q} 4G res, 16G map starting at base+3G"
    scoped("followup.map_runs_far_past_res_end", far_past)

    def before_start(sc):
        q = free_region(8 * G)
        p = sc.r(4 * G, 0, q + 4 * G)
        h = sc.h(2 * G)
        return sc.m(p - G, 2 * G, 0, h), f"res_at_hint={p == q + 4 * G} map [base-G, base+G)"
    scoped("followup.map_starts_before_res", before_start)

    def map_after_free_region(sc):
        q = free_region(8 * G)
        h = sc.h(G)
        return sc.m(q, G, 0, h), "va in a just-freed reservation"
    scoped("followup.map_into_freed_reservation", map_after_free_region)

    def unmap_past(sc):
        q = free_region(8 * G)
        p = sc.r(4 * G, 0, q)
        return unmap(p + 3 * G, 2 * G), f"res_at_hint={p == q} nothing mapped; range runs past res end"
    scoped("followup.unmap_unmapped_range_past_res_end", unmap_past)

    def unmap_outside(sc):
        q = free_region(8 * G)
        return unmap(q, G), "G-aligned, just-freed (unreserved) region"
    scoped("followup.unmap_unreserved_high_addr", unmap_outside)

    def unmap_mapped_past(sc):
        q = free_region(8 * G)
        p = sc.r(4 * G, 0, q)
        h = sc.h(G)
        sc.m(p + 3 * G, G, 0, h)
        e = unmap(p + 3 * G, 2 * G)
        if ok(e):
            sc.maps.clear()
        return e, "mapping [3G,4G) + range runs G past res end"
    scoped("followup.unmap_mapping_plus_past_res_end", unmap_mapped_past)

    def setacc_past(sc):
        q = free_region(8 * G)
        p = sc.r(4 * G, 0, q)
        h = sc.h(G)
        sc.m(p + 3 * G, G, 0, h)
        return setacc(p + 3 * G, 2 * G), "mapping [3G,4G) + range runs G past res end (unmapped)"
    scoped("followup.set_access_past_res_end", setacc_past)

    def order_host_first(sc):
        p = sc.r(2 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        g0 = get_access(p, LT_HOST, 0)
        e = setacc(p, 2 * G, [adesc(LT_HOST, 0, RW), adesc(LT_DEVICE, 0, RW)])
        g = get_access(p)
        return e, f"host-loc get_access before any set={rc(g0[0])[0]} {g0[1]}; after failed call dev0 get_access={rc(g[0])[0]} {g[1]}"
    scoped("followup.set_access_device_mem_[HOST,DEV0]", order_host_first)

    def order_dev_first(sc):
        p = sc.r(2 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = setacc(p, 2 * G, [adesc(LT_DEVICE, 0, RW), adesc(LT_HOST, 0, RW)])
        g = get_access(p)
        return e, f"after failed call dev0 get_access={rc(g[0])[0]} {g[1]}"
    scoped("followup.set_access_device_mem_[DEV0,HOST]", order_dev_first)

    def order_dev1(sc):
        p = sc.r(2 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        e = setacc(p, 2 * G, [adesc(LT_DEVICE, 0, RW), adesc(LT_DEVICE, 1, RW)])
        g = get_access(p)
        return e, f"after call dev0 get_access={rc(g[0])[0]} {g[1]}"
    scoped("followup.set_access_[DEV0,DEV1]", order_dev1)

    def ga_host_loc_devmem(sc):
        p = sc.r(2 * G)
        h = sc.h(2 * G)
        sc.m(p, 2 * G, 0, h)
        g0 = get_access(p, LT_HOST, 0)
        setacc(p, 2 * G, [adesc(LT_DEVICE, 0, RO)])
        g1 = get_access(p, LT_HOST, 0)
        g2 = get_access(p, LT_HOST_NUMA, 0) if LT_HOST_NUMA is not None else ("n/a", "")
        return g1[0], (f"HOST-loc get_access before={rc(g0[0])[0]} {g0[1]}; after dev0 RO: HOST={g1[1]}"
                       f" HOST_NUMA={rc(g2[0])[0] if g2[0] != 'n/a' else ''} {g2[1]}")
    scoped("followup.get_access_HOST_loc_on_device_mem", ga_host_loc_devmem)

    def free_spanning_mapping(sc):
        q = free_region(8 * G)
        p1 = sc.r(2 * G, 0, q)
        p2 = sc.r(2 * G, 0, q + 2 * G)
        h = sc.h(2 * G)
        e = sc.m(p1 + G, 2 * G, 0, h)
        f2 = free(p2, 2 * G)
        x = f"adjacent={p1 + 2 * G == p2} map spanning={rc(e)[0]}; free(res2) while spanned={rc(f2)[0]}({rc(f2)[1]})"
        if ok(f2):
            sc.res = [r for r in sc.res if r[0] != p2]
        return f2, x
    scoped("followup.free_res2_under_spanning_mapping", free_spanning_mapping)

    def hint_unreserved_start(sc):
        q = free_region(16 * G)
        e, p = reserve(4 * G, 0, q)
        x = f"hint=start of freed region honored={p == q}"
        if ok(e):
            free(p, 4 * G)
        e, p = reserve(4 * G, 0, q + 4 * G)
        x += f"; hint=start+4G honored={p == q + 4 * G}"
        if ok(e):
            free(p, 4 * G)
        return e, x
    scoped("followup.addr_hint_honored", hint_unreserved_start)


# ---------------------------------------------------------- subprocesses
SUBS = {
    "map_released_handle": sub_map_released,
    "map_handle_12345": sub_map_12345,
    "release_twice": sub_release_twice,
    "release_bogus": sub_release_bogus,
    "wait_value": sub_wait_value,
}
for _l in ["HOST", "HOST_NUMA", "DEVICE"]:
    for _a in ["dev", "devhost", "host", "devnuma"]:
        SUBS[f"cpu_{_l}_{_a}"] = (lambda l=_l, a=_a: sub_cpu(l, a))

CASE_RE = re.compile(r"^CASE (.+?): (\S+) \((-?\d+)\) ?(.*)$")


def run_sub(name):
    print(f"SUB {name} start", flush=True)
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--sub", name],
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
        for line in p.stdout.splitlines():
            print("  " + line, flush=True)
            m = CASE_RE.match(line)
            if m:
                RESULTS.append((m.group(1), m.group(2), int(m.group(3)), m.group(4)))
        if p.stderr.strip():
            for line in p.stderr.strip().splitlines()[-8:]:
                print("  stderr: " + line, flush=True)
        if p.returncode != 0:
            sig = f"signal {-p.returncode}" if p.returncode < 0 else f"exit {p.returncode}"
            out(f"sub.{name}", "CHILD_DIED", p.returncode, sig)
    except subprocess.TimeoutExpired as ex:
        so = ex.stdout.decode() if isinstance(ex.stdout, bytes) else (ex.stdout or "")
        for line in so.splitlines():
            print("  " + line, flush=True)
            m = CASE_RE.match(line)
            if m:
                RESULTS.append((m.group(1), m.group(2), int(m.group(3)), m.group(4)))
        out(f"sub.{name}", "CHILD_TIMEOUT", -2, "60 s")
    except Exception as ex:
        out(f"sub.{name}", "PYEXC", -1, repr(ex))


# ------------------------------------------------------------------- main
def main():
    global SUB
    if len(sys.argv) >= 3 and sys.argv[1] == "--sub":
        SUB = sys.argv[2]
        setup()
        try:
            SUBS[SUB]()
        except Exception as ex:
            out(f"{SUB}.exception", "PYEXC", -1, repr(ex))
        return
    t_start = time.time()
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                            "--format=csv"], capture_output=True, text=True, timeout=30)
        print("NVIDIA-SMI", r.stdout.strip().replace("\n", " | "), flush=True)
    except Exception as ex:
        print("NVIDIA-SMI failed", ex, flush=True)
    setup()
    info()
    for i, s in enumerate([s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13], 1):
        print(f"===== section {i} ({s.__name__}) =====", flush=True)
        try:
            s()
        except Exception as ex:
            print(f"SECTION {i} PYEXC {ex!r}", flush=True)
            traceback.print_exc()
        health(f"after section {i}")
    print(f"===== SUMMARY ({len(RESULTS)} rows, {time.time() - t_start:.1f} s) =====")
    print("| case | result | code | extra |")
    print("|---|---|---|---|")
    for n, c, v, x in RESULTS:
        print(f"| {n} | {c} | {v} | {x.replace('|', '/')} |")


if __name__ == "__main__":
    main()
