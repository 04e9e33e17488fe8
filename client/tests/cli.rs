//! The `tinker` CLI against a real node: output, exit statuses, the prompt.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::TestNode;

fn tinker(node: &TestNode, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinker"))
        .arg("--addr")
        .arg(node.addr.to_string())
        .args(args)
        .output()
        .expect("run tinker")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn one_shot_commands() {
    let node = TestNode::start(2);
    let set = tinker(&node, &["set", "greeting", "hello world"]);
    assert!(set.status.success());
    assert!(stdout(&set).starts_with("OK (version "));
    let get = tinker(&node, &["get", "greeting"]);
    assert_eq!(
        (get.status.code(), stdout(&get).as_str()),
        (Some(0), "hello world\n")
    );

    let missing = tinker(&node, &["get", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stdout(&missing), "");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    assert!(tinker(&node, &["mset", "a", "1", "b", "2"])
        .status
        .success());
    assert_eq!(
        stdout(&tinker(&node, &["mget", "a", "zz", "b"])),
        "1\n(nil)\n2\n"
    );
    assert_eq!(stdout(&tinker(&node, &["exists", "a", "b", "zz"])), "2\n");
    assert_eq!(stdout(&tinker(&node, &["keys"])), "a\nb\ngreeting\n");
    assert_eq!(stdout(&tinker(&node, &["keys", "g*"])), "greeting\n");
    let mut scanned: Vec<String> = stdout(&tinker(&node, &["scan", "--all"]))
        .lines()
        .map(String::from)
        .collect();
    scanned.sort();
    assert_eq!(scanned, ["a", "b", "greeting"]);
    assert_eq!(stdout(&tinker(&node, &["count"])), "3\n");
    assert_eq!(stdout(&tinker(&node, &["del", "a", "zz"])), "1\n");

    let nx = tinker(&node, &["set", "--nx", "b", "again"]);
    assert_eq!(nx.status.code(), Some(1));
    let cas_fail = tinker(&node, &["cas", "b", "999999", "x"]);
    assert_eq!(cas_fail.status.code(), Some(1));
    let verbose = stdout(&tinker(&node, &["get", "-v", "b"]));
    let version: String = verbose
        .split("version ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let cas = tinker(&node, &["cas", "b", &version, "swapped"]);
    assert!(
        cas.status.success(),
        "{}",
        String::from_utf8_lossy(&cas.stderr)
    );
    assert_eq!(stdout(&tinker(&node, &["get", "b"])), "swapped\n");
    assert!(tinker(&node, &["set", "--ttl-ms", "60000", "t", "v"])
        .status
        .success());
    assert!(stdout(&tinker(&node, &["get", "-v", "t"])).contains(" ms)"));
    assert!(stdout(&tinker(&node, &["ping"])).starts_with("PONG"));
}

#[test]
fn errors_exit_with_status_2() {
    let node = TestNode::start(1);
    let unknown_tenant = tinker(&node, &["--tenant", "ghost", "get", "k"]);
    assert_eq!(unknown_tenant.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown_tenant.stderr).contains("UnknownTenant"));
    let big_key = "k".repeat(20_000);
    let too_large = tinker(&node, &["get", &big_key]);
    assert_eq!(too_large.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&too_large.stderr).contains("KeyTooLarge"));
    let nobody = Command::new(env!("CARGO_BIN_EXE_tinker"))
        .args(["--addr", "127.0.0.1:1", "ping"])
        .output()
        .unwrap();
    // `ping` is the health probe: 1 means not ready or unreachable.
    assert_eq!(nobody.status.code(), Some(1));
}

#[test]
fn interactive_prompt_reads_commands_from_stdin() {
    let node = TestNode::start(2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinker"))
        .arg("--addr")
        .arg(node.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"set k \"two words\"\nget k\nget missing\nbogus\nmget k missing\nquit\nget k\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("OK (version"), "{out}");
    assert_eq!(lines[1], "two words");
    assert!(lines[2].starts_with("(nil)"));
    assert!(out.contains("unrecognized subcommand 'bogus'"), "{out}");
    assert!(
        out.ends_with("two words\n(nil)\n"),
        "quit stops reading: {out}"
    );
}
