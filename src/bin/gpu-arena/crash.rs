//! A last word on a crash: on SIGSEGV, SIGBUS or SIGILL the CLI prints the
//! faulting address, the thread and its backtrace before dying, so a crash in
//! a long soak on a machine without a debugger still says where it happened.
//!
//! Capturing a backtrace is not async-signal-safe; the process is dying
//! anyway, and the handler then restores the default action and re-raises,
//! so the exit status stays that of the signal. A watchdog (`alarm`) ends
//! a handler that deadlocks (a fault inside the allocator's lock), and a
//! second thread that faults meanwhile waits for the first to finish its
//! report. The handler runs on the faulting thread's own stack (std's
//! alternate stacks are too small for a backtrace), so a stack overflow is
//! not reported: the process then dies of the signal as before.

use std::sync::atomic::{AtomicBool, Ordering};

static IN_HANDLER: AtomicBool = AtomicBool::new(false);

extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    if IN_HANDLER.swap(true, Ordering::SeqCst) {
        // Another thread is reporting; the watchdog or its re-raise ends us.
        loop {
            // SAFETY: pause is async-signal-safe and takes no argument.
            unsafe { libc::pause() };
        }
    }
    // SAFETY: alarm is async-signal-safe; SIGALRM's default action ends the
    // process if the report below deadlocks.
    unsafe { libc::alarm(10) };
    {
        // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() };
        let thread = std::thread::current();
        eprintln!(
            "gpu-arena: fatal signal {sig} at address {addr:p} on thread {:?} ({:?})\n{}",
            thread.name().unwrap_or("unnamed"),
            thread.id(),
            std::backtrace::Backtrace::force_capture()
        );
    }
    // SAFETY: resetting a signal to its default action and raising it again
    // are async-signal-safe calls with valid arguments.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs the handler for the fatal signals (every thread).
pub fn install() {
    // SAFETY: the sigaction structure is fully initialised (zeroed, then the
    // handler, flags and an empty mask set) before it is passed.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_fatal;
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL] {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}
