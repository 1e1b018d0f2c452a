//! Every buffer the engine allocates comes from here, and may be refused: an
//! allocation the system denies (an address-space limit, strict overcommit, a
//! container's memory limit) is [`Error::OutOfMemory`] naming the buffer and
//! its size, never an abort of the process. The rest of the engine makes no
//! vector with `vec!`, `collect`, `resize` or `clone` (the list of available
//! ISAs, at most three, aside; docs/design.md, "Memory").

use std::alloc::{alloc_zeroed, Layout};

use crate::error::{Error, Result};

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
