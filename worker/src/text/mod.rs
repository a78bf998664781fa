//! The text side: BERT (and, later, the text-to-style methods).

pub mod benchmark;
pub mod bert;
mod context;
pub mod edit;
pub mod losses;
pub mod methods;
pub mod train;
