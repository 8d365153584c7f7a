//! Pull updates, part of `ucad run` with `[update] source`: every `poll_s` a thread fetches the
//! signed manifest (`ucad publish`'s) from any web server, checks its signature, line, expiry and
//! version against the device's high-water mark, then fetches the bank it names — never more
//! bytes than the manifest's size, within the fetch timeout — checks its sha256 and installs it
//! through the same validation and atomic path as a pushed bank. The loop is never waited on: the
//! new bank is swapped in between two frames. What came of the last check is in `GET /status`.

use std::io::Read;
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
    /// The manifest's URL; the bank is fetched from the same folder.
    pub source: String,
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
    UpToDate(u64),
    Installed(u64),
    /// The manifest or the bank was refused: signed wrongly, for another line, expired, older,
    /// oversized, not matching its manifest, or not a bank for this device.
    Refused(String),
    /// Nothing could be fetched: the server is unreachable, answered an error, or stalled.
    Failed(String),
}

impl Poller {
    pub(crate) fn start(config: PullConfig, installer: Arc<Installer>) -> Result<Poller> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.timeout.min(Duration::from_secs(10)))
            .timeout(config.timeout)
            .redirects(0)
            .build();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        *installer.state.pull.lock().unwrap_or_else(|e| e.into_inner()) = Some(PullStatus::new(&config.source));
        info!("polling {} for bank updates every {:?}", config.source, config.every);
        let thread = std::thread::Builder::new()
            .name("ucad-pull".into())
            .spawn(move || {
                let puller = Puller {
                    config,
                    agent,
                    installer,
                };
                puller.poll(&stopped)
            })
            .context("cannot start the update poller")?;
        Ok(Poller { stop, _thread: thread })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let (stopping, wake) = &*self.stop;
        *stopping.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }
}

struct Puller {
    config: PullConfig,
    agent: ureq::Agent,
    installer: Arc<Installer>,
}

impl Puller {
    fn poll(&self, stop: &(Mutex<bool>, Condvar)) {
        let (stopping, wake) = stop;
        loop {
            let checked = self.check();
            self.report(checked);
            let guard = stopping.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = wake
                .wait_timeout_while(guard, self.config.every, |stop| !*stop)
                .unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
        }
    }

    fn check(&self) -> Checked {
        let source = &self.config.source;
        let bytes = match fetch(&self.agent, source, MAX_MANIFEST_BYTES as u64) {
            Ok(bytes) => bytes,
            Err(Fetch::Failed(e)) => return Checked::Failed(e),
            Err(Fetch::TooLong(what)) => return Checked::Refused(format!("manifest {source}: {what}")),
        };
        let policy = &self.installer.policy;
        let manifest = match Manifest::verified(&bytes, &policy.trusted) {
            Ok(manifest) => manifest,
            Err(e) => return Checked::Refused(format!("manifest {source}: {e}")),
        };
        let highest = match self.installer.highest_installed() {
            Ok(highest) => highest,
            Err(refusal) => return Checked::Refused(refusal.message),
        };
        if manifest.version == highest {
            return Checked::UpToDate(highest);
        }
        if let Err(why) = admissible(&manifest, policy.line.as_str(), highest, policy.max_bytes) {
            return Checked::Refused(format!("manifest {source} (bank version {}): {why}", manifest.version));
        }
        let url = beside(source, &manifest.bank);
        let bank = match fetch(&self.agent, &url, manifest.size) {
            Ok(bytes) => bytes,
            Err(Fetch::Failed(e)) => return Checked::Failed(e),
            Err(Fetch::TooLong(what)) => return Checked::Refused(format!("bank {url}: {what}")),
        };
        if let Err(why) = matches_manifest(&bank, &manifest) {
            return Checked::Refused(format!("bank {url}: {why}"));
        }
        let installed = self.installer.install(Origin::Pulled, |highest| {
            let checked = validate_bank(&bank, policy, highest, "pulled bank")?;
            if checked.version != manifest.version {
                let says = format!(
                    "{url} is bank version {}, its manifest says {}",
                    checked.version, manifest.version
                );
                return Err(refuse(422, says));
            }
            Ok((checked, &bank[..]))
        });
        match installed {
            Ok(_) => Checked::Installed(manifest.version),
            Err(refusal) => Checked::Refused(format!("bank {url}: {}", refusal.message)),
        }
    }

