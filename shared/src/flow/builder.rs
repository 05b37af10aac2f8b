//! The embedded Rust API: build a workflow in code. STUB — being written.
