//! Writes the golden vectors: `shared/golden/<name>.bin` for every case in
//! `tests/support/golden_cases.rs`, each one whole frame (the little-endian
//! `u32` payload length, then the payload). Stale `.bin` files are removed.
//!
//! Run after a deliberate protocol change (which also bumps
//! `PROTOCOL_VERSION`), then update the Python mirror of the cases:
//!
//! ```text
//! cargo run -p tessera-protocol --example write_golden
//! ```

#[path = "../tests/support/golden_cases.rs"]
mod golden_cases;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

fn main() -> io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    fs::create_dir_all(&dir)?;
    let cases = golden_cases::cases();
    let names: BTreeSet<String> = cases.iter().map(|c| format!("{}.bin", c.name)).collect();
    assert_eq!(names.len(), cases.len(), "two golden cases share a name");

    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".bin") && !names.contains(name) {
            fs::remove_file(&path)?;
            println!("removed {name}");
        }
    }

    let mut changed = 0;
    for case in &cases {
        let mut frame = Vec::new();
        tessera_protocol::write_frame(&mut frame, &case.message)?;
        let path = dir.join(format!("{}.bin", case.name));
        if fs::read(&path).ok().as_deref() != Some(frame.as_slice()) {
            fs::write(&path, &frame)?;
            println!("wrote {}.bin ({} bytes)", case.name, frame.len());
            changed += 1;
        }
    }
    println!(
        "{} golden files in {}, {changed} changed",
        cases.len(),
        dir.display()
    );
    Ok(())
}
