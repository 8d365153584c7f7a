//! A bank as `ucad inspect` shows it.

use std::fmt;

use super::Bank;

impl fmt::Display for Bank {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(
            f,
            "bank version {}, backbone {}, fitted in {}",
            self.version, self.backbone_sha256, self.arithmetic
        )?;
        writeln!(
            f,
            "feature dim {}, {} patches per image, {} task(s)",
            self.feature_dim,
            self.patches,
            self.tasks.len()
        )?;
        for (t, (_, bytes)) in self.tasks.iter().zip(self.bytes_per_task()) {
            writeln!(
                f,
                "  {}: key {} rows, knowledge {} rows ({:?}), prompt {}, k {}, threshold {:.4} (normal held-out: \
                 n {} mean {:.4} std {:.4} max {:.4}), {bytes} bytes",
                t.name,
                t.key.len(),
                t.knowledge.len(),
                t.knowledge.precision(),
                if t.prompt.is_some() { "yes" } else { "no" },
                t.k,
                t.threshold,
                t.normal.count,
                t.normal.mean,
                t.normal.std,
                t.normal.max,
            )?;
        }
        Ok(())
    }
}
