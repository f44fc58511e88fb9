//! `fedmsg-publish`, the local publisher `make run` feeds the bridge with: JSON-lines files and
//! `.json` fixture files, in the order given, two frames per envelope as fedmsg sends them.

use std::process::Command;
use std::time::Duration;

/// A free TCP port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sends_json_lines_and_fixture_files_in_order_and_skips_what_is_not_an_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("feed.jsonl");
    std::fs::write(
        &lines,
        "{\"topic\": \"a.one\", \"msg\": {\"n\": 1}}\n\nnot json\n{\"topic\": \"a.two\", \"msg\": {}}\n",
    )
    .unwrap();
    let fixture = dir.path().join("fixture.json");
    std::fs::write(
        &fixture,
        "{\n  \"topic\": \"b.three\",\n  \"msg\": {\n    \"name\": \"kernel\"\n  }\n}\n",
    )
    .unwrap();

    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let context = zmq::Context::new();
    let sub = context.socket(zmq::SUB).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.set_rcvtimeo(20_000).unwrap();
    let publisher = std::thread::spawn({
        let endpoint = endpoint.clone();
        let (lines, fixture) = (lines.clone(), fixture.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_fedmsg-publish"))
                .args(["--bind", &endpoint, "--wait-ms", "1500"])
                .arg(&lines)
                .arg(&fixture)
                .output()
                .unwrap()
        }
    });
    // The publisher binds; connect while it waits before its first message.
    std::thread::sleep(Duration::from_millis(300));
    sub.connect(&endpoint).unwrap();

    let mut received = Vec::new();
    for _ in 0..3 {
        let frames = sub.recv_multipart(0).expect("three envelopes arrive");
        assert_eq!(frames.len(), 2);
        let envelope: serde_json::Value = serde_json::from_slice(&frames[1]).unwrap();
        assert_eq!(
            envelope["topic"].as_str().unwrap().as_bytes(),
            &frames[0][..]
        );
        // Each envelope is one line on the bus, even when its file was pretty-printed.
        assert!(!frames[1].contains(&b'\n'));
        received.push(String::from_utf8(frames[0].clone()).unwrap());
    }
    assert_eq!(received, ["a.one", "a.two", "b.three"]);

    let output = publisher.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The bad line is named and makes the exit status 1, after the rest was sent.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("feed.jsonl:3: skipped: not valid JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sent 3 messages, skipped 1 lines"),
        "{stderr}"
    );
}
