//! Finding the Python venv that `scripts/setup` made (torch for `.pt` imports, the BERT
//! weights).

use std::path::PathBuf;

/// Where the set-up Python venv may be, most specific first: `$PLUME_VENV`, else `.venv`
/// here, else `.venv` in the checkout the binary was built in (target/<profile>/ is two
/// levels below it), so that a worker or CLI started in another directory still finds it.
pub fn venv_dirs() -> Vec<PathBuf> {
    if let Some(v) = std::env::var_os("PLUME_VENV") {
        return vec![PathBuf::from(v)];
    }
    let mut dirs = vec![PathBuf::from(".venv")];
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(".venv")));
    }
    dirs
}
