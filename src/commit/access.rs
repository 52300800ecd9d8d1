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

#[cfg(test)]
mod tests {
    use crate::commit::Backing;
    use crate::commit::testing::{PAGE, commit, driver_with};
    use crate::driver::{Access, AccessMode, Location};
    use crate::sync::Stamp;

    /// A peer granted access reaches every mapping (a unit's alias
    /// included) and every mapping made later; revoked, it reaches none of
    /// them, and the arena's own device keeps its rights throughout.
    #[test]
    fn a_peer_granted_then_revoked_reaches_every_mapping_then_none() {
        let d = driver_with(2);
        let mut c = commit(&d, 32, (32, 0));
        let (own, peer) = (Location::Device(0), Location::Device(1));
        // A unit at page 0, idle, aliased at page 4 (live).
        c.add_live(0, PAGE, 1, Backing::Pages).unwrap();
        c.sub_live(0, PAGE, Stamp::SAFE);
        c.add_live(4 * PAGE, PAGE, 1, Backing::Pages).unwrap();
        assert_eq!(c.mapping_count(), 2);
        assert_eq!(c.access_of(0, peer).unwrap(), AccessMode::None);
        c.change_access(&[Access::read(peer)]).unwrap();
        for off in [0, 4 * PAGE] {
            assert_eq!(c.access_of(off, peer).unwrap(), AccessMode::Read);
            assert_eq!(c.access_of(off, own).unwrap(), AccessMode::ReadWrite);
        }
        // A mapping made afterwards gets the list too.
        c.add_live(8 * PAGE, PAGE, 1, Backing::Pages).unwrap();
        assert_eq!(c.access_of(8 * PAGE, peer).unwrap(), AccessMode::Read);
        assert_eq!(c.access().len(), 2);
        c.change_access(&[Access {
            location: peer,
            mode: AccessMode::None,
        }])
        .unwrap();
        assert_eq!(c.access(), &[Access::read_write(own)][..]);
        c.add_live(12 * PAGE, PAGE, 1, Backing::Pages).unwrap();
        for off in [0, 4 * PAGE, 8 * PAGE, 12 * PAGE] {
            assert_eq!(c.access_of(off, peer).unwrap(), AccessMode::None);
            assert_eq!(c.access_of(off, own).unwrap(), AccessMode::ReadWrite);
        }
        assert!(
            c.access_of(20 * PAGE, own).is_err(),
            "nothing committed there"
        );
        c.check_invariants();
    }
}
