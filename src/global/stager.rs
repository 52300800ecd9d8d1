//! Pinned host memory for offloads obtained in the background: one thread
//! at a time serves every request, so that tags asked for again while it
//! works (a loader that leaves its tag's block once per layer, say) are
//! served once more when it is done, not by threads pinning side by side.

use std::thread::JoinHandle;

use super::GlobalArena;
use crate::error::Result;
use crate::lock::lock;

/// What [`GlobalArena::prepare_offload_in_background`] was asked and the
/// thread serving it.
#[derive(Debug, Default)]
pub(super) struct Stager {
    /// Tags asked for and not yet taken up by the thread (each once).
    pending: Vec<String>,
    /// Whether the thread is serving requests; it clears this, under the
    /// lock, when it finds none left, and then only returns.
    running: bool,
    /// The last thread started (joined before the arena is torn down).
    thread: Option<JoinHandle<()>>,
}

impl GlobalArena {
    /// [`GlobalArena::prepare_offload`] on a thread of its own: returns at
    /// once (after checking the names), and the pinned memory is obtained
    /// while the program goes on, so that even the first offload of tags
    /// loaded ahead (a model's weights) runs at copy speed. One thread
    /// serves all such requests in turn; a request made while it works is
    /// served when it is done (with the tags' needs as they are then). A
    /// sleep that offloads waits for that thread first; an error there is
    /// reported on stderr, and the sleep then obtains what is missing
    /// itself.
    pub fn prepare_offload_in_background(&'static self, tags: &[&str]) -> Result<()> {
        self.named_tags(tags)?;
        let mut st = lock(&self.stager);
        for t in tags {
            if !st.pending.iter().any(|p| p == t) {
                st.pending.push(t.to_string());
            }
        }
        if st.running {
            return Ok(());
        }
        // The previous thread found nothing left and only returns.
        if let Some(h) = st.thread.take() {
            let _ = h.join();
        }
        let spawned = std::thread::Builder::new()
            .name(format!("gpu-arena-stage-{}", self.device))
            .spawn(move || self.serve_stage_requests());
        match spawned {
            Ok(h) => {
                st.running = true;
                st.thread = Some(h);
                Ok(())
            }
            // No thread: obtained here instead.
            Err(_) => {
                let names = core::mem::take(&mut st.pending);
                drop(st);
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                self.prepare_offload(&names).map(|_| ())
            }
        }
    }

    /// The stager thread: serves the pending requests until none is left.
    fn serve_stage_requests(&self) {
        loop {
            let names = {
                let mut st = lock(&self.stager);
                if st.pending.is_empty() {
                    st.running = false;
                    return;
                }
                core::mem::take(&mut st.pending)
            };
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            if let Err(e) = self.prepare_offload(&names) {
                eprintln!(
                    "gpu-arena: obtaining pinned host memory for the offload of {names:?} in the background failed ({e}); the sleep will obtain what it needs"
                );
            }
        }
    }

    /// Waits until the stager thread served every request made so far.
    pub(super) fn join_stager(&self) {
        let h = lock(&self.stager).thread.take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}
