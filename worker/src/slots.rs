//! The device slots a worker advertises, from its flags: `--device` (one device, `auto`, or a
//! list such as `cuda:0,cuda:1`), `--slots K` (K runs at once on a CPU), or
//! `--simulate-gpus COUNTxGB` (GPUs that exist only in the advertisement, for tests).

use crate::remote::Slot;
use plume_proto::v1 as pb;

/// Most slots one worker may have.
pub const MAX_SLOTS: usize = 64;

/// The slots of `--device LIST [--slots K]`. A GPU is one slot with its memory (read from
/// `nvidia-smi`, 0 when it cannot be read); a CPU device is `slots` slots (default 1).
pub fn from_flags(devices: &str, slots: Option<u32>) -> Result<Vec<Slot>, String> {
    let parsed = devices
        .split(',')
        .map(|d| crate::parse_device(d.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = vec![];
    for (i, device) in parsed.iter().enumerate() {
        if parsed[..i].contains(device) {
            return Err(format!("--device names {device:?} twice"));
        }
        match device {
            tch::Device::Cuda(n) => {
                if slots.is_some_and(|k| k != 1) {
                    return Err("--slots applies to a CPU device; a GPU is one slot".into());
                }
                out.push(Slot {
                    info: pb::DeviceInfo {
                        name: format!("cuda:{n}"),
                        kind: "cuda".into(),
                        memory_bytes: gpu_memory_bytes(*n).unwrap_or(0),
                    },
                    device: *device,
                });
            }
            _ => {
                for k in 0..slots.unwrap_or(1) {
                    out.push(Slot {
                        info: pb::DeviceInfo {
                            name: format!("cpu:{k}"),
                            kind: "cpu".into(),
                            memory_bytes: 0,
                        },
                        device: tch::Device::Cpu,
                    });
                }
            }
        }
    }
    if out.len() > MAX_SLOTS {
        return Err(format!("{} slots; at most {MAX_SLOTS}", out.len()));
    }
    Ok(out)
}

/// The slots of `--simulate-gpus COUNTxGB`: COUNT GPUs of GB each, every job on the CPU.
pub fn simulated(spec: &str) -> Result<Vec<Slot>, String> {
    let bad = || format!("--simulate-gpus {spec:?}: expected COUNTxGB such as 2x24");
    let (count, gb) = spec.split_once('x').ok_or_else(bad)?;
    let count: usize = count.trim().parse().map_err(|_| bad())?;
    let gb: f64 = gb.trim().parse().map_err(|_| bad())?;
    if !(1..=MAX_SLOTS).contains(&count) || !(0.0..=4096.0).contains(&gb) {
        return Err(format!(
            "--simulate-gpus {spec:?}: COUNT must be 1..={MAX_SLOTS} and GB 0..=4096"
        ));
    }
    Ok((0..count)
        .map(|i| Slot {
            info: pb::DeviceInfo {
                name: format!("cuda:{i}"),
                kind: "cuda".into(),
                memory_bytes: (gb * 1e9) as u64,
            },
            device: tch::Device::Cpu,
        })
        .collect())
}

/// GPU `index`'s total memory from `nvidia-smi`, if it can be read.
fn gpu_memory_bytes(index: usize) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.total",
            "--format=csv,noheader,nounits",
            &format!("--id={index}"),
        ])
        .output()
        .ok()?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_slots() {
        let cpu = from_flags("cpu", Some(3)).unwrap();
        let names: Vec<&str> = cpu.iter().map(|s| s.info.name.as_str()).collect();
        assert_eq!(names, ["cpu:0", "cpu:1", "cpu:2"]);
        assert!(from_flags("cpu,cpu", None).is_err());
        assert!(from_flags("tpu", None).is_err());
        let sim = simulated("2x24").unwrap();
        assert_eq!(sim.len(), 2);
        assert_eq!(sim[1].info.name, "cuda:1");
        assert_eq!(sim[1].info.memory_bytes, 24_000_000_000);
        assert_eq!(sim[1].device, tch::Device::Cpu);
        assert!(simulated("2").is_err());
        assert!(simulated("0x24").is_err());
        assert!(simulated("2xNaN").is_err());
    }
}
