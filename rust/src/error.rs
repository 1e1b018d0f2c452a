//! The engine's one error type. The bindings turn it into Python exceptions in
//! exactly one place (`python.rs`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A shape, size, length or option is wrong (Python: `ValueError`).
    Value(String),
    /// A buffer size overflows the address space (Python: `MemoryError`).
    TooLarge(String),
    /// The system refused an allocation (an address-space limit, strict
    /// overcommit, a container's memory limit); the message names the buffer
    /// and its size in bytes (Python: `MemoryError`).
    OutOfMemory(String),
    /// The pass was cancelled (`Cancel`) before it finished; its outputs are
    /// partly written (Python: the exception of the signal that cancelled it,
    /// else `KeyboardInterrupt`).
    Interrupted,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Value(msg) | Error::TooLarge(msg) | Error::OutOfMemory(msg) => f.write_str(msg),
            Error::Interrupted => f.write_str("the call was interrupted"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
