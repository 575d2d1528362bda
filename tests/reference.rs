//! `docs/reference.md`, the configuration reference, is `emostream <command> --help` for every
//! command: this test fails when a flag changes and the reference was not regenerated.
//!
//! Regenerate: `EMOSTREAM_UPDATE_REFERENCE=1 cargo test --test reference`.

use std::process::Command;

const COMMANDS: &[&str] = &["", "up", "ingest", "aggregate", "publish", "cluster", "subscriber", "registry", "client", "load"];

fn help(command: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emostream"));
    if !command.is_empty() {
        cmd.arg(command);
    }
    // The help shows each variable's value when it is set: leave them out, and fix the width.
    for (k, _) in std::env::vars() {
        if k.starts_with("EMOSTREAM_") || k == "RUST_LOG" || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    let out = cmd.arg("--help").env("COLUMNS", "100").output().unwrap();
    assert!(out.status.success(), "emostream {command} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn reference() -> String {
    let mut doc = String::from(
        "# Configuration reference\n\n\
         Every command's flags, as `emostream <command> --help` prints them (generated: \
         `EMOSTREAM_UPDATE_REFERENCE=1 cargo test --test reference`; a test keeps it in sync). Each flag \
         can also come from the `EMOSTREAM_*` variable named beside it or from a TOML file given with \
         `--config` (keys are flag names); the command line wins over the environment, which wins over \
         the file.\n",
    );
    for c in COMMANDS {
        let title = if c.is_empty() { "emostream".to_string() } else { format!("emostream {c}") };
        doc.push_str(&format!("\n## `{title}`\n\n```text\n{}```\n", help(c)));
    }
    doc
}

#[test]
fn the_reference_is_every_commands_help() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md");
    let want = reference();
    if std::env::var_os("EMOSTREAM_UPDATE_REFERENCE").is_some() {
        std::fs::write(path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    if have != want {
        let line = have.lines().zip(want.lines()).position(|(a, b)| a != b).map_or(have.lines().count().min(want.lines().count()), |i| i);
        panic!(
            "docs/reference.md is out of date (first difference at line {}: {:?} vs the binary's {:?}); regenerate it with \
             `EMOSTREAM_UPDATE_REFERENCE=1 cargo test --test reference`",
            line + 1,
            have.lines().nth(line).unwrap_or(""),
            want.lines().nth(line).unwrap_or("")
        );
    }
}
