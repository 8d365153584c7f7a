//! An independent ViT forward in plain Rust (no tract, no ONNX), straight from the timm
//! weights, used to check the exported graph.

use ucad::backbone::arch::{Activation, ArchSpec};
use ucad::backbone::VitWeights;

fn param<'a>(w: &'a VitWeights, name: &str) -> &'a [f32] {
    &w.params.get(name).unwrap_or_else(|| panic!("missing {name}")).data
}

/// x [rows, in] · Wᵀ (W [out, in]) + b → [rows, out]
fn linear(x: &[f32], rows: usize, w: &[f32], b: &[f32], out: usize) -> Vec<f32> {
    let inp = x.len() / rows;
    let mut y = vec![0f32; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let mut acc = b[o] as f64;
            for i in 0..inp {
                acc += x[r * inp + i] as f64 * w[o * inp + i] as f64;
            }
            y[r * out + o] = acc as f32;
        }
    }
    y
}

fn layer_norm(x: &[f32], dim: usize, g: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for (row, out) in x.chunks(dim).zip(y.chunks_mut(dim)) {
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / dim as f64;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for i in 0..dim {
            out[i] = ((row[i] as f64 - mean) * inv * g[i] as f64 + b[i] as f64) as f32;
        }
    }
    y
}

fn erf(x: f64) -> f64 {
    // The Chebyshev fit of erfc from Numerical Recipes (erfcc): relative error below 1.2e-7.
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    // Horner's rule over the fit's coefficients (a nested expression makes rustfmt crawl).
    const COEFFICIENTS: [f64; 10] = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let polynomial = COEFFICIENTS.iter().rev().fold(0.0, |acc, c| c + t * acc);
    let y = 1.0 - t * (-x * x + polynomial).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

fn activate(x: f32, act: Activation) -> f32 {
    let x = x as f64;
    (match act {
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }) as f32
}

/// Features [N, D·k] of one normalised image [3, S, S]; `prompt` is [P, 2, L, D] or None.
pub fn forward(
    w: &VitWeights,
    spec: &ArchSpec,
    image: &[f32],
    size: usize,
    blocks: &[usize],
    prompt: Option<(&[f32], usize)>,
) -> Vec<f32> {
    let (d, p) = (spec.embed_dim, spec.patch);
    let grid = size / p;
    let n = grid * grid;
    let t = n + 1;
    assert_eq!(
        grid, spec.stored_grid,
        "the reference does not resample position embeddings"
    );
    let proj = param(w, "patch_embed.proj.weight");
    let proj_bias = if spec.patch_bias {
        param(w, "patch_embed.proj.bias").to_vec()
    } else {
        vec![0.0; d]
    };
    let mut x = vec![0f32; t * d];
    x[..d].copy_from_slice(param(w, "cls_token"));
    for gy in 0..grid {
        for gx in 0..grid {
            let tok = 1 + gy * grid + gx;
            for o in 0..d {
                let mut acc = proj_bias[o] as f64;
                for c in 0..3 {
                    for ky in 0..p {
                        for kx in 0..p {
                            let px = image[(c * size + gy * p + ky) * size + gx * p + kx];
                            acc += px as f64 * proj[((o * 3 + c) * p + ky) * p + kx] as f64;
                        }
                    }
                }
                x[tok * d + o] = acc as f32;
            }
        }
    }
    for (v, pe) in x.iter_mut().zip(param(w, "pos_embed")) {
        *v += pe;
    }
    if spec.pre_norm {
        x = layer_norm(
            &x,
            d,
            param(w, "norm_pre.weight"),
            param(w, "norm_pre.bias"),
            spec.ln_eps,
        );
    }
    let last = *blocks.iter().max().expect("blocks");
    let mut out = vec![Vec::new(); blocks.len()];
    for b in 0..=last {
        x = block(w, spec, b, &x, t, prompt);
        for (slot, fb) in blocks.iter().enumerate() {
            if *fb == b {
                out[slot] = x[d..].to_vec();
            }
        }
    }
    let mut features = Vec::with_capacity(n * d * blocks.len());
    for tok in 0..n {
        for o in &out {
            features.extend_from_slice(&o[tok * d..(tok + 1) * d]);
        }
    }
    features
}

fn block(w: &VitWeights, spec: &ArchSpec, b: usize, x: &[f32], t: usize, prompt: Option<(&[f32], usize)>) -> Vec<f32> {
    let d = spec.embed_dim;
    let name = |s: &str| format!("blocks.{b}.{s}");
    let h = layer_norm(
        x,
        d,
        param(w, &name("norm1.weight")),
        param(w, &name("norm1.bias")),
        spec.ln_eps,
    );
    let qkv = linear(
        &h,
        t,
        param(w, &name("attn.qkv.weight")),
        param(w, &name("attn.qkv.bias")),
        3 * d,
    );
    let (heads, hd) = (spec.heads, spec.head_dim());
    let scale = (hd as f64).powf(-0.5);
    // Keys and values: prefix tokens first, then the image tokens.
    let mut keys: Vec<&[f32]> = Vec::new();
    let mut values: Vec<&[f32]> = Vec::new();
    if let Some((pr, len)) = prompt {
        let block_prompt = &pr[b * 2 * len * d..(b + 1) * 2 * len * d];
        for i in 0..len {
            keys.push(&block_prompt[i * d..(i + 1) * d]);
            values.push(&block_prompt[(len + i) * d..(len + i + 1) * d]);
        }
    }
    for tok in 0..t {
        keys.push(&qkv[tok * 3 * d + d..tok * 3 * d + 2 * d]);
        values.push(&qkv[tok * 3 * d + 2 * d..tok * 3 * d + 3 * d]);
    }
    let mut attn = vec![0f32; t * d];
    for tok in 0..t {
        let q = &qkv[tok * 3 * d..tok * 3 * d + d];
        for hh in 0..heads {
            let r = hh * hd..(hh + 1) * hd;
            let logits: Vec<f64> = keys
                .iter()
                .map(|k| {
                    q[r.clone()]
                        .iter()
                        .zip(&k[r.clone()])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in r.clone() {
                attn[tok * d + c] = (e.iter().zip(&values).map(|(p, v)| p * v[c] as f64).sum::<f64>() / sum) as f32;
            }
        }
    }
    let attn = linear(
        &attn,
        t,
        param(w, &name("attn.proj.weight")),
        param(w, &name("attn.proj.bias")),
        d,
    );
    let mut x = residual(w, spec, x, &attn, &name("ls1.gamma"));
    let h = layer_norm(
        &x,
        d,
        param(w, &name("norm2.weight")),
        param(w, &name("norm2.bias")),
        spec.ln_eps,
    );
    let mut hidden = linear(
        &h,
        t,
        param(w, &name("mlp.fc1.weight")),
        param(w, &name("mlp.fc1.bias")),
        spec.mlp_hidden,
    );
    hidden.iter_mut().for_each(|v| *v = activate(*v, spec.activation));
    let mlp = linear(
        &hidden,
        t,
        param(w, &name("mlp.fc2.weight")),
        param(w, &name("mlp.fc2.bias")),
        d,
    );
    x = residual(w, spec, &x, &mlp, &name("ls2.gamma"));
    x
}

fn residual(w: &VitWeights, spec: &ArchSpec, x: &[f32], branch: &[f32], gamma: &str) -> Vec<f32> {
    let d = spec.embed_dim;
    x.iter()
        .zip(branch)
        .enumerate()
        .map(|(i, (a, b))| {
            if spec.layer_scale {
                a + b * param(w, gamma)[i % d]
            } else {
                a + b
            }
        })
        .collect()
}
