//! What `tessera-install` puts where, shared with `tessera doctor`, which checks it: the record
//! of what was installed (`record`), the platform's folders for the program, the login service
//! and the editors' plug-ins (`places`), and the one `kritarc` line that enables the Krita
//! plug-in (`kritarc`). The model manifest is the store's (`manifest`).
//!
//! The installing itself (downloads, copies, service registration) lives in the `installer/`
//! crate; this module only knows facts, so the daemon gains no installer dependencies.

pub mod kritarc;
pub mod places;
pub mod record;
