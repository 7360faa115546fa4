//! Unit tests of the venv service's orchestration, over the recording fake engine.
