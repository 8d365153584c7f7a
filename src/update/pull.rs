//! Pull updates, part of `ucad run` with `[update] source`: every `poll_s` a thread fetches the
//! signed manifest (`ucad publish`'s) from any web server, checks its signature, line, expiry and
//! version against the device's high-water mark, then fetches the bank it names — never more
//! bytes than the manifest's size, within the fetch timeout — checks its sha256 and installs it
//! through the same validation and atomic path as a pushed bank. The loop is never waited on: the
//! new bank is swapped in between two frames. What came of the last check is in `GET /status`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use log::{debug, info, warn};
use sha2::{Digest, Sha256};

use super::http::refuse;
use super::install::Installer;
use super::manifest::{Manifest, MAX_MANIFEST_BYTES};
use super::policy::validate_bank;
use super::state::PullStatus;
use super::store::Origin;

/// Where and how often to look for a newer bank.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// The manifest's URL (checked by the config); the bank is fetched from the same folder.
    pub source: String,
    /// The CA certificates (PEM) an `https://` source must chain to; `None`: the public roots.
    pub ca_file: Option<PathBuf>,
    pub every: Duration,
    /// Each fetch (manifest or bank) must be whole within this.
    pub timeout: Duration,
}

/// The polling thread; stops when dropped (without waiting for a fetch under way, which its
/// timeout ends).
pub(crate) struct Poller {
    stop: Arc<(Mutex<bool>, Condvar)>,
    _thread: JoinHandle<()>,
}

/// What one check came to.
enum Checked {
    /// The manifest's version is the highest installed here; the bank running now.
    UpToDate {
        published: u64,
        running: u64,
    },
    Installed(u64),
    /// The manifest or the bank was refused: signed wrongly, for another line, expired, older,
    /// oversized, not matching its manifest, or not a bank for this device.
    Refused(String),
    /// Nothing could be fetched: the server is unreachable, answered an error, or stalled.
    Failed(String),
}

impl Poller {
    pub(crate) fn start(config: PullConfig, installer: Arc<Installer>) -> Result<Poller> {
        let manifest_url =
            url::Url::parse(&config.source).with_context(|| format!("update.source {:?}", config.source))?;
        let agent = agent(&config)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        let shown = without_credentials(&manifest_url);
        *installer.state.pull.lock().unwrap_or_else(|e| e.into_inner()) = Some(PullStatus::new(&shown));
        info!("polling {shown} for bank updates every {:?}", config.every);
        let mut puller = Puller {
            every: config.every,
            manifest_url,
            shown,
            agent,
            installer,
            refused_bank: None,
        };
        let thread = std::thread::Builder::new()
            .name("ucad-pull".into())
            .spawn(move || puller.poll(&stopped))
            .context("cannot start the update poller")?;
        Ok(Poller { stop, _thread: thread })
    }
}

/// The HTTP(S) client: bounded in time, no redirects, trusting `ca_file`'s CAs when given.
fn agent(config: &PullConfig) -> Result<ureq::Agent> {
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(config.timeout.min(Duration::from_secs(10)))
        .timeout(config.timeout)
        .redirects(0);
    if let Some(path) = &config.ca_file {
        builder = builder.tls_config(Arc::new(trusting(path)?));
    }
    Ok(builder.build())
}

