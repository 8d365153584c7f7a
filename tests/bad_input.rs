//! Bad files give clear errors that name the file, never a panic.

use prost::Message;
use ucad::backbone::models::verify_sha256;
use ucad::backbone::weights::Param;
use ucad::backbone::{export_model, Arch, Backbone, ExportOptions, VitWeights};

fn error_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn weights_for_another_arch_are_refused_with_the_offending_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let tiny = VitWeights::random(Arch::VitTinyTest, 1);
    tiny.save(Arch::VitTinyTest, &path).unwrap();
    let msg = error_of(VitWeights::load_for(&path, Arch::VitB16));
    assert!(
        msg.contains("tiny.safetensors") && msg.contains("vit-tiny-test"),
        "{msg}"
    );

    // Without a recorded arch, every missing or mis-shaped tensor is listed.
    let mut broken = tiny.clone();
    broken.params.remove("blocks.2.attn.qkv.weight");
    broken
        .params
        .insert("blocks.0.mlp.fc1.bias".into(), Param::new(vec![3], vec![0.0; 3]));
    let msg = broken
        .validate(Arch::VitTinyTest, "broken.safetensors")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("broken.safetensors"), "{msg}");
    assert!(msg.contains("missing blocks.2.attn.qkv.weight"), "{msg}");
    assert!(
        msg.contains("blocks.0.mlp.fc1.bias has shape [3], expected [64]"),
        "{msg}"
    );
    let opts = ExportOptions::defaults(Arch::VitTinyTest);
    assert!(export_model(&broken, &opts).is_err());
}

#[test]
fn truncated_or_corrupt_safetensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = VitWeights::random(Arch::VitTinyTest, 1)
        .to_safetensors_bytes(Arch::VitTinyTest)
        .unwrap();
    let path = dir.path().join("cut.safetensors");
    for len in [0, 3, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let msg = error_of(VitWeights::load(&path));
        assert!(msg.contains("cut.safetensors"), "length {len}: {msg}");
    }
    let mut flipped = bytes.clone();
    flipped[4] ^= 0x7f; // header length
    std::fs::write(&path, &flipped).unwrap();
    assert!(error_of(VitWeights::load(&path)).contains("cut.safetensors"));
    assert!(error_of(VitWeights::load(&dir.path().join("absent.safetensors"))).contains("absent.safetensors"));
}

#[test]
fn truncated_corrupt_or_foreign_onnx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = export_model(
        &VitWeights::random(Arch::VitTinyTest, 1),
        &ExportOptions::defaults(Arch::VitTinyTest),
    )
    .unwrap();
    let bytes = model.encode_to_vec();
    let path = dir.path().join("bad.onnx");
    for len in [1, 100, bytes.len() / 3, bytes.len() - 7] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let msg = error_of(Backbone::load(&path));
        assert!(msg.contains("bad.onnx"), "length {len}: {msg}");
    }
    std::fs::write(&path, b"definitely not protobuf \xff\xff\xff").unwrap();
    assert!(error_of(Backbone::load(&path)).contains("bad.onnx"));

    let mut foreign = model.clone();
    foreign.metadata_props.clear();
    std::fs::write(&path, foreign.encode_to_vec()).unwrap();
    let msg = error_of(Backbone::load(&path));
    assert!(msg.contains("bad.onnx") && msg.contains("not a ucad backbone"), "{msg}");
}

#[test]
fn an_int8_backbone_with_malformed_codes_or_scales_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        quant: ucad::backbone::Quant::Int8,
        ..ExportOptions::defaults(Arch::VitTinyTest)
    };
    let model = export_model(&VitWeights::random(Arch::VitTinyTest, 1), &opts).unwrap();
    let path = dir.path().join("bad.onnx");
    let spoil = |name: &str, how: &dyn Fn(&mut Vec<u8>)| {
        let mut model = model.clone();
        let graph = model.graph.as_mut().unwrap();
        how(&mut graph.initializer.iter_mut().find(|t| t.name == name).unwrap().raw_data);
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        error_of(Backbone::load(&path))
    };
    let nan = |raw: &mut Vec<u8>| raw[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let negative = |raw: &mut Vec<u8>| raw[..4].copy_from_slice(&(-0.5f32).to_le_bytes());
    let short = |raw: &mut Vec<u8>| raw.truncate(raw.len() - 3);
    for (name, how, problem) in [
        (
            "blocks.1.mlp.fc1.weight_scale",
            &nan as &dyn Fn(&mut Vec<u8>),
            "scale 1 is NaN",
        ),
        ("blocks.0.attn.q.weight_scale", &negative, "scale 0 is -0.5"),
        ("blocks.0.attn.q.weight_scale", &short, "scales for"),
        ("blocks.2.attn.proj.weight_q", &short, "codes for shape"),
    ] {
        let msg = spoil(name, how);
        let weight = name.replace("_scale", "_q");
        assert!(
            msg.contains("bad.onnx") && msg.contains(&weight) && msg.contains(problem),
            "{name}: {msg}"
        );
    }
}

#[test]
fn a_wrong_sha256_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, b"tampered").unwrap();
    let msg = error_of(verify_sha256(
        &path,
        "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d",
    ));
    assert!(msg.contains("model.onnx") && msg.contains("does not match"), "{msg}");
}

#[test]
fn impossible_export_options_are_refused() {
    let w = VitWeights::random(Arch::VitTinyTest, 1);
    let base = ExportOptions::defaults(Arch::VitTinyTest);
    for opts in [
        ExportOptions {
            blocks: vec![4],
            ..base.clone()
        },
        ExportOptions {
            blocks: vec![],
            ..base.clone()
        },
        ExportOptions {
            input_size: 30,
            ..base.clone()
        },
        ExportOptions {
            prompt_len: 0,
            ..base.clone()
        },
    ] {
        assert!(export_model(&w, &opts).is_err(), "{opts:?}");
    }
}
