//! The command-line contract (DSL.md) against the `reactor-hub` binary. The expectations
//! live in `tests/contract/cli.rs`, shared with the agent's copy of this test.

const BIN: &str = env!("CARGO_BIN_EXE_reactor-hub");
const NAME: &str = "reactor-hub";

#[path = "../../tests/contract/cli.rs"]
mod contract;
