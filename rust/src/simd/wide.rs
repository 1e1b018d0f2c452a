//! Sums over a row in f64, a row normalised in f64, and the gradient through
//! a normalisation: the arithmetic of the LayerNorm LSTM's normalisations,
//! written with explicit AVX-512 and AVX2 code. Left to the compiler, the
//! one-pass sums came out as scalar f64 code with the partial sums in memory
//! (it paired each element's two sums in one register; M's forward took
//! 1.06× the time of two vectorised passes), and the two-pass sums were only
//! vectorised eight wide when called through a non-inlined function.
//!
//! Every function gives the bits of its scalar statement on every ISA:
//! element i goes into partial sum i mod [`PARTIALS`] (an AVX-512 vector of
//! f64 holds 8 of them, an AVX2 one 4), each partial sum takes its elements
//! in order with a separate multiply and add (no FMA: the scalar statement has
//! none), and [`combine`] adds the partial sums in one fixed order. Elements
//! past the last whole group of `PARTIALS` continue the same partial sums in
//! scalar code.

#[cfg(target_arch = "x86_64")]
use std::any::TypeId;

use super::vector::{Simd, SimdElement};

/// How many interleaved partial sums a row's f64 sums keep: enough
/// independent chains to hide the adder's latency (four AVX-512 vectors of
/// f64, eight AVX2 ones); with 8, one vector's chain of dependent adds bounded
/// the normalisations.
const PARTIALS: usize = 32;

/// The partial sums added in their fixed order: halves added element by
/// element until one is left (as vectors do it).
#[inline(always)]
fn combine(mut acc: [f64; PARTIALS]) -> f64 {
    let mut width = PARTIALS / 2;
    while width > 0 {
        for k in 0..width {
            acc[k] += acc[k + width];
        }
        width /= 2;
    }
    acc[0]
}

/// The rows a sum or a gradient row reads: `a`, and optionally a gain `g`
/// (each element of `a` times its gain, rounded to the element type, as the
/// gradient dx̂ = dy ⊙ gain is) and a second row `b`; `g` and `b` at least as
/// long as `a`.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a, E> {
    pub a: &'a [E],
    pub g: Option<&'a [E]>,
    pub b: Option<&'a [E]>,
}

impl<'a, E: SimdElement> Rows<'a, E> {
    /// The row `a` alone.
    pub fn of(a: &'a [E]) -> Self {
        Rows {
            a,
            g: None,
            b: None,
        }
    }

    /// u_i: a_i, times g_i when there is a gain (rounded to E), as f64.
    #[inline(always)]
    fn u(&self, i: usize) -> f64 {
        match self.g {
            Some(g) => (self.a[i] * g[i]).to_f64(),
            None => self.a[i].to_f64(),
        }
    }

    fn check(&self) {
        let n = self.a.len();
        let long = |r: Option<&[E]>| r.is_none_or(|r| r.len() >= n);
        assert!(
            long(self.g) && long(self.b),
            "wide: a gain or second row shorter than a"
        );
    }
}

