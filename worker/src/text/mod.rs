//! The text side: BERT (and, later, the text-to-style methods).

pub mod bert;
pub mod methods;
