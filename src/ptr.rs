//! [`DevicePtr`]: the pointer type of the public API (below every layer:
//! the driver takes its address, errors name it, the arena hands it out).

use core::fmt;

/// A virtual address in a device's (unified) address space.
///
/// What arenas, buffers and the global arena hand out and take back. The
/// driver layer works on the raw number ([`DevicePtr::addr`], what
/// `CUdeviceptr` / `hipDeviceptr_t` hold and what a kernel takes); on
/// host-visible memory [`DevicePtr::as_mut_ptr`] gives a CPU pointer.
///
/// ```
/// use gpu_arena::DevicePtr;
/// let p = DevicePtr::new(0x7f00_0000_0000);
/// let q = p.byte_add(256);
/// assert_eq!(q.offset_from(p), 256);
/// assert!(q.is_aligned_to(256));
/// assert_eq!(q.to_string(), "0x7f0000000100");
/// assert_eq!(u64::from(q), 0x7f00_0000_0100);
/// ```
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[repr(transparent)]
#[serde(transparent)]
pub struct DevicePtr(u64);

impl DevicePtr {
    /// The null address (0), which no allocation ever has.
    pub const NULL: DevicePtr = DevicePtr(0);

    /// The pointer at address `addr`.
    #[inline]
    pub const fn new(addr: u64) -> Self {
        DevicePtr(addr)
    }

    /// The address of a host pointer (host-visible memory the CPU reaches,
    /// or an argument of the C ABI). Its provenance is exposed, so
    /// [`DevicePtr::as_ptr`] can give it back.
    #[inline]
    pub fn from_ptr<T: ?Sized>(ptr: *const T) -> Self {
        DevicePtr(ptr.expose_provenance() as u64)
    }

    /// The address as a number: what a driver call or a kernel argument
    /// takes (`CUdeviceptr` / `hipDeviceptr_t`).
    #[inline]
    pub const fn addr(self) -> u64 {
        self.0
    }

    /// Whether this is the null address.
    #[inline]
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }

    /// The pointer `bytes` bytes further on. Overflowing the address space
    /// is a bug: it panics in debug builds (and wraps in release builds).
    #[inline]
    #[track_caller]
    pub const fn byte_add(self, bytes: u64) -> Self {
        debug_assert!(
            self.0.checked_add(bytes).is_some(),
            "DevicePtr::byte_add overflows the address space"
        );
        DevicePtr(self.0.wrapping_add(bytes))
    }

    /// Bytes from `base` up to `self`. `self` below `base` is a bug: it
    /// panics in debug builds (and wraps in release builds).
    #[inline]
    #[track_caller]
    pub const fn offset_from(self, base: DevicePtr) -> u64 {
        debug_assert!(
            self.0 >= base.0,
            "DevicePtr::offset_from: the pointer lies below the base"
        );
        self.0.wrapping_sub(base.0)
    }

    /// Whether the address is a multiple of `align` (a power of two).
    #[inline]
    pub const fn is_aligned_to(self, align: u64) -> bool {
        debug_assert!(align.is_power_of_two());
        self.0 & (align - 1) == 0
    }

    /// A CPU pointer to the same address, for host-visible memory (pinned
    /// host arenas, the host backend). Forming it is safe; reading or
    /// writing through it needs the memory to be mapped and CPU-readable.
    #[inline]
    pub fn as_ptr<T>(self) -> *const T {
        core::ptr::with_exposed_provenance(self.0 as usize)
    }

    /// A mutable CPU pointer to the same address (see [`DevicePtr::as_ptr`]).
    #[inline]
    pub fn as_mut_ptr<T>(self) -> *mut T {
        core::ptr::with_exposed_provenance_mut(self.0 as usize)
    }
}

impl From<DevicePtr> for u64 {
    /// The address ([`DevicePtr::addr`]).
    #[inline]
    fn from(p: DevicePtr) -> u64 {
        p.0
    }
}

impl fmt::LowerHex for DevicePtr {
    /// The address in hexadecimal; `{:#x}` adds the `0x`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::Display for DevicePtr {
    /// The address as `0x…` (lower-case hexadecimal).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::DevicePtr;

    #[test]
    fn formats_as_the_address() {
        let p = DevicePtr::new(0x7f00_0000_1000);
        assert_eq!(format!("{p:#x}"), "0x7f0000001000");
        assert_eq!(format!("{p:x}"), "7f0000001000");
        assert_eq!(format!("{p}"), "0x7f0000001000");
    }

    #[test]
    fn serializes_as_the_bare_number() {
        let p = DevicePtr::new(4096);
        assert_eq!(serde_json::to_string(&p).unwrap(), "4096");
        assert_eq!(serde_json::from_str::<DevicePtr>("4096").unwrap(), p);
    }

    #[test]
    fn arithmetic_and_host_pointers() {
        let p = DevicePtr::new(0x1000);
        assert_eq!(p.byte_add(0x40).offset_from(p), 0x40);
        assert!(p.is_aligned_to(4096) && !p.byte_add(8).is_aligned_to(16));
        assert!(DevicePtr::NULL.is_null() && !p.is_null());
        let x = 7u32;
        let q = DevicePtr::from_ptr(&x);
        // SAFETY: `q` is the address of `x`, alive and initialized.
        assert_eq!(unsafe { q.as_ptr::<u32>().read() }, 7);
        assert_eq!(q.as_mut_ptr::<u32>().cast_const(), &raw const x);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "overflows")]
    fn byte_add_past_the_end_panics_in_debug() {
        let _ = DevicePtr::new(u64::MAX).byte_add(1);
    }
}