/// (Σ (u_i − k), Σ (u_i − k)·w_i) in f64 over `rows`, u_i as [`Rows`] makes
/// it, w_i = b_i with a second row b, else u_i − k. With k a value of the
/// row and no b: the shifted sums of its mean and variance (shifted by a
/// value of the row, the variance Σu²/n − (Σu/n)² does not cancel away when
/// the mean is large against the spread). With k = 0, a gain and b = x̂: the
/// sum and dot product a normalisation's gradient needs.
///
/// # Safety
/// `S` is a vector type [`dispatch`](super::dispatch) runs kernels with
/// (`E::Scalar`, `E::Avx2` or `E::Avx512` of its element `E`), and the CPU
/// has its ISA: true inside a kernel that `dispatch` runs for `S`. The ISA's
/// code is chosen by the vector's size (64 bytes: AVX-512, 32: AVX2), which
/// another type implementing `Simd` need not match.
#[inline(always)]
pub(crate) unsafe fn pair_sums<S: Simd>(rows: Rows<'_, S::E>, k: f64) -> (f64, f64) {
    rows.check();
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU has S's ISA (the caller's contract), chosen by the
        // vector's size as `dispatch` chose it; `is` proves the element type.
        unsafe {
            if size_of::<S>() >= 64 {
                if let Some(r) = as_f32(rows) {
                    return x86::pair_sums_avx512(r, k);
                }
                if let Some(r) = as_f64(rows) {
                    return x86::pair_sums_avx512(r, k);
                }
            } else if size_of::<S>() >= 32 {
                if let Some(r) = as_f32(rows) {
                    return x86::pair_sums_avx2(r, k);
                }
                if let Some(r) = as_f64(rows) {
                    return x86::pair_sums_avx2(r, k);
                }
            }
        }
    }
    let mut s = [0.0f64; PARTIALS];
    let mut q = [0.0f64; PARTIALS];
    add_tail(rows, k, 0, &mut s, &mut q);
    (combine(s), combine(q))
}

