//! Neural-network plumbing shared by every model: layers, the optimizer, checkpoints.

pub mod adam;
pub mod checkpoint;
pub mod layers;

use tch::nn::VarStore;
use tch::Tensor;

/// The variables of a store as a name-sorted list (a stable order for optimizers and files).
pub fn named_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The trainable variables of a store (buffers such as `w_avg` excluded), name-sorted.
pub fn trainable_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    named_vars(vs)
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect()
}

/// Turns gradient tracking on or off for the given parameters (StyleGAN's phase toggling:
/// D's weights need no gradient during G's step and vice versa).
pub fn set_requires_grad(params: &[(String, Tensor)], on: bool) {
    for (_, t) in params {
        let _ = t.set_requires_grad(on);
    }
}

/// Another handle to the same named tensors (no data is copied).
pub fn shallow(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}
