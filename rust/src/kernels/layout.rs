//! Where every (step, row) lives: the caller's layout of the per-row buffers
//! ([`Geometry`]), a chunk's rows ordered longest first ([`Slots`]), and the
//! pointer through which chunks write their own rows of shared outputs
//! ([`SharedMut`]).
//!
//! Rows of a chunk are ordered by length, longest first ("slots"), so the rows
//! still running at step s are always a prefix and padded steps cost nothing.

/// Where row (pos, b) lives in every per-(step, row) buffer: the caller's layout.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub steps: usize,
    pub batch: usize,
    pub hidden: usize,
    pub hidden_pad: usize,
    /// P, the width of the state h (the projection's rows; H without one),
    /// and P padded like H (Pp: rows of h in the state, the h_prev cache).
    pub state: usize,
    pub state_pad: usize,
    pub batch_major: bool,
    pub reverse: bool,
}

impl Geometry {
    /// Index of the (pos, b) row among the T·B rows of x, y and the caches.
    #[inline(always)]
    pub fn row(&self, pos: usize, b: usize) -> usize {
        if self.batch_major {
            b * self.steps + pos
        } else {
            pos * self.batch + b
        }
    }

    /// The time position a row of length `len` visits at iteration `s`.
    #[inline(always)]
    pub fn pos(&self, s: usize, len: usize) -> usize {
        if self.reverse {
            len - 1 - s
        } else {
            s
        }
    }
}

/// A raw pointer that may cross into rayon tasks.
///
/// Chunks of rows write disjoint rows of shared outputs whose rows interleave in
/// memory, which slices cannot express; each use says why it stays disjoint.
#[derive(Clone, Copy)]
pub struct SharedMut<E>(pub *mut E);
// SAFETY: only used to write rows that exactly one task owns (see each use).
unsafe impl<E: Send> Send for SharedMut<E> {}
// SAFETY: as above.
unsafe impl<E: Send> Sync for SharedMut<E> {}

impl<E> SharedMut<E> {
    pub fn null() -> Self {
        SharedMut(std::ptr::null_mut())
    }
}

/// A chunk's rows: batch indices and lengths, longest first.
pub struct Slots<'a> {
    pub rows: &'a [usize],
    pub lens: &'a [usize],
}

impl Slots<'_> {
    /// How many slots are still running at iteration `s` (a prefix).
    #[inline(always)]
    pub fn active(&self, s: usize) -> usize {
        self.lens.partition_point(|&len| len > s)
    }
}
