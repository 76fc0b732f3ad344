//! The `zkr` binary given generated extreme arguments (huge and zero counts, odd and very long
//! paths, extreme session timeouts and durations) against a closed port: every run ends with a
//! documented exit code and a one-line message, never a panic (exit code 101, or the panic
//! hook's "internal error").

use std::process::Command;

use proptest::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_zkr");

fn count_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just(u64::MAX.to_string()),
        Just(usize::MAX.to_string()),
        Just("99999999999999999999999".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ]
}

fn path_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-z0-9]{1,8}){1,3}",
        "[/a-z.]{1,12}",
        (1usize..50_000).prop_map(|n| format!("/{}", "p".repeat(n))),
        Just("/a//b".to_string()),
        Just("/a/./b".to_string()),
    ]
}

fn session_ms_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just(u64::MAX.to_string()),
        Just((i32::MAX as u64 + 1).to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
    ]
}

fn timeout_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1ms".to_string()),
        Just("0.000001ms".to_string()),
        Just("0.3s".to_string()),
        (1u64..400).prop_map(|n| format!("{n}ms")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn extreme_arguments_end_with_an_exit_code_not_a_panic(
        path in path_arg(),
        count in count_arg(),
        session_ms in session_ms_arg(),
        timeout in timeout_arg(),
        which in 0usize..4,
    ) {
        let mut args: Vec<&str> = vec![
            "--zk", "127.0.0.1:1",
            "--session-timeout-ms", &session_ms,
            "--timeout", &timeout,
        ];
        match which {
            0 => args.extend(["id", "next", &path, "--count", &count]),
            1 => args.extend(["id", "next", &path, "--count", &count, "--block", "4294967295"]),
            2 => args.extend(["get", &path]),
            _ => args.extend(["lock", &path, "--", "true"]),
        }
        let out = Command::new(BIN).args(&args).env_remove("ZK_SERVERS").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        prop_assert!(code != Some(101) && !stderr.contains("internal error"), "{:?}: {:?} {}", args.get(6..), code, stderr);
        // 2: usage (bad path, count or option); 6: the closed port.
        prop_assert!(matches!(code, Some(2) | Some(6)), "{:?}: {:?} {}", args.get(6..), code, stderr);
        // A path ZooKeeper would refuse is a usage error, found before any connection.
        if zkr::path::validate_path(&path, false).is_err() {
            prop_assert_eq!(code, Some(2), "{:?}: {}", args.get(6..), stderr);
        }
        // One message: ours (`zkr: ...`), or clap's for an argument it cannot parse.
        prop_assert!(
            stderr.lines().any(|l| l.starts_with("zkr: ") || l.starts_with("error: ")),
            "{}",
            stderr
        );
    }
}
