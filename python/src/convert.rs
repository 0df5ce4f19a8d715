//! Errors and values across the boundary: a library error becomes `ChatforgeError` with the
//! message the CLI prints; structured values cross as JSON text.

use pyo3::PyErr;

use crate::ChatforgeError;

/// A library error as the Python exception.
pub fn err(e: impl std::fmt::Display) -> PyErr {
    ChatforgeError::new_err(e.to_string())
}

/// JSON the Python layer sent that does not fit.
pub fn json_err(e: serde_json::Error) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(format!("invalid argument: {e}"))
}

pub fn to_json(v: &impl serde::Serialize) -> pyo3::PyResult<String> {
    serde_json::to_string(v).map_err(|e| ChatforgeError::new_err(e.to_string()))
}
