//! Adam written out, so that its moments are ordinary tensors that go into checkpoints
//! (tch's built-in optimizers cannot save their state) and resuming is exact.

use tch::Tensor;

/// Adam over a fixed list of named parameters.
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Updates taken so far (for bias correction).
    pub steps: i64,
    params: Vec<(String, Tensor)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
}

impl Adam {
    /// An optimizer for `params` (name, tensor with requires_grad).
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, beta1: f64, beta2: f64, eps: f64) -> Adam {
        let first = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let second = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Adam {
            lr,
            beta1,
            beta2,
            eps,
            steps: 0,
            params,
            first,
            second,
        }
    }

    /// Clears the gradients of every parameter.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update from the current gradients; parameters without a gradient are skipped.
    pub fn step(&mut self) {
        self.steps += 1;
        let t = self.steps as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2 = 1.0 - self.beta2.powi(t);
        tch::no_grad(|| {
            for (((_, p), m), v) in self
                .params
                .iter()
                .zip(&mut self.first)
                .zip(&mut self.second)
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m
                    .g_mul_scalar_(self.beta1)
                    .g_add_(&(&g * (1.0 - self.beta1)));
                let _ = v
                    .g_mul_scalar_(self.beta2)
                    .g_add_(&(&g * &g * (1.0 - self.beta2)));
                let denom = (&*v / bias2).sqrt() + self.eps;
                let update = (&*m / bias1) / denom * self.lr;
                let _ = p.shallow_clone().g_sub_(&update);
            }
        });
    }

    /// The moments as named tensors (`<param>.m`, `<param>.v`) plus the step counter.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (((name, _), m), v) in self.params.iter().zip(&self.first).zip(&self.second) {
            out.push((format!("{name}.m"), m.shallow_clone()));
            out.push((format!("{name}.v"), v.shallow_clone()));
        }
        out.push(("steps".into(), Tensor::from_slice(&[self.steps as f32])));
        out
    }

    /// Restores moments and step counter from a checkpoint under `prefix`.
    pub fn restore(
        &mut self,
        ckpt: &super::checkpoint::Checkpoint,
        prefix: &str,
    ) -> Result<(), super::checkpoint::CheckpointError> {
        let steps = ckpt
            .tensor(&format!("{prefix}steps"), &[1])?
            .double_value(&[0]) as i64;
        let state: Vec<(String, Tensor)> = self
            .state()
            .into_iter()
            .filter(|(n, _)| n != "steps")
            .collect();
        ckpt.restore(prefix, &state)?;
        self.steps = steps;
        Ok(())
    }
}
