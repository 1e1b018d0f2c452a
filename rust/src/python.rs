//! The only file that knows about Python: borrows NumPy arrays as slices,
//! releases the GIL around every computation, lets Ctrl-C stop the long ones
//! ([`run_pass`]), and turns engine errors into exceptions (`impl From<Error>
//! for PyErr`, the one place that does).
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
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;

use pyo3::exceptions::{PyKeyboardInterrupt, PyMemoryError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;

use crate::layernorm::{LayerNorm, LnCache, LnCacheRef, LnGrads};
use crate::masks::ZoneoutDraws;
use crate::tuning::{INTERRUPTIBLE_WORK, SIGNAL_POLL};
use crate::{
    Activation, Cache, CacheRef, Cancel, Dims, Error, Float, Grads, Isa, Outputs, PanelCache,
    Seeds, Sequence, Variant, Zone,
};

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Value(msg) => PyValueError::new_err(msg),
            Error::TooLarge(msg) | Error::OutOfMemory(msg) => PyMemoryError::new_err(msg),
            // A call stopped by a signal raises that signal's exception instead
            // (`run_pass`); this is a call stopped through a `_core.Cancel`.
            Error::Interrupted => PyKeyboardInterrupt::new_err("the call was cancelled"),
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
        let lengths = lengths.0.as_array();
        // Allocated like the engine's buffers: a refusal is a MemoryError.
        let mut out = crate::alloc::with_capacity(lengths.len(), "lengths")?;
        for &v in lengths {
            out.push(
                usize::try_from(v)
                    .map_err(|_| PyValueError::new_err(format!("lengths must be >= 0, got {v}")))?,
            );
        }
        Ok(Lengths(out))
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

fn opt_slice_mut<'a, E: Element>(
    name: &str,
    a: &'a mut Option<Out<'_, E>>,
) -> PyResult<Option<&'a mut [E]>> {
    a.as_mut().map(|a| slice_mut(name, a)).transpose()
}

/// Two arrays that come together (`names`, as the message says them): both, or
/// neither.
fn pair_mut<'a, E: Element>(
    names: [&str; 2],
    a: &'a mut Option<Out<'_, E>>,
    b: &'a mut Option<Out<'_, E>>,
) -> PyResult<Option<[&'a mut [E]; 2]>> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some([slice_mut(names[0], a)?, slice_mut(names[1], b)?])),
        (None, None) => Ok(None),
        _ => Err(PyValueError::new_err(format!(
            "{} and {}: give both or neither",
            names[0], names[1]
        ))),
    }
}

/// A layer's panels kept across calls ([`PanelCache`]), in either dtype.
enum AnyPanels {
    F32(PanelCache<f32>),
    F64(PanelCache<f64>),
}

/// An element type of the engine, as the bindings see it: a NumPy dtype with
/// its variant of [`AnyPanels`].
trait Engine: Float + Element {
    fn panels(p: &AnyPanels) -> Option<&PanelCache<Self>>;
}

impl Engine for f32 {
    fn panels(p: &AnyPanels) -> Option<&PanelCache<Self>> {
        match p {
            AnyPanels::F32(c) => Some(c),
            AnyPanels::F64(_) => None,
        }
    }
}

impl Engine for f64 {
    fn panels(p: &AnyPanels) -> Option<&PanelCache<Self>> {
        match p {
            AnyPanels::F64(c) => Some(c),
            AnyPanels::F32(_) => None,
        }
    }
}

/// One activation as `_checks.activation_spec` gives it: (ONNX name, alpha,
/// beta), None for a parameter it does not take.
type ActivationSpec = (String, Option<f64>, Option<f64>);

/// The engine's [`Sequence`], read from a `_bundles.Sequence` (`functional._Args`).
/// `packed`, when not None, is the `_core.Packed` made from this very `w_ih`,
/// `w_hh` and `w_hr`.
#[derive(FromPyObject)]
struct SequenceArrays<'py, E: Element> {
    x: In<'py, E>,
    w_ih: In<'py, E>,
    w_hh: In<'py, E>,
    bias: Option<In<'py, E>>,
    h0: Option<In<'py, E>>,
    c0: Option<In<'py, E>>,
    lengths: Option<Lengths>,
    packed: Option<Bound<'py, Packed>>,
    batch_first: bool,
    reverse: bool,
    steps: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    /// The variant (docs/variants.md): peepholes (3H,) or None, clip (a
    /// number > 0) or None, the two flags, and the activations σ_f, σ_g, σ_h
    /// as (ONNX name, alpha or None, beta or None), or None for the plain
    /// ones (`_checks` has filled ONNX's defaults in).
    peepholes: Option<In<'py, E>>,
    /// The projection (P, H), or None.
    w_hr: Option<In<'py, E>>,
    clip: Option<f64>,
    input_forget: bool,
    forget_gate: bool,
    activations: Option<Vec<ActivationSpec>>,
    /// Recurrent dropout's keep mask (B, P) of a training pass, or None.
    recurrent_keep: Option<In<'py, E>>,
    /// Zoneout of h and of c in training: the masks (T·B, Pp) and (T·B, Hp)
    /// in x's layout (`zoneout_keep`), or None; at inference: the rates
    /// (0.0 for none; ignored where a mask is given).
    zoneout_h_keep: Option<In<'py, E>>,
    zoneout_c_keep: Option<In<'py, E>>,
    zoneout_h: f64,
    zoneout_c: f64,
}

impl<E: Engine> SequenceArrays<'_, E> {
    fn sequence(&self) -> PyResult<Sequence<'_, E>> {
        let panels = match &self.packed {
            None => None,
            Some(packed) => Some(E::panels(&packed.get().panels).ok_or_else(|| {
                PyTypeError::new_err("packed weights of another dtype than the call's")
            })?),
        };
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
            panels,
            variant: self.variant()?,
        })
    }

    fn variant(&self) -> PyResult<Variant<'_, E>> {
        let mut variant = Variant {
            peepholes: opt_slice("peepholes", &self.peepholes)?,
            w_hr: opt_slice("w_hr", &self.w_hr)?,
            clip: self.clip.map(E::from_f64),
            input_forget: self.input_forget,
            forget_gate: self.forget_gate,
            recurrent_keep: opt_slice("recurrent_keep", &self.recurrent_keep)?,
            zoneout_h: zone("zoneout_h_keep", &self.zoneout_h_keep, self.zoneout_h)?,
            zoneout_c: zone("zoneout_c_keep", &self.zoneout_c_keep, self.zoneout_c)?,
            ..Variant::default()
        };
        if let Some(acts) = &self.activations {
            let [f, g, h] = acts.as_slice() else {
                return Err(PyValueError::new_err(format!(
                    "activations must have 3 entries (f, g, h), got {}",
                    acts.len()
                )));
            };
            let parse =
                |(name, alpha, beta): &ActivationSpec| Activation::parse(name, *alpha, *beta);
            (variant.f, variant.g, variant.h) = (parse(f)?, parse(g)?, parse(h)?);
        }
        Ok(variant)
    }
}

/// Zoneout of one state: its training mask, else its inference rate, else off.
fn zone<'a, E: Engine>(
    name: &str,
    keep: &'a Option<In<'_, E>>,
    rate: f64,
) -> PyResult<Zone<'a, E>> {
    Ok(match opt_slice(name, keep)? {
        Some(d) => Zone::Keep(d),
        None if rate != 0.0 => Zone::Rate(E::from_f64(rate)),
        None => Zone::Off,
    })
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
    pre: Option<Out<'py, E>>,
}

impl<E: Element> CacheArrays<'_, E> {
    fn cache(&mut self) -> PyResult<Cache<'_, E>> {
        Ok(Cache {
            gates: slice_mut("gates", &mut self.gates)?,
            cells: slice_mut("cells", &mut self.cells)?,
            h_prev: slice_mut("h_prev", &mut self.h_prev)?,
            pre: opt_slice_mut("pre", &mut self.pre)?,
        })
    }
}

