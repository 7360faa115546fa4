//! The `io.beephost.*` labels: the only record the host keeps of what it owns.
//!
//! Docker is the source of truth. Every image, volume and container beephost creates carries
//! [`KIND`] and [`VERSION`], plus the operator's extra labels (tests add `io.beephost.test`).

use std::collections::HashMap;

/// What the object is: `runtime`, `rootfs`, `probe`, `build` (later: `venv`, `backend`).
pub const KIND: &str = "io.beephost.kind";
/// The beephost version that made the object.
pub const VERSION: &str = "io.beephost.version";
/// The Python version a runtime image runs (`3.11.2`).
pub const PYTHON: &str = "io.beephost.python";
/// Where a runtime's Python layer came from: `image` or `rootfs`.
pub const SOURCE: &str = "io.beephost.source";
/// The image reference or file name the runtime came from, for people.
pub const SOURCE_REF: &str = "io.beephost.source-ref";
/// Content digest of the source (the pulled image's id, or the tarball's sha256).
pub const SOURCE_DIGEST: &str = "io.beephost.source-digest";
/// Digest of the beephost layer's inputs (agent binary, worker, Dockerfile).
pub const LAYER_DIGEST: &str = "io.beephost.layer-digest";
/// The venv a volume holds, a venv job builds, or a backend mounts: `io.beephost.venv=<name>`.
pub const VENV: &str = "io.beephost.venv";
/// The runtime image (id) a venv was built with, on its volume.
pub const VENV_RUNTIME: &str = "io.beephost.venv-runtime";
/// Marks objects made by tests: `io.beephost.test=<unique prefix>`.
pub const TEST: &str = "io.beephost.test";

/// Labels every object gets: kind, version and the operator's extra labels.
pub fn base(kind: &str, extra: &HashMap<String, String>) -> HashMap<String, String> {
    let mut labels = extra.clone();
    labels.insert(KIND.to_string(), kind.to_string());
    labels.insert(VERSION.to_string(), crate::VERSION.to_string());
    labels
}

/// Parses `k=v,k=v` into labels; every key must live under `io.beephost.`.
pub fn parse_extra(spec: &str) -> Result<HashMap<String, String>, String> {
    let mut labels = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("label `{item}` is not key=value"))?;
        if !k.starts_with("io.beephost.") {
            return Err(format!("label `{k}` must start with io.beephost."));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_extra_labels() {
        let l = parse_extra("io.beephost.test=abc, io.beephost.team=x").unwrap();
        assert_eq!(l["io.beephost.test"], "abc");
        assert_eq!(l["io.beephost.team"], "x");
        assert!(parse_extra("foo=bar").unwrap_err().contains("foo"));
        assert!(parse_extra("io.beephost.x")
            .unwrap_err()
            .contains("key=value"));
    }

    #[test]
    fn base_labels_carry_kind_and_extras() {
        let extra = parse_extra("io.beephost.test=t1").unwrap();
        let l = base("runtime", &extra);
        assert_eq!(l[KIND], "runtime");
        assert_eq!(l[TEST], "t1");
        assert_eq!(l[VERSION], crate::VERSION);
    }
}
