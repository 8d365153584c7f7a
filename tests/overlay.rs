//! The overlay of a generated part with a known defect, judged with the default backbone: the
//! region outlined as above the threshold lies on the defect in the frame (non-square, at its own
//! resolution), whether the frame is squashed or centre-cropped into the network's view.

mod common;

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use ucad::backbone::models::ModelCache;
use ucad::backbone::{Arch, Backbone, Preprocessor, Resize};
use ucad::bank::Bank;
use ucad::data::synthetic::products;
use ucad::detect::Detector;
use ucad::fit::{fit_task, FitParams};
use ucad::render::overlay::{render, FrameMap, Verdict};

const FRAME: (u32, u32) = (320, 224);

fn stretch(image: &RgbImage) -> RgbImage {
    imageops::resize(image, FRAME.0, FRAME.1, FilterType::Triangle)
}

#[test]
fn the_outline_lies_on_a_drawn_defect_under_both_resizes() {
    let cache = ModelCache::locate();
    if !common::models_present(&cache, Arch::VitB16Clip) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let product = &products(1, 7)[0];
    let train: Vec<_> = (0..16)
        .map(|i| {
            let path = dir.path().join(format!("{i:03}.png"));
            stretch(&product.normal(224, i)).save(&path).unwrap();
            path
        })
        .collect();
    let mut pictures = Vec::new();
    for resize in [Resize::Squash, Resize::CenterCrop] {
        let mut backbone = Backbone::load(&cache.resolve("default").unwrap()).unwrap();
        backbone.meta.resize = resize;
        let mut bank = Bank::for_backbone(&backbone.spec());
        bank.append(fit_task(&backbone, &product.name, &train, &FitParams::default()).unwrap())
            .unwrap();
        let detector = Detector::new(&bank).unwrap();
        let mut pre = Preprocessor::new(&backbone.meta);
        let (mut covered_sum, mut centred) = (0.0, 0);
        for index in 0..8 {
            let (image, mask, defect) = product.defective(224, index);
            let (frame, mask) = (
                stretch(&image),
                imageops::resize(&mask, FRAME.0, FRAME.1, FilterType::Nearest),
            );
            let judgement = detector
                .judge_image(&backbone, &pre.tensor(&frame).unwrap(), None, &mut |_| {})
                .unwrap();
            let relative: Vec<f32> = detector.tasks()[0].relative(&judgement.patch_scores).collect();
            let geometry = pre.geometry(FRAME.0, FRAME.1).unwrap();
            let map = FrameMap::new(&relative, geometry, judgement.threshold).unwrap();
            let (iou, covered, area, inside) = agreement(&map, &mask);
            println!(
                "{resize:?} {}: score {:+.2} thresholds, IoU {iou:.2}, defect outlined {covered:.2}, \
                 outlined {area:.2} of the frame, centred on the defect {inside}",
                defect.name(),
                judgement.relative() / judgement.threshold
            );
            covered_sum += covered;
            // A map above the threshold everywhere would enclose every defect too.
            centred += usize::from(inside && area < 0.25);
            if index == 0 {
                pictures.push(render(&frame, &map, &Verdict::of(&detector, &judgement)).unwrap());
            }
        }
        let covered = covered_sum / 8.0;
        assert!(
            covered >= 0.8,
            "{resize:?}: the outlines enclose {covered:.2} of the defects"
        );
        assert!(
            centred >= 6,
            "{resize:?}: {centred} of 8 outlines small and centred on their defect"
        );
    }
    if let Some(dir) = std::env::var_os("UCAD_SCREENSHOT_DIR") {
        pictures[0]
            .save(std::path::Path::new(&dir).join("overlay-generated.png"))
            .unwrap();
    }
}

/// IoU of the outlined region with the defect's mask, the share of the mask outlined (both over
/// the pixels the network sees), the share of the frame outlined, and whether the outlined
/// region's centroid lies in the defect's bounding box (widened by a patch's width).
fn agreement(map: &FrameMap, mask: &GrayImage) -> (f64, f64, f64, bool) {
    let flagged = map.flagged();
    let (w, h) = mask.dimensions();
    let (mut both, mut either, mut truth) = (0usize, 0usize, 0usize);
    let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            let seen = map.level(x, y).is_some();
            let defect = seen && mask.get_pixel(x, y)[0] > 127;
            let outlined = flagged[(y * w + x) as usize];
            both += usize::from(defect && outlined);
            either += usize::from(defect || outlined);
            truth += usize::from(defect);
            if outlined {
                (sx, sy, n) = (sx + x as f64, sy + y as f64, n + 1.0);
            }
            if defect {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    let patch = 16.0 * w as f64 / 224.0;
    let inside = n > 0.0 && {
        let (cx, cy) = (sx / n, sy / n);
        (x0 as f64 - patch..=x1 as f64 + patch).contains(&cx) && (y0 as f64 - patch..=y1 as f64 + patch).contains(&cy)
    };
    let area = n / (w * h) as f64;
    (
        both as f64 / either.max(1) as f64,
        both as f64 / truth.max(1) as f64,
        area,
        inside,
    )
}
