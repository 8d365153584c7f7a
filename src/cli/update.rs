//! Commands that get banks to devices: `keygen`, `sign`, `push`, `publish` (for devices that
//! pull), and `status` to read one back.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _, Result};
use sha2::Digest as _;
use ucad::backbone::Backbone;
use ucad::bank::format::read_bank_file;
use ucad::bank::Bank;
use ucad::update::client;
use ucad::update::manifest::{Manifest, MAX_VALID_S, MIN_VALID_S};
use ucad::update::signing::{self, Line, SignedUpdate};

use super::args::BankBackboneArg;
use super::Context;

#[derive(clap::Args)]
pub struct KeygenArgs {
    #[arg(long)]
    out: PathBuf,
}

impl KeygenArgs {
    pub fn execute(self) -> Result<()> {
        signing::write_key_pair(&self.out, &signing::generate_key()?)?;
        println!(
            "wrote {} (secret) and {}",
            self.out.display(),
            signing::public_key_path(&self.out).display()
        );
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct SignArgs {
    #[arg(long)]
    bank: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// The line (device group) the update is for: devices with another `[update] line` refuse it.
    #[arg(long, value_parser = Line::new)]
    line: Line,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    backbone: BankBackboneArg,
}

impl SignArgs {
    pub fn execute(self, ctx: &Context) -> Result<()> {
        for input in [&self.bank, &self.key] {
            ensure!(
                !ucad::fsutil::same_file(&self.out, input),
                "--out {} is the input {}: write the update to a file of its own",
                self.out.display(),
                input.display()
            );
        }
        let update = signed_update(ctx, &self.bank, &self.key, &self.line, &self.backbone)?;
        ucad::fsutil::write_atomic(&self.out, &update)?;
        println!("wrote {}", self.out.display());
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct PushArgs {
    #[arg(long)]
    bank: PathBuf,
    /// HOST:PORT of the device's update listener.
    #[arg(long)]
    device: String,
    #[arg(long, requires = "line")]
    key: Option<PathBuf>,
    /// With --key: the line the update is signed for.
    #[arg(long, requires = "key", value_parser = Line::new)]
    line: Option<Line>,
    #[command(flatten)]
    backbone: BankBackboneArg,
}

impl PushArgs {
    /// Sends a bank: signed here with `--key` for `--line`, or already signed by `ucad sign`.
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let update = match self.key.as_deref().zip(self.line.as_ref()) {
            Some((key, line)) => signed_update(ctx, &self.bank, key, line, &self.backbone)?,
            None => {
                let bytes = read_bank_file(&self.bank)?;
                let signed = SignedUpdate::parse(&bytes).with_context(|| {
                    format!(
                        "{}: not signed (sign it with `ucad sign`, or pass --key)",
                        self.bank.display()
                    )
                })?;
                check_bank(ctx, &self.bank, signed.bank, &self.backbone)?;
                bytes
            }
        };
        let device = &self.device;
        let answer = client::push(device, &update)?;
        ensure!(
            answer.status == 200,
            "{device} refused the update ({}): {}",
            answer.status,
            answer.body
        );
        println!("{device}: {}", answer.body);
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct PublishArgs {
    #[arg(long)]
    bank: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// The line (device group) the bank is for: devices with another `[update] line` refuse it.
    #[arg(long, value_parser = Line::new)]
    line: Line,
    /// The folder a web server or object store serves (made when missing): the bank file and
    /// `manifest` are written there.
    #[arg(long)]
    out: PathBuf,
    /// Devices refuse the manifest this many days after publishing: publish again before then.
    #[arg(long, default_value_t = 30.0)]
    valid_days: f64,
    #[command(flatten)]
    backbone: BankBackboneArg,
}

impl PublishArgs {
    /// Writes the bank, then the signed manifest naming it (so that a server never serves a
    /// manifest whose bank is not there yet).
    pub fn execute(self, ctx: &Context) -> Result<()> {
        let valid_s = self.valid_days * 86_400.0;
        ensure!(
            (MIN_VALID_S as f64..=MAX_VALID_S as f64).contains(&valid_s),
            "--valid-days {} must be {MIN_VALID_S} s to 3650 days",
            self.valid_days
        );
        let bytes = read_bank_file(&self.bank)?;
        let bank = check_bank(ctx, &self.bank, &bytes, &self.backbone)?;
        let key = signing::read_secret_key(&self.key)?;
        let issued_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs();
        let manifest = Manifest {
            line: self.line,
            version: bank.version,
            bank: format!("bank-v{}.ucad", bank.version),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            issued_unix,
            expires_unix: issued_unix + valid_s.round() as u64,
        };
        let text = manifest.sign(&key)?;
        let manifest_path = self.out.join("manifest");
        check_published(&manifest_path, &manifest, &key)?;
        std::fs::create_dir_all(&self.out).with_context(|| format!("cannot make {}", self.out.display()))?;
        ucad::fsutil::write_atomic(&self.out.join(&manifest.bank), &bytes)?;
        ucad::fsutil::write_atomic(&manifest_path, text.as_bytes())?;
        println!(
            "wrote {} and {}: bank version {} for line {}, {} bytes, valid for {} days (until {} s since 1970)",
            self.out.join(&manifest.bank).display(),
            manifest_path.display(),
            manifest.version,
            manifest.line,
            manifest.size,
            self.valid_days,
            manifest.expires_unix
        );
        Ok(())
    }
}

/// Refuses to replace a manifest (signed with this key) of a newer bank, or of the same version
/// with other bytes: devices would refuse the new one for good. The same bank may be published
/// again (to renew its expiry), and a manifest this key did not sign is replaced.
fn check_published(path: &Path, new: &Manifest, key: &ed25519_dalek::SigningKey) -> Result<()> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(());
    };
    let Ok(old) = Manifest::verified(&bytes, &[key.verifying_key()]) else {
        return Ok(());
    };
    ensure!(
        old.line != new.line || old.version < new.version || (old.version == new.version && old.sha256 == new.sha256),
        "{} already publishes bank version {} for line {}{}: devices that have it refuse version {}; \
         publish a newer bank (`ucad bank merge --version`, or fit again)",
        path.display(),
        old.version,
        old.line,
        if old.version == new.version {
            " with other bytes"
        } else {
            ""
        },
        new.version
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    device: String,
}

impl StatusArgs {
    pub fn execute(self) -> Result<()> {
        let device = &self.device;
        let answer = client::status(device)?;
        ensure!(
            answer.status == 200,
            "{device} answered {}: {}",
            answer.status,
            answer.body
        );
        let body: serde_json::Value = serde_json::from_str(&answer.body).context("the status is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&body)?);
        Ok(())
    }
}

/// Checks a bank file's bytes (`origin`'s, or the bank inside its signed update) as a device
/// will: the bank loads and fits its backbone, which --backbone names or the model cache holds.
fn check_bank(ctx: &Context, origin: &Path, bytes: &[u8], backbone: &BankBackboneArg) -> Result<Bank> {
    let name = origin.display().to_string();
    let bank = Bank::from_bytes(bytes, &name)?;
    let cache = &ctx.cache;
    let path = match &backbone.backbone {
        Some(spec) => cache.resolve(spec)?,
        None => cache.find_by_sha256(&bank.backbone_sha256)?.with_context(|| {
            format!(
                "{name}: its backbone (sha256 {}) is not in the model cache {}: pass --backbone FILE to check the bank against it",
                bank.backbone_sha256,
                cache.dir.display()
            )
        })?,
    };
    bank.check_backbone(&Backbone::read_spec(&path)?, &name)?;
    Ok(bank)
}

/// A bank file, checked, signed with a secret key file for a line.
fn signed_update(ctx: &Context, bank: &Path, key: &Path, line: &Line, backbone: &BankBackboneArg) -> Result<Vec<u8>> {
    let bytes = read_bank_file(bank)?;
    check_bank(ctx, bank, &bytes, backbone)?;
    Ok(signing::sign(&bytes, line, &signing::read_secret_key(key)?))
}