/// The engine's [`CacheRef`] (backward reads it), read from `_bundles.CacheArrays`.
#[derive(FromPyObject)]
struct CacheRefArrays<'py, E: Element> {
    gates: In<'py, E>,
    cells: In<'py, E>,
    h_prev: In<'py, E>,
    pre: Option<In<'py, E>>,
}

impl<E: Element> CacheRefArrays<'_, E> {
    fn cache_ref(&self) -> PyResult<CacheRef<'_, E>> {
        Ok(CacheRef {
            gates: slice("gates", &self.gates)?,
            cells: slice("cells", &self.cells)?,
            h_prev: slice("h_prev", &self.h_prev)?,
            pre: opt_slice("pre", &self.pre)?,
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
    dpeepholes: Option<Out<'py, E>>,
    dw_hr: Option<Out<'py, E>>,
    flow_h: Option<Out<'py, E>>,
    flow_c: Option<Out<'py, E>>,
}

impl<E: Element> GradArrays<'_, E> {
    fn grads(&mut self) -> PyResult<Grads<'_, E>> {
        Ok(Grads {
            dx: slice_mut("dx", &mut self.dx)?,
            dh0: slice_mut("dh0", &mut self.dh0)?,
            dc0: slice_mut("dc0", &mut self.dc0)?,
            dw_ih: slice_mut("dw_ih", &mut self.dw_ih)?,
            dw_hh: slice_mut("dw_hh", &mut self.dw_hh)?,
            db: opt_slice_mut("db", &mut self.db)?,
            scratch: opt_slice_mut("scratch", &mut self.scratch)?,
            dpeepholes: opt_slice_mut("dpeepholes", &mut self.dpeepholes)?,
            dw_hr: opt_slice_mut("dw_hr", &mut self.dw_hr)?,
            flow: pair_mut(["flow_h", "flow_c"], &mut self.flow_h, &mut self.flow_c)?,
        })
    }
}

/// The LayerNorm LSTM's gains and biases and eps ([`LayerNorm`]), read from
/// `_bundles.LayerNormParams`.
#[derive(FromPyObject)]
struct LayerNormArrays<'py, E: Element> {
    w_ih: Option<In<'py, E>>,
    b_ih: Option<In<'py, E>>,
    w_hh: Option<In<'py, E>>,
    b_hh: Option<In<'py, E>>,
    w_c: Option<In<'py, E>>,
    b_c: Option<In<'py, E>>,
    eps: f64,
}

impl<E: Element> LayerNormArrays<'_, E> {
    fn layer_norm(&self) -> PyResult<LayerNorm<'_, E>> {
        Ok(LayerNorm {
            w_ih: opt_slice("w_ln_ih", &self.w_ih)?,
            b_ih: opt_slice("b_ln_ih", &self.b_ih)?,
            w_hh: opt_slice("w_ln_hh", &self.w_hh)?,
            b_hh: opt_slice("b_ln_hh", &self.b_hh)?,
            w_c: opt_slice("w_ln_c", &self.w_c)?,
            b_c: opt_slice("b_ln_c", &self.b_c)?,
            eps: self.eps,
        })
    }
}

/// The LayerNorm cache ([`LnCache`], [`LnCacheRef`]), read from
/// `_bundles.LayerNormCacheArrays`, as `A` (`Out` for forward, `In` for backward).
#[derive(FromPyObject)]
struct LnCacheArrays<A> {
    cells: A,
    h_prev: A,
    sx_hat: A,
    sh_hat: A,
    moments: A,
    c_state: Option<A>,
}

impl<E: Element> LnCacheArrays<Out<'_, E>> {
    fn cache(&mut self) -> PyResult<LnCache<'_, E>> {
        Ok(LnCache {
            cells: slice_mut("cells", &mut self.cells)?,
            h_prev: slice_mut("h_prev", &mut self.h_prev)?,
            sx_hat: slice_mut("sx_hat", &mut self.sx_hat)?,
            sh_hat: slice_mut("sh_hat", &mut self.sh_hat)?,
            moments: slice_mut("moments", &mut self.moments)?,
            c_state: opt_slice_mut("c_state", &mut self.c_state)?,
        })
    }
}

impl<E: Element> LnCacheArrays<In<'_, E>> {
    fn cache_ref(&self) -> PyResult<LnCacheRef<'_, E>> {
        Ok(LnCacheRef {
            cells: slice("cells", &self.cells)?,
            h_prev: slice("h_prev", &self.h_prev)?,
            sx_hat: slice("sx_hat", &self.sx_hat)?,
            sh_hat: slice("sh_hat", &self.sh_hat)?,
            moments: slice("moments", &self.moments)?,
            c_state: opt_slice("c_state", &self.c_state)?,
        })
    }
}

/// The LayerNorm gradients ([`LnGrads`]), read from `_bundles.LayerNormGrads`.
#[derive(FromPyObject)]
struct LnGradArrays<'py, E: Element> {
    dx: Out<'py, E>,
    dh0: Out<'py, E>,
    dc0: Out<'py, E>,
    dw_ih: Out<'py, E>,
    dw_hh: Out<'py, E>,
    db: Option<Out<'py, E>>,
    dpeepholes: Option<Out<'py, E>>,
    dw_hr: Option<Out<'py, E>>,
    flow_h: Option<Out<'py, E>>,
    flow_c: Option<Out<'py, E>>,
    scratch_dz: Option<Out<'py, E>>,
    scratch_dsh: Option<Out<'py, E>>,
    dw_ln_ih: Option<Out<'py, E>>,
    dw_ln_hh: Option<Out<'py, E>>,
    dw_ln_c: Option<Out<'py, E>>,
    db_ln_c: Option<Out<'py, E>>,
}

impl<E: Element> LnGradArrays<'_, E> {
    fn grads(&mut self) -> PyResult<LnGrads<'_, E>> {
        Ok(LnGrads {
            dx: slice_mut("dx", &mut self.dx)?,
            dh0: slice_mut("dh0", &mut self.dh0)?,
            dc0: slice_mut("dc0", &mut self.dc0)?,
            dw_ih: slice_mut("dw_ih", &mut self.dw_ih)?,
            dw_hh: slice_mut("dw_hh", &mut self.dw_hh)?,
            db: opt_slice_mut("db", &mut self.db)?,
            dpeepholes: opt_slice_mut("dpeepholes", &mut self.dpeepholes)?,
            dw_hr: opt_slice_mut("dw_hr", &mut self.dw_hr)?,
            flow: pair_mut(["flow_h", "flow_c"], &mut self.flow_h, &mut self.flow_c)?,
            scratch: pair_mut(
                ["scratch_dz", "scratch_dsh"],
                &mut self.scratch_dz,
                &mut self.scratch_dsh,
            )?,
            dw_ln_ih: opt_slice_mut("dw_ln_ih", &mut self.dw_ln_ih)?,
            dw_ln_hh: opt_slice_mut("dw_ln_hh", &mut self.dw_ln_hh)?,
            dw_ln_c: opt_slice_mut("dw_ln_c", &mut self.dw_ln_c)?,
            db_ln_c: opt_slice_mut("db_ln_c", &mut self.db_ln_c)?,
        })
    }
}

thread_local! {
    /// The `_core.Cancel` blocks (`with cancel:`) this thread is in, innermost
    /// last: its engine calls stop when the innermost is cancelled.
    static SCOPES: RefCell<Vec<Arc<Cancel>>> = const { RefCell::new(Vec::new()) };
}

/// Whether this is Python's main thread, the only one that sees signals.
fn on_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import(intern!(py, "threading"))?;
    let main = threading
        .call_method0(intern!(py, "main_thread"))?
        .getattr(intern!(py, "ident"))?;
    main.eq(threading.call_method0(intern!(py, "get_ident"))?)
}

/// A pass handed to the runner thread, its lifetime erased (see `run_pass`).
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The thread that runs the long passes of Python's main thread, kept for the
/// life of the process: on a new thread each time, a pass would find none of
/// its allocator's memory mapped and fault every page in again (measured: 400
/// page faults and +0.3 ms on a 2 ms call).
struct Runner {
    /// The process that started it: after `fork()` its thread is not there.
    pid: u32,
    jobs: mpsc::Sender<Job>,
}

