//! A process-wide choice among the values of an enum (the active ISA, the
//! forced split): read from the environment on first use, overridable by a
//! call. It is kept in an atomic as the value's position in the enum's list of
//! all values, so that a `fork()` can never catch it locked, and each enum maps
//! to and from its position in exactly one place, that list.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub struct Setting<T: 'static> {
    all: &'static [T],
    /// A position in `all`, or `UNSET` before the first use.
    position: AtomicUsize,
}

const UNSET: usize = usize::MAX;

impl<T: Copy + PartialEq> Setting<T> {
    /// A setting among `all`, which must list every value of `T`.
    pub const fn new(all: &'static [T]) -> Self {
        Setting {
            all,
            position: AtomicUsize::new(UNSET),
        }
    }

    /// The value last [`set`](Setting::set), else `initial()`, which is called
    /// at most once per setting unless two threads race to be first.
    pub fn get(&self, initial: impl FnOnce() -> T) -> T {
        if let Some(&value) = self.all.get(self.position.load(Relaxed)) {
            return value;
        }
        // A `set` that came first wins.
        let _ =
            self.position
                .compare_exchange(UNSET, self.position_of(initial()), Relaxed, Relaxed);
        self.all[self.position.load(Relaxed)]
    }

    pub fn set(&self, value: T) {
        self.position.store(self.position_of(value), Relaxed);
    }

    /// The environment variable `name` read as one of `choices`, else
    /// `default` (unset, not a number, or not a choice): the measurement
    /// settings' rule.
    pub fn env_choice(name: &str, choices: &[T], default: T) -> T
    where
        T: std::str::FromStr,
    {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|v| choices.contains(v))
            .unwrap_or(default)
    }

    fn position_of(&self, value: T) -> usize {
        self.all
            .iter()
            .position(|&v| v == value)
            .expect("a setting's list holds every value")
    }
}
