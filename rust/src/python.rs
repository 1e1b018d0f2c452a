//! The only file that knows about Python: borrows NumPy arrays as slices,
//! releases the GIL around every computation, and turns engine errors into
//! exceptions (`impl From<Error> for PyErr`, the one place that does).
//!
//! The Python layer (`lstm_fast/functional.py`) has already checked shapes,
//! resolved the dtype and made every array C-contiguous; here we only borrow.
//! Arguments travel as named bundles, not positions: each struct below reads
//! its fields as attributes of one Python object (the names are the contract,
//! shared with `lstm_fast/_bundles.py` and `_core.pyi`), and the dtype is
//! chosen once, from `seq.x`, by which variant of [`AnySequence`] the
//! sequence extracts as.

use numpy::{
    Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;

use crate::{Cache, CacheRef, Dims, Error, Float, Grads, Isa, Outputs, Seeds, Sequence};

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Value(msg) => PyValueError::new_err(msg),
            Error::TooLarge(msg) => PyMemoryError::new_err(msg),
        }
    }
}

/// `obj` as an array of `E`, or a TypeError that names both dtypes.
fn array_of<'a, 'py, E: Element>(
    obj: Borrowed<'a, 'py, PyAny>,
) -> PyResult<Borrowed<'a, 'py, PyArrayDyn<E>>> {
    obj.cast::<PyArrayDyn<E>>().map_err(|_| {
        let got = match obj.cast::<PyUntypedArray>() {
            Ok(array) => format!("a {} array", array.dtype()),
            Err(_) => obj.get_type().to_string(),
        };
        let want = numpy::dtype::<E>(obj.py());
        PyTypeError::new_err(format!("expected a {want} array, got {got}"))
    })
}

// rust-numpy's own extraction of borrowed arrays panics when the borrow
// conflicts (an output that aliases an input, a read-only output); these two
// wrappers make every such misuse of `_core` an exception instead.

/// An input array of the compute dtype, borrowed for reading.
struct In<'py, E: Element>(PyReadonlyArrayDyn<'py, E>);

impl<'a, 'py, E: Element> FromPyObject<'a, 'py> for In<'py, E> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let array = array_of::<E>(obj)?;
        let array = array
            .try_readonly()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(In(array))
    }
}

/// An output array of the compute dtype, borrowed for writing.
struct Out<'py, E: Element>(PyReadwriteArrayDyn<'py, E>);

impl<'a, 'py, E: Element> FromPyObject<'a, 'py> for Out<'py, E> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let array = array_of::<E>(obj)?;
        let array = array
            .try_readwrite()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Out(array))
    }
}

/// `lengths` (int64) as the engine takes them: one `usize` per batch row.
struct Lengths(Vec<usize>);

impl<'a, 'py> FromPyObject<'a, 'py> for Lengths {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let lengths = obj.extract::<In<'py, i64>>()?;
        let lengths = lengths.0.as_array().into_iter().map(|&v| {
            usize::try_from(v)
                .map_err(|_| PyValueError::new_err(format!("lengths must be >= 0, got {v}")))
        });
        Ok(Lengths(lengths.collect::<PyResult<_>>()?))
    }
}

fn slice<'a, E: Element>(name: &str, a: &'a In<'_, E>) -> PyResult<&'a [E]> {
    a.0.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous and aligned")))
}

fn opt_slice<'a, E: Element>(name: &str, a: &'a Option<In<'_, E>>) -> PyResult<Option<&'a [E]>> {
    a.as_ref().map(|a| slice(name, a)).transpose()
}

fn slice_mut<'a, E: Element>(name: &str, a: &'a mut Out<'_, E>) -> PyResult<&'a mut [E]> {
    a.0.as_slice_mut()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous and aligned")))
}

/// The engine's [`Sequence`], read from a `_bundles.Sequence` (`functional._Args`).
#[derive(FromPyObject)]
struct SequenceArrays<'py, E: Element> {
    x: In<'py, E>,
    w_ih: In<'py, E>,
    w_hh: In<'py, E>,
    bias: Option<In<'py, E>>,
    h0: Option<In<'py, E>>,
    c0: Option<In<'py, E>>,
    lengths: Option<Lengths>,
    batch_first: bool,
    reverse: bool,
    steps: usize,
    batch: usize,
    input: usize,
    hidden: usize,
}

