//! Peer access: which devices (or the host) may read or write the arena's
//! pages, granted and revoked over every committed page and every later
//! commit.

use super::{Arena, Kind};
use crate::driver::{Access, DevicePtr, Driver, Location};
use crate::error::{BadPointer, Error, Result};

impl<D: Driver> Arena<D> {
    /// Grants or revokes access for every committed page and future commits.
    ///
    /// # Safety
    /// Revoking rights from an accessor that still uses the memory makes its
    /// accesses fault.
    pub unsafe fn set_access(&mut self, access: &[Access]) -> Result<()> {
        self.commit.set_access(access)
    }

    /// The access list applied to every committed page and to every later
    /// commit (the arena's own device first, then what was granted).
    pub fn access(&self) -> &[Access] {
        self.commit.access()
    }

    fn check_accessor(&self, location: Location) -> Result<()> {
        let caps = self.driver().capabilities();
        match location {
            Location::Device(d) if d >= caps.device_count => {
                Err(Error::Config("no such device ordinal on this driver"))
            }
            Location::Host if matches!(self.kind, Kind::Device(_)) => Err(Error::Unsupported(
                "device memory cannot be mapped for the CPU: use a PinnedHost arena for CPU access",
            )),
            _ => Ok(()),
        }
    }

    /// The rights the access list gives `location` now.
    pub fn granted(&self, location: Location) -> crate::driver::AccessMode {
        self.commit
            .access()
            .iter()
            .find(|a| a.location == location)
            .map_or(crate::driver::AccessMode::None, |a| a.mode)
    }

    /// Gives `location` (a peer device) at least `mode` on every committed
    /// page and on every page committed later. Never lowers rights (that is
    /// [`Arena::revoke`]), so no user can fault because of it: safe to call
    /// at any time.
    ///
    /// Cost: one driver `set_access` per committed run, now. Later
    /// allocations pay nothing more: the list is applied by the one
    /// `set_access` each commit already makes.
    pub fn grant(&mut self, location: Location, mode: crate::driver::AccessMode) -> Result<()> {
        use crate::driver::AccessMode;
        self.check_accessor(location)?;
        let rank = |m: AccessMode| match m {
            AccessMode::None => 0,
            AccessMode::Read => 1,
            AccessMode::ReadWrite => 2,
        };
        if rank(mode) <= rank(self.granted(location)) {
            return Ok(());
        }
        self.commit.change_access(&[Access { location, mode }])
    }

    /// Takes every right of `location` away, on every committed page and
    /// for later commits.
    ///
    /// Cost: one driver `set_access` per committed run.
    ///
    /// # Safety
    /// No work of `location` (kernels of that device, or the CPU for
    /// `Location::Host`) touches this arena's memory any more: accesses after
    /// the revoke fault.
    pub unsafe fn revoke(&mut self, location: Location) -> Result<()> {
        self.check_accessor(location)?;
        self.commit.change_access(&[Access {
            location,
            mode: crate::driver::AccessMode::None,
        }])
    }

    /// The rights `accessor` has on the committed page holding `ptr`, as the
    /// driver reports them (`cuMemGetAccess` on CUDA). A driver error where
    /// nothing is committed at `ptr`.
    pub fn access_of(
        &self,
        ptr: DevicePtr,
        accessor: Location,
    ) -> Result<crate::driver::AccessMode> {
        if !self.contains(ptr) {
            return Err(Self::bad(ptr, BadPointer::Foreign));
        }
        self.commit
            .access_of(ptr.offset_from(self.base_ptr()), accessor)
    }
}
