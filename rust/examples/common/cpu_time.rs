//! CPU time for the examples' timings (included with `#[path]` by each
//! example that needs it): time spent preempted on a shared machine does not
//! count. Linux's clocks; wall-clock time elsewhere.

#![allow(dead_code)] // each example uses one of the two clocks

use std::sync::OnceLock;
use std::time::Instant;

const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

/// Seconds of CPU time the calling thread has used.
pub fn thread_seconds() -> f64 {
    cpu_seconds(CLOCK_THREAD_CPUTIME_ID)
}

/// Seconds of CPU time the whole process has used.
pub fn process_seconds() -> f64 {
    cpu_seconds(CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_seconds(clock: i32) -> f64 {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
        }
        let mut t = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `t` is a valid timespec to write.
        if unsafe { clock_gettime(clock, &mut t) } == 0 {
            return t.sec as f64 + t.nsec as f64 * 1e-9;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = clock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}
