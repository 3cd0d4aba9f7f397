//! The Python client's table of job parameter defaults and ranges
//! (`shared/python/tessera_client/params_table.py`) must be what the Rust definitions write.

use std::path::PathBuf;
use tessera_protocol::params::python;

#[test]
fn the_committed_python_table_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(python::TABLE_PATH);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        committed == python::table(),
        "{} is stale: the defaults or ranges in shared/src/params.rs changed; rewrite it with `{}`",
        path.display(),
        python::REGENERATE
    );
}
