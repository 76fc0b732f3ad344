//! Property tests of the command line: generated extreme and malformed arguments (durations,
//! counts, versions, paths) are parsed into values or rejected with a usage error, never a
//! panic. Parsing only: nothing connects.

use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;

use super::{Cli, Command};

/// Duration arguments: well-formed ones of every size, and malformed ones.
fn duration_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            "[0-9]{1,40}",
            prop_oneof![Just(""), Just("ms"), Just("s"), Just("m")]
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        (
            "[0-9]{0,20}\\.[0-9]{0,20}",
            prop_oneof![Just("ms"), Just("s"), Just("m")]
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        any::<f64>().prop_map(|f| format!("{f}s")),
        any::<u64>().prop_map(|n| format!("{n}ms")),
        "[-+ .eE0-9a-z]{0,12}",
        "\\PC{0,20}",
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-0".to_string()),
        Just("0".to_string()),
    ]
}

/// Count and number arguments, in and far out of every integer range.
fn number_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "-?[0-9]{1,40}",
        "[-+0-9a-z.]{0,8}",
    ]
}

/// Paths: valid, odd and very long.
fn path_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-z0-9]{1,8}){1,4}",
        "[/a-z.]{1,16}",
        "\\PC{1,24}",
        (1usize..100_000).prop_map(|n| format!("/{}", "p".repeat(n))),
    ]
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("zkr").chain(args.iter().copied()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `--timeout` (global) and `--restart-delay`: a positive duration that fits, or a usage
    /// error.
    #[test]
    fn durations_parse_or_are_usage_errors(d in duration_arg()) {
        match parse(&["--timeout", &d, "get", "/x"]) {
            Ok(cli) => {
                let t = cli.global.timeout.expect("parsed --timeout");
                prop_assert!(t > Duration::ZERO, "{:?} gave {:?}", d, t);
            }
            Err(e) => prop_assert_eq!(e.exit_code(), 2, "{}", e),
        }
        match parse(&["elect", "/e", "--restart-delay", &d, "--", "true"]) {
            Ok(cli) => match cli.command {
                Command::Elect(a) => prop_assert!(a.restart_delay > Duration::ZERO),
                other => prop_assert!(false, "parsed as {:?}", other),
            },
            Err(e) => prop_assert_eq!(e.exit_code(), 2, "{}", e),
        }
    }

    /// Counts, versions, block sizes and the session timeout: a value of the option's type, or
    /// a usage error (clap's), never a panic.
    #[test]
    fn numbers_parse_or_are_usage_errors(n in number_arg()) {
        for args in [
            vec!["id", "next", "/ids", "--count", n.as_str()],
            vec!["id", "next", "/ids", "--block", n.as_str()],
            vec!["set", "/x", "v", "--version", n.as_str()],
            vec!["delete", "/x", "--version", n.as_str()],
            vec!["--session-timeout-ms", n.as_str(), "get", "/x"],
            vec!["services", "api", "--count", n.as_str()],
        ] {
            if let Err(e) = parse(&args) {
                prop_assert!(e.exit_code() == 2, "{:?}: {}", args, e);
            }
        }
    }

    /// Any path is accepted by the parser and then checked before anything is sent: `Ok`, or a
    /// usage error (exit code 2).
    #[test]
    fn paths_are_checked_before_connecting(p in path_arg()) {
        for args in [
            vec!["get", p.as_str()],
            vec!["ls", p.as_str()],
            vec!["id", "next", p.as_str(), "--count", "18446744073709551615"],
            vec!["lock", p.as_str(), "--", "true"],
            vec!["watch", p.as_str()],
        ] {
            // A path starting with '-' reads as an option: a parse error, fine too.
            let Ok(cli) = parse(&args) else { continue };
            match cli.command.prepare() {
                Ok(_) => prop_assert!(zkr::path::validate_path(&p, false).is_ok()),
                Err(e) => prop_assert_eq!(e.exit_code(), 2, "{:?}: {:?}", args, e),
            }
        }
    }
}
