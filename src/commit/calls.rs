//! Counters of the driver calls the commit layer makes.

/// Driver calls made by the commit layer (and the time spent in them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriverCalls {
    /// `create` calls (physical handles made).
    pub create: u64,
    /// `map` calls (of new handles and of idle handles moved by aliasing).
    pub map: u64,
    /// Of `map`: mappings of an existing handle at a second address.
    pub alias: u64,
    /// `set_access` calls.
    pub set_access: u64,
    /// `unmap` calls.
    pub unmap: u64,
    /// `release` calls.
    pub release: u64,
    /// Fences recorded.
    pub record: u64,
    /// Single-fence waits (out-of-memory ladder, remaps, sleep).
    pub wait: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Nanoseconds spent inside VMM calls (create, map, set_access, unmap,
    /// release).
    pub vmm_nanos: u64,
}

impl DriverCalls {
    /// All calls.
    pub const fn total(&self) -> u64 {
        self.vmm() + self.record + self.wait
    }

    /// VMM calls: create, map, set_access, unmap, release.
    pub const fn vmm(&self) -> u64 {
        self.create + self.map + self.set_access + self.unmap + self.release
    }

    /// The calls made since `earlier` (a copy taken before).
    pub const fn since(&self, earlier: &DriverCalls) -> DriverCalls {
        DriverCalls {
            create: self.create - earlier.create,
            map: self.map - earlier.map,
            alias: self.alias - earlier.alias,
            set_access: self.set_access - earlier.set_access,
            unmap: self.unmap - earlier.unmap,
            release: self.release - earlier.release,
            record: self.record - earlier.record,
            wait: self.wait - earlier.wait,
            failed: self.failed - earlier.failed,
            vmm_nanos: self.vmm_nanos - earlier.vmm_nanos,
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DriverCalls) {
        self.create += other.create;
        self.map += other.map;
        self.alias += other.alias;
        self.set_access += other.set_access;
        self.unmap += other.unmap;
        self.release += other.release;
        self.record += other.record;
        self.wait += other.wait;
        self.failed += other.failed;
        self.vmm_nanos += other.vmm_nanos;
    }
}
