//! The stages that change the image: provision, configure, finalize. Each takes the one
//! [`BuildContext`] and the attached image; [`crate::build`] runs them in order, inside
//! the layer cache's halves ([`crate::layers`]).
//!
//! Also here: what configure detects in the image (`layout`, `cgroup`), the licences
//! packages declare (`copyright`), and the first-boot scripts configure installs
//! (`firstboot/`).

pub mod cgroup;
pub mod configure;
pub mod copyright;
pub mod finalize;
pub mod layout;
pub mod provision;

pub use crate::context::BuildContext;
