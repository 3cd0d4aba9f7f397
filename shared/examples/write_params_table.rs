//! Rewrites `shared/python/tessera_client/params_table.py` from the job parameters' defaults
//! and ranges (`tessera_protocol::params`), after a deliberate change to them.

use std::path::PathBuf;
use tessera_protocol::params::python;

fn main() -> std::io::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(python::TABLE_PATH);
    std::fs::write(&path, python::table())?;
    println!("wrote {}", path.display());
    Ok(())
}