impl<E: Element> SequenceArrays<'_, E> {
    fn sequence(&self) -> PyResult<Sequence<'_, E>> {
        Ok(Sequence {
            dims: Dims {
                steps: self.steps,
                batch: self.batch,
                input: self.input,
                hidden: self.hidden,
            },
            batch_first: self.batch_first,
            reverse: self.reverse,
            lengths: self.lengths.as_ref().map(|l| l.0.as_slice()),
            x: slice("x", &self.x)?,
            w_ih: slice("w_ih", &self.w_ih)?,
            w_hh: slice("w_hh", &self.w_hh)?,
            bias: opt_slice("bias", &self.bias)?,
            h0: opt_slice("h0", &self.h0)?,
            c0: opt_slice("c0", &self.c0)?,
        })
    }
}

/// A sequence of either dtype: the one dtype dispatch of a call. The variant
/// fixes `E` for every other bundle of the call.
enum AnySequence<'py> {
    F32(SequenceArrays<'py, f32>),
    F64(SequenceArrays<'py, f64>),
}

/// By hand rather than derived: a derived enum would try float32 first, and
/// its failed attempt (two exceptions) would cost every float64 call more than
/// the rest of the extraction; one look at `x`'s dtype costs nothing.
impl<'a, 'py> FromPyObject<'a, 'py> for AnySequence<'py> {
    type Error = PyErr;

    fn extract(seq: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let x = seq.getattr(intern!(seq.py(), "x"))?;
        if x.cast::<PyArrayDyn<f64>>().is_ok() {
            Ok(AnySequence::F64(seq.extract()?))
        } else {
            // Anything else is float32 or an error that says so.
            Ok(AnySequence::F32(seq.extract()?))
        }
    }
}

/// The engine's [`Outputs`], read from `_bundles.Outputs`.
#[derive(FromPyObject)]
struct OutputArrays<'py, E: Element> {
    y: Out<'py, E>,
    h_n: Out<'py, E>,
    c_n: Out<'py, E>,
}

impl<E: Element> OutputArrays<'_, E> {
    fn outputs(&mut self) -> PyResult<Outputs<'_, E>> {
        Ok(Outputs {
            y: slice_mut("y", &mut self.y)?,
            h_n: slice_mut("h_n", &mut self.h_n)?,
            c_n: slice_mut("c_n", &mut self.c_n)?,
        })
    }
}

/// The engine's [`Cache`] (forward writes it), read from `_bundles.CacheArrays`.
#[derive(FromPyObject)]
struct CacheArrays<'py, E: Element> {
    gates: Out<'py, E>,
    cells: Out<'py, E>,
    h_prev: Out<'py, E>,
}

impl<E: Element> CacheArrays<'_, E> {
    fn cache(&mut self) -> PyResult<Cache<'_, E>> {
        Ok(Cache {
            gates: slice_mut("gates", &mut self.gates)?,
            cells: slice_mut("cells", &mut self.cells)?,
            h_prev: slice_mut("h_prev", &mut self.h_prev)?,
        })
    }
}

/// The engine's [`CacheRef`] (backward reads it), read from `_bundles.CacheArrays`.
#[derive(FromPyObject)]
struct CacheRefArrays<'py, E: Element> {
    gates: In<'py, E>,
    cells: In<'py, E>,
    h_prev: In<'py, E>,
}

impl<E: Element> CacheRefArrays<'_, E> {
    fn cache_ref(&self) -> PyResult<CacheRef<'_, E>> {
        Ok(CacheRef {
            gates: slice("gates", &self.gates)?,
            cells: slice("cells", &self.cells)?,
            h_prev: slice("h_prev", &self.h_prev)?,
        })
    }
}

/// The engine's [`Seeds`], read from `_bundles.Seeds`.
#[derive(FromPyObject)]
struct SeedArrays<'py, E: Element> {
    dy: Option<In<'py, E>>,
    dh_n: Option<In<'py, E>>,
    dc_n: Option<In<'py, E>>,
}

impl<E: Element> SeedArrays<'_, E> {
    fn seeds(&self) -> PyResult<Seeds<'_, E>> {
        Ok(Seeds {
            dy: opt_slice("dy", &self.dy)?,
            dh_n: opt_slice("dh_n", &self.dh_n)?,
            dc_n: opt_slice("dc_n", &self.dc_n)?,
        })
    }
}

/// The engine's [`Grads`], read from `_bundles.Grads`.
#[derive(FromPyObject)]
struct GradArrays<'py, E: Element> {
    dx: Out<'py, E>,
    dh0: Out<'py, E>,
    dc0: Out<'py, E>,
    dw_ih: Out<'py, E>,
    dw_hh: Out<'py, E>,
    db: Option<Out<'py, E>>,
    scratch: Option<Out<'py, E>>,
}

