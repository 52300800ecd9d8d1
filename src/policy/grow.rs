//! Growable buffers: a maximum reserved once, pages committed at the end.
#![deny(unsafe_code, clippy::unwrap_used)]

/// What a resize needs from the commit layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// Nothing to commit or decommit.
    InPlace,
    /// Commit `from..to` (offsets in the buffer, page-aligned).
    Commit {
        /// First byte to commit.
        from: u64,
        /// End of the range to commit.
        to: u64,
    },
    /// Decommit `from..to` (page-aligned).
    Decommit {
        /// First byte to give back.
        from: u64,
        /// End of the range to give back.
        to: u64,
    },
    /// Beyond the reserved maximum.
    TooLarge,
}

/// Length and committed extent of one growable buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grow {
    /// Reserved maximum (page-aligned).
    pub max: u64,
    /// Current length in bytes.
    pub len: u64,
    /// Committed bytes from offset 0 (page-aligned). Invariant: `len <= committed <= max`.
    pub committed: u64,
}

impl Grow {
    /// An empty buffer that may grow to `max` bytes.
    pub const fn new(max: u64) -> Self {
        Grow {
            max,
            len: 0,
            committed: 0,
        }
    }

    /// Plans a resize to `len` bytes with pages of `page` bytes; `keep`
    /// extra committed bytes may be kept past the end when shrinking.
    pub fn plan(&self, len: u64, page: u64, keep: u64) -> Resize {
        if len > self.max {
            return Resize::TooLarge;
        }
        let need = match crate::align::round_up(len, page) {
            Some(n) => n.min(self.max),
            None => return Resize::TooLarge,
        };
        if need > self.committed {
            Resize::Commit {
                from: self.committed,
                to: need,
            }
        } else {
            let keep_to = crate::align::round_up(need.saturating_add(keep), page)
                .unwrap_or(self.max)
                .min(self.max);
            if keep_to < self.committed {
                Resize::Decommit {
                    from: keep_to,
                    to: self.committed,
                }
            } else {
                Resize::InPlace
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plans_commit_at_the_end_and_decommit_on_shrink() {
        let p = 2 << 20;
        let mut g = Grow::new(64 << 20);
        assert_eq!(g.plan(1, p, 0), Resize::Commit { from: 0, to: p });
        g.committed = p;
        g.len = 1;
        assert_eq!(g.plan(p, p, 0), Resize::InPlace);
        assert_eq!(g.plan(p + 1, p, 0), Resize::Commit { from: p, to: 2 * p });
        g.committed = 8 * p;
        assert_eq!(g.plan(p, p, 0), Resize::Decommit { from: p, to: 8 * p });
        assert_eq!(
            g.plan(p, p, 2 * p),
            Resize::Decommit {
                from: 3 * p,
                to: 8 * p
            }
        );
        assert_eq!(g.plan(65 << 20, p, 0), Resize::TooLarge);
    }
}
