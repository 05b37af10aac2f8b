//! The command-line contract (DSL.md) against the `reactor-agent` binary. The expectations
//! live in `tests/contract/cli.rs`, shared with the hub's copy of this test.

const BIN: &str = env!("CARGO_BIN_EXE_reactor-agent");
const NAME: &str = "reactor-agent";

#[path = "../../tests/contract/cli.rs"]
mod contract;
