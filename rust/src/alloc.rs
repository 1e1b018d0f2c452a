//! Every buffer the engine allocates comes from here, and may be refused: an
//! allocation the system denies (an address-space limit, strict overcommit, a
//! container's memory limit) is [`Error::OutOfMemory`] naming the buffer and
//! its size, never an abort of the process. The rest of the engine makes no
//! vector with `vec!`, `collect`, `resize` or `clone` (the list of available
//! ISAs, at most three, aside; docs/design.md, "Memory").
//!
//! [`LineAligned`], the crate's global allocator, starts every block of
//! [`LINE_ALIGNED_FROM`] bytes or more on a cache line.

use std::alloc::{alloc_zeroed, GlobalAlloc, Layout, System};

use crate::error::{Error, Result};
use crate::tuning::{CACHE_LINE, LINE_ALIGNED_FROM};

/// The system allocator, with blocks of at least [`LINE_ALIGNED_FROM`] bytes
/// aligned to [`CACHE_LINE`] bytes.
///
/// Why: the kernels stream packed panels whose rows are one or two cache lines
/// (4 vectors of a gate tile); glibc hands large blocks out 16 bytes past a
/// line, so every row then straddles one more line than it needs, a vector
/// load in two of them splits, and a panel slice kept in L1 occupies up to
/// twice its lines. Aligning the block fixes every buffer at once: panels,
/// packed rows, projections, states, whatever the buffer's element type.
pub struct LineAligned;

/// `layout`, aligned to a cache line when it is large enough to matter. Both
/// `alloc` and `dealloc` see the same layout for a block (Rust passes back the
/// layout it allocated with), so this maps them to the same System layout.
fn line_layout(layout: Layout) -> Layout {
    if layout.size() >= LINE_ALIGNED_FROM && layout.align() < CACHE_LINE {
        // A valid layout stays valid with a larger power-of-two alignment
        // unless its size rounded up to it overflows isize: keep it then.
        Layout::from_size_align(layout.size(), CACHE_LINE).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every request goes to `System` with `line_layout` of its layout,
// which has the same size and an alignment at least the requested one, so
// each block satisfies its request; `dealloc` and `realloc` hand `System` the
// same `line_layout` of the same layout the block was allocated with.
unsafe impl GlobalAlloc for LineAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: layout has a non-zero size (the caller's contract); so has
        // line_layout(layout).
        unsafe { System.alloc(line_layout(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(line_layout(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from `alloc`/`alloc_zeroed`/`realloc` of this
        // allocator with `layout`, so from System with line_layout(layout).
        unsafe { System.dealloc(ptr, line_layout(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = line_layout(layout);
        let Ok(new) = Layout::from_size_align(new_size, layout.align()).map(line_layout) else {
            return std::ptr::null_mut();
        };
        if old.align() == new.align() {
            // SAFETY: ptr is System's block of `old`; new_size is non-zero and
            // valid for that alignment (the caller's contract).
            return unsafe { System.realloc(ptr, old, new_size) };
        }
        // The alignment changes across LINE_ALIGNED_FROM: a new block.
        // SAFETY: `new` has a non-zero size; both blocks are live and distinct
        // and hold at least min(old, new) bytes; ptr is System's block of `old`.
        unsafe {
            let fresh = System.alloc(new);
            if !fresh.is_null() {
                std::ptr::copy_nonoverlapping(ptr, fresh, old.size().min(new_size));
                System.dealloc(ptr, old);
            }
            fresh
        }
    }
}

/// Types whose all-zero bytes are a valid value (their zero), so that a
/// zeroed buffer of them can come straight from the allocator.
///
/// # Safety
/// Implement only for types made of numbers (or of plain bytes) alone.
pub unsafe trait Zeroable: Copy {}

// SAFETY: all-zero bytes are 0.0 (f32, f64) and 0 (usize).
unsafe impl Zeroable for f32 {}
// SAFETY: as above.
unsafe impl Zeroable for f64 {}
// SAFETY: as above.
unsafe impl Zeroable for usize {}

/// The number of elements of a buffer of `shape`, and its layout for `T`, or
/// the error naming `what` when the size overflows the address space.
fn layout<T>(shape: &[usize], what: &str) -> Result<(usize, Layout)> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|len| Some((len, Layout::array::<T>(len).ok()?)))
        .ok_or_else(|| {
            Error::OutOfMemory(format!(
                "{what}: a buffer of {shape:?} elements of {} bytes overflows the address space",
                size_of::<T>()
            ))
        })
}

fn refused(what: &str, layout: Layout) -> Error {
    Error::OutOfMemory(format!(
        "out of memory: could not allocate {what} ({} bytes)",
        layout.size()
    ))
}

/// A buffer of `shape` (its elements: the product) holding zeros: what
/// `vec![zero; len]` gives (the same zeroed request to the allocator), or
/// [`Error::OutOfMemory`] naming `what`.
pub fn zeroed<T: Zeroable>(shape: &[usize], what: &str) -> Result<Vec<T>> {
    const { assert!(size_of::<T>() > 0, "no zero-sized Zeroable") };
    let (len, layout) = layout::<T>(shape, what)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout's size is len · size_of::<T>() > 0.
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(refused(what, layout));
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `len`
    // elements of T, which is the layout a Vec of capacity `len` has; all its
    // bytes are zero, a valid T (`Zeroable`), so all `len` elements are
    // initialised.
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// An empty vector with room for `len` elements (filled with `push` or
/// `extend`, which then never reallocate), or [`Error::OutOfMemory`].
pub fn with_capacity<T>(len: usize, what: &str) -> Result<Vec<T>> {
    let (_, layout) = layout::<T>(&[len], what)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| refused(what, layout))?;
    Ok(v)
}

/// The items of `iter` in a vector allocated as by [`with_capacity`].
pub fn collect<T>(iter: impl ExactSizeIterator<Item = T>, what: &str) -> Result<Vec<T>> {
    let mut v = with_capacity(iter.len(), what)?;
    v.extend(iter);
    Ok(v)
}

/// [`collect`] of results: the items, or the first error.
pub fn try_collect<T>(
    iter: impl ExactSizeIterator<Item = Result<T>>,
    what: &str,
) -> Result<Vec<T>> {
    let mut v = with_capacity(iter.len(), what)?;
    for item in iter {
        v.push(item?);
    }
    Ok(v)
}