    /// Logs what changed since the last check (a refusal repeated every poll is logged once)
    /// and puts it in the device's status.
    fn report(&self, checked: Checked) {
        let mut status = self.installer.state.pull.lock().unwrap_or_else(|e| e.into_inner());
        let status = status.get_or_insert_with(|| PullStatus::new(&self.config.source));
        let outcome = match &checked {
            Checked::UpToDate(version) => format!("up to date (bank version {version})"),
            Checked::Installed(version) => format!("installed bank version {version}"),
            Checked::Refused(why) => format!("refused: {why}"),
            Checked::Failed(why) => format!("failed: {why}"),
        };
        match checked {
            Checked::Refused(_) => status.refused += 1,
            Checked::Failed(_) => status.failed += 1,
            Checked::UpToDate(_) | Checked::Installed(_) => {}
        }
        let repeated = status.outcome == outcome;
        match checked {
            Checked::Refused(_) | Checked::Failed(_) if !repeated => warn!("pull update {outcome}"),
            Checked::UpToDate(_) if !repeated => info!("pull update: {outcome}"),
            _ => debug!("pull update: {outcome}"),
        }
        status.checked_unix = Some(unix_now());
        status.outcome = outcome;
    }
}

/// Whether a verified manifest may be acted on by this device, before its bank is fetched.
fn admissible(manifest: &Manifest, line: &str, highest: u64, max_bytes: usize) -> Result<(), String> {
    if manifest.line.as_str() != line {
        return Err(format!(
            "published for line {}, this device is on line {line}",
            manifest.line
        ));
    }
    let now = unix_now();
    if now >= manifest.expires_unix {
        return Err(format!(
            "expired {} s ago (at {} s since 1970; publish it again)",
            now - manifest.expires_unix,
            manifest.expires_unix
        ));
    }
    if manifest.version < highest {
        return Err(format!(
            "older than version {highest}, the highest installed on this device: a replayed or stale manifest, \
             no rollback"
        ));
    }
    if manifest.size > max_bytes as u64 {
        return Err(format!(
            "the bank has {} bytes, at most {max_bytes} accepted (update.max_mib)",
            manifest.size
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

/// The URL of `name` in the folder of `url` (a manifest's URL has a path: see the config check).
fn beside(url: &str, name: &str) -> String {
    let path = &url[..url.find(['?', '#']).unwrap_or(url.len())];
    let folder = path.rfind('/').map_or(path, |end| &path[..=end]);
    format!("{folder}{name}")
}

enum Fetch {
    Failed(String),
    TooLong(String),
}

/// GETs `url`, reading at most `limit` bytes of its body: a longer body (announced or sent) is
/// cut at the bound and refused.
fn fetch(agent: &ureq::Agent, url: &str, limit: u64) -> Result<Vec<u8>, Fetch> {
    let response = match agent.get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(code, _)) => return Err(Fetch::Failed(format!("{url} answered HTTP {code}"))),
        Err(e) => return Err(Fetch::Failed(format!("cannot fetch {url}: {e}"))),
    };
    let announced = response
        .header("Content-Length")
        .and_then(|l| l.trim().parse::<u64>().ok());
    if let Some(length) = announced.filter(|l| *l > limit) {
        return Err(Fetch::TooLong(format!(
            "{length} bytes announced, at most {limit} read"
        )));
    }
    let mut body = Vec::new();
    response
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| Fetch::Failed(format!("{url}: the body stopped after {} bytes: {e}", body.len())))?;
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
    fn a_manifest_is_acted_on_only_for_this_line_unexpired_newer_and_within_bounds() {
        let later = unix_now() + 3600;
        assert_eq!(admissible(&manifest(7, later), "hall-2", 6, 10), Ok(()));
        let refused =
            |m: &Manifest, line: &str, highest: u64, max: usize| admissible(m, line, highest, max).unwrap_err();
        assert!(refused(&manifest(7, later), "hall-3", 6, 10).contains("line hall-2"));
        assert!(refused(&manifest(7, unix_now() - 5), "hall-2", 6, 10).contains("expired"));
        assert!(refused(&manifest(5, later), "hall-2", 6, 10).contains("replayed or stale"));
        assert!(refused(&manifest(7, later), "hall-2", 6, 2).contains("at most 2"));
    }

    #[test]
    fn the_bank_must_be_the_one_the_manifest_names() {
        let m = manifest(7, 2);
        assert_eq!(matches_manifest(b"abc", &m), Ok(()));
        assert!(matches_manifest(b"abd", &m).unwrap_err().contains("sha256"));
        assert!(matches_manifest(b"ab", &m).unwrap_err().contains("2 bytes"));
    }

    #[test]
    fn the_bank_lies_in_the_manifest_folder() {
        assert_eq!(
            beside("http://h:8/a/b/manifest", "bank-v7.ucad"),
            "http://h:8/a/b/bank-v7.ucad"
        );
        assert_eq!(beside("http://h/m/manifest?line=x/y#z", "b"), "http://h/m/b");
    }
}