thread_local! {
    /// The main thread's runner: only the main thread hands passes to one.
    static RUNNER: RefCell<Option<Runner>> = const { RefCell::new(None) };
}

/// Hands `job` to this thread's runner, starting one if needed; gives the job
/// back when no thread can be started. The runner runs every job it gets.
fn hand_to_runner(job: Job) -> std::result::Result<(), Job> {
    RUNNER.with(|runner| {
        let mut runner = runner.borrow_mut();
        let pid = std::process::id();
        if runner.as_ref().is_none_or(|r| r.pid != pid) {
            let (jobs, queue) = mpsc::channel::<Job>();
            let started = std::thread::Builder::new()
                .name("lstm_fast-call".into())
                .spawn(move || queue.into_iter().for_each(|job| job()));
            if started.is_err() {
                return Err(job);
            }
            // One from before a fork is forgotten, not dropped: its channel may
            // have been locked by a thread that the child does not have.
            std::mem::forget(runner.replace(Runner { pid, jobs }));
        }
        let jobs = &runner.as_ref().expect("started above").jobs;
        jobs.send(job).map_err(|e| e.0)
    })
}

/// Runs one engine pass with the GIL released.
///
/// Python's signal handlers only record a signal; the exception (Ctrl-C's
/// `KeyboardInterrupt`) is raised when the main thread, holding the GIL, checks
/// for it. So a pass of at least `INTERRUPTIBLE_WORK` called from the main
/// thread runs on the runner thread while the calling thread checks for
/// signals every `SIGNAL_POLL`; when a handler raises, the pass is cancelled
/// (it stops at its next time step), waited for, and the handler's exception
/// returned. Other calls run here, as they always did: they end quickly, or no
/// signal can reach them. Either way the engine's threads are idle again when
/// this returns, and a call inside a `with _core.Cancel():` block stops when
/// that is cancelled.
fn run_pass<F>(py: Python<'_>, dims: Dims, pass: F) -> PyResult<()>
where
    F: FnOnce(&Cancel) -> crate::Result<()> + Send,
{
    let scope = SCOPES.with(|s| s.borrow().last().cloned());
    let local = Cancel::new();
    let cancel = scope.as_deref().unwrap_or(&local);
    // Where the main thread cannot be told (at interpreter exit), the pass runs here.
    if dims.work() < INTERRUPTIBLE_WORK || !on_main_thread(py).unwrap_or(false) {
        return Ok(py.detach(|| pass(cancel))?);
    }
    let (done, finished) = mpsc::channel();
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| pass(cancel)));
        // The job's last use of what it borrows: `run_pass` waits for this.
        let _ = done.send(outcome);
    });
    // SAFETY: the job borrows from this frame (`pass`'s captures, `cancel`).
    // The runner runs every job it receives, and below this thread waits for
    // the job's result, sent after its last use of them, before it returns or
    // unwinds (`WaitOnUnwind`); a job given back runs here.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
    let mut signal = None;
    let outcome = py.detach(|| {
        let finished = finished; // moved in: a receiver is not Sync
        if let Err(job) = hand_to_runner(job) {
            // No thread to spare (a limit on threads or memory): run the pass
            // here, not interruptible, like a short one.
            job();
        }
        /// Waits for the job if this thread unwinds first.
        struct WaitOnUnwind<'a, T>(&'a mpsc::Receiver<T>);
        impl<T> Drop for WaitOnUnwind<'_, T> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let _ = self.0.recv();
                }
            }
        }
        let _wait = WaitOnUnwind(&finished);
        loop {
            match finished.recv_timeout(SIGNAL_POLL) {
                Ok(outcome) => return outcome,
                Err(RecvTimeoutError::Timeout) => {
                    if signal.is_none() {
                        if let Err(e) = Python::attach(|py| py.check_signals()) {
                            cancel.cancel();
                            signal = Some(e);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("every job sends its result")
                }
            }
        }
    });
    // A panic of the pass goes on unwinding here, as it would have inline.
    let result = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    match signal {
        Some(e) => Err(e),
        None => Ok(result?),
    }
}

// `FromPyObjectOwned` is what `#[derive(FromPyObject)]` asks of a type
// parameter; f32 and f64 have it.

/// Extracts the other bundles in the dtype of `seq`, then runs the engine with
/// the GIL released ([`run_pass`]).
fn run_forward<'py, E: Engine + FromPyObjectOwned<'py>>(
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
    run_pass(py, seq.dims, |cancel| {
        crate::forward(&seq, out, cache, cancel)
    })
}

/// [`run_forward`] for the backward pass.
fn run_backward<'py, E: Engine + FromPyObjectOwned<'py>>(
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
    run_pass(py, seq.dims, |cancel| {
        crate::backward(&seq, cache, seeds, grads, cancel)
    })
}

/// The cells each step computed ([`crate::lstm::candidates`]) from `cache`
/// into `out` ((T·B) × Hp).
fn run_candidates<'py, E: Engine + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    cache: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let cache: CacheRefArrays<'py, E> = cache.extract()?;
    let mut out: Out<'py, E> = out.extract()?;
    let seq = seq.sequence()?;
    let cache = cache.cache_ref()?;
    let out = slice_mut("out", &mut out)?;
    Ok(py.detach(|| crate::lstm::candidates(&seq, cache, out))?)
}

/// [`run_forward`] for the LayerNorm LSTM ([`crate::layernorm::forward`]).
fn run_ln_forward<'py, E: Engine + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    ln: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    cache: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    let ln: LayerNormArrays<'py, E> = ln.extract()?;
    let mut out: OutputArrays<'py, E> = out.extract()?;
    let mut cache: Option<LnCacheArrays<Out<'py, E>>> = cache.map(|c| c.extract()).transpose()?;
    let seq = seq.sequence()?;
    let ln = ln.layer_norm()?;
    let out = out.outputs()?;
    let cache = cache.as_mut().map(LnCacheArrays::cache).transpose()?;
    run_pass(py, seq.dims, |cancel| {
        crate::layernorm::forward(&seq, &ln, out, cache, cancel)
    })
}

/// The gates and pre-activations a LayerNorm cache does not keep, rebuilt
/// ([`crate::layernorm::gates`]).
fn run_ln_gates<'py, E: Engine + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    ln: &Bound<'py, PyAny>,
    cache: &Bound<'py, PyAny>,
    gates: &Bound<'py, PyAny>,
    pre: Option<&Bound<'py, PyAny>>,
    block: Option<usize>,
) -> PyResult<()> {
    let ln: LayerNormArrays<'py, E> = ln.extract()?;
    let cache: LnCacheArrays<In<'py, E>> = cache.extract()?;
    let mut gates: Out<'py, E> = gates.extract()?;
    let mut pre: Option<Out<'py, E>> = pre.map(|p| p.extract()).transpose()?;
    let seq = seq.sequence()?;
    let ln = ln.layer_norm()?;
    let cache = cache.cache_ref()?;
    let gates = slice_mut("gates", &mut gates)?;
    let pre = opt_slice_mut("pre", &mut pre)?;
    Ok(py.detach(|| crate::layernorm::gates(&seq, &ln, cache, gates, pre, block))?)
}

/// [`run_backward`] for the LayerNorm LSTM ([`crate::layernorm::backward`]).
fn run_ln_backward<'py, E: Engine + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    ln: &Bound<'py, PyAny>,
    cache: &Bound<'py, PyAny>,
    seeds: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let ln: LayerNormArrays<'py, E> = ln.extract()?;
    let cache: LnCacheArrays<In<'py, E>> = cache.extract()?;
    let seeds: SeedArrays<'py, E> = seeds.extract()?;
    let mut grads: LnGradArrays<'py, E> = grads.extract()?;
    let seq = seq.sequence()?;
    let ln = ln.layer_norm()?;
    let (cache, seeds, grads) = (cache.cache_ref()?, seeds.seeds()?, grads.grads()?);
    run_pass(py, seq.dims, |cancel| {
        crate::layernorm::backward(&seq, &ln, cache, seeds, grads, cancel)
    })
}