/// The gradient through a normalisation, row by row: `out_i` =
/// r·((u_i − mean_u) − b_i·mean_ub) in f64, rounded once, u_i as [`Rows`]
/// makes it, b = x̂ (the normalised row) required; `out` holds a.len().
///
/// # Safety
/// As [`pair_sums`]; `out` is writable for a.len() elements and overlaps
/// none of the rows.
#[inline(always)]
pub(crate) unsafe fn gradient_row<S: Simd>(
    rows: Rows<'_, S::E>,
    out: *mut S::E,
    r: f64,
    mean_u: f64,
    mean_ub: f64,
) {
    rows.check();
    assert!(
        rows.b.is_some(),
        "gradient_row: the normalised row is missing"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as in `pair_sums`; `out` is forwarded.
        unsafe {
            let m = [r, mean_u, mean_ub];
            if size_of::<S>() >= 64 {
                if let Some(rows) = as_f32(rows) {
                    return x86::gradient_avx512(rows, out.cast::<f32>(), m);
                }
                if let Some(rows) = as_f64(rows) {
                    return x86::gradient_avx512(rows, out.cast::<f64>(), m);
                }
            } else if size_of::<S>() >= 32 {
                if let Some(rows) = as_f32(rows) {
                    return x86::gradient_avx2(rows, out.cast::<f32>(), m);
                }
                if let Some(rows) = as_f64(rows) {
                    return x86::gradient_avx2(rows, out.cast::<f64>(), m);
                }
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { gradient_tail(rows, out, 0, [r, mean_u, mean_ub]) }
}

/// `out_i = (a_i − mean)·r` in f64, rounded once to the element type, for
/// the `n` elements from `a` into `out` (which may be `a`: each element is
/// read before it is written).
///
/// # Safety
/// As [`pair_sums`]; `a` is readable and `out` writable for `n` elements.
#[inline(always)]
pub(crate) unsafe fn normalise_row<S: Simd>(
    a: *const S::E,
    out: *mut S::E,
    n: usize,
    mean: f64,
    r: f64,
) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as in `pair_sums`; the pointers are forwarded.
        unsafe {
            if size_of::<S>() >= 64 {
                if is::<S::E, f32>() {
                    return x86::normalise_avx512(a.cast::<f32>(), out.cast::<f32>(), n, mean, r);
                }
                if is::<S::E, f64>() {
                    return x86::normalise_avx512(a.cast::<f64>(), out.cast::<f64>(), n, mean, r);
                }
            } else if size_of::<S>() >= 32 {
                if is::<S::E, f32>() {
                    return x86::normalise_avx2(a.cast::<f32>(), out.cast::<f32>(), n, mean, r);
                }
                if is::<S::E, f64>() {
                    return x86::normalise_avx2(a.cast::<f64>(), out.cast::<f64>(), n, mean, r);
                }
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { normalise_tail(a, out, 0, n, mean, r) }
}

/// Elements `from..` of the rows continuing the partial sums `s` and `q`
/// (element i into partial sum i mod `PARTIALS`): the scalar statement of
/// [`pair_sums`], and the vector paths' tail.
#[inline(always)]
fn add_tail<E: SimdElement>(
    rows: Rows<'_, E>,
    k: f64,
    from: usize,
    s: &mut [f64; PARTIALS],
    q: &mut [f64; PARTIALS],
) {
    for i in from..rows.a.len() {
        let u = rows.u(i) - k;
        let w = rows.b.map_or(u, |b| b[i].to_f64());
        s[i % PARTIALS] += u;
        q[i % PARTIALS] += u * w;
    }
}

/// Elements `from..` of [`gradient_row`] in scalar code; `m` = [r, mean_u,
/// mean_ub].
///
/// # Safety
/// As [`gradient_row`].
#[inline(always)]
unsafe fn gradient_tail<E: SimdElement>(rows: Rows<'_, E>, out: *mut E, from: usize, m: [f64; 3]) {
    let b = rows.b.unwrap_or(&[]);
    for (i, x) in b.iter().enumerate().take(rows.a.len()).skip(from) {
        let g = m[0] * ((rows.u(i) - m[1]) - x.to_f64() * m[2]);
        // SAFETY: i < a.len(), which `out` holds (the caller's contract).
        unsafe { *out.add(i) = E::from_f64(g) };
    }
}

/// Elements `from..n` of [`normalise_row`] in scalar code.
///
/// # Safety
/// As [`normalise_row`].
#[inline(always)]
unsafe fn normalise_tail<E: SimdElement>(
    a: *const E,
    out: *mut E,
    from: usize,
    n: usize,
    mean: f64,
    r: f64,
) {
    for i in from..n {
        // SAFETY: i < n, within both rows (the caller's contract).
        unsafe { *out.add(i) = E::from_f64(((*a.add(i)).to_f64() - mean) * r) };
    }
}

/// Whether `A` is `B`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn is<A: 'static, B: 'static>() -> bool {
    TypeId::of::<A>() == TypeId::of::<B>()
}

/// The rows as f32 when `E` is f32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_f32<E: 'static>(rows: Rows<'_, E>) -> Option<Rows<'_, f32>> {
    // SAFETY: E is f32 (checked).
    is::<E, f32>().then(|| unsafe { cast(rows) })
}

/// The rows as f64 when `E` is f64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_f64<E: 'static>(rows: Rows<'_, E>) -> Option<Rows<'_, f64>> {
    // SAFETY: E is f64 (checked).
    is::<E, f64>().then(|| unsafe { cast(rows) })
}

/// # Safety
/// `E` and `F` are the same type.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn cast<E, F>(rows: Rows<'_, E>) -> Rows<'_, F> {
    // SAFETY: the same type (the caller's contract), so the same slices.
    let c = |r: &[E]| unsafe { std::slice::from_raw_parts(r.as_ptr().cast::<F>(), r.len()) };
    Rows {
        a: c(rows.a),
        g: rows.g.map(c),
        b: rows.b.map(c),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{add_tail, combine, gradient_tail, normalise_tail, Rows, PARTIALS};
    use crate::simd::SimdElement;

    /// A vector of f64 lanes of one ISA: what the sums need of it.
    pub(super) trait F64Vector: Copy {
        const LANES: usize;
        unsafe fn splat(v: f64) -> Self;
        unsafe fn add(self, o: Self) -> Self;
        unsafe fn sub(self, o: Self) -> Self;
        unsafe fn mul(self, o: Self) -> Self;
        unsafe fn store(self, p: *mut f64);
    }

    /// An element type read into and written from a [`F64Vector`] vector: f32
    /// widened exactly (and rounded once on the way back), f64 as it is.
    pub(super) trait Lanes<W: F64Vector>: SimdElement {
        /// `W::LANES` elements from `p`, as f64.
        unsafe fn widen(p: *const Self) -> W;
        /// `W::LANES` products p_i·g_i, each rounded to the element type, as
        /// f64.
        unsafe fn widen_product(p: *const Self, g: *const Self) -> W;
        /// `w` rounded to `W::LANES` elements at `p`.
        unsafe fn narrow(w: W, p: *mut Self);
    }

    // SAFETY (every intrinsic below): only reached from the `#[target_feature]`
    // entry points of this module, after the CPU was checked (the public
    // functions' contract); the pointers' bounds are their callers'.
    impl F64Vector for __m512d {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(v: f64) -> Self {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_set1_pd(v) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_add_pd(self, o) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_sub_pd(self, o) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_mul_pd(self, o) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_storeu_pd(p, self) }
        }
    }

    impl F64Vector for __m256d {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn splat(v: f64) -> Self {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_set1_pd(v) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_add_pd(self, o) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_sub_pd(self, o) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_mul_pd(self, o) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_storeu_pd(p, self) }
        }
    }

    impl Lanes<__m512d> for f32 {
        #[inline(always)]
        unsafe fn widen_product(p: *const f32, g: *const f32) -> __m512d {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_cvtps_pd(_mm256_mul_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(g))) }
        }
        #[inline(always)]
        unsafe fn widen(p: *const f32) -> __m512d {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_cvtps_pd(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn narrow(w: __m512d, p: *mut f32) {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_storeu_ps(p, _mm512_cvtpd_ps(w)) }
        }
    }

    impl Lanes<__m512d> for f64 {
        #[inline(always)]
        unsafe fn widen_product(p: *const f64, g: *const f64) -> __m512d {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_mul_pd(_mm512_loadu_pd(p), _mm512_loadu_pd(g)) }
        }
        #[inline(always)]
        unsafe fn widen(p: *const f64) -> __m512d {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn narrow(w: __m512d, p: *mut f64) {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm512_storeu_pd(p, w) }
        }
    }

    impl Lanes<__m256d> for f32 {
        #[inline(always)]
        unsafe fn widen_product(p: *const f32, g: *const f32) -> __m256d {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_cvtps_pd(_mm_mul_ps(_mm_loadu_ps(p), _mm_loadu_ps(g))) }
        }
        #[inline(always)]
        unsafe fn widen(p: *const f32) -> __m256d {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_cvtps_pd(_mm_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn narrow(w: __m256d, p: *mut f32) {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm_storeu_ps(p, _mm256_cvtpd_ps(w)) }
        }
    }

    impl Lanes<__m256d> for f64 {
        #[inline(always)]
        unsafe fn widen_product(p: *const f64, g: *const f64) -> __m256d {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_mul_pd(_mm256_loadu_pd(p), _mm256_loadu_pd(g)) }
        }
        #[inline(always)]
        unsafe fn widen(p: *const f64) -> __m256d {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn narrow(w: __m256d, p: *mut f64) {
            // SAFETY: see the first impl of `F64Vector`.
            unsafe { _mm256_storeu_pd(p, w) }
        }
    }

    /// u_i for the `W::LANES` elements from `at`, as [`Rows`] makes them.
    ///
    /// # Safety
    /// The rows hold `at + W::LANES` elements.
    #[inline(always)]
    unsafe fn u<W: F64Vector, E: Lanes<W>>(rows: &Rows<'_, E>, at: usize) -> W {
        // SAFETY: forwarded.
        unsafe {
            match rows.g {
                Some(g) => E::widen_product(rows.a.as_ptr().add(at), g.as_ptr().add(at)),
                None => E::widen(rows.a.as_ptr().add(at)),
            }
        }
    }

    /// [`super::pair_sums`] on vectors of `W`: partial sums g·LANES.. in
    /// vector g (at most 8 vectors: AVX2's 4 lanes).
    #[inline(always)]
    unsafe fn pair_sums_on<W: F64Vector, E: Lanes<W>>(rows: Rows<'_, E>, k: f64) -> (f64, f64) {
        const { assert!(PARTIALS.is_multiple_of(W::LANES) && PARTIALS / W::LANES <= 8) };
        let vectors = PARTIALS / W::LANES;
        let whole = rows.a.len() / PARTIALS * PARTIALS;
        // SAFETY: every load is of elements below `whole` ≤ a.len() (the
        // other rows are at least as long: `Rows::check`); the stores fill
        // the PARTIALS-long arrays.
        unsafe {
            let kv = W::splat(k);
            let zero = W::splat(0.0);
            let (mut s, mut q) = ([zero; 8], [zero; 8]);
            let mut i = 0;
            while i < whole {
                for v in 0..vectors {
                    let at = i + v * W::LANES;
                    let u = u::<W, E>(&rows, at).sub(kv);
                    let w = match rows.b {
                        Some(b) => E::widen(b.as_ptr().add(at)),
                        None => u,
                    };
                    s[v] = s[v].add(u);
                    q[v] = q[v].add(u.mul(w));
                }
                i += PARTIALS;
            }
            let (mut fs, mut fq) = ([0.0f64; PARTIALS], [0.0f64; PARTIALS]);
            for v in 0..vectors {
                s[v].store(fs.as_mut_ptr().add(v * W::LANES));
                q[v].store(fq.as_mut_ptr().add(v * W::LANES));
            }
            add_tail(rows, k, whole, &mut fs, &mut fq);
            (combine(fs), combine(fq))
        }
    }

    /// [`super::normalise_row`] on vectors of `W`.
    #[inline(always)]
    unsafe fn normalise_on<W: F64Vector, E: Lanes<W>>(
        a: *const E,
        out: *mut E,
        n: usize,
        mean: f64,
        r: f64,
    ) {
        let whole = n / W::LANES * W::LANES;
        // SAFETY: elements below `whole` ≤ n (the caller's bounds).
        unsafe {
            let (mv, rv) = (W::splat(mean), W::splat(r));
            let mut i = 0;
            while i < whole {
                E::narrow(E::widen(a.add(i)).sub(mv).mul(rv), out.add(i));
                i += W::LANES;
            }
            normalise_tail(a, out, whole, n, mean, r);
        }
    }

    /// [`super::gradient_row`] on vectors of `W`; `m` = [r, mean_u, mean_ub].
    #[inline(always)]
    unsafe fn gradient_on<W: F64Vector, E: Lanes<W>>(rows: Rows<'_, E>, out: *mut E, m: [f64; 3]) {
        let n = rows.a.len();
        let whole = n / W::LANES * W::LANES;
        let b = rows.b.unwrap_or(&[]);
        // SAFETY: elements below `whole` ≤ n of every row (`Rows::check`, b
        // given: `gradient_row`) and of `out` (the caller's bounds).
        unsafe {
            // Not `m.map(W::splat)`: an intrinsic in a closure may not be
            // inlined into this ISA's code.
            let (r, mu, mub) = (W::splat(m[0]), W::splat(m[1]), W::splat(m[2]));
            let mut i = 0;
            while i < whole {
                let x = E::widen(b.as_ptr().add(i));
                let g = r.mul(u::<W, E>(&rows, i).sub(mu).sub(x.mul(mub)));
                E::narrow(g, out.add(i));
                i += W::LANES;
            }
            gradient_tail(rows, out, whole, m);
        }
    }

    /// # Safety
    /// The CPU has avx512f.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn pair_sums_avx512<E: Lanes<__m512d>>(
        rows: Rows<'_, E>,
        k: f64,
    ) -> (f64, f64) {
        // SAFETY: forwarded.
        unsafe { pair_sums_on::<__m512d, E>(rows, k) }
    }

    /// # Safety
    /// The CPU has avx2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pair_sums_avx2<E: Lanes<__m256d>>(
        rows: Rows<'_, E>,
        k: f64,
    ) -> (f64, f64) {
        // SAFETY: forwarded.
        unsafe { pair_sums_on::<__m256d, E>(rows, k) }
    }

    /// # Safety
    /// The CPU has avx512f; the rows' bounds as in `normalise_row`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn normalise_avx512<E: Lanes<__m512d>>(
        a: *const E,
        out: *mut E,
        n: usize,
        mean: f64,
        r: f64,
    ) {
        // SAFETY: forwarded.
        unsafe { normalise_on::<__m512d, E>(a, out, n, mean, r) }
    }

    /// # Safety
    /// The CPU has avx2; the rows' bounds as in `normalise_row`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn normalise_avx2<E: Lanes<__m256d>>(
        a: *const E,
        out: *mut E,
        n: usize,
        mean: f64,
        r: f64,
    ) {
        // SAFETY: forwarded.
        unsafe { normalise_on::<__m256d, E>(a, out, n, mean, r) }
    }

    /// # Safety
    /// The CPU has avx512f; `out` as in `gradient_row`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gradient_avx512<E: Lanes<__m512d>>(
        rows: Rows<'_, E>,
        out: *mut E,
        m: [f64; 3],
    ) {
        // SAFETY: forwarded.
        unsafe { gradient_on::<__m512d, E>(rows, out, m) }
    }

    /// # Safety
    /// The CPU has avx2; `out` as in `gradient_row`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gradient_avx2<E: Lanes<__m256d>>(
        rows: Rows<'_, E>,
        out: *mut E,
        m: [f64; 3],
    ) {
        // SAFETY: forwarded.
        unsafe { gradient_on::<__m256d, E>(rows, out, m) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{dispatch, Isa, Kernel};

    struct Sums<'a, E> {
        rows: Rows<'a, E>,
        k: f64,
    }

    impl<E: SimdElement> Kernel<E> for Sums<'_, E> {
        type Output = (f64, f64);
        #[inline(always)]
        fn run<S: Simd<E = E>>(self) -> (f64, f64) {
            // SAFETY: `dispatch` runs this for S on a CPU that has S's ISA.
            unsafe { pair_sums::<S>(self.rows, self.k) }
        }
    }

    struct Normalise<'a, E> {
        a: &'a [E],
        out: &'a mut [E],
        mean: f64,
        r: f64,
    }

    impl<E: SimdElement> Kernel<E> for Normalise<'_, E> {
        type Output = ();
        #[inline(always)]
        fn run<S: Simd<E = E>>(self) {
            let n = self.a.len();
            // SAFETY: as above; both rows hold n elements.
            unsafe {
                normalise_row::<S>(self.a.as_ptr(), self.out.as_mut_ptr(), n, self.mean, self.r)
            }
        }
    }

    struct Gradient<'a, E> {
        rows: Rows<'a, E>,
        out: &'a mut [E],
        m: [f64; 3],
    }

    impl<E: SimdElement> Kernel<E> for Gradient<'_, E> {
        type Output = ();
        #[inline(always)]
        fn run<S: Simd<E = E>>(self) {
            let [r, mu, mub] = self.m;
            // SAFETY: as above; `out` holds a.len() elements of its own.
            unsafe { gradient_row::<S>(self.rows, self.out.as_mut_ptr(), r, mu, mub) }
        }
    }

    /// The statement: element i into partial sum i mod PARTIALS, in order.
    fn statement<E: SimdElement>(rows: Rows<'_, E>, k: f64) -> (f64, f64) {
        let (mut s, mut q) = ([0.0; PARTIALS], [0.0; PARTIALS]);
        add_tail(rows, k, 0, &mut s, &mut q);
        (combine(s), combine(q))
    }

    fn values<E: SimdElement>(n: usize, seed: u64) -> Vec<E> {
        // Values of mixed magnitude and sign, so that a changed order of
        // additions changes the rounding.
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                E::from_f64((u - 0.3) * 10f64.powi((x % 7) as i32 - 3))
            })
            .collect()
    }

    fn same_bits<E: SimdElement>() {
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            for n in [1, 2, 7, 8, 31, 32, 33, 61, 64, 100, 244, 1024, 1037] {
                let (a, g, b) = (
                    values::<E>(n, 1),
                    values::<E>(n + 3, 2),
                    values::<E>(n + 1, 3),
                );
                let (g, b) = (&g[..], &b[..]);
                let cases = [
                    (Rows::of(&a[..]), a[0].to_f64()),
                    (Rows::of(&a[..]), 0.0),
                    (
                        Rows {
                            a: &a,
                            g: None,
                            b: Some(b),
                        },
                        0.0,
                    ),
                    (
                        Rows {
                            a: &a,
                            g: Some(g),
                            b: Some(b),
                        },
                        0.0,
                    ),
                    (
                        Rows {
                            a: &a,
                            g: Some(g),
                            b: None,
                        },
                        0.5,
                    ),
                ];
                for (rows, k) in cases {
                    let got = dispatch(isa, Sums { rows, k });
                    let want = statement(rows, k);
                    assert_eq!(got.0.to_bits(), want.0.to_bits(), "{isa:?} n={n} sum");
                    assert_eq!(got.1.to_bits(), want.1.to_bits(), "{isa:?} n={n} second");
                }
                let (mean, r) = (0.123, 3.7);
                let mut out = vec![E::ZERO; n];
                dispatch(
                    isa,
                    Normalise {
                        a: &a,
                        out: &mut out,
                        mean,
                        r,
                    },
                );
                for (o, x) in out.iter().zip(&a) {
                    let want = E::from_f64((x.to_f64() - mean) * r);
                    assert_eq!(
                        o.to_f64().to_bits(),
                        want.to_f64().to_bits(),
                        "{isa:?} n={n}"
                    );
                }
                let m = [1.7, -0.03, 0.41];
                for gain in [None, Some(g)] {
                    let rows = Rows {
                        a: &a,
                        g: gain,
                        b: Some(b),
                    };
                    let mut out = vec![E::ZERO; n];
                    dispatch(
                        isa,
                        Gradient {
                            rows,
                            out: &mut out,
                            m,
                        },
                    );
                    for (i, o) in out.iter().enumerate() {
                        // dx̂ rounded to E first, as the kernels make it.
                        let u = gain.map_or(a[i], |g| a[i] * g[i]).to_f64();
                        let want = E::from_f64(m[0] * ((u - m[1]) - b[i].to_f64() * m[2]));
                        assert_eq!(
                            o.to_f64().to_bits(),
                            want.to_f64().to_bits(),
                            "{isa:?} n={n} i={i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_isa_gives_the_statements_bits_f32() {
        same_bits::<f32>();
    }

    #[test]
    fn every_isa_gives_the_statements_bits_f64() {
        same_bits::<f64>();
    }

    #[test]
    fn normalises_in_place() {
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            let a = values::<f32>(77, 3);
            let mut v = a.clone();
            struct InPlace<'a>(&'a mut [f32]);
            impl Kernel<f32> for InPlace<'_> {
                type Output = ();
                #[inline(always)]
                fn run<S: Simd<E = f32>>(self) {
                    let (p, n) = (self.0.as_mut_ptr(), self.0.len());
                    // SAFETY: as above; one row of n elements, read before written.
                    unsafe { normalise_row::<S>(p, p, n, -1.5, 0.25) }
                }
            }
            dispatch(isa, InPlace(&mut v));
            for (o, x) in v.iter().zip(&a) {
                assert_eq!(*o, ((f64::from(*x) + 1.5) * 0.25) as f32, "{isa:?}");
            }
        }
    }
}
