//! Integration tests for Reactor live in `tests/tests/`; this library is empty.