/// Zoneout's masks to draw per segment: (seed, layer, direction, z_h, z_c).
type ZoneoutArgs = (u64, u64, u64, f64, f64);

/// The [`ZoneoutDraws`] of [`ZoneoutArgs`] (None: none; the engine checks
/// the probabilities).
fn zoneout_draws(args: Option<ZoneoutArgs>) -> ZoneoutDraws {
    args.map_or_else(
        ZoneoutDraws::default,
        |(seed, layer, direction, z_h, z_c)| ZoneoutDraws::new(seed, layer, direction, z_h, z_c),
    )
}

/// [`run_forward`] keeping only the states at every `every`-th iteration
/// (`states`, see [`crate::checkpoint_len`]) instead of the cache.
fn run_forward_checkpointed<'py, E: Engine + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    out: &Bound<'py, PyAny>,
    states: &Bound<'py, PyAny>,
    every: usize,
    draws: ZoneoutDraws,
) -> PyResult<()> {
    let mut out: OutputArrays<'py, E> = out.extract()?;
    let mut states: Out<'py, E> = states.extract()?;
    let seq = seq.sequence()?;
    let out = out.outputs()?;
    let states = slice_mut("states", &mut states)?;
    run_pass(py, seq.dims, |cancel| {
        crate::forward_checkpointed(&seq, out, every, states, draws, cancel)
    })
}

/// [`run_backward`] from the states of [`run_forward_checkpointed`].
fn run_backward_checkpointed<'py, E: Engine + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    states: &Bound<'py, PyAny>,
    every: usize,
    draws: ZoneoutDraws,
    seeds: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let states: In<'py, E> = states.extract()?;
    let seeds: SeedArrays<'py, E> = seeds.extract()?;
    let mut grads: GradArrays<'py, E> = grads.extract()?;
    let seq = seq.sequence()?;
    let states = slice("states", &states)?;
    let (seeds, grads) = (seeds.seeds()?, grads.grads()?);
    run_pass(py, seq.dims, |cancel| {
        crate::backward_checkpointed(&seq, every, states, draws, seeds, grads, cancel)
    })
}

/// [`run_forward_checkpointed`] for the LayerNorm LSTM
/// ([`crate::checkpoint::forward_checkpointed_ln`]).
fn run_ln_forward_checkpointed<'py, E: Engine + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    ln: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    states: &Bound<'py, PyAny>,
    every: usize,
    draws: ZoneoutDraws,
) -> PyResult<()> {
    let ln: LayerNormArrays<'py, E> = ln.extract()?;
    let mut out: OutputArrays<'py, E> = out.extract()?;
    let mut states: Out<'py, E> = states.extract()?;
    let seq = seq.sequence()?;
    let ln = ln.layer_norm()?;
    let out = out.outputs()?;
    let states = slice_mut("states", &mut states)?;
    run_pass(py, seq.dims, |cancel| {
        crate::forward_checkpointed_ln(&seq, &ln, out, every, states, draws, cancel)
    })
}

/// [`run_backward_checkpointed`] for the LayerNorm LSTM
/// ([`crate::checkpoint::backward_checkpointed_ln`]).
#[allow(clippy::too_many_arguments)]
fn run_ln_backward_checkpointed<'py, E: Engine + FromPyObjectOwned<'py>>(
    py: Python<'py>,
    seq: SequenceArrays<'py, E>,
    ln: &Bound<'py, PyAny>,
    states: &Bound<'py, PyAny>,
    every: usize,
    draws: ZoneoutDraws,
    seeds: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let ln: LayerNormArrays<'py, E> = ln.extract()?;
    let states: In<'py, E> = states.extract()?;
    let seeds: SeedArrays<'py, E> = seeds.extract()?;
    let mut grads: LnGradArrays<'py, E> = grads.extract()?;
    let seq = seq.sequence()?;
    let ln = ln.layer_norm()?;
    let states = slice("states", &states)?;
    let (seeds, grads) = (seeds.seeds()?, grads.grads()?);
    run_pass(py, seq.dims, |cancel| {
        crate::backward_checkpointed_ln(&seq, &ln, every, states, draws, seeds, grads, cancel)
    })
}

/// The packed panels of `w_ih`, `w_hh` and the projection `w_hr` (if any),
/// kept for the calls that pass this object as `seq.packed` with the same
/// arrays: the Python layer's prepared weights own them privately and never
/// change them. Holding the arrays keeps their memory, whose addresses the
/// panels are checked against, from being reused.
#[pyclass(frozen, name = "Packed", module = "lstm_fast._core")]
struct Packed {
    _weights: (Py<PyAny>, Py<PyAny>, Option<Py<PyAny>>),
    panels: AnyPanels,
}

/// A [`PanelCache`] of `w_ih`, `w_hh`, `w_hr` borrowed as arrays of `E`;
/// with `bfloat16`, bf16 inference's ([`PanelCache::new_bf16`]).
fn panel_cache<E: Engine>(
    w_ih: &Bound<'_, PyAny>,
    w_hh: &Bound<'_, PyAny>,
    w_hr: Option<&Bound<'_, PyAny>>,
    bfloat16: bool,
) -> PyResult<PanelCache<E>> {
    let w_ih = w_ih.extract::<In<'_, E>>()?;
    let w_hh = w_hh.extract::<In<'_, E>>()?;
    let w_hr = w_hr.map(|w| w.extract::<In<'_, E>>()).transpose()?;
    let (w_ih, w_hh, w_hr) = (
        slice("w_ih", &w_ih)?,
        slice("w_hh", &w_hh)?,
        opt_slice("w_hr", &w_hr)?,
    );
    if bfloat16 {
        Ok(PanelCache::new_bf16(w_ih, w_hh, w_hr)?)
    } else {
        Ok(PanelCache::new(w_ih, w_hh, w_hr))
    }
}

#[pymethods]
impl Packed {
    /// `bfloat16`: the panels of bf16 inference (weights rounded to bfloat16
    /// when packed; forward without a cache only).
    #[new]
    #[pyo3(signature = (w_ih, w_hh, w_hr = None, bfloat16 = false))]
    fn new(
        w_ih: &Bound<'_, PyAny>,
        w_hh: &Bound<'_, PyAny>,
        w_hr: Option<&Bound<'_, PyAny>>,
        bfloat16: bool,
    ) -> PyResult<Self> {
        let panels = if w_hh.cast::<PyArrayDyn<f64>>().is_ok() {
            AnyPanels::F64(panel_cache(w_ih, w_hh, w_hr, bfloat16)?)
        } else {
            AnyPanels::F32(panel_cache(w_ih, w_hh, w_hr, bfloat16)?)
        };
        Ok(Packed {
            _weights: (
                w_ih.clone().unbind(),
                w_hh.clone().unbind(),
                w_hr.map(|w| w.clone().unbind()),
            ),
            panels,
        })
    }
}

/// `obj` as an array of `E` that the engine can read in place (C-contiguous,
/// aligned) with this `shape`, borrowed for reading; None for anything else.
fn exact<'py, E: Element>(obj: &Bound<'py, PyAny>, shape: &[usize]) -> Option<In<'py, E>> {
    let array = obj.cast::<PyArrayDyn<E>>().ok()?;
    if array.shape() != shape || !array.is_c_contiguous() || !array.is_aligned() {
        return None;
    }
    array.try_readonly().ok().map(In)
}

