//! The access list: who may read and write the committed memory (the
//! arena's own device, peers granted later), applied to every mapping,
//! aliases included, and to every later one; and the rights the driver
//! reports on a committed page.

use super::Commit;
use crate::driver::{Access, AccessMode, Driver, Location};
use crate::error::Result;

impl<D: Driver> Commit<D> {
    /// Applies `access` to every mapping (one `set_access` per run of
    /// adjacent mappings).
    fn apply_to_mappings(&mut self, access: &[Access]) -> Result<()> {
        for (first, pages) in self.mapped_runs() {
            // SAFETY: the run is tiled by whole mappings of ours; changing
            // rights is the caller's documented intent (Arena::grant,
            // Arena::revoke).
            unsafe { self.vmm_set_access_with(first, pages, access)? };
        }
        Ok(())
    }

    /// Changes the access list and applies it to every mapping.
    pub fn set_access(&mut self, access: &[Access]) -> Result<()> {
        self.apply_to_mappings(access)?;
        self.access.clear();
        self.access.extend_from_slice(access);
        Ok(())
    }

    /// The rights `accessor` has on the page holding offset `off`, as the
    /// driver reports them (`cuMemGetAccess` on CUDA). A driver error where
    /// nothing is committed there.
    ///
    /// Calls the driver (one query).
    pub fn access_of(&self, off: u64, accessor: Location) -> Result<AccessMode> {
        self.res.driver.get_access(self.base() + off, accessor)
    }

    /// The access list applied to new mappings.
    pub fn access(&self) -> &[Access] {
        &self.access
    }

    /// Applies `change` (entries for some accessors; [`AccessMode::None`]
    /// revokes) to every mapping and merges it into the list applied to
    /// later ones: an accessor set to `None` is dropped from the list,
    /// others replace their entry or are added. Accessors not named keep
    /// their rights. On a driver error the mappings done so far keep the
    /// change and the list is unchanged; calling again with the same change
    /// is safe.
    ///
    /// Cost: one `set_access` per run of adjacent mappings (a driver call
    /// each; its cost grows with the handles it covers).
    pub fn change_access(&mut self, change: &[Access]) -> Result<()> {
        if change.is_empty() {
            return Ok(());
        }
        self.apply_to_mappings(change)?;
        for c in change {
            self.access.retain(|a| a.location != c.location);
            if c.mode != AccessMode::None {
                self.access.push(*c);
            }
        }
        Ok(())
    }
}
