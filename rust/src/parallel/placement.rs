//! Where a team's members run: each on a core of its own.
//!
//! The members of a team made of pool workers (the caller blocked meanwhile)
//! wait for each other every step, so two of them on one core run at the speed
//! of one, each spinning through the other's time slice before it sleeps.
//! Linux put them there: after a pause in the calls (the user's own work, or a
//! call that ran on the calling thread alone) the workers sleep, the first one
//! woken wakes the next, and the scheduler placed the woken thread on its
//! waker's core while the other core sat idle, for whole calls. Measured on 2
//! vCPUs of a Zen 5 under KVM, B = 1, T = 100, I = 1, H = 512, layer calls
//! with 2 ms of other work between them: 4.64 ms median unbound (the team's
//! waits ended asleep, so the calls fell back to one thread), 2.49 ms bound.
//!
//! So when the pool has one worker per CPU the process may use (its affinity
//! mask when the pool is built) and a team takes every worker, worker i is
//! bound to the i-th of those CPUs as it joins, as OpenMP's `OMP_PROC_BIND`
//! binds its threads, and stays bound (through later calls' other work)
//! until it joins a team that is not bound. A batch split into as many
//! chunks as workers counts as such a team: without a barrier its workers
//! still shared one core after a pause, for some ten calls (B = 64, T = 20,
//! I = 512, H = 128: forwards at 3.8 ms, one thread's speed, against 2.0). A smaller team is not bound: it
//! would always sit on the first CPUs, in every process that runs one. A
//! team led by the calling thread (`split::run_team_here`) is not bound
//! either: the caller is the user's thread, free to run anywhere, and a bound
//! worker on the caller's core made every step wait (`LSTM.step` at H = 512:
//! 89 µs median unbound, 109–125 bound). A worker changes its binding only
//! when it goes from one kind of team to the other, so calls of one kind
//! make no system call. The mask given back on unbinding is the one read
//! when the pool was built: a later change of the threads' affinity by hand
//! (`taskset -p` on them) is not followed.
//!
//! `LSTM_FAST_BIND=0` turns the binding off (for measurements; the same bits
//! either way). Only Linux binds; elsewhere this does nothing.

use std::cell::RefCell;
use std::sync::Arc;

use crate::setting::Setting;

/// Whether pools bind their workers: `LSTM_FAST_BIND` = 0 or 1 (default 1),
/// read when the first pool is built.
static BIND: Setting<bool> = Setting::new(&[false, true]);

fn binding_on() -> bool {
    BIND.get(|| Setting::env_choice("LSTM_FAST_BIND", &[0u8, 1], 1) == 1)
}

/// The CPUs a pool of `threads` binds its workers to, one each, or None: the
/// process may run on a different number of CPUs (a pool sized by the user
/// for a share of the machine, which other processes share too), the pool has
/// one thread, the binding is off, or the system is not Linux.
pub fn cores_for(threads: usize) -> Option<Arc<[usize]>> {
    if threads < 2 || !binding_on() {
        return None;
    }
    let cpus = sys::allowed_cpus()?;
    (cpus.len() == threads).then(|| cpus.into())
}

/// A worker's place: its own CPU, the CPUs it may run on when unbound, and
/// whether it is bound now.
struct Place {
    own: usize,
    all: Arc<[usize]>,
    bound: bool,
}

thread_local! {
    static PLACE: RefCell<Option<Place>> = const { RefCell::new(None) };
}

/// Called on worker `index` as it starts, with its pool's [`cores_for`].
pub fn start_worker(index: usize, cores: Option<&Arc<[usize]>>) {
    let place = cores.and_then(|all| {
        all.get(index).map(|&own| Place {
            own,
            all: Arc::clone(all),
            bound: false,
        })
    });
    PLACE.with(|p| *p.borrow_mut() = place);
}

/// Binds the calling worker to its own CPU (`bound`) or frees it to run on all
/// of the process's CPUs; nothing on a thread that is not a binding pool's
/// worker, or that is already so. A refusal by the system leaves the thread
/// where it was (binding only places threads; it changes no result) and is
/// not tried again until the next change of kind.
pub fn hold_own_core(bound: bool) {
    PLACE.with(|p| {
        if let Some(place) = p.borrow_mut().as_mut() {
            if place.bound != bound {
                place.bound = bound;
                if bound {
                    sys::run_on(&[place.own]);
                } else {
                    sys::run_on(&place.all);
                }
            }
        }
    });
}