/// One layer's prepared weights as a kept call runs them
/// (`functional.PreparedWeights._run_kept`): the private arrays, the panels
/// and the variant, fixed once, so that a call (one step of `LSTM.step`)
/// crosses into the engine once, proving on the way that the caller's live
/// weights are still bit for bit what was prepared (docs/api.md, SPEC §3).
#[pyclass(frozen, name = "Kept", module = "lstm_fast._core")]
struct Kept {
    packed: Py<Packed>,
    /// The private copies the panels were packed from; with `b_ih`, `b_hh`
    /// also what the live w_ih, w_hh, b_ih, b_hh, w_hr are compared with.
    w_ih: Py<PyAny>,
    w_hh: Py<PyAny>,
    w_hr: Option<Py<PyAny>>,
    /// b_ih + b_hh as the engine adds it, or None.
    bias: Option<Py<PyAny>>,
    /// The biases as given (copies), or None where the layer has none.
    b_ih: Option<Py<PyAny>>,
    b_hh: Option<Py<PyAny>>,
    /// The shapes of w_ih, w_hh, b_ih, b_hh, w_hr (None where absent): what
    /// a live array must have, known without borrowing the copies.
    shapes: [Option<Vec<usize>>; 5],
    input: usize,
    hidden: usize,
    clip: Option<f64>,
    input_forget: bool,
    forget_gate: bool,
    /// σ_f, σ_g, σ_h.
    activations: [Activation; 3],
}

/// The arguments of one kept call besides the weights (`Kept.forward`).
struct KeptCall<'a, 'py> {
    x: &'a Bound<'py, PyAny>,
    h0: Option<&'a Bound<'py, PyAny>>,
    c0: Option<&'a Bound<'py, PyAny>>,
    live: [Option<Bound<'py, PyAny>>; 5],
    peepholes: Option<&'a Bound<'py, PyAny>>,
    batch_first: bool,
    reverse: bool,
    out: &'a Bound<'py, PyAny>,
    /// The LayerNorm LSTM's live gains and biases and eps
    /// (`_bundles.LayerNormParams`), or None for the other cells.
    layer_norm: Option<&'a Bound<'py, PyAny>>,
}

/// The live gains and biases of a kept LayerNorm pass, read in place: each a
/// plain array of E of its width (4H, or H for those of c) or None; None
/// (nothing to run here) when one is not, and the general path casts and
/// checks it.
fn kept_layer_norm<'py, E: Element>(
    params: &Bound<'py, PyAny>,
    hidden: usize,
) -> PyResult<Option<LayerNormArrays<'py, E>>> {
    let mut arrays: [Option<In<'py, E>>; 6] = Default::default();
    // `_bundles.LayerNormParams`' order: w_ih, b_ih, w_hh, b_hh, w_c, b_c.
    for (i, slot) in arrays.iter_mut().enumerate() {
        let given = params.get_item(i)?;
        if given.is_none() {
            continue;
        }
        let width = if i < 4 { 4 * hidden } else { hidden };
        match exact::<E>(&given, &[width]) {
            Some(a) => *slot = Some(a),
            None => return Ok(None),
        }
    }
    let [w_ih, b_ih, w_hh, b_hh, w_c, b_c] = arrays;
    Ok(Some(LayerNormArrays {
        w_ih,
        b_ih,
        w_hh,
        b_hh,
        w_c,
        b_c,
        eps: params.get_item(6)?.extract()?,
    }))
}

/// A private array of `Kept` (or None), borrowed for reading.
fn private<'py, E: Element>(
    py: Python<'py>,
    a: &Option<Py<PyAny>>,
) -> PyResult<Option<In<'py, E>>> {
    a.as_ref().map(|a| a.bind(py).extract()).transpose()
}

