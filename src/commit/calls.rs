//! Counters of the driver calls the commit layer makes.

/// `since` and `add` for a struct of `u64` counters (every field named).
macro_rules! counters {
    ($ty:ident { $($f:ident),* $(,)? }) => {
        impl $ty {
            /// The counts since `earlier` (a copy taken before).
            pub const fn since(&self, earlier: &$ty) -> $ty {
                $ty { $($f: self.$f - earlier.$f),* }
            }

            /// Adds `other`'s counts to these.
            pub fn add(&mut self, other: &$ty) {
                $(self.$f += other.$f;)*
            }
        }
    };
}
pub(super) use counters;

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
    /// Runs `f`, one VMM call, adding the time it took (and a failure,
    /// where it failed) to these counts.
    pub(super) fn time<T>(
        &mut self,
        f: impl FnOnce() -> crate::error::Result<T>,
    ) -> crate::error::Result<T> {
        let t = std::time::Instant::now();
        let r = f();
        self.vmm_nanos += t.elapsed().as_nanos() as u64;
        if r.is_err() {
            self.failed += 1;
        }
        r
    }

    /// All calls.
    pub const fn total(&self) -> u64 {
        self.vmm() + self.record + self.wait
    }

    /// VMM calls: create, map, set_access, unmap, release.
    pub const fn vmm(&self) -> u64 {
        self.create + self.map + self.set_access + self.unmap + self.release
    }
}

counters!(DriverCalls {
    create,
    map,
    alias,
    set_access,
    unmap,
    release,
    record,
    wait,
    failed,
    vmm_nanos,
});

#[cfg(test)]
mod tests {
    use super::DriverCalls;
    use crate::error::Error;

    #[test]
    fn counters_add_subtract_and_sum_by_kind() {
        let mut a = DriverCalls {
            create: 2,
            map: 3,
            alias: 1,
            set_access: 3,
            unmap: 1,
            release: 1,
            record: 4,
            wait: 1,
            ..Default::default()
        };
        assert_eq!(a.vmm(), 10, "an alias is one of the maps");
        assert_eq!(a.total(), 15);
        let before = a;
        let r: crate::error::Result<()> = a.time(|| Err(Error::ZeroSize));
        assert!(r.is_err());
        assert!(a.time(|| Ok(7)).is_ok());
        assert_eq!(a.failed, 1, "a refused call counted as failed");
        let since = a.since(&before);
        assert_eq!(since.failed, 1);
        assert_eq!(since.vmm(), 0, "the kind's counter is the caller's to bump");
        let mut sum = before;
        sum.add(&since);
        assert_eq!(sum, a);
    }
}
