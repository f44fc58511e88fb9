//! A small local fedmsg publisher: binds a ZeroMQ PUB socket and sends recorded envelopes (JSON
//! lines, or one envelope per `.json` file) as fedmsg does, two frames each: topic, envelope. Used
//! by `make run` and the tests to feed the bridge without the real Fedora bus.

use std::io::{BufRead, BufReader, Read};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

/// Publish recorded fedmsg envelopes on a local ZeroMQ PUB socket.
///
/// Each line of a JSON-lines input is sent as it is (not re-serialised) as the second frame, with
/// the envelope's `topic` as the first. A file whose name ends in `.json` holds one envelope
/// (pretty-printed, like tests/fixtures/messages/), sent compacted. Envelopes that are not a JSON
/// object with a string `topic` are reported and skipped; the exit status is then 1, after
/// everything else was sent.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:4001.
    #[arg(long, default_value = "tcp://127.0.0.1:4001",
          value_parser = |s: &str| taskbot_fedmsg_bridge::check_endpoint(s).map(|()| s.to_string()))]
    bind: String,
    /// Pause between two messages, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Pause after binding before the first message, in milliseconds. A PUB socket drops what it
    /// sends before a subscriber has connected and subscribed, so this gives subscribers time.
    #[arg(long, default_value_t = 1000)]
    wait_ms: u64,
    /// JSON-lines files of envelopes (`-` for standard input) or `.json` files of one envelope
    /// each, sent in the order given.
    #[arg(required = true)]
    files: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match publish(&cli) {
        Ok((sent, skipped)) => {
            eprintln!("fedmsg-publish: sent {sent} messages, skipped {skipped} lines");
            if skipped == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("fedmsg-publish: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Send every valid envelope of every file; returns (sent, skipped).
fn publish(cli: &Cli) -> anyhow::Result<(usize, usize)> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::PUB)?;
    // On exit, keep sending what is queued for up to 2 s instead of dropping it.
    socket.set_linger(2000)?;
    socket
        .bind(&cli.bind)
        .with_context(|| format!("cannot bind {}", cli.bind))?;
    std::thread::sleep(Duration::from_millis(cli.wait_ms));

    let (mut sent, mut skipped) = (0, 0);
    let mut send = |name: &str, number: usize, envelope: &[u8]| -> anyhow::Result<()> {
        let topic = match topic_of(envelope) {
            Ok(topic) => topic,
            Err(reason) => {
                eprintln!("fedmsg-publish: {name}:{number}: skipped: {reason}");
                skipped += 1;
                return Ok(());
            }
        };
        if sent > 0 && cli.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(cli.delay_ms));
        }
        socket
            .send_multipart([topic.as_bytes(), envelope], 0)
            .context("cannot send")?;
        sent += 1;
        Ok(())
    };
    for file in &cli.files {
        if file.ends_with(".json") {
            // One envelope, usually pretty-printed: a frame is one line of JSON on the bus.
            let text = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
            let envelope = match serde_json::from_slice::<serde_json::Value>(&text) {
                Ok(value) => serde_json::to_vec(&value)?,
                Err(_) => text,
            };
            send(file, 1, &envelope)?;
            continue;
        }
        let (input, name): (Box<dyn Read>, &str) = if file == "-" {
            (Box::new(std::io::stdin()), "<stdin>")
        } else {
            (
                Box::new(std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?),
                file,
            )
        };
        let mut reader = BufReader::new(input);
        let mut line = Vec::new();
        for number in 1.. {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {name}"))?
                == 0
            {
                break;
            }
            let envelope = line.trim_ascii();
            if !envelope.is_empty() {
                send(name, number, envelope)?;
            }
        }
    }
    Ok((sent, skipped))
}

/// The topic of an envelope line, or why the line is not an envelope.
fn topic_of(envelope: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(envelope).map_err(|e| format!("not valid JSON: {e}"))?;
    match value.get("topic") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => Ok(t.clone()),
        _ if !value.is_object() => Err("not a JSON object".into()),
        _ => Err("no string `topic`".into()),
    }
}
