//! The engine's one error type. The bindings turn it into Python exceptions in
//! exactly one place (`python.rs`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A shape, size, length or option is wrong (Python: `ValueError`).
    Value(String),
    /// A buffer size overflows the address space (Python: `MemoryError`).
    TooLarge(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Value(msg) | Error::TooLarge(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
