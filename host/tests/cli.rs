//! The `presenced` binary as an operator meets it: nonsense flags and the
//! demo identity on a public address are refused at startup with messages
//! that name the problem; SIGHUP without a plugin changes nothing.

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn presenced(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_presenced"));
    command.args(args).env("RUST_LOG", "warn").env_remove("PRESENCE_LISTEN");
    command
}

/// Run to completion (it must refuse quickly).
fn refused(args: &[&str]) -> String {
    let mut child = presenced(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("presenced {args:?} kept running; it should refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Output { status, stderr, .. } = child.wait_with_output().unwrap();
    assert!(!status.success(), "presenced {args:?} exited successfully");
    String::from_utf8_lossy(&stderr).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn healthz(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], port: u16) -> Running {
    let child = presenced(args).stdout(Stdio::null()).spawn().unwrap();
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(port).is_none() {
        assert!(Instant::now() < deadline, "presenced {args:?} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

#[test]
fn nonsense_flags_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--ping-interval-s", "0"),
        ("--pong-timeout-s", "0"),
        ("--heartbeat-ms", "0"),
        ("--max-frame-bytes", "0"),
        ("--messages-per-second", "0"),
        ("--send-queue-bytes", "0"),
        ("--plugin-deadline-ms", "0"),
        ("--max-connections", "0"),
    ] {
        let stderr = refused(&["--listen", "127.0.0.1:0", flag, value]);
        assert!(stderr.contains(flag) && stderr.contains("0"), "{flag} {value}: {stderr}");
    }
    let stderr = refused(&["--listen", "127.0.0.1:0", "--heartbeat-ms", "5000", "--ttl-s", "2"]);
    assert!(stderr.contains("ttl") && stderr.contains("heartbeat"), "{stderr}");
    let stderr = refused(&["--listen", "127.0.0.1:0", "--allowed-origins", "evil.example"]);
    assert!(stderr.contains("--allowed-origins") && stderr.contains("scheme://host"), "{stderr}");
    let stderr = refused(&["--listen", "127.0.0.1:0", "--send-queue-bytes", "100", "--max-frame-bytes", "1000"]);
    assert!(stderr.contains("send_queue_bytes"), "{stderr}");
    let stderr =
        refused(&["--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1/", "--redis-ca-file", "/nonexistent.pem"]);
    assert!(stderr.contains("--redis-ca-file") && stderr.contains("/nonexistent.pem"), "{stderr}");
    // A URL with a password that cannot be reached: the error names the
    // URL without the password.
    let stderr = refused(&["--listen", "127.0.0.1:0", "--redis", "redis://ada:hunter2@127.0.0.1:1/,ftp://x"]);
    assert!(stderr.contains("ftp://x is not a Redis URL") && !stderr.contains("hunter2"), "{stderr}");
    let port = free_port();
    let stderr = refused(&["--listen", "127.0.0.1:0", "--redis", &format!("redis://ada:hunter2@127.0.0.1:{port}/")]);
    assert!(stderr.contains("ada:***@") && !stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn the_demo_identity_is_refused_on_a_public_address() {
    let stderr = refused(&["--listen", "0.0.0.0:0"]);
    assert!(stderr.contains("--insecure-demo-auth") && stderr.contains("not a loopback address"), "{stderr}");
    // Asked for explicitly, it starts.
    let port = free_port();
    let _server = start(&["--listen", &format!("0.0.0.0:{port}"), "--insecure-demo-auth"], port);
}

#[test]
fn sighup_without_a_plugin_changes_nothing() {
    let port = free_port();
    let server = start(&["--listen", &format!("127.0.0.1:{port}")], port);
    for _ in 0..3 {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(server.0.id() as i32, libc::SIGHUP) }, 0);
    }
    std::thread::sleep(Duration::from_millis(200));
    let response = healthz(port).expect("still serving after SIGHUP");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// Absurd durations get a named error, not a panic; a session key file
/// other users can read is refused (anyone reading it could sign sessions).
#[test]
fn absurd_durations_and_exposed_keys_are_refused_by_name() {
    for (flag, value, other) in [
        ("--ttl-s", "18446744073709551615", vec![]),
        ("--heartbeat-ms", "18446744073709551615", vec!["--ttl-s", "18446744073709551615"]),
    ] {
        let mut args = vec!["--listen", "127.0.0.1:0", flag, value];
        args.extend(other);
        let stderr = refused(&args);
        assert!(!stderr.contains("panicked"), "{flag} {value}: {stderr}");
        let name = if flag == "--ttl-s" { "ttl" } else { "heartbeat" };
        assert!(stderr.contains(name) && stderr.contains("longer than the most allowed"), "{flag}: {stderr}");
    }
    let dir = std::env::temp_dir().join(format!("presence-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("session.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = refused(&["--listen", "127.0.0.1:0", "--session-key-file", key.to_str().unwrap()]);
    assert!(stderr.contains("readable by other users") && stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let _server = start(&["--listen", &format!("127.0.0.1:{port}"), "--session-key-file", key.to_str().unwrap()], port);
    let _ = std::fs::remove_dir_all(&dir);
}
