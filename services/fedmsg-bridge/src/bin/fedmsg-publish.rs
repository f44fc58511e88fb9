//! A small local fedmsg publisher: binds a ZeroMQ PUB socket and sends recorded envelopes (one JSON
//! object per line) as fedmsg does, two frames each: topic, envelope. Used by `make run` and the
//! tests to feed the bridge without the real Fedora bus.

use std::io::{BufRead, BufReader, Read};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

/// Publish recorded fedmsg envelopes on a local ZeroMQ PUB socket.
///
/// Each line of the input is sent as it is (not re-serialised) as the second frame, with the
/// envelope's `topic` as the first. Lines that are not a JSON object with a string `topic` are
/// reported and skipped; the exit status is then 1, after everything else was sent.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:4001.
    #[arg(long, default_value = "tcp://127.0.0.1:4001")]
    bind: String,
    /// Pause between two messages, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Pause after binding before the first message, in milliseconds. A PUB socket drops what it
    /// sends before a subscriber has connected and subscribed, so this gives subscribers time.
    #[arg(long, default_value_t = 1000)]
    wait_ms: u64,
    /// JSON-lines file of envelopes; `-` for standard input.
    file: String,
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

/// Send every valid line; returns (sent, skipped).
fn publish(cli: &Cli) -> anyhow::Result<(usize, usize)> {
    let input: Box<dyn Read> = if cli.file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&cli.file).with_context(|| format!("cannot open {}", cli.file))?,
        )
    };
    let name = if cli.file == "-" {
        "<stdin>"
    } else {
        cli.file.as_str()
    };
    let context = zmq::Context::new();
    let socket = context.socket(zmq::PUB)?;
    // On exit, keep sending what is queued for up to 2 s instead of dropping it.
    socket.set_linger(2000)?;
    socket
        .bind(&cli.bind)
        .with_context(|| format!("cannot bind {}", cli.bind))?;
    std::thread::sleep(Duration::from_millis(cli.wait_ms));

    let (mut sent, mut skipped) = (0, 0);
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
        if envelope.is_empty() {
            continue;
        }
        let topic = match topic_of(envelope) {
            Ok(topic) => topic,
            Err(reason) => {
                eprintln!("fedmsg-publish: {name}:{number}: skipped: {reason}");
                skipped += 1;
                continue;
            }
        };
        if sent > 0 && cli.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(cli.delay_ms));
        }
        socket
            .send_multipart([topic.as_bytes(), envelope], 0)
            .context("cannot send")?;
        sent += 1;
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