/// TLS that trusts the CA certificates of a PEM file, and only them.
fn trusting(path: &Path) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("update.ca_file {}: cannot read it", path.display()))?;
    for certificate in certificates {
        let certificate =
            certificate.with_context(|| format!("update.ca_file {}: not PEM certificates", path.display()))?;
        roots
            .add(certificate)
            .with_context(|| format!("update.ca_file {}: a certificate is not usable as a CA", path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "update.ca_file {}: no certificate in it",
        path.display()
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Drop for Poller {
    fn drop(&mut self) {
        let (stopping, wake) = &*self.stop;
        *stopping.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }
}

struct Puller {
    every: Duration,
    manifest_url: url::Url,
    /// The manifest's URL as logs and `/status` show it: without credentials.
    shown: String,
    agent: ureq::Agent,
    installer: Arc<Installer>,
    /// The last bank refused for what it is (its version, sha256 and why): not fetched again
    /// while the manifest names it.
    refused_bank: Option<(u64, String, String)>,
}

impl Puller {
    fn poll(&mut self, stop: &(Mutex<bool>, Condvar)) {
        let (stopping, wake) = stop;
        loop {
            let checked = self.check();
            self.report(checked);
            let guard = stopping.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = wake
                .wait_timeout_while(guard, self.every, |stop| !*stop)
                .unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
        }
    }

    fn check(&mut self) -> Checked {
        let shown = &self.shown;
        let bytes = match fetch(&self.agent, &self.manifest_url, MAX_MANIFEST_BYTES as u64) {
            Ok(bytes) => bytes,
            Err(Fetch::Failed(e)) => return Checked::Failed(format!("manifest {shown}: {e}")),
            Err(Fetch::TooLong(what)) => return Checked::Refused(format!("manifest {shown}: {what}")),
        };
        let policy = &self.installer.policy;
        let manifest = match Manifest::verified(&bytes, &policy.trusted) {
            Ok(manifest) => manifest,
            Err(e) => return Checked::Refused(format!("manifest {shown}: {e}")),
        };
        let refused =
            |why: String| Checked::Refused(format!("manifest {shown} (bank version {}): {why}", manifest.version));
        if let Err(why) = admissible(&manifest, policy.line.as_str(), unix_now()) {
            return refused(why);
        }
        let highest = match self.installer.highest_installed() {
            Ok(highest) => highest,
            Err(refusal) => return Checked::Refused(refusal.message),
        };
        if manifest.version == highest {
            let running = self.installer.state.installed.load().as_ref().map_or(0, |i| i.version);
            return Checked::UpToDate {
                published: highest,
                running,
            };
        }
        if manifest.version < highest {
            return refused(format!(
                "older than version {highest}, the highest installed on this device: a replayed or stale \
                 manifest, no rollback"
            ));
        }
        if manifest.size > policy.max_bytes as u64 {
            return refused(format!(
                "the bank has {} bytes, at most {} accepted (update.max_mib)",
                manifest.size, policy.max_bytes
            ));
        }
        if let Some((_, _, why)) = (self.refused_bank.as_ref())
            .filter(|(version, sha256, _)| *version == manifest.version && *sha256 == manifest.sha256)
        {
            return Checked::Refused(why.clone());
        }
        self.fetch_and_install(&manifest)
    }

    fn fetch_and_install(&mut self, manifest: &Manifest) -> Checked {
        let url = match self.manifest_url.join(&manifest.bank) {
            Ok(url) => url,
            Err(e) => return Checked::Refused(format!("bank {}: not a URL beside the manifest: {e}", manifest.bank)),
        };
        let shown = without_credentials(&url);
        let bank = match fetch(&self.agent, &url, manifest.size) {
            Ok(bytes) => bytes,
            Err(Fetch::Failed(e)) => return Checked::Failed(format!("bank {shown}: {e}")),
            Err(Fetch::TooLong(what)) => return Checked::Refused(format!("bank {shown}: {what}")),
        };
        if let Err(why) = matches_manifest(&bank, manifest) {
            return Checked::Refused(format!("bank {shown}: {why}"));
        }
        let policy = &self.installer.policy;
        let installed = self.installer.install(Origin::Pulled, |highest| {
            let checked = validate_bank(&bank, policy, highest, "pulled bank")?;
            if checked.version != manifest.version {
                let says = format!(
                    "it is bank version {}, its manifest says {}",
                    checked.version, manifest.version
                );
                return Err(refuse(422, says));
            }
            Ok((checked, &bank[..]))
        });
        match installed {
            Ok(_) => Checked::Installed(manifest.version),
            Err(refusal) => {
                // The bytes are the signed ones: the same manifest gets the same answer.
                let why = format!("bank {shown}: {}", refusal.message);
                self.refused_bank = Some((manifest.version, manifest.sha256.clone(), why.clone()));
                Checked::Refused(why)
            }
        }
    }

    /// Logs what changed since the last check (a refusal repeated every poll is logged once)
    /// and puts it in the device's status.
    fn report(&self, checked: Checked) {
        let mut status = self.installer.state.pull.lock().unwrap_or_else(|e| e.into_inner());
        let status = status.get_or_insert_with(|| PullStatus::new(&self.shown));
        let outcome = match &checked {
            Checked::UpToDate { published, running } if published == running => {
                format!("up to date (bank version {published})")
            }
            Checked::UpToDate { published, running } => {
                format!("up to date: bank version {published} was installed here before; running version {running}")
            }
            Checked::Installed(version) => format!("installed bank version {version}"),
            Checked::Refused(why) => format!("refused: {why}"),
            Checked::Failed(why) => format!("failed: {why}"),
        };
        match checked {
            Checked::Refused(_) => status.refused += 1,
            Checked::Failed(_) => status.failed += 1,
            Checked::UpToDate { .. } | Checked::Installed(_) => {}
        }
        let repeated = status.outcome == outcome;
        match checked {
            Checked::Refused(_) | Checked::Failed(_) if !repeated => warn!("pull update {outcome}"),
            Checked::UpToDate { .. } if !repeated => info!("pull update: {outcome}"),
            _ => debug!("pull update: {outcome}"),
        }
        status.checked_unix = Some(unix_now());
        status.outcome = outcome;
    }
}

/// Whether a verified manifest is for this device at all: its line, not expired at `now`.
fn admissible(manifest: &Manifest, line: &str, now: u64) -> Result<(), String> {
    if manifest.line.as_str() != line {
        return Err(format!(
            "published for line {}, this device is on line {line}",
            manifest.line
        ));
    }
    if now >= manifest.expires_unix {
        return Err(format!(
            "expired at {} s since 1970 (publish it again, and check this device's clock)",
            manifest.expires_unix
        ));
    }
    Ok(())
}

/// Whether the fetched bytes are the bank the manifest names.
fn matches_manifest(bank: &[u8], manifest: &Manifest) -> Result<(), String> {
    if bank.len() as u64 != manifest.size {
        return Err(format!("{} bytes, the manifest says {}", bank.len(), manifest.size));
    }
    let sha256 = hex::encode(Sha256::digest(bank));
    if sha256 != manifest.sha256 {
        return Err(format!("sha256 {sha256}, the manifest says {}", manifest.sha256));
    }
    Ok(())
}

/// A URL as logs and `GET /status` show it: without a user name or password.
fn without_credentials(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

enum Fetch {
    Failed(String),
    TooLong(String),
}

/// GETs `url`, reading at most `limit` bytes of its body: a longer body (announced or sent) is
/// cut at the bound and refused; any answer but 200 is a failure.
fn fetch(agent: &ureq::Agent, url: &url::Url, limit: u64) -> Result<Vec<u8>, Fetch> {
    let response = match agent.request_url("GET", url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(code, _)) => return Err(Fetch::Failed(format!("answered HTTP {code}"))),
        Err(ureq::Error::Transport(t)) => {
            // Its kind and message, not its display, which holds the URL with any credentials.
            let detail = t.message().map_or(String::new(), |m| format!(": {m}"));
            let cause = std::error::Error::source(&t).map_or(String::new(), |c| format!(" ({c})"));
            return Err(Fetch::Failed(format!("cannot fetch: {}{detail}{cause}", t.kind())));
        }
    };
    if response.status() != 200 {
        let to = (response.header("Location")).map_or(String::new(), |l| {
            format!(" to {}", l.chars().take(200).collect::<String>())
        });
        return Err(Fetch::Failed(format!(
            "answered HTTP {}{to} (redirects are not followed: name the final URL)",
            response.status()
        )));
    }
    let announced = response
        .header("Content-Length")
        .and_then(|l| l.trim().parse::<u64>().ok());
    if let Some(length) = announced.filter(|l| *l > limit) {
        return Err(Fetch::TooLong(format!(
            "{length} bytes announced, at most {limit} read"
        )));
    }
    let mut body = Vec::with_capacity(announced.unwrap_or(limit).min(limit) as usize + 1);
    response
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| Fetch::Failed(format!("the body stopped coming: {}", e.kind())))?;
    if body.len() as u64 > limit {
        return Err(Fetch::TooLong(format!("longer than {limit} bytes, cut there")));
    }
    Ok(body)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::signing::Line;

    fn manifest(version: u64, expires_unix: u64) -> Manifest {
        Manifest {
            line: Line::new("hall-2").unwrap(),
            version,
            bank: "bank-v7.ucad".into(),
            size: 3,
            sha256: hex::encode(Sha256::digest(b"abc")),
            issued_unix: 1,
            expires_unix,
        }
    }

    #[test]
    fn a_manifest_is_acted_on_only_for_this_line_and_unexpired() {
        assert_eq!(admissible(&manifest(7, 2_000), "hall-2", 1_999), Ok(()));
        assert!(admissible(&manifest(7, 2_000), "hall-3", 1_999)
            .unwrap_err()
            .contains("line hall-2"));
        let expired = admissible(&manifest(7, 2_000), "hall-2", 2_000).unwrap_err();
        assert!(expired.contains("expired at 2000"), "{expired}");
        // The same words every poll: a refusal is logged once.
        assert_eq!(admissible(&manifest(7, 2_000), "hall-2", 2_001).unwrap_err(), expired);
    }

    #[test]
    fn the_bank_must_be_the_one_the_manifest_names() {
        let m = manifest(7, 2);
        assert_eq!(matches_manifest(b"abc", &m), Ok(()));
        assert!(matches_manifest(b"abd", &m).unwrap_err().contains("sha256"));
        assert!(matches_manifest(b"ab", &m).unwrap_err().contains("2 bytes"));
    }

    #[test]
    fn the_bank_lies_in_the_manifest_folder_and_credentials_are_not_shown() {
        let url = url::Url::parse("http://user:secret@h:8/a/b/manifest").unwrap();
        assert_eq!(
            url.join("bank-v7.ucad").unwrap().as_str(),
            "http://user:secret@h:8/a/b/bank-v7.ucad"
        );
        assert_eq!(without_credentials(&url), "http://h:8/a/b/manifest");
    }
}