impl Kept {
    fn run<'py, E: Engine + FromPyObjectOwned<'py>>(
        &self,
        py: Python<'py>,
        panels: &PanelCache<E>,
        call: KeptCall<'_, 'py>,
    ) -> PyResult<bool> {
        // The live weights: each a plain array of E of its kept copy's shape,
        // or there is nothing to prove here (the general path casts and
        // compares: `PreparedWeights.matches`). In `KeptCall::live`'s order.
        let mut live: [Option<In<'py, E>>; 5] = Default::default();
        for ((given, shape), slot) in call.live.iter().zip(&self.shapes).zip(&mut live) {
            match (given, shape) {
                (None, None) => {}
                (Some(given), Some(shape)) => match exact::<E>(given, shape) {
                    Some(given) => *slot = Some(given),
                    None => return Ok(false),
                },
                _ => return Ok(false),
            }
        }
        let peepholes = match call.peepholes {
            None => None,
            Some(p) => match exact::<E>(p, &[3 * self.hidden]) {
                Some(p) => Some(p),
                None => return Ok(false),
            },
        };
        let x: In<'_, E> = call.x.extract()?;
        let (steps, batch) = match (x.0.shape(), call.batch_first) {
            (&[steps, batch, _], false) | (&[batch, steps, _], true) => (steps, batch),
            (shape, _) => {
                return Err(PyValueError::new_err(format!(
                    "x must have 3 dimensions, got shape {shape:?}"
                )))
            }
        };
        let ln_arrays = match call.layer_norm {
            Some(params) => match kept_layer_norm::<E>(params, self.hidden)? {
                Some(arrays) => Some(arrays),
                None => return Ok(false),
            },
            None => None,
        };
        let ln = ln_arrays
            .as_ref()
            .map(LayerNormArrays::layer_norm)
            .transpose()?;
        let h0 = call.h0.map(|h| h.extract::<In<'_, E>>()).transpose()?;
        let c0 = call.c0.map(|c| c.extract::<In<'_, E>>()).transpose()?;
        let mut out: OutputArrays<'py, E> = call.out.extract()?;
        let [f, g, h] = self.activations;
        let [live_w_ih, live_w_hh, live_b_ih, live_b_hh, live_w_hr] = &live;
        let (Some(live_w_ih), Some(live_w_hh)) = (live_w_ih, live_w_hh) else {
            unreachable!("w_ih and w_hh are always kept, so always compared")
        };
        // The pass on the live weights; the general one below takes the kept
        // copies, their panels and their bias in their place.
        let in_place = Sequence {
            dims: Dims {
                steps,
                batch,
                input: self.input,
                hidden: self.hidden,
            },
            batch_first: call.batch_first,
            reverse: call.reverse,
            lengths: None,
            x: slice("x", &x)?,
            w_ih: slice("w_ih", live_w_ih)?,
            w_hh: slice("w_hh", live_w_hh)?,
            bias: None,
            h0: opt_slice("h0", &h0)?,
            c0: opt_slice("c0", &c0)?,
            panels: None,
            variant: Variant {
                peepholes: opt_slice("peepholes", &peepholes)?,
                w_hr: opt_slice("w_hr", live_w_hr)?,
                clip: self.clip.map(E::from_f64),
                input_forget: self.input_forget,
                forget_gate: self.forget_gate,
                f,
                g,
                h,
                ..Variant::default()
            },
        };
        // One row for a few steps reads the live weights themselves
        // (`kernels/row_major.rs`; not bf16 inference, whose weights are the
        // kept bfloat16 copy): nothing kept is used, so there is nothing to
        // prove (nor are the kept copies borrowed), and the bits are those of
        // the packed path.
        let isa = crate::simd::Isa::active();
        if ln.is_none()
            && !panels.bf16()
            && crate::kernels::row_major::applies(&in_place, isa, false)
        {
            // b_ih + b_hh in E, as `functional._bias_sum` adds them.
            let (b_ih, b_hh) = (opt_slice("b_ih", live_b_ih)?, opt_slice("b_hh", live_b_hh)?);
            let live_bias: Option<Vec<E>> = match (b_ih, b_hh) {
                (Some(a), Some(b)) => Some(a.iter().zip(b).map(|(&a, &b)| a + b).collect()),
                (one, other) => one.or(other).map(<[E]>::to_vec),
            };
            let seq = Sequence {
                bias: live_bias.as_deref(),
                ..in_place
            };
            let out = out.outputs()?;
            run_pass(py, seq.dims, |cancel| {
                crate::lstm::forward_on(isa, &seq, out, None, cancel)
            })?;
            return Ok(true);
        }
        let w_ih: In<'_, E> = self.w_ih.bind(py).extract()?;
        let w_hh: In<'_, E> = self.w_hh.bind(py).extract()?;
        let w_hr = private::<E>(py, &self.w_hr)?;
        let bias = private::<E>(py, &self.bias)?;
        let b_ih = private::<E>(py, &self.b_ih)?;
        let b_hh = private::<E>(py, &self.b_hh)?;
        let kept = [
            Some(&w_ih),
            Some(&w_hh),
            b_ih.as_ref(),
            b_hh.as_ref(),
            w_hr.as_ref(),
        ];
        let mut pairs = Vec::with_capacity(live.len());
        for (given, mine) in live.iter().zip(kept) {
            if let (Some(given), Some(mine)) = (given, mine) {
                pairs.push((bytes_of(given)?, bytes_of(mine)?));
            }
        }
        let seq = Sequence {
            w_ih: slice("w_ih", &w_ih)?,
            w_hh: slice("w_hh", &w_hh)?,
            bias: opt_slice("bias", &bias)?,
            panels: Some(panels),
            variant: Variant {
                w_hr: opt_slice("w_hr", &w_hr)?,
                ..in_place.variant
            },
            ..in_place
        };
        let out = out.outputs()?;
        let mut current = false;
        run_pass(py, seq.dims, |cancel| {
            current = crate::kernels::pack::same_bytes(&pairs)?;
            if !current {
                return Ok(());
            }
            match &ln {
                Some(ln) => crate::layernorm::forward(&seq, ln, out, None, cancel),
                None => crate::forward(&seq, out, None, cancel),
            }
        })?;
        Ok(current)
    }
}

#[pymethods]
impl Kept {
    /// `packed` made from `w_ih`, `w_hh` and `w_hr` (None without a
    /// projection); `bias` b_ih + b_hh or None; `b_ih`, `b_hh` the biases as
    /// given (None where absent), what the live ones are compared with; the
    /// variant as `_checks.variant_options` gives it (`activations` None for
    /// the plain ones). Every array is private to the caller and never
    /// written.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        packed: Bound<'_, Packed>,
        w_ih: &Bound<'_, PyAny>,
        w_hh: &Bound<'_, PyAny>,
        w_hr: Option<&Bound<'_, PyAny>>,
        bias: Option<&Bound<'_, PyAny>>,
        b_ih: Option<&Bound<'_, PyAny>>,
        b_hh: Option<&Bound<'_, PyAny>>,
        clip: Option<f64>,
        input_forget: bool,
        forget_gate: bool,
        activations: Option<Vec<ActivationSpec>>,
    ) -> PyResult<Self> {
        let shape_of = |name: &str, a: &Bound<'_, PyAny>| -> PyResult<Vec<usize>> {
            Ok(a.cast::<PyUntypedArray>()
                .map_err(|_| PyTypeError::new_err(format!("{name} must be an array")))?
                .shape()
                .to_vec())
        };
        let w_ih_shape = shape_of("w_ih", w_ih)?;
        let &[rows, input] = w_ih_shape.as_slice() else {
            return Err(PyValueError::new_err("w_ih must be 2-D"));
        };
        let shape_if =
            |name: &str, a: Option<&Bound<'_, PyAny>>| a.map(|a| shape_of(name, a)).transpose();
        let shapes = [
            Some(w_ih_shape.clone()),
            Some(shape_of("w_hh", w_hh)?),
            shape_if("b_ih", b_ih)?,
            shape_if("b_hh", b_hh)?,
            shape_if("w_hr", w_hr)?,
        ];
        let mut acts = [Activation::Sigmoid, Activation::Tanh, Activation::Tanh];
        if let Some(given) = activations {
            let [f, g, h] = given.as_slice() else {
                return Err(PyValueError::new_err(format!(
                    "activations must have 3 entries (f, g, h), got {}",
                    given.len()
                )));
            };
            for (slot, (name, alpha, beta)) in acts.iter_mut().zip([f, g, h]) {
                *slot = Activation::parse(name, *alpha, *beta)?;
            }
        }
        let own = |a: Option<&Bound<'_, PyAny>>| a.map(|a| a.clone().unbind());
        Ok(Kept {
            packed: packed.unbind(),
            w_ih: w_ih.clone().unbind(),
            w_hh: w_hh.clone().unbind(),
            w_hr: own(w_hr),
            bias: own(bias),
            b_ih: own(b_ih),
            b_hh: own(b_hh),
            shapes,
            input,
            hidden: rows / 4,
            clip,
            input_forget,
            forget_gate,
            activations: acts,
        })
    }

    /// One pass without a cache (`need_cache=False`): `x` (T, B, I), or
    /// (B, T, I) with `batch_first`, `h0`, `c0` (or None), `out` the
    /// `_bundles.Outputs` to write, all checked, C-contiguous and of the
    /// prepared dtype; `live` the caller's w_ih, w_hh, b_ih, b_hh, w_hr (None
    /// where absent) and `peepholes` (or None). Returns False, computing
    /// nothing, unless every live array is an array of the dtype, C-contiguous
    /// and aligned, of its kept copy's shape and bit for bit that copy: the
    /// caller then takes the general path. Proof and pass run in one
    /// release of the GIL. A pass that reads the weights as given (one row,
    /// a few steps: `kernels/row_major.rs`) needs no proof: it runs on the
    /// live arrays, with the bits the general path would give them.
    /// `layer_norm`: for the LayerNorm LSTM, its live gains and biases and eps
    /// (`_bundles.LayerNormParams`), read in place like `peepholes`.
    #[pyo3(signature = (
        x, h0, c0, live, peepholes, out, *, batch_first = false, reverse = false, layer_norm = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        live: [Option<Bound<'py, PyAny>>; 5],
        peepholes: Option<&Bound<'py, PyAny>>,
        out: &Bound<'py, PyAny>,
        batch_first: bool,
        reverse: bool,
        layer_norm: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<bool> {
        let call = KeptCall {
            x,
            h0,
            c0,
            live,
            peepholes,
            batch_first,
            reverse,
            out,
            layer_norm,
        };
        match &self.packed.get().panels {
            AnyPanels::F32(panels) => self.run(py, panels, call),
            AnyPanels::F64(panels) => self.run(py, panels, call),
        }
    }
}

/// The bytes of a C-contiguous array of one of the engine's dtypes.
fn bytes_of<'a, E: Element>(a: &'a In<'_, E>) -> PyResult<&'a [u8]> {
    let s = slice("weights", a)?;
    // SAFETY: the engine's elements are plain floats (f32, f64): no padding,
    // every byte initialised; the view covers exactly the slice's memory and
    // lives as long as the borrow of the array.
    Ok(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), size_of_val(s)) })
}

/// A float32 or float64 array, borrowed for reading its bytes.
enum AnyIn<'py> {
    F32(In<'py, f32>),
    F64(In<'py, f64>),
}

impl AnyIn<'_> {
    fn bytes(&self) -> PyResult<(&[u8], usize)> {
        match self {
            AnyIn::F32(a) => Ok((bytes_of(a)?, 4)),
            AnyIn::F64(a) => Ok((bytes_of(a)?, 8)),
        }
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for AnyIn<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.cast::<PyArrayDyn<f64>>().is_ok() {
            Ok(AnyIn::F64(obj.extract()?))
        } else {
            Ok(AnyIn::F32(obj.extract()?))
        }
    }
}

