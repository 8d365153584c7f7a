//! One bank from banks fitted separately: products are independent (a task's key, knowledge,
//! prompt, threshold and routing statistics come from its own images alone), so a plant fits them
//! as separate jobs and merges the results, and the merged bank judges exactly like one fitted
//! in sequence in the same order.

use anyhow::{bail, ensure, Result};

use super::validate::MAX_VERSION;
use super::{Bank, Capacity};

/// The banks' tasks in the order given (each bank's in its own order), checked to fit one bank:
/// one backbone, feature size, patch count and arithmetic, unique names, within `capacity`. The
/// version is `version`, or else the sum of the inputs' versions (each append counts once, as in
/// a bank fitted in sequence). `inputs` pairs each bank with the name errors give it.
pub fn merge(inputs: &[(String, Bank)], capacity: Capacity, version: Option<u64>) -> Result<Bank> {
    let Some((first_name, first)) = inputs.first() else {
        bail!("nothing to merge: name at least one bank");
    };
    let mut merged = Bank {
        version: 0,
        tasks: Vec::new(),
        ..first.clone()
    };
    // Each task name so far, and the bank it came from.
    let mut origins: Vec<(&str, &str)> = Vec::new();
    for (name, bank) in inputs {
        check_same_kind(first_name, first, name, bank)?;
        for task in &bank.tasks {
            if let Some((_, earlier)) = origins.iter().find(|(t, _)| *t == task.name) {
                bail!(
                    "{name}: task {} is also in {earlier} (task names are unique in a bank)",
                    task.name
                );
            }
            origins.push((&task.name, name));
            merged.tasks.push(task.clone());
        }
        merged.version = merged.version.saturating_add(bank.version);
    }
    if let Some(version) = version {
        merged.version = version;
    }
    ensure!(
        (1..=MAX_VERSION).contains(&merged.version),
        "the merged bank's version {} must be 1 to {MAX_VERSION}",
        merged.version
    );
    merged.check_capacity(capacity, "the merged bank")?;
    Ok(merged)
}

fn check_same_kind(first_name: &str, first: &Bank, name: &str, bank: &Bank) -> Result<()> {
    let differs = |what: &str, theirs: String, ours: String| {
        anyhow::anyhow!("{name} has {what} {theirs}, {first_name} {ours}: banks of one backbone only")
    };
    if bank.backbone_sha256 != first.backbone_sha256 {
        return Err(differs(
            "backbone sha256",
            bank.backbone_sha256.clone(),
            first.backbone_sha256.clone(),
        ));
    }
    if (bank.feature_dim, bank.patches) != (first.feature_dim, first.patches) {
        return Err(differs(
            "features × patches",
            format!("{} × {}", bank.feature_dim, bank.patches),
            format!("{} × {}", first.feature_dim, first.patches),
        ));
    }
    if bank.arithmetic != first.arithmetic {
        return Err(differs(
            "arithmetic",
            bank.arithmetic.to_string(),
            first.arithmetic.to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::{Precision, Rows, Task};

    fn bank(sha: &str, version: u64, names: &[&str]) -> Bank {
        let mut bank = Bank::new(&sha.repeat(32), 2, 4);
        bank.version = version;
        let rows = || Rows::new(2, vec![0.0, 1.0], Precision::F32);
        bank.tasks = names
            .iter()
            .map(|n| Task::uncalibrated(n, rows(), None, rows(), 1))
            .collect();
        bank
    }

    const ROOM: Capacity = Capacity {
        tasks: 8,
        bytes_per_task: 1 << 20,
    };

    fn named(banks: Vec<Bank>) -> Vec<(String, Bank)> {
        banks
            .into_iter()
            .enumerate()
            .map(|(i, b)| (format!("in{i}.ucad"), b))
            .collect()
    }

    #[test]
    fn tasks_keep_the_stated_order_and_versions_add_up() {
        let inputs = named(vec![bank("ab", 2, &["a", "b"]), bank("ab", 1, &["c"])]);
        let merged = merge(&inputs, ROOM, None).unwrap();
        let names: Vec<&str> = merged.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!((names, merged.version), (vec!["a", "b", "c"], 3));
        assert_eq!(merge(&inputs, ROOM, Some(9)).unwrap().version, 9);
    }

    #[test]
    fn mismatches_are_refused_naming_the_banks() {
        let err = |inputs: Vec<Bank>, room: Capacity| format!("{:#}", merge(&named(inputs), room, None).unwrap_err());
        let e = err(vec![bank("ab", 1, &["a"]), bank("cd", 1, &["b"])], ROOM);
        assert!(
            e.contains("in1.ucad has backbone sha256") && e.contains("in0.ucad"),
            "{e}"
        );
        let mut f16 = bank("ab", 1, &["b"]);
        f16.arithmetic = crate::backbone::Arithmetic::F16;
        let e = err(vec![bank("ab", 1, &["a"]), f16], ROOM);
        assert!(e.contains("arithmetic f16"), "{e}");
        let e = err(vec![bank("ab", 1, &["a"]), bank("ab", 1, &["b", "a"])], ROOM);
        assert!(e.contains("in1.ucad: task a is also in in0.ucad"), "{e}");
        let e = err(vec![bank("ab", 1, &["a", "a"])], ROOM);
        assert!(e.contains("task a is also"), "{e}");
        let small = Capacity { tasks: 2, ..ROOM };
        let e = err(vec![bank("ab", 1, &["a", "b"]), bank("ab", 1, &["c"])], small);
        assert!(e.contains("3 tasks, room for 2"), "{e}");
        assert!(merge(&[], ROOM, None).is_err());
        let e = format!(
            "{:#}",
            merge(&named(vec![bank("ab", 0, &["a"])]), ROOM, None).unwrap_err()
        );
        assert!(e.contains("version 0"), "{e}");
    }
}