#[cfg(target_os = "linux")]
mod sys {
    use std::mem::{size_of, zeroed};

    /// The CPUs the calling thread may run on, in increasing order.
    pub fn allowed_cpus() -> Option<Vec<usize>> {
        // SAFETY: `set` is a plain bit set that the call fills, of the size
        // passed; 0 names the calling thread.
        let set = unsafe {
            let mut set: libc::cpu_set_t = zeroed();
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return None;
            }
            set
        };
        let cpus = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: c < CPU_SETSIZE, inside the set.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect::<Vec<_>>();
        (!cpus.is_empty()).then_some(cpus)
    }

    /// Restricts the calling thread to `cpus` (each below `CPU_SETSIZE`, as
    /// `allowed_cpus` gives them); a refusal is ignored (see `hold_own_core`).
    pub fn run_on(cpus: &[usize]) {
        // SAFETY: `set` is a plain bit set of the size passed, every CPU below
        // CPU_SETSIZE; 0 names the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = zeroed();
            for &c in cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn allowed_cpus() -> Option<Vec<usize>> {
        None
    }

    pub fn run_on(_: &[usize]) {}
}

#[cfg(test)]
mod tests {
    use super::{binding_on, cores_for, sys};

    #[test]
    fn a_pool_binds_only_when_it_has_one_worker_per_cpu() {
        assert_eq!(cores_for(0), None);
        assert_eq!(cores_for(1), None);
        let Some(allowed) = sys::allowed_cpus() else {
            return;
        };
        assert_eq!(cores_for(allowed.len() + 1), None);
        if allowed.len() >= 2 {
            assert_eq!(cores_for(allowed.len() - 1), None);
            let want = binding_on().then(|| allowed.clone().into());
            assert_eq!(cores_for(allowed.len()), want);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn members_bind_to_their_own_cpu_and_unbind_again() {
        use super::{hold_own_core, test_support};

        let allowed = sys::allowed_cpus().expect("the affinity of a Linux thread");
        // Not a worker: nothing changes.
        hold_own_core(true);
        assert_eq!(sys::allowed_cpus().as_ref(), Some(&allowed));
        let Some((pool, cores)) = test_support::binding_pool() else {
            return;
        };
        let bound = pool.broadcast(|_| {
            hold_own_core(true);
            // Twice: the second changes nothing.
            hold_own_core(true);
            sys::allowed_cpus()
        });
        for (i, got) in bound.iter().enumerate() {
            assert_eq!(got.as_deref(), Some(&[cores[i]][..]), "worker {i}");
        }
        let freed = pool.broadcast(|_| {
            hold_own_core(false);
            sys::allowed_cpus()
        });
        for (i, got) in freed.iter().enumerate() {
            assert_eq!(got.as_ref(), Some(&allowed), "worker {i}");
        }
    }
}

/// For the tests of the modules that bind (`split.rs`).
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod test_support {
    use std::sync::Arc;

    use super::{start_worker, sys};

    /// A pool of one worker per allowed CPU whose workers bind, and those
    /// CPUs; None with one CPU or where a sandbox refuses binding (seccomp,
    /// gVisor), which `hold_own_core` tolerates.
    pub fn binding_pool() -> Option<(rayon::ThreadPool, Arc<[usize]>)> {
        let allowed = sys::allowed_cpus()?;
        let first = allowed[0];
        let binds = std::thread::spawn(move || {
            sys::run_on(&[first]);
            sys::allowed_cpus() == Some(vec![first])
        })
        .join()
        .ok()?;
        if allowed.len() < 2 || !binds {
            return None;
        }
        let cores: Arc<[usize]> = allowed.into();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cores.len())
            .start_handler({
                let cores = Arc::clone(&cores);
                move |i| start_worker(i, Some(&cores))
            })
            .build()
            .ok()?;
        Some((pool, cores))
    }

    /// The CPUs the calling thread may run on.
    pub fn cpus() -> Option<Vec<usize>> {
        sys::allowed_cpus()
    }
}
