//! The block `ucad bench-runtime` ends with: what a board owner pastes back so that the latency
//! budget in board/README.md can be replaced by a measurement. Every line starts with
//! [`PREFIX`], so `grep '^ucad-board'` lifts it out of a long log.

use std::fmt::Write;
use std::path::Path;

use crate::backbone::Arithmetic;

/// The start of every line of the block.
pub(crate) const PREFIX: &str = "ucad-board:";

/// One run's frame time on a number of threads.
#[derive(Debug, Clone, Copy)]
pub struct FrameTime {
    pub threads: usize,
    pub frame_ms: f64,
    pub backbone_ms: f64,
}

/// The block for a run of `backbone` (file and sha256, computing in `arithmetic`) over `frames`
/// frames per thread count.
pub fn render(backbone: &Path, sha256: &str, arithmetic: Arithmetic, frames: u64, times: &[FrameTime]) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut lines = vec![
        ("paste", "these lines back (grep '^ucad-board')".to_string()),
        (
            "ucad",
            format!("{} ({})", env!("CARGO_PKG_VERSION"), env!("UCAD_COMMIT")),
        ),
        ("board", board_model()),
        ("cpu", cpu_summary(&cpuinfo)),
        ("max_mhz", max_mhz()),
        ("cores", crate::parallel::all_cores().to_string()),
        ("features", cpu_features().join(" ")),
        (
            "backbone",
            format!("{} sha256 {}", backbone.display(), sha256.get(..12).unwrap_or(sha256)),
        ),
        ("precision", arithmetic.to_string()),
        ("frames", frames.to_string()),
    ];
    for t in times {
        lines.push((
            "frame_ms",
            format!(
                "{:.1} on {} thread(s), backbone {:.1}",
                t.frame_ms, t.threads, t.backbone_ms
            ),
        ));
    }
    let mut out = String::new();
    for (key, value) in lines {
        let _ = writeln!(out, "{PREFIX} {key:<9} {value}");
    }
    out
}

/// The board's name from its device tree (ARM boards), else the DMI product name (PCs).
fn board_model() -> String {
    ["/proc/device-tree/model", "/sys/class/dmi/id/product_name"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|s| s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The cores' model names with their counts, e.g. `4 × Cortex-A72 (0xd08)`, from
/// /proc/cpuinfo's `model name` (x86) or `CPU part` (ARM) lines.
pub(crate) fn cpu_summary(cpuinfo: &str) -> String {
    let mut models: Vec<(String, usize)> = Vec::new();
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let model = match key.trim() {
            "model name" => value.trim().to_string(),
            "CPU part" => arm_core_name(value.trim()),
            _ => continue,
        };
        match models.iter_mut().find(|(m, _)| *m == model) {
            Some((_, count)) => *count += 1,
            None => models.push((model, 1)),
        }
    }
    if models.is_empty() {
        return "unknown (no model in /proc/cpuinfo)".to_string();
    }
    models
        .iter()
        .map(|(model, count)| format!("{count} × {model}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Arm's part number of the cores ucad's boards use, with the number itself.
fn arm_core_name(part: &str) -> String {
    let name = match part {
        "0xd03" => "Cortex-A53",
        "0xd05" => "Cortex-A55",
        "0xd08" => "Cortex-A72",
        "0xd0b" => "Cortex-A76",
        "0xd41" => "Cortex-A78",
        "0xd42" => "Cortex-A78AE",
        _ => "Arm core",
    };
    format!("{name} ({part})")
}

/// The highest clock of core 0, as cpufreq reports it.
fn max_mhz() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()
        .and_then(|khz| khz.trim().parse::<u64>().ok())
        .map_or_else(|| "unknown".to_string(), |khz| (khz / 1000).to_string())
}

/// The SIMD features that decide which of tract's kernels run, each with `+` or `-`.
fn cpu_features() -> Vec<String> {
    let mark = |name: &str, present: bool| format!("{}{name}", if present { '+' } else { '-' });
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        vec![
            mark("asimd", has!("neon")),
            mark("fp16", has!("fp16")),
            mark("asimddp", has!("dotprod")),
            mark("i8mm", has!("i8mm")),
            mark("bf16", has!("bf16")),
            mark("sve", has!("sve")),
        ]
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        vec![
            mark("avx2", has!("avx2")),
            mark("fma", has!("fma")),
            mark("f16c", has!("f16c")),
            mark("avx512f", has!("avx512f")),
        ]
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    {
        vec![mark("simd-unknown", false)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_cores_are_named_and_counted() {
        let pi4 = "processor\t: 0\nCPU part\t: 0xd08\n\nprocessor\t: 1\nCPU part\t: 0xd08\n";
        assert_eq!(cpu_summary(pi4), "2 × Cortex-A72 (0xd08)");
        let mixed = "CPU part\t: 0xd0b\nCPU part\t: 0xd05\nCPU part\t: 0xd05\nCPU part\t: 0xfff\n";
        assert_eq!(
            cpu_summary(mixed),
            "1 × Cortex-A76 (0xd0b), 2 × Cortex-A55 (0xd05), 1 × Arm core (0xfff)"
        );
        assert_eq!(cpu_summary("model name\t: Some x86\n"), "1 × Some x86");
        assert!(cpu_summary("").starts_with("unknown"));
    }

    #[test]
    fn every_line_of_the_block_is_prefixed_and_carries_the_timings() {
        let times = [
            FrameTime {
                threads: 1,
                frame_ms: 812.26,
                backbone_ms: 800.0,
            },
            FrameTime {
                threads: 4,
                frame_ms: 250.0,
                backbone_ms: 240.5,
            },
        ];
        let block = render(
            Path::new("models/b.onnx"),
            "0123456789abcdef",
            Arithmetic::F16,
            60,
            &times,
        );
        assert!(block.lines().all(|l| l.starts_with(PREFIX)), "{block}");
        for needle in [
            "sha256 0123456789ab\n",
            "812.3 on 1 thread(s), backbone 800.0",
            "250.0 on 4 thread(s), backbone 240.5",
            "frames    60",
            "precision f16",
            env!("CARGO_PKG_VERSION"),
        ] {
            assert!(block.contains(needle), "{needle} missing from\n{block}");
        }
    }
}
