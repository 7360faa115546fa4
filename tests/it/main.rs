//! The one integration-test binary. Tests here run the real `beephost` binary against the real
//! Docker engine (and the agent against the machine's python3). Every object a test creates
//! carries `io.beephost.test=<its own prefix>` and is removed by label when the test ends,
//! passing or failing, so tests run in parallel.

mod support;

mod agent;
mod agent_examples;
mod agent_failures;
mod agent_files;
mod agent_frames;
mod backends;
mod cli;
mod observability;
mod runtimes;
mod venvs;
