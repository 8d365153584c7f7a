//! A real headless Chromium (Debian's `chromium`, installed by `.ci/run`) for tests of pages.

use std::process::Command;

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromium runs (.ci/run installs Debian's chromium)")
}

/// Chromium, headless, on `url` with `args` (`--dump-dom`, `--screenshot=…`); its stdout.
pub fn headless(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--virtual-time-budget=5000", "--window-size=1280,900"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element carrying `attribute` in a dumped DOM.
pub fn text_after(dom: &str, attribute: &str) -> String {
    let at = dom
        .find(attribute)
        .unwrap_or_else(|| panic!("no {attribute} in the page"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].to_string()
}

/// Checks that every element of a dumped DOM carrying `data-key="a.0.b"` shows the JSON value at
/// `/a/0/b` (to the decimals shown; `—` for null); returns how many there are.
pub fn shows_the_json(dom: &str, json: &serde_json::Value) -> usize {
    let shown: Vec<(String, String)> = dom
        .split("data-key=\"")
        .skip(1)
        .map(|rest| {
            let key = rest.split('"').next().unwrap().to_string();
            let start = rest.find('>').unwrap() + 1;
            (key, rest[start..].split('<').next().unwrap().to_string())
        })
        .collect();
    for (key, text) in &shown {
        let value = (json.pointer(&format!("/{}", key.replace('.', "/"))))
            .unwrap_or_else(|| panic!("{key} is not in the JSON"));
        match value.as_f64() {
            None => assert!(value.is_null() && text == "—", "{key}: page {text}, JSON {value}"),
            Some(expected) => {
                let decimals = text.split('.').nth(1).map_or(0, str::len) as i32;
                let got: f64 = text.parse().unwrap_or_else(|_| panic!("{key}: {text}"));
                let tolerance = 0.5 * 10f64.powi(-decimals) + 1e-9;
                assert!(
                    (got - expected).abs() <= tolerance,
                    "{key}: page {text}, JSON {expected}"
                );
            }
        }
    }
    shown.len()
}
