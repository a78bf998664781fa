//! The two image networks that score edits (ml.md section 6): the **critic**, which training
//! losses may use, and the **judge**, which only evaluation uses. Same architecture, trained
//! on disjoint images, so no method is scored by a network it trained against.

pub mod fid;
pub mod model;
pub mod train;