/// `$call` on the sequence `$seq` in its dtype: the one place a call's
/// [`AnySequence`] becomes the `E` of its `run_*` function.
macro_rules! by_dtype {
    ($seq:ident => $call:expr) => {
        match $seq {
            AnySequence::F32($seq) => $call,
            AnySequence::F64($seq) => $call,
        }
    };
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
        by_dtype!(seq => run_forward(py, seq, out, cache))
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
        by_dtype!(seq => run_backward(py, seq, cache, seeds, grads))
    }

    /// The cell each step computed, (T·B) × Hp into `out`, from the `cache`
    /// (`_bundles.CacheArrays`) that `forward` wrote for `seq`: with zoneout
    /// of c the candidates c̃_t, rebuilt with the forward's arithmetic (the
    /// cache holds the states after zoneout), else the cache's cells.
    #[pyfunction]
    fn zoneout_candidates<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        cache: &Bound<'py, PyAny>,
        out: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        by_dtype!(seq => run_candidates(py, seq, cache, out))
    }

    /// Forward pass of the LayerNorm LSTM (docs/variants.md): as `forward`,
    /// with `ln` the gains, biases and eps and `cache` its own arrays.
    #[pyfunction]
    fn layer_norm_forward<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        ln: &Bound<'py, PyAny>,
        out: &Bound<'py, PyAny>,
        cache: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        by_dtype!(seq => run_ln_forward(py, seq, ln, out, cache))
    }

    /// The activated gates `gates` (R, 4H) and, for the variants that need
    /// them, the pre-activations `pre` (R, 4H) of a `layer_norm_forward`,
    /// rebuilt from its `cache` with the forward's arithmetic (the cache does
    /// not keep them).
    #[pyfunction]
    fn layer_norm_gates<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        ln: &Bound<'py, PyAny>,
        cache: &Bound<'py, PyAny>,
        gates: &Bound<'py, PyAny>,
        pre: Option<&Bound<'py, PyAny>>,
        block: Option<usize>,
    ) -> PyResult<()> {
        by_dtype!(seq => run_ln_gates(py, seq, ln, cache, gates, pre, block))
    }

    /// Backward pass of the LayerNorm LSTM: as `backward`, with `ln` and the
    /// cache `layer_norm_forward` wrote.
    #[pyfunction]
    fn layer_norm_backward<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        ln: &Bound<'py, PyAny>,
        cache: &Bound<'py, PyAny>,
        seeds: &Bound<'py, PyAny>,
        grads: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        by_dtype!(seq => run_ln_backward(py, seq, ln, cache, seeds, grads))
    }

    /// [`forward`] without the cache: writes `out` and keeps in `states`
    /// (one flat array) the state (h, c) at the start of every segment of
    /// `every` iterations but the first, for `backward_checkpointed`.
    /// `zoneout`, (seed, layer, direction, z_h, z_c): zoneout's training
    /// masks drawn per segment (`crate::ZoneoutDraws`) instead of given in
    /// `seq`.
    #[pyfunction]
    #[pyo3(signature = (seq, out, states, every, zoneout = None))]
    fn forward_checkpointed<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        out: &Bound<'py, PyAny>,
        states: &Bound<'py, PyAny>,
        every: usize,
        zoneout: Option<ZoneoutArgs>,
    ) -> PyResult<()> {
        let draws = zoneout_draws(zoneout);
        by_dtype!(seq => run_forward_checkpointed(py, seq, out, states, every, draws))
    }

    /// [`backward`] from the `states` that `forward_checkpointed` kept for
    /// the same `seq` and `every`: each segment's forward recomputed, the
    /// gradients bitwise those of the full cache.
    #[pyfunction]
    #[pyo3(signature = (seq, states, every, seeds, grads, zoneout = None))]
    fn backward_checkpointed<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        states: &Bound<'py, PyAny>,
        every: usize,
        seeds: &Bound<'py, PyAny>,
        grads: &Bound<'py, PyAny>,
        zoneout: Option<ZoneoutArgs>,
    ) -> PyResult<()> {
        let draws = zoneout_draws(zoneout);
        by_dtype!(seq => run_backward_checkpointed(py, seq, states, every, draws, seeds, grads))
    }

    /// `forward_checkpointed` of the LayerNorm LSTM: as `layer_norm_forward`
    /// without the cache, keeping the states as `forward_checkpointed` does.
    #[pyfunction]
    #[pyo3(signature = (seq, ln, out, states, every, zoneout = None))]
    fn layer_norm_forward_checkpointed<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        ln: &Bound<'py, PyAny>,
        out: &Bound<'py, PyAny>,
        states: &Bound<'py, PyAny>,
        every: usize,
        zoneout: Option<ZoneoutArgs>,
    ) -> PyResult<()> {
        let draws = zoneout_draws(zoneout);
        by_dtype!(seq => run_ln_forward_checkpointed(py, seq, ln, out, states, every, draws))
    }

    /// `backward_checkpointed` of the LayerNorm LSTM: the gradients of
    /// `layer_norm_backward`, bitwise, from the states that
    /// `layer_norm_forward_checkpointed` kept for the same `seq` and `every`.
    #[pyfunction]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (seq, ln, states, every, seeds, grads, zoneout = None))]
    fn layer_norm_backward_checkpointed<'py>(
        py: Python<'py>,
        seq: AnySequence<'py>,
        ln: &Bound<'py, PyAny>,
        states: &Bound<'py, PyAny>,
        every: usize,
        seeds: &Bound<'py, PyAny>,
        grads: &Bound<'py, PyAny>,
        zoneout: Option<ZoneoutArgs>,
    ) -> PyResult<()> {
        let draws = zoneout_draws(zoneout);
        by_dtype!(seq => {
            run_ln_backward_checkpointed(py, seq, ln, states, every, draws, seeds, grads)
        })
    }

    /// Whether the arrays of `given` and `kept` (sequences of C-contiguous
    /// float32 or float64 arrays, paired in order) hold the same bits, dtype
    /// included: how a layer proves its parameters unchanged since it packed
    /// them. Compared with the GIL released, over the engine's threads.
    #[pyfunction]
    fn same_bits(py: Python<'_>, given: Vec<AnyIn<'_>>, kept: Vec<AnyIn<'_>>) -> PyResult<bool> {
        if given.len() != kept.len() {
            return Ok(false);
        }
        let mut pairs = Vec::with_capacity(given.len());
        for (a, b) in given.iter().zip(&kept) {
            let ((a, size_a), (b, size_b)) = (a.bytes()?, b.bytes()?);
            if size_a != size_b {
                return Ok(false);
            }
            pairs.push((a, b));
        }
        Ok(py.detach(|| crate::kernels::pack::same_bytes(&pairs))?)
    }

    /// Fills `out` (a C-contiguous 2-D float32 or float64 array, rows × cols)
    /// with an inverted-dropout mask of the generator (`crate::masks`,
    /// docs/variants.md 'Masks'): 0 where entry (row, col) of stream `stream`
    /// drops, 1/(1-p) rounded once to the dtype elsewhere. Bit-identical to
    /// `masks.scaled_keep`.
    #[pyfunction]
    fn scaled_keep(
        py: Python<'_>,
        out: &Bound<'_, PyAny>,
        seed: u64,
        stream: u64,
        layer: u64,
        direction: u64,
        p: f64,
    ) -> PyResult<()> {
        if !(0.0..1.0).contains(&p) {
            return Err(PyValueError::new_err(format!(
                "p must be in [0, 1), got {p}"
            )));
        }
        let key = crate::masks::key(seed, stream, layer, direction);
        fn fill<E: Engine>(
            py: Python<'_>,
            out: &Bound<'_, PyAny>,
            key: u64,
            p: f64,
        ) -> PyResult<()> {
            let mut a = out.extract::<Out<'_, E>>()?;
            let shape = a.0.shape().to_vec();
            let [rows, cols] = shape[..] else {
                return Err(PyValueError::new_err("scaled_keep: out must be 2-D"));
            };
            if rows == 0 || cols == 0 {
                return Ok(());
            }
            let draw = crate::masks::ScaledKeepDraw {
                key,
                cols,
                p,
                out: slice_mut("out", &mut a)?,
            };
            py.detach(|| crate::simd::dispatch_dq(Isa::active(), draw));
            Ok(())
        }
        if out.cast::<PyArrayDyn<f64>>().is_ok() {
            fill::<f64>(py, out, key, p)
        } else {
            fill::<f32>(py, out, key, p)
        }
    }

    /// Writes into `out` (uint16, the shape of `src`) the bits of each float32
    /// of `src` rounded to bfloat16, ties to even, as bf16 inference rounds
    /// its weights (`crate::simd::bf16`).
    #[pyfunction]
    fn bfloat16_bits(py: Python<'_>, src: In<'_, f32>, mut out: Out<'_, u16>) -> PyResult<()> {
        if src.0.shape() != out.0.shape() {
            return Err(PyValueError::new_err(
                "bfloat16_bits: out must have the shape of src",
            ));
        }
        let src = slice("src", &src)?;
        let dst = slice_mut("out", &mut out)?;
        py.detach(|| {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = crate::simd::Bf16::round(x).0;
            }
        });
        Ok(())
    }

    /// Fills `out` (a C-contiguous 2-D float32 or float64 array, (T·B) × Wp
    /// with Wp ≥ `width`) with a zoneout mask of the generator
    /// (`crate::masks::zoneout_keep`, docs/variants.md 'Zoneout'): rows in
    /// x's layout (time-major, or batch-major with `batch_first`), 1 where
    /// unit (t, b, u) of stream `stream` keeps its previous value, else 0.
    #[pyfunction]
    #[allow(clippy::too_many_arguments)]
    fn zoneout_keep(
        py: Python<'_>,
        out: &Bound<'_, PyAny>,
        seed: u64,
        stream: u64,
        layer: u64,
        direction: u64,
        p: f64,
        steps: usize,
        batch: usize,
        width: usize,
        batch_first: bool,
    ) -> PyResult<()> {
        if !(0.0..1.0).contains(&p) {
            return Err(PyValueError::new_err(format!(
                "p must be in [0, 1), got {p}"
            )));
        }
        let key = crate::masks::key(seed, stream, layer, direction);
        #[allow(clippy::too_many_arguments)]
        fn fill<E: Engine>(
            py: Python<'_>,
            out: &Bound<'_, PyAny>,
            key: u64,
            p: f64,
            steps: usize,
            batch: usize,
            width: usize,
            batch_first: bool,
        ) -> PyResult<()> {
            let mut a = out.extract::<Out<'_, E>>()?;
            let shape = a.0.shape().to_vec();
            let [rows, pad] = shape[..] else {
                return Err(PyValueError::new_err("zoneout_keep: out must be 2-D"));
            };
            if Some(rows) != steps.checked_mul(batch) || pad < width {
                return Err(PyValueError::new_err(format!(
                    "zoneout_keep: out must be (steps·batch, ≥ width) = ({steps}·{batch}, \
                     ≥ {width}), got ({rows}, {pad})"
                )));
            }
            let dst = slice_mut("out", &mut a)?;
            let draw = crate::masks::ZoneoutDraw {
                key,
                steps,
                batch,
                width,
                width_pad: pad,
                batch_major: batch_first,
                p,
                out: dst,
            };
            py.detach(|| crate::simd::dispatch_dq(Isa::active(), draw));
            Ok(())
        }
        if out.cast::<PyArrayDyn<f64>>().is_ok() {
            fill::<f64>(py, out, key, p, steps, batch, width, batch_first)
        } else {
            fill::<f32>(py, out, key, p, steps, batch, width, batch_first)
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

    /// Threads for later calls: any Python int, refused by the engine outside
    /// [1, MAX_THREADS] (one beyond `usize`, or negative, with the same message).
    #[pyfunction]
    fn set_num_threads(n: &Bound<'_, pyo3::types::PyInt>) -> PyResult<()> {
        match n.extract::<usize>() {
            Ok(count) => Ok(crate::set_num_threads(count)?),
            Err(_) => Err(crate::threads_out_of_range(n).into()),
        }
    }

    /// Why `LSTM_FAST_NUM_THREADS` is not used (not an integer in range), or
    /// None when it is unset or used; `import lstm_fast` warns with it.
    #[pyfunction]
    fn _env_num_threads_error() -> Option<String> {
        crate::env_num_threads()?.err().map(|e| e.to_string())
    }

    /// Holds the engine's pool lock for `seconds` with the GIL released (tests:
    /// a fork while another thread holds it).
    #[pyfunction]
    fn _hold_pool_lock(py: Python<'_>, seconds: f64) -> PyResult<()> {
        let duration = std::time::Duration::try_from_secs_f64(seconds)
            .map_err(|e| PyValueError::new_err(format!("seconds: {e}")))?;
        py.detach(|| crate::hold_pool_lock(duration));
        Ok(())
    }

    /// How the last call run by a team of threads waited at its per-step barrier:
    /// (members, waits, waits that slept, polls). Polls are about a nanosecond
    /// each: polls / waits estimates how long a member waited for the last to
    /// arrive. For measurements (BENCHMARKS.md, thread scaling).
    #[pyfunction]
    fn _last_team_stats() -> (usize, usize, usize, usize) {
        let s = crate::last_team_stats();
        (s.members, s.waits, s.slept, s.polls)
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

    /// A cancellation shared by engine calls on several threads: the calls made
    /// inside `with cancel:` (by the thread that entered it) stop at their next
    /// time step once `cancel.cancel()` is called from any thread, and raise
    /// `KeyboardInterrupt`. Only the main thread sees Ctrl-C; this is how it
    /// stops the calls it started on other threads (`LSTM`'s reverse direction).
    #[pymodule_export]
    use super::Packed;

    #[pymodule_export]
    use super::Kept;

    #[pyclass(frozen, name = "Cancel", module = "lstm_fast._core")]
    struct CancelScope(Arc<Cancel>);

    #[pymethods]
    impl CancelScope {
        #[new]
        fn new() -> Self {
            CancelScope(Arc::new(Cancel::new()))
        }

        /// Stops the calls inside `with` blocks of this object, now and later.
        fn cancel(&self) {
            self.0.cancel();
        }

        /// Whether `cancel()` was called.
        #[getter]
        fn cancelled(&self) -> bool {
            self.0.is_cancelled()
        }

        fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
            SCOPES.with(|s| s.borrow_mut().push(slf.get().0.clone()));
            slf
        }

        fn __exit__(
            &self,
            _exc_type: &Bound<'_, PyAny>,
            _exc: &Bound<'_, PyAny>,
            _traceback: &Bound<'_, PyAny>,
        ) {
            SCOPES.with(|s| {
                let mut scopes = s.borrow_mut();
                if let Some(i) = scopes.iter().rposition(|c| Arc::ptr_eq(c, &self.0)) {
                    scopes.remove(i);
                }
            });
        }
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

    /// Bytes per second one core reads from a buffer of `nbytes` with the SIMD
    /// path in use (the best pass of `seconds`), with the GIL released so that
    /// threads calling it at once measure every core.
    #[pyfunction]
    #[pyo3(signature = (nbytes, seconds = 0.2))]
    fn read_bandwidth(py: Python<'_>, nbytes: usize, seconds: f64) -> f64 {
        let isa = Isa::active();
        py.detach(|| crate::simd::bandwidth::read_bandwidth(isa, nbytes, seconds))
    }

    /// The single-core f32 FMA peak of the SIMD path in use, in GFLOP/s,
    /// measured for `seconds` with the GIL released (so that threads calling it
    /// at once measure every core).
    #[pyfunction]
    #[pyo3(signature = (seconds = 0.2))]
    fn fma_peak(py: Python<'_>, seconds: f64) -> f64 {
        let isa = Isa::active();
        py.detach(|| crate::simd::peak::fma_peak(isa, seconds))
    }

    /// The single-core peak of the bfloat16 dot products (`vdpbf16ps`, two
    /// multiply-adds per f32 lane) in GFLOP/s, measured for `seconds` with the
    /// GIL released; None on a CPU without AVX-512 BF16.
    #[pyfunction]
    #[pyo3(signature = (seconds = 0.2))]
    fn bf16_dot_peak(py: Python<'_>, seconds: f64) -> Option<f64> {
        py.detach(|| crate::kernels::bf16_dot::dot_peak(seconds))
    }

    /// Forces a SIMD path; ValueError if unknown or unsupported here.
    #[pyfunction]
    fn set_isa(name: &str) -> PyResult<()> {
        Ok(Isa::parse(name)?.set_active()?)
    }
}
