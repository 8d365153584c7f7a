//! Which test images an evaluation report shows as pictures: for each task, its worst cases of
//! each kind (escapes, false rejects, misrouted and unknown images) and, for a sense of what is
//! found, the defects caught with the highest scores.

use std::cmp::Ordering;

use super::report::ImageDecision;

/// Pictures per gallery.
pub const GALLERY_SIZE: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gallery {
    Escapes,
    FalseRejects,
    Misrouted,
    Unknown,
    Caught,
}

impl Gallery {
    pub const ALL: [Gallery; 5] = [
        Gallery::Escapes,
        Gallery::FalseRejects,
        Gallery::Misrouted,
        Gallery::Unknown,
        Gallery::Caught,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Gallery::Escapes => "Escapes: defective parts passed (lowest scores first)",
            Gallery::FalseRejects => "False rejects: normal parts rejected on their score (highest first)",
            Gallery::Misrouted => "Misrouted: judged as another product",
            Gallery::Unknown => "Unknown: taken for a product not in the bank (rejected by the fail-safe)",
            Gallery::Caught => "Caught: defects rejected (highest scores first)",
        }
    }

    /// An id for the page.
    pub fn id(self) -> &'static str {
        match self {
            Gallery::Escapes => "escapes",
            Gallery::FalseRejects => "false-rejects",
            Gallery::Misrouted => "misrouted",
            Gallery::Unknown => "unknown",
            Gallery::Caught => "caught",
        }
    }

    fn holds(self, d: &ImageDecision) -> bool {
        let defective = d.defective();
        match self {
            Gallery::Escapes => defective && !d.rejected,
            Gallery::FalseRejects => !defective && d.rejected && !d.unknown,
            Gallery::Misrouted => d.judged_as != d.task && !d.unknown,
            Gallery::Unknown => d.unknown,
            Gallery::Caught => defective && d.rejected && !d.unknown,
        }
    }

    /// Worst (or, for caught defects, clearest) first.
    fn order(self, a: &ImageDecision, b: &ImageDecision) -> Ordering {
        let (a, b) = (a.score_minus_threshold, b.score_minus_threshold);
        match self {
            Gallery::Escapes => a.total_cmp(&b),
            _ => b.total_cmp(&a),
        }
    }

    /// Indices into `decisions` of `task`'s images in this gallery, worst first, at most
    /// [`GALLERY_SIZE`].
    pub fn cases(self, decisions: &[ImageDecision], task: &str) -> Vec<usize> {
        let mut picked: Vec<usize> = (0..decisions.len())
            .filter(|&i| decisions[i].task == task && self.holds(&decisions[i]))
            .collect();
        picked.sort_by(|&a, &b| self.order(&decisions[a], &decisions[b]).then(a.cmp(&b)));
        picked.truncate(GALLERY_SIZE);
        picked
    }
}