impl<E: Element> GradArrays<'_, E> {
    fn grads(&mut self) -> PyResult<Grads<'_, E>> {
        Ok(Grads {
            dx: slice_mut("dx", &mut self.dx)?,
            dh0: slice_mut("dh0", &mut self.dh0)?,
            dc0: slice_mut("dc0", &mut self.dc0)?,
            dw_ih: slice_mut("dw_ih", &mut self.dw_ih)?,
            dw_hh: slice_mut("dw_hh", &mut self.dw_hh)?,
            db: self.db.as_mut().map(|d| slice_mut("db", d)).transpose()?,
            scratch: self
                .scratch
                .as_mut()
                .map(|d| slice_mut("scratch", d))
                .transpose()?,
        })
    }
}

// `FromPyObjectOwned` is what `#[derive(FromPyObject)]` asks of a type
// parameter; f32 and f64 have it.

/// Extracts the other bundles in the dtype of `seq`, then runs the engine with
/// the GIL released.
fn run_forward<'py, E: Float + Element + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    out: &Bound<'py, PyAny>,
    cache: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    let mut out: OutputArrays<'py, E> = out.extract()?;
    let mut cache: Option<CacheArrays<'py, E>> = cache.map(|c| c.extract()).transpose()?;
    let seq = seq.sequence()?;
    let out = out.outputs()?;
    let cache = cache.as_mut().map(CacheArrays::cache).transpose()?;
    Ok(py.detach(|| crate::forward(&seq, out, cache))?)
}

/// [`run_forward`] for the backward pass.
fn run_backward<'py, E: Float + Element + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    cache: &Bound<'py, PyAny>,
    seeds: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let cache: CacheRefArrays<'py, E> = cache.extract()?;
    let seeds: SeedArrays<'py, E> = seeds.extract()?;
    let mut grads: GradArrays<'py, E> = grads.extract()?;
    let seq = seq.sequence()?;
    let (cache, seeds, grads) = (cache.cache_ref()?, seeds.seeds()?, grads.grads()?);
    Ok(py.detach(|| crate::backward(&seq, cache, seeds, grads))?)
}

#[pymodule]
mod _core {
    use super::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // The package's one version: Cargo.toml's, which maturin also writes
        // into the wheel's metadata.
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }

    /// Forward pass of one layer and direction: reads `seq` (the checked
    /// arguments), writes `out` (y, h_n, c_n) and, when given, `cache`
    /// (gates, cells, h_prev).
    #[pyfunction]
    fn forward<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        out: &Bound<'py, PyAny>,
        cache: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        match seq {
            AnySequence::F32(seq) => run_forward(py, seq, out, cache),
            AnySequence::F64(seq) => run_forward(py, seq, out, cache),
        }
    }

    /// Backward pass (BPTT) of one layer and direction: reads `seq`, the
    /// `cache` its forward pass wrote and the `seeds` (dy, dh_n, dc_n; None
    /// means zeros), writes `grads` (dx, dh0, dc0, dw_ih, dw_hh, db, scratch).
    #[pyfunction]
    fn backward<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        cache: &Bound<'py, PyAny>,
        seeds: &Bound<'py, PyAny>,
        grads: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        match seq {
            AnySequence::F32(seq) => run_backward(py, seq, cache, seeds, grads),
            AnySequence::F64(seq) => run_backward(py, seq, cache, seeds, grads),
        }
    }

    /// The padded hidden size of the cache layout for an element size in bytes.
    #[pyfunction]
    fn hidden_pad(hidden: usize, itemsize: usize) -> PyResult<usize> {
        match itemsize {
            4 => Ok(crate::hidden_pad::<f32>(hidden)),
            8 => Ok(crate::hidden_pad::<f64>(hidden)),
            _ => Err(PyValueError::new_err(format!(
                "itemsize must be 4 or 8, got {itemsize}"
            ))),
        }
    }

    /// Threads for later calls; 0 (or a negative n) is refused by the engine.
    #[pyfunction]
    fn set_num_threads(n: i64) -> PyResult<()> {
        Ok(crate::set_num_threads(usize::try_from(n).unwrap_or(0))?)
    }

    /// The number of threads calls use.
    #[pyfunction]
    fn get_num_threads() -> usize {
        crate::num_threads()
    }

    /// Drops the pool without joining it; registered with os.register_at_fork.
    #[pyfunction]
    fn _after_fork_in_child() {
        crate::forget_pool_after_fork();
    }

    /// SIMD paths this CPU can run, slowest first.
    #[pyfunction]
    fn available_isas() -> Vec<&'static str> {
        Isa::available().into_iter().map(Isa::name).collect()
    }

    /// The SIMD path in use.
    #[pyfunction]
    fn get_isa() -> &'static str {
        Isa::active().name()
    }

    /// Forces a SIMD path; ValueError if unknown or unsupported here.
    #[pyfunction]
    fn set_isa(name: &str) -> PyResult<()> {
        Ok(Isa::parse(name)?.set_active()?)
    }
}
