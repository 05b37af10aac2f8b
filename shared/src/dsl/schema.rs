//! The JSON Schema of the language (placeholder; filled in below).
